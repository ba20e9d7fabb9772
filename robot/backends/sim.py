"""The MuJoCo mirror behind the device interface: :class:`SimRig` and its three devices.

:class:`SimArm`, :class:`SimCamera` and :class:`SimDisplay` share one
:class:`sim.mirror.Mirror` (built when the first of them connects, closed when the last
disconnects); a lock serialises every use of it, so the devices may be called from
different threads (control thread, camera thread, agent step).

Time: the sim clock runs only when the arm is commanded. Each :meth:`SimArm.speedj` call
commands the mirror and advances it by exactly one controller tick, so a control thread
that ticks at real time gives a real-time sim, and a test that calls ``speedj`` flat out
gives a fast sim. Timestamps (:attr:`ArmState.t_ns`, :attr:`Frame.t_ns`) are the sim
clock in ns (``Mirror.time``: whole ticks since the mirror was built), not the wall
clock: compare them with each other only. :meth:`SimArm.speed_stop` and
:meth:`SimArm.move_home` run the ticks they need before they return (their sim
duration); with ``realtime=True`` they also take that long in wall-clock time.

Rendering happens in a child process (:class:`sim.render_process.RenderProcess`): MuJoCo's
OpenGL calls hold the GIL for the whole render (several ms on a CPU, tens of ms under
load), which in this process would stall the control thread's ticks. The physics mirror
here is built without a renderer. The camera takes
:meth:`sim.mirror.Mirror.camera_snapshot` (the joint positions of ``time -
sim.camera_latency``, never older than the last reset) under the lock and has the child
render it while this process waits on a pipe (GIL released), so a render never holds the
lock that ``speedj`` needs.

Protective stop: a contact after a tick (the arm touching the table, the monitor or
itself; ``Mirror.contacts``) halts the arm at once (at rest where it is), sets
``protective_stopped``, and makes ``speedj`` raise :class:`ProtectiveStopError` until
:meth:`SimArm.move_home`.

speedJ acceleration: passed to :meth:`sim.mirror.Mirror.command`, which ramps at it and
caps it at ``arm.acceleration`` (the modelled arm's bound).

Domain randomization (``sim.randomize.enabled``, :mod:`sim.randomize`): every
:meth:`SimArm.move_home` (the episode reset) first draws a new rig from a generator seeded
with the config's seed, rebuilds the physics mirror (carrying on its clock) and the render
child's mirror from it, and from then on shows every screen through the episode's
monitor colour map and every frame through its camera effects. The same seed gives the
same sequence of rigs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from robot.backends.base import (  # noqa: E402
    N_JOINTS,
    Arm,
    ArmState,
    Camera,
    DeviceError,
    Frame,
    ProtectiveStopError,
    Rig,
    TargetDisplay,
)
from robot.config import Config  # noqa: E402
from sim.mirror import Mirror  # noqa: E402
from sim.randomize import ImageEffects, sample  # noqa: E402
from sim.render_process import RenderProcess  # noqa: E402

logger = logging.getLogger(__name__)

#: Longest wait for the render process to build its mirror, s.
_RENDER_START_TIMEOUT = 60.0
#: Longest wait for one render or screen update, s: past it the render process is hung.
#: A render slower than the camera timeout but within this is the host being busy: a late
#: step (the control loop's command deadline stops the arm meanwhile), not a failed camera.
_RENDER_STALL_TIMEOUT = 10.0


class _SimCore:
    """The mirror shared by the three sim devices, its lock and its render process.

    Reference counted: :meth:`acquire` builds it on first use, :meth:`release` closes it
    when the last device lets go. All arm methods hold :attr:`lock`; rendering runs in
    :attr:`_renderer`'s child process.
    """

    def __init__(self, cfg: Config, realtime: bool):
        self.cfg = cfg
        self.realtime = realtime
        self.period = float(cfg.arm.control_period)
        self.period_ns = round(self.period * 1e9)
        self.acceleration = float(cfg.arm.acceleration)  # the modelled arm's bound
        self.accel_scale = 1.0  # a randomized arm ramps this much faster than asked
        self.lock = threading.Lock()
        self._lifecycle = threading.Lock()
        self._users = 0
        self._renderer: RenderProcess | None = None
        self.mirror: Mirror | None = None
        self.command_lag = math.ceil(cfg.sim.command_latency / self.period - 1e-9)
        # Arm state kept beside the mirror (all guarded by ``lock``).
        self.tick = 0
        self.qd_target = np.zeros(N_JOINTS)  # the target last handed to the mirror
        self.protective_stopped = False
        self.contacts: list[tuple[str, str]] = []
        self.watchdog_hz: float | None = None
        self.seq = 0  # frames rendered
        self.screens: deque[tuple[float, np.ndarray]] = deque()  # (sim time, image) to show
        # Domain randomization: this episode's effects, the draws' and the noise's RNGs.
        self.effects: ImageEffects | None = None
        self._rig_rng = np.random.default_rng([cfg.seed, 1])
        self._noise_rng = np.random.default_rng([cfg.seed, 2])

    # ---------------------------------------------------------------- lifecycle
    def acquire(self) -> None:
        with self._lifecycle:
            if self._users == 0:
                self._start()
            self._users += 1

    def release(self) -> None:
        with self._lifecycle:
            if self._users == 0:
                return
            self._users -= 1
            if self._users == 0:
                self._stop()

    def _start(self) -> None:
        cfg = self.cfg
        try:
            mirror = Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim, render=False)
            self._renderer = RenderProcess(cfg, _RENDER_START_TIMEOUT)
        except Exception as err:
            raise DeviceError(f"cannot start the sim mirror: {err}") from err
        if self.realtime and cfg.robot.realtime_priority is not None:
            # The mirror's camera: just below the agent step, above anything else.
            notice = self._renderer.set_priority(max(1, cfg.robot.realtime_priority - 1))
            if notice:
                logger.warning("%s", notice)
        with self.lock:
            self.mirror = mirror
            self.tick = round(mirror.time / self.period)
            self.qd_target[:] = 0.0
            self.protective_stopped = False
            self.seq = 0
            self.screens.clear()

    def _stop(self) -> None:
        renderer, self._renderer = self._renderer, None
        with self.lock:
            mirror, self.mirror = self.mirror, None
        if mirror is not None:
            mirror.close()
        if renderer is not None:
            try:
                renderer.close()
            except Exception as err:  # closing must not raise past the devices' disconnect
                logger.error("closing the sim render process failed: %s", err)

    def new_episode(self) -> None:
        """Draw the next randomized rig and rebuild both mirrors from it (see module doc).

        Call between control loops only (the reset); takes the lock for the swap.
        """
        rig = sample(self.cfg, self._rig_rng)
        c = rig.cfg
        self._render_process().rebuild(c)
        with self.lock:
            now = self._mirror().time
        # Built outside the lock (MJCF compile, ~0.1 s); the clock cannot move meanwhile:
        # only speedj advances it, and no control loop runs during a reset.
        mirror = Mirror(c.arm, c.camera, c.monitor, c.sim, render=False, start_time=now)
        with self.lock:
            old, self.mirror = self._mirror(), mirror
            old.close()
            self.command_lag = math.ceil(c.sim.command_latency / self.period - 1e-9)
            self.acceleration = float(c.arm.acceleration)
            self.accel_scale = self.acceleration / self.cfg.arm.acceleration
            self.effects = rig.effects
        logger.debug("sim rig randomized: camera fx %.1f, latencies %.3f/%.3f s",
                     c.camera.fx, c.sim.command_latency, c.sim.camera_latency)

    def _render_process(self) -> RenderProcess:
        renderer = self._renderer
        if renderer is None:
            raise DeviceError("the sim mirror is closed")
        return renderer

    # ---------------------------------------------------------------- arm (hold lock)
    def _mirror(self) -> Mirror:
        if self.mirror is None:
            raise DeviceError("the sim mirror is closed")
        return self.mirror

    def step_tick(self, target: np.ndarray, acceleration: float) -> None:
        """Command ``target`` (rad/s) at ``acceleration`` and advance one tick; hold lock."""
        mirror = self._mirror()
        self.qd_target[:] = target
        mirror.command(target, acceleration * self.accel_scale)
        mirror.advance(self.period)
        self.tick += 1
        contacts = mirror.contacts()
        if contacts:
            self._protective_stop(contacts)

    def _protective_stop(self, contacts: list[tuple[str, str]]) -> None:
        mirror = self._mirror()
        self.protective_stopped = True
        self.contacts = contacts
        mirror.reset(mirror.q)  # halt where it is, at rest; pending commands dropped
        self.qd_target[:] = 0.0
        logger.warning("sim arm protective stop at t=%.3f s: contacts %s", mirror.time,
                       contacts)

    def at_rest(self) -> bool:
        mirror = self._mirror()
        return not np.any(self.qd_target) and not np.any(mirror.qd_reference)

    def teleport(self, q: np.ndarray) -> None:
        mirror = self._mirror()
        mirror.reset(q)
        self.qd_target[:] = 0.0
        self.protective_stopped = False
        self.contacts = []

    def state(self) -> ArmState:
        mirror = self._mirror()
        return ArmState(q=mirror.q, qd=mirror.qd, t_ns=self.tick * self.period_ns,
                        protective_stopped=self.protective_stopped, emergency_stopped=False)

    # ------------------------------------------------------------- camera, display
    def render_frame(self, timeout: float) -> Frame:
        """Render the wrist camera as of ``time - camera_latency`` (in the child).

        The screen it shows is the newest one set at or before that time too: the camera
        delay covers everything the camera sees (a display flash shows up ``camera_latency``
        after it happened, as on the real rig). A render that takes longer than ``timeout``
        (s) logs a warning; one that takes longer than 10 s raises ``TimeoutError``.
        """
        started = time.monotonic()
        wait = max(timeout, _RENDER_STALL_TIMEOUT)
        renderer = self._render_process()
        with self.lock:
            q, t = self._mirror().camera_snapshot()
            seq = self.seq
            self.seq += 1
            screen = None
            while self.screens and self.screens[0][0] <= t + 1e-9:
                screen = self.screens.popleft()[1]
        effects = self.effects
        if screen is not None:
            renderer.set_screen(screen if effects is None else effects.screen(screen), wait)
        image = renderer.render(q, wait)
        took = time.monotonic() - started
        if took > timeout:
            logger.warning("sim camera: a render took %.2f s (camera timeout %g s): the host "
                           "is busy; counted as a late step, not a camera failure", took, timeout)
        if effects is not None:
            image = effects.camera(image, self._noise_rng)
        return Frame(image=image, t_ns=round(t * 1e9), seq=seq)

    def set_screen(self, image: np.ndarray) -> None:
        """Show ``image`` on the virtual monitor; the camera sees it ``camera_latency`` later."""
        tw, th = self.cfg.sim.texture_px
        if image.shape[:2] != (th, tw):
            image = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        with self.lock:
            self.screens.append((self._mirror().time, np.ascontiguousarray(image)))


class SimArm(Arm):
    """The mirror's UR arm behind :class:`robot.backends.base.Arm` (see module docstring).

    Build it through :class:`SimRig`.
    """

    name = "sim arm"

    def __init__(self, core: _SimCore):
        super().__init__()
        self._core = core

    @property
    def control_period(self) -> float:
        """Controller tick, s (``arm.control_period``: 0.008 CB3, 0.002 e-series)."""
        return self._core.period

    @property
    def contacts(self) -> list[tuple[str, str]]:
        """Geom pairs that caused the current protective stop (empty when there is none)."""
        with self._core.lock:
            return list(self._core.contacts)

    def _connect(self) -> None:
        self._core.acquire()

    def _disconnect(self) -> None:
        self._core.release()

    def _read_state(self) -> ArmState:
        with self._core.lock:
            return self._core.state()

    def _speedj(self, qd: np.ndarray, acceleration: float) -> None:
        core = self._core
        with core.lock:
            if core.protective_stopped:
                raise ProtectiveStopError(
                    f"{self.name} is protective-stopped (contacts {core.contacts}); "
                    "call move_home() to clear it")
            core.step_tick(qd, acceleration)

    def _speed_stop(self, deceleration: float) -> None:
        core = self._core
        zero = np.zeros(N_JOINTS)
        with core.lock:
            if core.protective_stopped:
                return
            speed = max(float(np.max(np.abs(core.qd_target))),
                        float(np.max(np.abs(core._mirror().qd_reference))))
            step = min(deceleration * core.accel_scale, core.acceleration) * core.period
            ran = 0
            for _ in range(math.ceil(speed / step) + core.command_lag + 2):
                if core.protective_stopped or (ran >= core.command_lag and core.at_rest()):
                    break
                core.step_tick(zero, deceleration)
                ran += 1
        if core.realtime:
            time.sleep(ran * core.period)

    def _move_home(self, q: np.ndarray, duration: float) -> None:
        """Teleport to ``q`` at rest, then let ``duration`` of sim time pass there.

        With ``sim.randomize.enabled`` the next episode's rig is drawn first.
        """
        core = self._core
        zero = np.zeros(N_JOINTS)
        if core.cfg.sim.randomize.enabled:
            core.new_episode()
        with core.lock:
            core.teleport(q)
            for _ in range(round(duration / core.period)):
                core.step_tick(zero, core.acceleration)
                if core.protective_stopped:
                    raise ProtectiveStopError(
                        f"{self.name}: the home pose {np.round(q, 4).tolist()} is in "
                        f"contact {core.contacts}")
        if core.realtime:
            time.sleep(duration)

    def _set_watchdog(self, min_frequency: float) -> None:
        # The sim clock stops with the command stream, so the arm cannot run on after the
        # client dies: the watchdog is recorded and has nothing to guard.
        with self._core.lock:
            self._core.watchdog_hz = min_frequency



class SimCamera(Camera):
    """The mirror's wrist camera behind :class:`robot.backends.base.Camera`.

    Every :meth:`read` renders a new frame (a new ``seq``) of the pose at
    ``time - sim.camera_latency``, at the observation size, stamped with the sim time of
    that pose.
    """

    name = "sim camera"

    def __init__(self, core: _SimCore):
        super().__init__()
        self._core = core

    @property
    def obs_size(self) -> tuple[int, int]:
        """Size (H, W) of the frames, px (``camera.obs_size``, 90x160 by default)."""
        return tuple(self._core.cfg.camera.obs_size)

    def _connect(self) -> None:
        self._core.acquire()

    def _disconnect(self) -> None:
        self._core.release()

    def _read(self, timeout: float) -> Frame:
        return self._core.render_frame(timeout)


class SimDisplay(TargetDisplay):
    """The mirror's virtual monitor behind :class:`robot.backends.base.TargetDisplay`."""

    name = "sim display"

    def __init__(self, core: _SimCore):
        super().__init__()
        self._core = core

    @property
    def size_px(self) -> tuple[int, int]:
        """Screen texture size (width, height), px (``sim.texture_px``)."""
        w, h = self._core.cfg.sim.texture_px
        return int(w), int(h)

    def _connect(self) -> None:
        self._core.acquire()

    def _disconnect(self) -> None:
        self._core.release()

    def _show(self, image: np.ndarray) -> None:
        self._core.set_screen(image)


class SimRig(Rig):
    """The simulated rig: arm, wrist camera and monitor of one MuJoCo mirror.

    Args:
        cfg: Validated config; uses ``arm``, ``camera``, ``monitor`` and ``sim``.
        realtime: If True, :meth:`SimArm.move_home` and :meth:`SimArm.speed_stop` also
            take their duration in wall-clock time. ``None``: ``cfg.sim.pace == "realtime"``.

    Example:
        >>> with SimRig(Config()) as rig:  # doctest: +SKIP
        ...     rig.arm.speedj(np.zeros(6), 1.4)
        ...     frame = rig.camera.read()
    """

    lockstep = True

    def __init__(self, cfg: Config, realtime: bool | None = None):
        if realtime is None:
            realtime = cfg.sim.pace == "realtime"
        self._core = _SimCore(cfg, bool(realtime))
        super().__init__(SimArm(self._core), SimCamera(self._core), SimDisplay(self._core),
                         stop_deceleration=cfg.arm.acceleration)
