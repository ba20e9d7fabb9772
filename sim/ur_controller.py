"""An emulated UR controller backed by the MuJoCo mirror, for the unmodified ur_rtde.

:class:`URController` opens the network interfaces of a UR controller on one IPv4 address
and drives a physics-only :class:`sim.mirror.Mirror` of the arm in real time:

* RTDE on 30004 (:mod:`sim.rtde_server`, protocol 2): every output variable, at 125 Hz
  (``ur5``, a CB3 reporting controller version 3.15) or 500 Hz (``ur5e``, an e-series
  reporting 5.11); inputs land in the controller's input registers;
* the dashboard server on 29999 (:mod:`sim.ur_dashboard`);
* the script ports 30001-30003 (primary, secondary, real-time): a URScript program sent there
  (``def name(): ... end``) replaces the running one. ur_rtde's control script is run
  register by register (:mod:`sim.ur_script`); any other program stops the running one and
  is only logged (this emulator does not interpret URScript);
* what a real controller enforces: joint speed at most pi rad/s; joint positions within
  +-2 pi rad, and any contact in the mirror, end in a protective stop (the program stops, the
  arm brakes); a protective stop can be unlocked no sooner than 5 s after it happened;
  the emergency stop powers the arm off; programs start only on a powered arm with released
  brakes, in normal safety mode and, on an e-series, in remote control; the RTDE watchdog
  stops the program.

Faults on demand (methods, also through :class:`ControllerProcess` and the emulator's HTTP
control endpoint ``POST /fault/<name>``, :mod:`sim.emulator_io`):
:meth:`URController.protective_stop`, :meth:`~URController.press_emergency_stop`,
:meth:`~URController.set_remote_control` (off),
:meth:`~URController.pull_cable` (every port goes silent while the sockets stay up: no RTDE
output; RTDE inputs, script uploads and dashboard requests held back unanswered until
:meth:`~URController.plug_cable`), :meth:`~URController.reset_connections` (every RTDE
connection closed with a TCP RST), :meth:`~URController.kill_script` (the running program
ends as after a runtime error: the arm brakes, ``runtime_state`` STOPPED) and
:meth:`~URController.slow_down` (the tick loop runs ``factor`` times slower than real time:
controller time, counted in ticks, falls behind the wall clock).

With an HTTP port (``serve(http_port=...)``, ``madi sim controller``) the emulator also
serves the mirror's wrist camera as an MJPEG stream and shows the target display's images on
the mirror's virtual monitor (:mod:`sim.emulator_io`).

Every tick (0.008 s CB3, 0.002 s e-series) the running program reads the input registers, the
current motion (speedJ target, moveJ profile or stop ramp) commands the mirror, the mirror
advances one tick and the state goes out on RTDE. The mirror's speedJ ramp bounds each
command's acceleration; its command latency is 0 (the network is the latency). Controller time
(the RTDE ``timestamp``) counts ticks; on a loaded machine the tick loop may fall behind the
wall clock, then it skips wall time, never ticks (no catch-up bursts), so the controller clock
runs slow and the watchdog, counted in ticks, does not fire for a starved controller.

ur_rtde's Python bindings hold the GIL while its constructors wait for the controller, so a
client and this controller cannot share an interpreter: run it with ``madi sim controller``
or :class:`ControllerProcess`. Port 30004 is fixed in ur_rtde: give each controller its own
address in 127.0.0.0/8.

Sources: ur_rtde's source (rtde_control.script, rtde_control_interface.cpp,
dashboard_client.cpp); UR's RTDE guide (variables, robot/safety modes, status bits), URScript
manual (``rtde_set_watchdog``, ``speedj``, ``movej``) and dashboard server manuals.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import cv2
import numpy as np

from robot.config import CONTROL_PERIOD, Config, config_from_dict
from sim.mirror import Mirror
from sim.rtde_server import RTDEServer, accept_loop, listen, zero_outputs
from sim.ur_dashboard import DashboardServer
from sim.ur_script import ControlScript, ScriptError, is_control_script

log = logging.getLogger(__name__)

SCRIPT_PORTS = (30001, 30002, 30003)
"""Primary, secondary and real-time interfaces: each accepts URScript programs."""

#: Controller software per model: (major, minor, bugfix, build) and the release date.
VERSIONS = {"ur5": ((3, 15, 7, 106331), "Sep 06 2021"), "ur5e": ((5, 11, 2, 108319), "Dec 08 2021")}
SERIAL_NUMBER = "20185500000"
JOINT_LIMIT = 2 * math.pi  # rad, UR5 and UR5e, every joint
JOINT_SPEED_MAX = math.pi  # rad/s, UR5 and UR5e, every joint
ACCELERATION_MAX = 40.0  # rad/s^2, the mirror's bound (ur_rtde's UR_JOINT_ACCELERATION_MAX)
STOP_DECELERATION = 20.0  # rad/s^2, a program stop or a protective stop (emulator's choice)
UNLOCK_DELAY = 5.0  # s, UR's wait between a protective stop and its unlock
DEFAULT_HTTP_PORT = 8080  # camera stream, screen and faults (sim.emulator_io)

# RTDE guide: robot modes, safety modes, runtime states, status bits.
POWER_OFF, IDLE, RUNNING = 3, 5, 7
NORMAL, PROTECTIVE_STOP, ROBOT_EMERGENCY_STOP = 1, 3, 7
STOPPED, PLAYING = 1, 2
JOINT_MODE = {POWER_OFF: 239, IDLE: 255, RUNNING: 253}
ROBOT_MODE_NAMES = {POWER_OFF: "POWER_OFF", IDLE: "IDLE", RUNNING: "RUNNING"}
SAFETY_NAMES = {NORMAL: "NORMAL", PROTECTIVE_STOP: "PROTECTIVE_STOP",
                ROBOT_EMERGENCY_STOP: "ROBOT_EMERGENCY_STOP"}
SAFETY_BITS = {NORMAL: 1 << 0, PROTECTIVE_STOP: 1 << 2 | 1 << 10,
               ROBOT_EMERGENCY_STOP: 1 << 6 | 1 << 7 | 1 << 10}

_PROGRAM = re.compile(r"^(def|sec)\s+(\w+)\(\):\n.*?^end[ \t]*$", re.MULTILINE | re.DOTALL)


def mirror_config(model: str):
    """The config an emulated controller builds its mirror from (also for replays in tests).

    Args:
        model: ``ur5`` (CB3) or ``ur5e`` (e-series).

    Returns:
        The :class:`robot.config.Config` of a physics-only mirror: the model's tick, the
        controller's acceleration bound, no command latency.

    Raises:
        ValueError: an unknown model.
    """
    if model not in VERSIONS:
        raise ValueError(f"unknown UR model {model!r}: use one of {sorted(VERSIONS)}")
    return config_from_dict({
        "backend": "sim",
        "arm": {"model": model, "acceleration": ACCELERATION_MAX},
        "sim": {"command_latency": 0.0},
    })


def build_mirror(model: str) -> Mirror:
    """A physics-only mirror of ``model`` at rest at the home pose (see :func:`mirror_config`)."""
    cfg = mirror_config(model)
    return Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim, render=False)


@dataclass
class _Motion:
    """A motion the controller runs: speedJ tracking, a moveJ profile or a stop ramp."""

    kind: str  # "speed", "move" or "stop"
    target: np.ndarray  # rad/s (speed) or rad (move)
    acceleration: float  # rad/s^2
    speed: float = 0.0  # rad/s, move only
    done: bool = False


class URController:
    """An emulated UR5 (CB3) or UR5e (e-series) controller on ``host`` (see module docstring).

    The arm starts at rest at the rig's home pose (``robot.config.Q_HOME``).

    Args:
        model: ``ur5`` (CB3, 125 Hz, version 3.15) or ``ur5e`` (e-series, 500 Hz, 5.11).
        host: IPv4 address of every interface, e.g. ``127.0.0.1`` or ``127.31.4.2``.
        unlock_delay: Least time between a protective stop and its unlock, s (UR: 5).
        remote_control: e-series only: the pendant's remote/local switch.
        journal: Keep every mirror command for :meth:`trace` (tests; grows without bound).

    Raises:
        ValueError: an unknown model.

    Attributes:
        step_time: The controller tick, s.
    """

    def __init__(self, model: str = "ur5", host: str = "127.0.0.1",
                 unlock_delay: float = UNLOCK_DELAY, remote_control: bool = True,
                 journal: bool = False):
        self.mirror = build_mirror(model)
        self.model = model
        self.host = host
        self.version, self._release_date = VERSIONS[model]
        self.e_series = self.version[0] > 3
        self.step_time = CONTROL_PERIOD[model]
        self.unlock_delay = float(unlock_delay)
        self.remote_control = remote_control
        self._q0 = self.mirror.q  # the rig's home pose
        self._lock = threading.RLock()
        self._inputs = zero_outputs()  # the input_* names are served back too
        self._input_ticks: dict[str, int] = {}
        self._outputs = {f"output_{k}_register_{i}": v for i in range(48)
                         for k, v in (("int", 0), ("double", 0.0))}
        self._tick = 0
        self._robot_mode = RUNNING
        self._safety = NORMAL
        self._stop_wall_time = 0.0
        self._script: ControlScript | None = None
        self._program_name = ""  # running (non-script) program, e.g. a loaded .urp
        self._loaded = ""
        self._motion: _Motion | None = None
        self._watchdog: tuple[str, float] | None = None
        self._events: deque[tuple[int, str]] = deque(maxlen=1000)
        self._journal: list[tuple[int, tuple[float, ...], float]] | None = \
            [] if journal else None
        self._last_command: tuple[tuple[float, ...], float] | None = None
        self._snapshot: dict[str, Any] = {}
        self._qd_ref_prev = np.zeros(6)
        self._rtde = _CabledRTDEServer(self, host, self.version, on_input=self._on_input)
        self._dashboard = DashboardServer(host, _BehindCable(self))
        self._script_listeners: list[socket.socket] = []
        self._stop = threading.Event()
        self._wired = threading.Event()  # clear while the cable is pulled
        self._wired.set()
        self._slowdown = 1.0
        self._threads: list[threading.Thread] = []
        self._record_snapshot()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> URController:
        """Open every port and start the tick loop.

        Raises:
            OSError: a port cannot be bound (e.g. another controller holds the address).
        """
        try:
            self._rtde.start()
            self._dashboard.start()
            for port in SCRIPT_PORTS:
                listener = listen(self.host, port)
                self._script_listeners.append(listener)
                self._spawn(self._accept_scripts, f"script-{port}", listener)
        except OSError:
            self.close()
            raise
        self._spawn(self._tick_loop, "controller-tick")
        log.info("emulated %s controller (%s %s) on %s: RTDE 30004, dashboard 29999, "
                 "scripts 30001-30003", self.model, "e-series" if self.e_series else "CB3",
                 ".".join(map(str, self.version[:3])), self.host)
        return self

    def close(self) -> None:
        """Stop the tick loop and close every port."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        self._rtde.close()
        self._dashboard.close()
        for listener in self._script_listeners:
            listener.close()
        self.mirror.close()

    def _spawn(self, target, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------------ faults and state
    def protective_stop(self, reason: str = "requested") -> None:
        """Enter a protective stop now: the program stops and the arm brakes."""
        with self._lock:
            self._enter_safety(PROTECTIVE_STOP, reason)

    def press_emergency_stop(self) -> None:
        """Press the emergency stop: the program stops, the arm brakes and powers off."""
        with self._lock:
            self._enter_safety(ROBOT_EMERGENCY_STOP, "emergency stop pressed")

    def release_emergency_stop(self) -> None:
        """Release the emergency stop; the arm stays off until powered on and brakes released."""
        with self._lock:
            if self._safety == ROBOT_EMERGENCY_STOP:
                self._safety = NORMAL
                self._event("emergency stop released")

    def set_remote_control(self, on: bool) -> None:
        """e-series: switch the pendant to remote (True) or local (False) control."""
        with self._lock:
            self.remote_control = bool(on)

    def pull_cable(self) -> None:
        """Pull the network cable: the sockets stay open, nothing gets through.

        Until :meth:`plug_cable`: no RTDE output package is sent (the clients' stream
        stalls, their timestamps stop; ur_rtde's receive interface reports
        ``isConnected() == False`` after its receive timeout, about 2.5 s); what the
        clients send (RTDE inputs and handshakes, programs on the script ports, dashboard
        requests) is held back unread and handled after the replug, as TCP delivers the
        bytes of a link that was down, so an armed RTDE watchdog stops the program as on a
        real controller. New connections are accepted but not answered (a real one would
        not connect). The controller itself keeps ticking.
        """
        with self._lock:
            if self._wired.is_set():
                self._wired.clear()
                self._event("network cable pulled")

    def plug_cable(self) -> None:
        """Plug the network cable back in: the RTDE stream resumes on the open sockets."""
        with self._lock:
            if not self._wired.is_set():
                self._wired.set()
                self._event("network cable plugged in")

    def reset_connections(self) -> int:
        """Reset every RTDE connection (TCP RST, as after a switch or controller hiccup).

        The clients see a connection reset and may reconnect; the running program keeps
        running (its RTDE watchdog, if armed, stops it when the inputs stay away).

        Returns:
            The number of RTDE connections reset.
        """
        count = self._rtde.stats()["client_count"]
        self._rtde.drop_clients(graceful=False)
        with self._lock:
            self._event(f"{count} RTDE connection(s) reset")
        return count

    def kill_script(self, reason: str = "script killed") -> bool:
        """End the running program now, as a runtime error or the pendant's stop does.

        The arm brakes at the stop deceleration; ``runtime_state`` becomes STOPPED, so
        ur_rtde's ``isProgramRunning()`` turns False and its commands fail until the script
        is uploaded again (``reuploadScript``).

        Returns:
            Whether a program was running.
        """
        with self._lock:
            running = self._program_running()
            self._end_program(reason)
            return running

    def slow_down(self, factor: float = 1.0) -> None:
        """Run the tick loop ``factor`` times slower than real time (1: normal speed).

        Each tick still advances controller time (the RTDE ``timestamp``) by one tick, so a
        client sees the controller clock run at 1/``factor`` of wall speed and samples
        arrive ``factor`` times further apart (an overloaded controller).

        Raises:
            ValueError: ``factor`` is not a finite number >= 1.
        """
        factor = float(factor)
        if not (math.isfinite(factor) and factor >= 1.0):
            raise ValueError(f"slow-down factor must be a finite number >= 1, got {factor}")
        with self._lock:
            if factor != self._slowdown:
                self._slowdown = factor
                self._event(f"controller runs {factor:g} times slower than real time")

    def faults(self) -> dict[str, Any]:
        """The faults in force, as plain values (for RPC and HTTP).

        Keys: ``cable_pulled``, ``slowdown`` (factor), ``remote_control``, ``safety_mode``
        and ``robot_mode`` (dashboard names).
        """
        with self._lock:
            return {"cable_pulled": not self._wired.is_set(), "slowdown": self._slowdown,
                    "remote_control": self.remote_control,
                    "safety_mode": SAFETY_NAMES[self._safety],
                    "robot_mode": ROBOT_MODE_NAMES[self._robot_mode]}

    def camera_q(self) -> np.ndarray:
        """Actual joint positions at the last tick, float64 (6,), rad (for the camera)."""
        with self._lock:
            return np.array(self._snapshot["q"])

    def status(self) -> dict[str, Any]:
        """The controller's state at the last tick (plain Python values, for RPC).

        Keys: ``tick``, ``time`` (s), ``q`` (rad), ``qd`` (rad/s), ``robot_mode``,
        ``safety_mode``, ``program_running``, ``script_running``, ``watchdog``
        (``(variable, Hz)`` or None), ``events`` (``(tick, text)``, newest last).
        """
        with self._lock:
            return dict(self._snapshot, events=list(self._events))

    def trace(self) -> dict[str, Any]:
        """Everything needed to replay the arm in another mirror, at one instant.

        Returns:
            ``q0`` (rad, at tick 0), ``commands`` (``(tick, qd rad/s, acceleration
            rad/s^2)`` of every mirror command, applied before that tick's step), ``tick``
            and ``q`` (rad) after that many ticks.

        Raises:
            RuntimeError: the controller keeps no journal.
        """
        if self._journal is None:
            raise RuntimeError("this controller keeps no journal: build it with journal=True")
        with self._lock:
            return {"q0": self._q0.tolist(), "commands": list(self._journal),
                    "tick": self._snapshot["tick"], "q": self._snapshot["q"]}

    # ------------------------------------------------------------------ dashboard actions
    def describe(self) -> dict[str, str]:
        """Robot mode, safety mode and status, program state and versions, in dashboard words."""
        with self._lock:
            safety = SAFETY_NAMES[self._safety]
            return {
                "robot_mode": ROBOT_MODE_NAMES[self._robot_mode],
                "safety_mode": safety,
                "safety_status": safety,
                "program_state": "PLAYING" if self._program_running() else "STOPPED",
                "loaded_program": self._loaded,
                "polyscope_version": f"URSoftware {'.'.join(map(str, self.version))} "
                                     f"({self._release_date})",
                "version": ".".join(map(str, self.version)),
                "robot_model": "UR5",
                "serial_number": SERIAL_NUMBER,
            }

    def power(self, on: bool) -> None:
        """Dashboard ``power on`` (to IDLE, brakes held) / ``power off``."""
        with self._lock:
            if not on:
                self._end_program("power off")
                self._robot_mode = POWER_OFF
            elif self._robot_mode == POWER_OFF and self._safety != ROBOT_EMERGENCY_STOP:
                self._robot_mode = IDLE

    def brake_release(self) -> None:
        """Dashboard ``brake release``: a powered arm goes RUNNING."""
        with self._lock:
            if self._robot_mode == IDLE:
                self._robot_mode = RUNNING

    def unlock_protective_stop(self) -> bool:
        """Dashboard ``unlock protective stop``; False until ``unlock_delay`` s after it."""
        with self._lock:
            if self._safety != PROTECTIVE_STOP:
                return True
            if time.monotonic() - self._stop_wall_time < self.unlock_delay:
                return False
            self._safety = NORMAL
            self._event("protective stop unlocked")
            return True

    def stop_program(self) -> None:
        """Dashboard ``stop``."""
        with self._lock:
            self._end_program("dashboard stop")

    def play(self) -> bool:
        """Dashboard ``play``: run the loaded program (it idles until stopped)."""
        with self._lock:
            if not self._loaded or not self._can_run():
                return False
            self._end_program("play")
            self._program_name = self._loaded
            return True

    def load(self, name: str) -> bool:
        """Dashboard ``load``: any ``*.urp`` name loads (an empty program)."""
        with self._lock:
            if not name.endswith(".urp"):
                return False
            self._loaded = name
            return True

    def restart_safety(self) -> None:
        """Dashboard ``restart safety``: the safety system restarts, the arm is off."""
        with self._lock:
            self._end_program("restart safety")
            if self._safety != ROBOT_EMERGENCY_STOP:
                self._safety = NORMAL
            self._robot_mode = POWER_OFF

    # ------------------------------------------------------------------ ScriptHost
    def read_int(self, register: int) -> int:
        """Input int register ``register`` (the newest RTDE input)."""
        return self._inputs[f"input_int_register_{register}"]

    def read_double(self, register: int) -> float:
        """Input double register ``register`` (the newest RTDE input)."""
        return self._inputs[f"input_double_register_{register}"]

    def write_int(self, register: int, value: int) -> None:
        """Set output int register ``register``."""
        self._outputs[f"output_int_register_{register}"] = int(value)

    def write_double(self, register: int, value: float) -> None:
        """Set output double register ``register``."""
        self._outputs[f"output_double_register_{register}"] = float(value)

    def speedj(self, qd: np.ndarray, acceleration: float) -> None:
        """Track joint velocities ``qd`` (rad/s, clipped to the joint speed limit)."""
        qd = np.clip(qd, -JOINT_SPEED_MAX, JOINT_SPEED_MAX)
        if self._motion is not None and self._motion.kind == "speed":
            self._motion.target, self._motion.acceleration = qd, acceleration
        else:
            self._motion = _Motion("speed", qd, acceleration)

    def movej(self, q: np.ndarray, speed: float, acceleration: float) -> _Motion:
        """Move to ``q`` (rad) on a joint-space profile, leading axis at ``speed`` (rad/s)."""
        self._motion = _Motion("move", np.asarray(q, dtype=np.float64), acceleration,
                               speed=min(speed, JOINT_SPEED_MAX))
        return self._motion

    def stopj(self, deceleration: float) -> _Motion:
        """Decelerate every joint to rest at ``deceleration`` (rad/s^2)."""
        self._motion = _Motion("stop", np.zeros(6), deceleration)
        return self._motion

    def set_watchdog(self, variable: str, min_frequency: float) -> None:
        """Stop the program when input ``variable`` gets no update for 1/min_frequency s."""
        if not min_frequency > 0:
            raise ScriptError(f"rtde_set_watchdog: min_frequency {min_frequency} is not > 0")
        self._watchdog = (variable, float(min_frequency))
        self._input_ticks[variable] = self._tick
        self._event(f"watchdog on {variable} at {min_frequency:g} Hz")

    # ------------------------------------------------------------------ internals
    def _event(self, text: str) -> None:
        self._events.append((self._tick, text))
        log.info("controller %s: %s", self.host, text)

    def _on_input(self, values: dict[str, Any]) -> None:
        with self._lock:
            self._inputs.update(values)
            self._input_ticks.update(dict.fromkeys(values, self._tick))

    def _program_running(self) -> bool:
        return self._script is not None or bool(self._program_name)

    def _can_run(self) -> bool:
        return (self._robot_mode == RUNNING and self._safety == NORMAL
                and (self.remote_control or not self.e_series))

    def _enter_safety(self, mode: int, reason: str) -> None:
        self._end_program(reason, deceleration=STOP_DECELERATION)
        self._safety = mode
        self._stop_wall_time = time.monotonic()
        if mode == ROBOT_EMERGENCY_STOP:
            self._robot_mode = POWER_OFF

    def _end_program(self, reason: str, deceleration: float = STOP_DECELERATION) -> None:
        """Stop the running program (its watchdog goes with it); a moving arm brakes."""
        if self._program_running():
            self._event(f"program stopped: {reason}")
        self._script, self._program_name, self._watchdog = None, "", None
        if self._motion is not None and self._motion.kind != "stop":
            self._motion = _Motion("stop", np.zeros(6), deceleration)

    def run_program(self, name: str, text: str) -> None:
        """A program arrived on a script port: it replaces the running one, if it may run."""
        with self._lock:
            if not self._can_run():
                self._event(f"program {name} refused: robot mode "
                            f"{ROBOT_MODE_NAMES[self._robot_mode]}, safety "
                            f"{SAFETY_NAMES[self._safety]}, remote control {self.remote_control}")
                return
            self._end_program(f"replaced by {name}")
            if is_control_script(text):
                self._script = ControlScript(text, self)
                self._event(f"ur_rtde control script started (register offset "
                            f"{self._script.int_offset})")
            else:
                self._event(f"program {name} ran without effect: this emulator only "
                            "interprets ur_rtde's control script")

    def _accept_scripts(self, listener: socket.socket) -> None:
        for sock, _addr in accept_loop(listener, self._stop, "script port"):
            self._spawn(self._read_scripts, "script-client", sock)

    def _read_scripts(self, sock: socket.socket) -> None:
        buf = ""
        with sock:
            while not self._stop.is_set():
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                if not _wait_for_cable(self):  # held back while the cable is out
                    return
                buf += chunk.decode("utf-8", "replace")
                while (match := _PROGRAM.search(buf)) is not None:
                    self.run_program(match.group(2), match.group(0))
                    buf = buf[match.end():]

    # ------------------------------------------------------------------ the tick
    def _tick_loop(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            period = self.step_time * self._slowdown
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            elif delay < -2 * period:  # starved (loaded machine): skip wall time, no bursts
                next_t = time.monotonic()
            try:
                values = self._step()
            except Exception:  # keep the controller alive whatever happened
                log.exception("controller %s: tick failed", self.host)
                continue
            if self._wired.is_set():
                self._rtde.publish(values)

    def _step(self) -> dict[str, Any]:
        """One controller tick; returns the RTDE output values of its end."""
        with self._lock:
            self._check_watchdog()
            self._run_script()
            self._command_mirror()
            self.mirror.advance(self.step_time)
            self._tick += 1
            self._check_limits()
            self._record_snapshot()
            return self._output_values()

    def _check_watchdog(self) -> None:
        if self._watchdog is None:
            return
        variable, hz = self._watchdog
        silent = (self._tick - self._input_ticks.get(variable, 0)) * self.step_time
        if silent > 1.0 / hz:
            self._end_program(f"RTDE watchdog: no {variable} update for {silent:.3f} s")

    def _run_script(self) -> None:
        script = self._script
        if script is None:  # no program, or a loaded one that does nothing
            return
        try:
            script.step()
        except ScriptError as err:
            self._end_program(f"runtime error: {err}")
            return
        if not script.running:
            self._end_program("stopScript")

    def _command_mirror(self) -> None:
        motion = self._motion
        if motion is None:
            return
        if motion.kind == "move":
            self._command(self._move_velocity(motion), 2 * motion.acceleration)
            return
        self._command(motion.target, motion.acceleration)
        if motion.kind == "stop" and not np.any(self.mirror.qd_reference):
            motion.done = True  # at rest, and the last command is zero
            self._motion = None

    def _move_velocity(self, motion: _Motion) -> np.ndarray:
        """This tick's velocity on a trapezoid to the moveJ goal (leading axis), rad/s."""
        distance = motion.target - self.mirror.q_reference
        lead = float(np.max(np.abs(distance)))
        if lead < 1e-7:
            motion.done = True
            self._motion = None
            return np.zeros(6)
        now = float(np.max(np.abs(self.mirror.qd_reference)))
        speed = min(motion.speed, now + motion.acceleration * self.step_time,
                    math.sqrt(2 * motion.acceleration * lead), lead / self.step_time)
        return distance / lead * speed

    def _command(self, qd: np.ndarray, acceleration: float) -> None:
        command = (tuple(float(v) for v in qd), max(float(acceleration), 1e-6))
        if command != self._last_command:
            self.mirror.command(qd, command[1])
            self._last_command = command
            if self._journal is not None:
                self._journal.append((self._tick, *command))

    def _check_limits(self) -> None:
        if self._safety != NORMAL:
            return
        q = self.mirror.q
        if np.any(np.abs(q) > JOINT_LIMIT):
            self._enter_safety(PROTECTIVE_STOP, f"joint position limit: q={np.round(q, 3)}")
            return
        contacts = self.mirror.contacts()
        if contacts:
            self._enter_safety(PROTECTIVE_STOP, f"collision: {contacts[0][0]}-{contacts[0][1]}")

    def _record_snapshot(self) -> None:
        self._snapshot = {
            "tick": self._tick,
            "time": self._tick * self.step_time,
            "q": self.mirror.q.tolist(),
            "qd": self.mirror.qd.tolist(),
            "robot_mode": self._robot_mode,
            "safety_mode": self._safety,
            "program_running": self._program_running(),
            "script_running": self._script is not None,
            "watchdog": self._watchdog,
        }

    def _output_values(self) -> dict[str, Any]:
        m = self.mirror
        qd_ref = m.qd_reference
        running = self._program_running()
        values = dict(self._inputs)
        values.update(self._outputs)
        values.update(
            timestamp=self._tick * self.step_time,
            actual_q=tuple(m.q), actual_qd=tuple(m.qd),
            target_q=tuple(m.q_reference), target_qd=tuple(qd_ref),
            target_qdd=tuple((qd_ref - self._qd_ref_prev) / self.step_time),
            actual_TCP_pose=_pose_vector(m.flange_pose()),
            robot_mode=self._robot_mode,
            joint_mode=(JOINT_MODE[self._robot_mode],) * 6,
            safety_mode=self._safety, safety_status=self._safety,
            safety_status_bits=SAFETY_BITS[self._safety],
            robot_status_bits=(self._robot_mode != POWER_OFF) | running << 1,
            runtime_state=PLAYING if running else STOPPED,
            speed_scaling=1.0, target_speed_fraction=1.0,
            actual_main_voltage=48.0, actual_robot_voltage=48.0,
            joint_temperatures=(30.0,) * 6,
        )
        self._qd_ref_prev = qd_ref
        return values


class _CabledRTDEServer(RTDEServer):
    """The RTDE server behind the controller's network cable.

    While the cable is pulled (:meth:`URController.pull_cable`) the data packages of a
    started stream wait unread until the replug, as TCP holds back the bytes of a link that
    is down and delivers them late; output packages are not sent at all (the tick loop
    skips :meth:`publish`). A connection that is still in its handshake (a client
    reconnecting meanwhile) is reset: a real one would not get through at all, and
    ur_rtde handles a failed connect, not a handshake that never ends.
    """

    def __init__(self, controller: URController, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._controller = controller

    def _handle(self, client: Any, ptype: int, payload: bytes) -> None:
        controller = self._controller
        if not controller._wired.is_set() and not client.started:
            client.abort(reset=True)  # its serving thread closes it (RST)
            return
        if _wait_for_cable(controller):  # False: the controller closes
            super()._handle(client, ptype, payload)


def _wait_for_cable(controller: URController) -> bool:
    """Wait until the cable is in; False if the controller closes first."""
    while not controller._wired.wait(0.1):
        if controller._stop.is_set():
            return False
    return True


class _BehindCable:
    """The controller as the dashboard server sees it: unreachable while the cable is out.

    Every attribute the dashboard reads waits for :meth:`URController.plug_cable`, so a
    request sent meanwhile gets no answer (the client's read times out), as on a real
    controller with the cable pulled.
    """

    def __init__(self, controller: URController):
        self._controller = controller

    def __getattr__(self, name: str) -> Any:
        if not _wait_for_cable(self._controller):
            raise OSError("controller closed")
        return getattr(self._controller, name)


def _pose_vector(pose: np.ndarray) -> tuple[float, ...]:
    """A 4x4 pose as UR's ``[x, y, z, rx, ry, rz]`` (m, rotation vector in rad)."""
    rvec, _ = cv2.Rodrigues(pose[:3, :3])
    return (*pose[:3, 3].tolist(), *rvec.ravel().tolist())


# ---------------------------------------------------------------------- its own process
#: Methods :class:`ControllerProcess` forwards to the controller.
RPC_METHODS = frozenset({"status", "trace", "protective_stop", "unlock_protective_stop",
                         "press_emergency_stop", "release_emergency_stop",
                         "set_remote_control", "describe",
                         "pull_cable", "plug_cable", "reset_connections", "kill_script",
                         "slow_down", "faults"})
_START_TIMEOUT_S = 60.0


class ControllerProcess:
    """A :class:`URController` in a child process (a fresh interpreter), driven over a pipe.

    ur_rtde's clients hold the GIL while they wait for the controller, so a test that uses
    them runs the controller here. The child ends with :meth:`close` or when this process
    exits. Every method of :data:`RPC_METHODS` is available as a method of this object.

    Args:
        host: IPv4 address for every port.
        model: ``ur5`` or ``ur5e``.
        unlock_delay: Least time between a protective stop and its unlock, s.
        remote_control: e-series: start in remote control.
        http_port: Also serve the camera stream, the screen and the fault endpoint
            (:mod:`sim.emulator_io`) on this TCP port of ``host`` (0: any free port, see
            :attr:`http_port` after :meth:`start`); None (default): no HTTP server and no
            renderer.
        config: A rig config file (YAML) whose camera, monitor and sim sections the
            emulated camera renders with; None: the defaults.

    Attributes:
        http_port: The bound HTTP port after :meth:`start` (None without HTTP).
    """

    def __init__(self, host: str, model: str = "ur5", unlock_delay: float = UNLOCK_DELAY,
                 remote_control: bool = True, http_port: int | None = None,
                 config: str | os.PathLike | None = None):
        self.host, self.model = host, model
        self._args = ["--host", host, "--model", model, "--unlock-delay", str(unlock_delay)]
        if not remote_control:
            self._args.append("--local-control")
        if http_port is None:
            self._args.append("--no-http")
        else:
            self._args += ["--http-port", str(int(http_port))]
        if config is not None:
            self._args += ["--config", os.fspath(config)]
        self.http_port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._call_lock = threading.Lock()

    def start(self) -> ControllerProcess:
        """Start the child and wait until every port listens.

        Raises:
            OSError: a port cannot be bound (e.g. ``EADDRINUSE``).
            RuntimeError: the child did not come up.
        """
        ours, theirs = socket.socketpair()
        with ours, theirs:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sim.ur_controller", *self._args,
                 "--rpc-fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            self._conn = Connection(os.dup(ours.fileno()))
        try:
            if not self._conn.poll(_START_TIMEOUT_S):
                raise RuntimeError(f"emulated controller silent for {_START_TIMEOUT_S} s")
            ok, info = self._conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("the emulated controller died while starting: see its log") \
                from None
        if not ok:
            self.close()
            raise info
        self.http_port = (info or {}).get("http_port")
        return self

    def url(self, path: str = "/") -> str:
        """``http://host:port`` + ``path`` of the emulator's HTTP server.

        Raises:
            RuntimeError: the controller was started without HTTP.
        """
        if self.http_port is None:
            raise RuntimeError("this controller serves no HTTP: pass http_port")
        return f"http://{self.host}:{self.http_port}{path}"

    def close(self) -> None:
        """End the child: its ports close."""
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        if conn is not None:
            with self._call_lock:
                try:
                    conn.send(("close", (), {}))
                    conn.poll(5.0)
                except OSError:
                    pass
                conn.close()
        if process is not None:
            try:
                process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> ControllerProcess:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str):
        if name not in RPC_METHODS:
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise RuntimeError("the emulated controller is not running: call start() first")
        with self._call_lock:
            self._conn.send((method, args, kwargs))
            ok, result = self._conn.recv()
        if not ok:
            raise result
        return result


def _serve_rpc(controller: URController, conn: Connection) -> None:
    """Answer a :class:`ControllerProcess` until it says "close" or is gone."""
    while True:
        try:
            method, args, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        if method == "close":
            conn.send((True, None))
            return
        try:
            conn.send((True, getattr(controller, method)(*args, **kwargs)))
        except Exception as e:
            conn.send((False, e))


def serve(model: str, host: str, unlock_delay: float = UNLOCK_DELAY,
          remote_control: bool = True, rpc: Connection | None = None,
          http_port: int | None = DEFAULT_HTTP_PORT, rig: Config | None = None) -> None:
    """Run an emulated controller until Ctrl-C (or, with ``rpc``, until its parent says so).

    With ``rpc`` (a :class:`ControllerProcess` child) it keeps a journal for ``trace()``.

    Args:
        model: ``ur5`` or ``ur5e``.
        host: IPv4 address of every port.
        unlock_delay: Least time between a protective stop and its unlock, s.
        remote_control: e-series: start in remote control.
        rpc: The pipe of a :class:`ControllerProcess` parent, or None.
        http_port: TCP port of the camera stream, screen and fault endpoints
            (:mod:`sim.emulator_io`; 8080 by default, 0 any free port); None: none.
        rig: The config whose camera, monitor and sim sections the camera renders with
            (None: the defaults, as ``configs/ur5_visual_reacher.yaml``).

    Raises:
        OSError: a port cannot be bound.
    """
    controller = URController(model, host, unlock_delay=unlock_delay,
                              remote_control=remote_control, journal=rpc is not None)
    io = None
    try:
        try:
            if http_port is not None:  # up before the controller's ports answer
                from sim.emulator_io import EmulatorIO

                io = EmulatorIO(controller, rig, port=http_port).start()
            controller.start()
        except OSError as e:
            if rpc is None:
                raise
            rpc.send((False, e))
            return
        if rpc is None:
            threading.Event().wait()
        else:
            rpc.send((True, {"http_port": None if io is None else io.port}))
            _serve_rpc(controller, rpc)
    except KeyboardInterrupt:
        pass
    finally:
        if io is not None:
            io.close()
        controller.close()


def main(argv: list[str] | None = None) -> None:
    """``python -m sim.ur_controller``: the entry :class:`ControllerProcess` starts."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model", choices=sorted(VERSIONS), default="ur5")
    p.add_argument("--unlock-delay", type=float, default=UNLOCK_DELAY)
    p.add_argument("--local-control", action="store_true")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help="camera stream, screen and faults over HTTP (0: any free port)")
    p.add_argument("--no-http", action="store_true", help="no HTTP server, no renderer")
    p.add_argument("--config", default=None,
                   help="rig config (YAML) whose camera, monitor and sim the camera renders")
    p.add_argument("--rpc-fd", type=int, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rpc = Connection(args.rpc_fd) if args.rpc_fd is not None else None
    rig = None
    if args.config is not None:
        from robot.config import load_config

        rig = load_config(args.config)
    serve(args.model, args.host, args.unlock_delay, not args.local_control, rpc,
          http_port=None if args.no_http else args.http_port, rig=rig)


if __name__ == "__main__":
    main()
