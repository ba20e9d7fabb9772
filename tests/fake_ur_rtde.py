"""A test double of ur_rtde's Python API, driven by the sim mirror's arm kinematics.

The UR controller behind ``rtde_control`` cannot run on these machines (it needs a robot
or URSim), so tests swap the three ur_rtde classes the real-arm backend uses for these:
:class:`RTDEControlInterface`, :class:`RTDEReceiveInterface` and :class:`DashboardClient`,
with the same names, signatures and return types as ur_rtde 1.6 (see
``help(rtde_control.RTDEControlInterface)``). Behind them a :class:`FakeController` runs
a physics-only :class:`sim.mirror.Mirror` at the controller's rate (125 Hz CB3, 500 Hz
e-series) in real time, on its own thread, like the real controller does.

It also does what the real thing does when things go wrong (as ur_rtde's documentation
and issue tracker describe them):

- constructing an interface against an address where no controller listens raises
  ``RuntimeError`` at once;
- after the link drops (:meth:`FakeController.drop_link`) the receive getters keep
  returning the last cached values without raising and ``getTimestamp`` stops advancing.
  A pulled cable sends no FIN or RST, so, as ur_rtde 1.6 does (measured against
  tests/rtde_server.py), ``isConnected`` stays True until its 2.5 s read deadline
  (:data:`READ_DEADLINE`) and control calls "succeed" without effect until then; after a
  reset (controller reboot, ``cable=False``) both fail at once (``isConnected`` False,
  control calls raise ``RuntimeError``);
- the arm keeps tracking the last speedj target when the client goes silent, until the
  RTDE watchdog (if armed) fires and the control script halts it;
- a protective stop (a contact in the mirror, or :meth:`FakeController.protective_stop`)
  halts the arm and stops the control script; motion commands return False; the
  dashboard unlocks it only 5 s (``unlock_delay``) after it happened, and the script must
  be re-uploaded;
- an e-series controller refuses the upload-script mode unless in remote control.

Use :func:`running_controller` to start one on a made-up host name.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import numpy as np

from robot.config import Config
from sim.mirror import Mirror

#: Controllers "listening" per host name (what a network would route to).
CONTROLLERS: dict[str, FakeController] = {}
_REGISTRY_LOCK = threading.Lock()

#: ur_rtde's receive thread closes a silent connection after this long, s.
READ_DEADLINE = 2.5

#: Safety status bits (RTDE ``safety_status_bits``; ur_rtde's SafetyStatus).
NORMAL_MODE_BIT = 0
PROTECTIVE_STOPPED_BIT = 2
EMERGENCY_STOPPED_BIT = 7


def _lookup(hostname: str, port: int) -> FakeController:
    with _REGISTRY_LOCK:
        controller = CONTROLLERS.get(hostname)
    if controller is None or not controller.link_up:
        raise RuntimeError(f"connect: Connection refused [system:111] ({hostname}:{port})")
    return controller


class FakeController:
    """A simulated UR controller: arm, control script, watchdog, safety, RTDE link.

    Args:
        cfg: Config of the rig (``arm``, ``camera``, ``monitor``, ``sim`` build the mirror).
        host: The name clients connect to.
        version: Controller software version (major <= 3: CB3 at 125 Hz, else 500 Hz).
        remote_control: e-series only: whether the pendant is in remote control mode.
        unlock_delay: How long after a protective stop the dashboard may unlock it, s.
    """

    def __init__(self, cfg: Config, host: str, version: tuple[int, int, int] = (3, 15, 7),
                 remote_control: bool = True, unlock_delay: float = 5.0):
        self.host = host
        self.version = version
        self.step_time = 0.008 if version[0] <= 3 else 0.002
        self.remote_control = remote_control
        self.unlock_delay = unlock_delay
        arm = cfg.arm.model_copy(update={"control_period": self.step_time})
        self.mirror = Mirror(arm, cfg.camera, cfg.monitor, cfg.sim, render=False)
        self.lock = threading.RLock()
        self.link_up = True
        self.link_epoch = 0  # bumped on every drop: clients of an older epoch are cut off
        self._silent_since: float | None = None  # a pulled cable: when it went silent
        self.timestamp = 0.0  # controller time, s
        self.program_running = False
        self.protective_stopped = False
        self.protective_stop_time = 0.0
        self.reason = ""
        self.emergency_stopped = False
        self.watchdog_hz: float | None = None
        self.watchdog_fired = False
        self._last_kick = 0.0
        self._target = np.zeros(6)
        self._acceleration = float(cfg.arm.acceleration)
        self._move_goal: np.ndarray | None = None
        self._move_speed = 0.0
        self.speedj_calls = 0
        self.stop_script_calls = 0
        self.speed_stop_calls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fake UR {host}", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> FakeController:
        with _REGISTRY_LOCK:
            CONTROLLERS[self.host] = self
        self._thread.start()
        return self

    def close(self) -> None:
        with _REGISTRY_LOCK:
            if CONTROLLERS.get(self.host) is self:
                del CONTROLLERS[self.host]
        self._stop.set()
        self._thread.join(2.0)
        self.mirror.close()

    # ------------------------------------------------------------------ state
    @property
    def q(self) -> np.ndarray:
        with self.lock:
            return self.mirror.q

    @property
    def qd(self) -> np.ndarray:
        with self.lock:
            return self.mirror.qd

    @property
    def target(self) -> np.ndarray:
        """The speedj target the script tracks now, rad/s."""
        with self.lock:
            return self._target.copy()

    def safety_status_bits(self) -> int:
        with self.lock:
            bits = 1 << NORMAL_MODE_BIT
            if self.protective_stopped:
                bits |= 1 << PROTECTIVE_STOPPED_BIT
            if self.emergency_stopped:
                bits |= 1 << EMERGENCY_STOPPED_BIT
            return bits

    # ------------------------------------------------------------------ faults
    def drop_link(self, cable: bool = True) -> None:
        """Cut every connection; the controller itself runs on.

        Args:
            cable: True: a pulled cable (silence: clients notice only after
                :data:`READ_DEADLINE`); False: connections reset (noticed at once).
        """
        with self.lock:
            self.link_up = False
            self.link_epoch += 1
            self._silent_since = time.monotonic() if cable else None

    def noticed(self, epoch: int) -> bool:
        """Whether a client of ``epoch`` has noticed that its connection is gone."""
        if self.link_up and epoch == self.link_epoch:
            return False
        if epoch != self.link_epoch - 1 or self._silent_since is None:
            return True
        return time.monotonic() - self._silent_since > READ_DEADLINE

    def restore_link(self) -> None:
        """Plug the cable back in; clients must reconnect."""
        with self.lock:
            self.link_up = True

    def protective_stop(self, reason: str = "test") -> None:
        """Halt the arm where it is and stop the control script (a protective stop)."""
        with self.lock:
            self._halt()
            self.protective_stopped = True
            self.protective_stop_time = time.monotonic()
            self.reason = reason

    def press_emergency_stop(self, pressed: bool = True) -> None:
        with self.lock:
            if pressed:
                self._halt()
            self.emergency_stopped = pressed

    def _halt(self) -> None:
        self.mirror.reset(self.mirror.q)
        self._target[:] = 0.0
        self._move_goal = None
        self.program_running = False

    # ------------------------------------------------------------------ the controller tick
    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            next_t += self.step_time
            with self.lock:
                self._tick()
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        if (self.program_running and self.watchdog_hz is not None
                and now - self._last_kick > 1.0 / self.watchdog_hz):
            # ur_rtde's script: no input update in time -> stop the arm, end the script.
            self.watchdog_fired = True
            self.program_running = False
            self._target[:] = 0.0
            self._move_goal = None
        if self._move_goal is not None:
            error = self._move_goal - self.mirror.q
            lead = float(np.max(np.abs(error)))
            if lead < 1e-3:
                self._target[:] = 0.0
                if float(np.max(np.abs(self.mirror.qd))) < 1e-3:
                    self._move_goal = None
            else:
                self._target = error * min(self._move_speed / lead, 5.0)
        self.mirror.command(self._target, self._acceleration)
        self.mirror.advance(self.step_time)
        self.timestamp += self.step_time
        if self.mirror.contacts() and not self.protective_stopped:
            self.protective_stop("contact")

    # ------------------------------------------------------------------ script commands
    def start_script(self) -> None:
        """A fresh control script: running, no watchdog until one is set (hold the lock)."""
        self.program_running = True
        self.watchdog_hz = None
        self._target[:] = 0.0
        self._move_goal = None
        self._last_kick = time.monotonic()

    def require_link(self, epoch: int) -> bool:
        """True if a command of a client of ``epoch`` reaches the controller.

        Raises:
            RuntimeError: If the client has noticed that its connection is gone.
        """
        if self.link_up and epoch == self.link_epoch:
            return True
        if self.noticed(epoch):
            raise RuntimeError("RTDEControlInterface: not connected to the robot")
        return False  # written into a dead socket: no error yet, no effect


class _Void:
    """Where a command written into a silently dead socket goes: accepted, no effect."""

    def __init__(self, c: FakeController):
        self.lock = threading.RLock()
        self.step_time = c.step_time
        self.program_running = True
        self.protective_stopped = self.emergency_stopped = False
        self.speedj_calls = self.speed_stop_calls = self.stop_script_calls = 0
        self._move_goal = None
        self._target = np.zeros(6)

    def start_script(self) -> None:
        pass


class RTDEReceiveInterface:
    """Stand-in for ``rtde_receive.RTDEReceiveInterface`` (same signature and getters)."""

    def __init__(self, hostname: str, frequency: float = -1.0, variables: list[str] = (),
                 verbose: bool = False, use_upper_range_registers: bool = False,
                 rt_priority: int = 0):
        self._hostname = hostname
        self._c = _lookup(hostname, 30004)
        self._epoch = self._c.link_epoch
        self._connected = True
        self._cache: dict = {}
        self._refresh()

    def _live(self) -> bool:
        c = self._c
        return self._connected and c.link_up and self._epoch == c.link_epoch

    def _refresh(self) -> dict:
        if self._live():
            c = self._c
            with c.lock:
                self._cache = {"q": c.mirror.q.tolist(), "qd": c.mirror.qd.tolist(),
                               "t": c.timestamp, "bits": c.safety_status_bits()}
        return self._cache

    def isConnected(self) -> bool:  # noqa: N802 (ur_rtde's names)
        return self._connected and not self._c.noticed(self._epoch)

    def reconnect(self) -> bool:
        c = self._c
        if not c.link_up:
            return False
        self._epoch = c.link_epoch
        self._connected = True
        self._refresh()
        return True

    def disconnect(self) -> None:
        self._connected = False

    def getActualQ(self) -> list[float]:  # noqa: N802
        return list(self._refresh()["q"])

    def getActualQd(self) -> list[float]:  # noqa: N802
        return list(self._refresh()["qd"])

    def getTimestamp(self) -> float:  # noqa: N802
        return self._refresh()["t"]

    def getSafetyStatusBits(self) -> int:  # noqa: N802
        return self._refresh()["bits"]

    def isProtectiveStopped(self) -> bool:  # noqa: N802
        return bool(self.getSafetyStatusBits() >> PROTECTIVE_STOPPED_BIT & 1)

    def isEmergencyStopped(self) -> bool:  # noqa: N802
        return bool(self.getSafetyStatusBits() >> EMERGENCY_STOPPED_BIT & 1)

    def getRobotMode(self) -> int:  # noqa: N802
        return 7  # RUNNING

    def getSafetyMode(self) -> int:  # noqa: N802
        bits = self.getSafetyStatusBits()
        if bits >> EMERGENCY_STOPPED_BIT & 1:
            return 7  # ROBOT_EMERGENCY_STOP
        return 3 if bits >> PROTECTIVE_STOPPED_BIT & 1 else 1  # PROTECTIVE_STOP / NORMAL


class RTDEControlInterface:
    """Stand-in for ``rtde_control.RTDEControlInterface`` (same signature and methods)."""

    FLAG_UPLOAD_SCRIPT = 1
    FLAG_USE_EXT_UR_CAP = 2
    FLAG_VERBOSE = 4

    def __init__(self, hostname: str, frequency: float = -1.0, flags: int = 1,
                 ur_cap_port: int = 50002, rt_priority: int = 0):
        c = _lookup(hostname, 30004)
        if c.version[0] > 3 and flags & self.FLAG_UPLOAD_SCRIPT and not c.remote_control:
            raise RuntimeError("RTDEControlInterface: Please enable remote control on the robot!")
        self._c = c
        self._epoch = c.link_epoch
        self.flags = flags
        with c.lock:
            c.start_script()

    def _call(self) -> FakeController | _Void:
        c = self._c
        return c if c.require_link(self._epoch) else _Void(c)

    def isConnected(self) -> bool:  # noqa: N802
        return not self._c.noticed(self._epoch)

    def isProgramRunning(self) -> bool:  # noqa: N802
        return self._call().program_running

    def reconnect(self) -> bool:
        c = self._c
        if not c.link_up:
            return False
        self._epoch = c.link_epoch
        with c.lock:
            if not c.protective_stopped:
                c.start_script()
        return True

    def reuploadScript(self) -> bool:  # noqa: N802
        c = self._call()
        with c.lock:
            if c.protective_stopped or c.emergency_stopped:
                return False
            c.start_script()
        return True

    def disconnect(self) -> None:
        self._epoch = -1

    def getStepTime(self) -> float:  # noqa: N802
        return self._call().step_time

    def speedJ(self, qd: list[float], acceleration: float = 0.5, time: float = 0.0) -> bool:  # noqa: N802
        c = self._call()
        if len(qd) != 6:
            raise TypeError("speedJ(): qd must have 6 values")
        with c.lock:
            c.speedj_calls += 1
            c._last_kick = _now()
            if not c.program_running:
                return False
            c._move_goal = None
            c._target = np.array(qd, dtype=float)
            c._acceleration = float(acceleration)
        return True

    def speedStop(self, a: float = 10.0) -> bool:  # noqa: N802
        c = self._call()
        with c.lock:
            c.speed_stop_calls += 1
            if not c.program_running:
                return False
            c._target[:] = 0.0
            c._acceleration = float(a)
        return True

    def stopScript(self) -> None:  # noqa: N802
        c = self._call()
        with c.lock:
            c.stop_script_calls += 1
            c.program_running = False
            c._target[:] = 0.0
            c._move_goal = None

    def moveJ(self, q: list[float], speed: float = 1.05, acceleration: float = 1.4,  # noqa: N802
              asynchronous: bool = False) -> bool:
        c = self._call()
        with c.lock:
            if not c.program_running:
                return False
            c._move_goal = np.array(q, dtype=float)
            c._move_speed = float(speed)
            c._acceleration = float(acceleration)
            c._last_kick = _now()
        if asynchronous:
            return True
        while True:
            time.sleep(c.step_time)
            with c.lock:
                if c._move_goal is None:
                    return c.program_running
                c._last_kick = _now()  # the blocking call keeps the script fed

    def stopJ(self, a: float = 2.0, asynchronous: bool = False) -> None:  # noqa: N802
        c = self._call()
        with c.lock:
            c._move_goal = None
            c._target[:] = 0.0
            c._acceleration = float(a)

    def setWatchdog(self, min_frequency: float = 10.0) -> bool:  # noqa: N802
        c = self._call()
        with c.lock:
            c.watchdog_hz = float(min_frequency)
            c._last_kick = _now()
        return True

    def kickWatchdog(self) -> bool:  # noqa: N802
        c = self._call()
        with c.lock:
            c._last_kick = _now()
        return True


class DashboardClient:
    """Stand-in for ``dashboard_client.DashboardClient`` (port 29999)."""

    def __init__(self, hostname: str, port: int = 29999, verbose: bool = False):
        self._hostname, self._port = hostname, port
        self._c: FakeController | None = None

    def connect(self, timeout_ms: int = 2000) -> None:
        self._c = _lookup(self._hostname, self._port)

    def isConnected(self) -> bool:  # noqa: N802
        return self._c is not None and self._c.link_up

    def disconnect(self) -> None:
        self._c = None

    def _ctrl(self) -> FakeController:
        if not self.isConnected():
            raise RuntimeError("DashboardClient: not connected")
        return self._c

    def polyscopeVersion(self) -> str:  # noqa: N802
        major, minor, bugfix = self._ctrl().version
        return f"URSoftware {major}.{minor}.{bugfix}.106331 (Jan 20 2022)"

    def isInRemoteControl(self) -> bool:  # noqa: N802
        return self._ctrl().remote_control

    def robotmode(self) -> str:
        return "Robotmode: RUNNING"

    def safetystatus(self) -> str:
        c = self._ctrl()
        if c.emergency_stopped:
            return "Safetystatus: ROBOT_EMERGENCY_STOP"
        return "Safetystatus: PROTECTIVE_STOP" if c.protective_stopped else "Safetystatus: NORMAL"

    def closeSafetyPopup(self) -> None:  # noqa: N802
        self._ctrl()

    def unlockProtectiveStop(self) -> None:  # noqa: N802
        c = self._ctrl()
        with c.lock:
            # The real server refuses before 5 s, and ur_rtde raises on any answer but
            # "Protective stop releasing".
            if c.protective_stopped and time.monotonic() - c.protective_stop_time < c.unlock_delay:
                raise RuntimeError("Unlock protective stop failure: Cannot unlock protective "
                                   "stop until 5s after occurrence. Always inspect cause of "
                                   "protective stop before unlocking")
            c.protective_stopped = False


def _now() -> float:
    return time.monotonic()


@contextlib.contextmanager
def running_controller(cfg: Config, host: str = "ur-fake", **kwargs) -> Iterator[FakeController]:
    """A started :class:`FakeController` on ``host``, closed at exit."""
    controller = FakeController(cfg, host, **kwargs).start()
    try:
        yield controller
    finally:
        controller.close()
