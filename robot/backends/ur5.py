"""The physical UR5 (CB3 or e-series) behind :class:`robot.backends.base.Arm`, via ur_rtde.

:class:`UR5Arm` holds ur_rtde's two RTDE interfaces (PyPI ``ur-rtde``; modules
``rtde_control``, ``rtde_receive``, ``dashboard_client``):

- ``RTDEReceiveInterface`` reads the controller's state stream (125 Hz CB3, 500 Hz
  e-series). ur_rtde caches the newest sample and, after the link drops, keeps returning
  it without an error. :meth:`UR5Arm.read_state` therefore refuses a sample when
  ``isConnected()`` is False or when the controller timestamp has not advanced for
  ``arm.state_timeout`` (:class:`ArmLinkLostError`).
- ``RTDEControlInterface`` runs ur_rtde's control script on the controller, uploaded at
  connect (``arm.control_mode: upload_script``, the robot in remote control) or started
  from the pendant through the ExternalControl URCap (``urcap``). speedJ is streamed by
  the caller's control loop, one command per controller tick; the controller's step time
  (measured on its RTDE clock) must equal ``arm.control_period``, or connect fails saying
  which ``arm.model`` fits.

Safety of every exit path: the script keeps executing ``speedj(last target)`` when the
client goes silent, so :meth:`UR5Arm.disconnect` ramps a moving arm to rest, then sends
``stopScript`` (ur_rtde's ``speedStop`` first if the ramp failed; each step tried even if
the one before failed), and the RTDE watchdog is armed at
``arm.watchdog_hz`` as soon as the control script runs (at connect and after every
re-upload), before anything can move the arm: if this process dies, hangs or loses the
cable, the script halts the arm after 1/watchdog_hz s. Every command feeds the watchdog
(ur_rtde writes each one's id to the watched input register, ``input_int_register_0``,
which is also the script's command register). So nothing kicks it between commands: a
kick in the same controller cycle as a speedJ replaces that speedJ's command id before
the script reads it, and the arm runs on an older target. A stop is a speedJ(0) ramp,
not ur_rtde's blocking ``speedStop``, during which nothing would feed the watchdog.
While the arm is *parked* (after a stop, or at rest home after a reset) a keeper thread
kicks it, so an idle process does not lose its script; while the arm moves only the
caller's own commands feed it, so a caller that stalls mid-motion (a hung control
thread, a frozen reenact or calibration loop) lets the watchdog stop the arm. All
control-interface calls are serialised by one
lock (ur_rtde's interface is not meant for concurrent callers).

Faults: a call that raises ``RuntimeError``, or returns False while the link is down or
the script has stopped, raises :class:`ArmLinkLostError`; a protective or emergency stop
raises :class:`ProtectiveStopError`. :meth:`UR5Arm.move_home` clears a protective stop as
``arm.protective_stop_recovery`` says: ``operator`` waits (up to
``arm.protective_stop_wait``) for a person to clear it on the pendant; ``dashboard``
unlocks it through the dashboard server once UR's 5 s wait has passed. An emergency stop
always needs a person. Then it re-uploads the script and moves home with moveJ at no more
than ``arm.home_speed``.

Measured against ur_rtde 1.6.5 with tests/rtde_server.py: a stalled stream keeps
``isConnected()`` True for up to 2.5 s (its read deadline) while the getters serve the
cache, so the timestamp check is what notices a pulled cable; ``reconnect()`` called
before ``isConnected()`` turns False can hang or crash, so a reconnect here builds new
interfaces; dropping an ``RTDEReceiveInterface`` sleeps 0.5 s holding the GIL, which is
why interfaces are only replaced between control loops.

Facts: the ur_rtde 1.6 API documentation (sdurobotics.gitlab.io/ur_rtde); safety
status bits 2 = protective stopped, 7 = emergency stopped (RTDE guide).
"""

from __future__ import annotations

import logging
import threading
import time
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np

from robot.backends.base import (
    N_JOINTS,
    Arm,
    ArmLinkLostError,
    ArmState,
    DeviceError,
    ProtectiveStopError,
)
from robot.config import ArmConfig

logger = logging.getLogger(__name__)

#: UR's rule: a protective stop can be unlocked no sooner than this after it happened, s.
UNLOCK_DELAY = 5.0
#: How long a re-uploaded control script may take to start running, s.
SCRIPT_START_TIMEOUT = 5.0
#: Joint speeds below this count as at rest, rad/s.
REST_SPEED = 1e-2
#: CB3 controllers have major version <= 3 (ur_rtde's CB3_MAJOR_VERSION).
CB3_MAJOR_VERSION = 3
#: Distinct RTDE timestamps whose least step is taken as the controller tick.
_CLOCK_SAMPLES = 20


def load_ur_rtde() -> SimpleNamespace:
    """The three ur_rtde classes the backend uses, imported on demand.

    Returns:
        A namespace with ``RTDEControlInterface``, ``RTDEReceiveInterface`` and
        ``DashboardClient``.

    Raises:
        DeviceError: If ur_rtde is not installed (the ``real`` extra).
    """
    try:
        import dashboard_client
        import rtde_control
        import rtde_receive
    except ImportError as err:
        raise DeviceError(f"the real arm needs the [real] extra ({err}): "
                          "pip install 'madi-robot[real]'") from None
    return SimpleNamespace(RTDEControlInterface=rtde_control.RTDEControlInterface,
                           RTDEReceiveInterface=rtde_receive.RTDEReceiveInterface,
                           DashboardClient=dashboard_client.DashboardClient)


def model_of_step_time(step_time: float) -> str:
    """The ``arm.model`` that matches a controller step time (0.008 s CB3, 0.002 s e-series)."""
    return "ur5" if step_time > 0.004 else "ur5e"


class UR5Arm(Arm):
    """A UR arm on the network, driven by speedJ through ur_rtde (see module docstring).

    Args:
        arm: Arm config: ``host``, ``model``/``control_period``, ``control_mode``,
            ``urcap_port``, ``home_speed``, ``acceleration``, ``state_timeout``,
            ``watchdog_hz``, ``protective_stop_recovery``, ``protective_stop_wait``.
        rt_priority: SCHED_FIFO priority for ur_rtde's receive thread (ur_rtde applies it
            only on a real-time kernel with rtprio limits); ``None`` for normal scheduling.
        rtde: The module (or namespace) providing ur_rtde's ``RTDEControlInterface``,
            ``RTDEReceiveInterface`` and ``DashboardClient``; default: the real ur_rtde.

    Raises:
        DeviceError: On connect, if ``arm.host`` is unset, ur_rtde is missing, nothing
            answers at the host, the controller refuses the script, or its step time
            does not match ``arm.control_period``.
    """

    name = "UR arm"

    def __init__(self, arm: ArmConfig, rt_priority: int | None = None,
                 rtde: ModuleType | SimpleNamespace | None = None):
        super().__init__()
        self._cfg = arm
        self._rt_priority = int(rt_priority or 0)
        self._rtde = rtde
        self._rx: Any = None
        self._ctrl: Any = None
        self._lock = threading.Lock()  # serialises control-interface calls
        self._state_lock = threading.Lock()
        self._last_ts: float | None = None
        self._last_change_ns = 0
        self._watchdog_hz: float | None = None
        self._last_kick = 0.0
        self._parked = True  # last motion command was a stop: the keeper may kick
        self._keeper_stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.step_time: float | None = None  # the controller's, s (set at connect)

    @property
    def host(self) -> str:
        """The controller's address (``arm.host``)."""
        return str(self._cfg.host)

    @property
    def control_period(self) -> float:
        """Controller tick, s (``arm.control_period``, checked against the controller)."""
        return float(self._cfg.control_period)

    # ------------------------------------------------------------------ lifecycle
    def _connect(self) -> None:
        cfg = self._cfg
        if not cfg.host:
            raise DeviceError("arm.host is not set: put the controller's IP in the config "
                              "(arm.host) or pass --host")
        rtde = self._rtde or load_ur_rtde()
        self._rtde = rtde
        try:
            self._rx = rtde.RTDEReceiveInterface(cfg.host, -1.0, [], False, False,
                                                 self._rt_priority)
        except RuntimeError as err:
            raise DeviceError(
                f"cannot reach the UR controller at {cfg.host} (RTDE, TCP 30004): {err}. "
                "Check the Ethernet cable and the PC's static IP, that the controller is on "
                "and that arm.host is its address (pendant: Settings > System > Network)"
            ) from None
        if not self._rx.isConnected() or len(self._rx.getActualQ()) != N_JOINTS:
            # ur_rtde returns from its constructor after 2.5 s when no data comes.
            self._close_receive()
            raise DeviceError(f"the controller at {cfg.host} accepted the RTDE connection but "
                              "sends no state: reboot the controller (or another client holds "
                              "its RTDE output)")
        flags = (rtde.RTDEControlInterface.FLAG_USE_EXT_UR_CAP if cfg.control_mode == "urcap"
                 else rtde.RTDEControlInterface.FLAG_UPLOAD_SCRIPT)
        try:
            self._ctrl = rtde.RTDEControlInterface(cfg.host, -1.0, flags, cfg.urcap_port,
                                                   self._rt_priority)
        except RuntimeError as err:
            self._close_receive()
            fix = ("start the program with the ExternalControl URCap node on the pendant "
                   f"(port {cfg.urcap_port})" if cfg.control_mode == "urcap" else
                   "put the robot in remote control (e-series: pendant top right) and make "
                   "sure no other program runs")
            raise DeviceError(f"the UR controller at {cfg.host} refused the control script: "
                              f"{err}. Fix: {fix}") from None
        try:
            self.step_time = self._measure_step_time()
            if abs(self.step_time - self.control_period) > 1e-6:
                raise DeviceError(
                    f"the controller at {cfg.host} runs at {1 / self.step_time:.0f} Hz "
                    f"(step {self.step_time} s) but the config streams every "
                    f"{self.control_period} s (arm.model={cfg.model}); set arm.model: "
                    f"{model_of_step_time(self.step_time)} and leave arm.control_period unset")
            self._parked = True
            self._arm_watchdog()
        except BaseException:
            self._close_control()
            self._close_receive()
            raise
        self._last_ts, self._last_change_ns = None, time.monotonic_ns()
        self._keeper_stop.clear()
        self._keeper = threading.Thread(target=self._keep_watchdog, name="watchdog keeper",
                                        daemon=True)
        self._keeper.start()
        logger.info("UR controller %s: step %.3f s, %s mode", cfg.host, self.step_time,
                    cfg.control_mode)

    def _disconnect(self) -> None:
        self._close_control()  # the keeper feeds the watchdog until the script is stopped
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(1.0)
            self._keeper = None
        self._close_receive()
        self._watchdog_hz = None

    def _measure_step_time(self) -> float:
        """The controller tick, s: the least step between distinct RTDE timestamps.

        Not ur_rtde's ``getStepTime``: it is a real-time command, so it returns output double
        register 0 before the control script has answered (0.0 on a fresh controller), and
        ur_rtde strips the script's ``get_steptime()`` below version 5.4 (every CB3).

        Raises:
            DeviceError: the RTDE clock does not advance.
        """
        seen = [float(self._rx.getTimestamp())]
        end = time.monotonic() + 1.0
        while len(seen) < _CLOCK_SAMPLES and time.monotonic() < end:
            ts = float(self._rx.getTimestamp())
            if ts != seen[-1]:
                seen.append(ts)
            time.sleep(0.0005)
        steps = [b - a for a, b in zip(seen, seen[1:], strict=False) if b > a]
        if not steps:
            raise DeviceError(f"the RTDE clock of {self.host} does not advance: reboot the "
                              "controller")
        return round(min(steps), 6)

    def _close_control(self) -> None:
        """Bring the arm to rest, then stop the control script and disconnect.

        A moving arm is ramped to rest with speedJ(0) first (:meth:`_ramp_to_rest`, the
        watchdog fed); ur_rtde's blocking ``speedStop`` is only the fallback when that
        fails, since the watchdog hears nothing while it waits.
        """
        try:
            if self._ctrl is not None and not self._parked:
                self._speed_stop(self._cfg.acceleration)
            at_rest = True
        except Exception as err:  # the link, or an arm that does not stop
            logger.error("UR stop on disconnect failed: %s", err)
            at_rest = False
        with self._lock:  # the keeper's kick, if one is under way, lands first
            ctrl, self._ctrl = self._ctrl, None
            if ctrl is None:
                return
            steps = [] if at_rest else [
                ("speedStop", lambda: ctrl.speedStop(self._cfg.acceleration))]
            for what, call in (*steps, ("stopScript", ctrl.stopScript),
                               ("disconnect", ctrl.disconnect)):
                try:
                    call()
                except Exception as err:  # every step is tried; the watchdog is the backstop
                    logger.error("UR %s on disconnect failed: %s", what, err)

    def _close_receive(self) -> None:
        rx, self._rx = self._rx, None
        if rx is not None:
            try:
                rx.disconnect()
            except Exception as err:
                logger.error("UR receive disconnect failed: %s", err)

    # ------------------------------------------------------------------ state
    def _read_state(self) -> ArmState:
        rx = self._rx
        try:
            if not rx.isConnected():
                raise ArmLinkLostError(
                    f"the RTDE link to {self.host} is down (ur_rtde's cached joint state is "
                    "refused); check the cable and the controller")
            ts = float(rx.getTimestamp())
            q = np.array(rx.getActualQ(), dtype=np.float64)
            qd = np.array(rx.getActualQd(), dtype=np.float64)
            bits = int(rx.getSafetyStatusBits())
        except RuntimeError as err:
            raise ArmLinkLostError(f"reading the UR state from {self.host} failed: {err}") \
                from None
        now = time.monotonic_ns()
        with self._state_lock:
            if ts != self._last_ts:
                self._last_ts, self._last_change_ns = ts, now
            elif now - self._last_change_ns > self._cfg.state_timeout * 1e9:
                raise ArmLinkLostError(
                    f"no new joint state from {self.host} for "
                    f"{(now - self._last_change_ns) / 1e6:.0f} ms (controller time stuck at "
                    f"{ts:.3f} s; limit arm.state_timeout={self._cfg.state_timeout} s)")
            t_ns = self._last_change_ns
        if q.shape != (N_JOINTS,) or qd.shape != (N_JOINTS,):
            raise DeviceError(f"the UR controller sent {q.shape} joint values, expected 6")
        return ArmState(q=q, qd=qd, t_ns=t_ns, protective_stopped=bool(bits >> 2 & 1),
                        emergency_stopped=bool(bits >> 7 & 1))

    def _stopped(self) -> str:
        """``"protective"``/``"emergency"`` if the controller reports a stop, else ``""``."""
        rx = self._rx
        try:
            bits = int(rx.getSafetyStatusBits())
        except RuntimeError:
            return ""
        if bits >> 7 & 1:
            return "emergency"
        return "protective" if bits >> 2 & 1 else ""

    # ------------------------------------------------------------------ commands
    def _control_call(self, what: str, call, only_parked: bool = False) -> Any:
        """Run one control-interface call under the lock; map failures to our errors.

        ``only_parked``: skip the call (return None) unless the arm is parked when the lock
        is taken, so a keeper's kick never lands after a motion command (it would replace
        that command before the script reads it).
        """
        with self._lock:
            ctrl = self._ctrl
            if ctrl is None:
                raise ArmLinkLostError(f"UR {what}: the control interface to {self.host} is "
                                       "closed")
            if only_parked and not self._parked:
                return None
            try:
                result = call(ctrl)
            except RuntimeError as err:
                raise ArmLinkLostError(f"UR {what} to {self.host} failed: {err}") from None
            if result is False:
                self._explain_refusal(what)
            self._last_kick = time.monotonic()
        return result

    def _explain_refusal(self, what: str) -> None:
        kind = self._stopped()
        if kind:
            raise ProtectiveStopError(f"the UR arm is {kind}-stopped; {what} refused")
        ctrl = self._ctrl
        try:
            connected = ctrl.isConnected()
            running = connected and ctrl.isProgramRunning()
        except RuntimeError:
            connected = running = False
        if not connected:
            raise ArmLinkLostError(f"UR {what}: the RTDE link to {self.host} is down")
        if not running:
            raise ArmLinkLostError(
                f"UR {what}: the control script on {self.host} is not running (the watchdog "
                "fired, a program was stopped on the pendant, or a safety event)")
        raise DeviceError(f"the UR controller at {self.host} refused {what}")

    def _speedj(self, qd: np.ndarray, acceleration: float) -> None:
        kind = self._stopped()
        if kind:
            raise ProtectiveStopError(f"the UR arm is {kind}-stopped; call move_home() "
                                      "to clear it")
        self._parked = False
        values = qd.tolist()
        period = self.control_period
        self._control_call("speedJ", lambda c: c.speedJ(values, acceleration, period))

    def _speed_stop(self, deceleration: float) -> None:
        if self._stopped():
            self._parked = True
            return  # the controller already holds the arm
        try:
            self._ramp_to_rest(deceleration)
        except ProtectiveStopError:
            pass
        self._parked = True

    def _ramp_to_rest(self, deceleration: float) -> None:
        """speedJ(0) at ``deceleration`` until the joints rest, the watchdog fed all along.

        Not ur_rtde's ``speedStop``: the control script runs that as a blocking ``stopj``,
        and ur_rtde waits for it without sending anything, so an armed watchdog hears
        nothing for the whole stop. At 10 Hz, any stop longer than 0.1 s ended the script
        (on the emulated controller, at nearly every episode end).

        Raises:
            DeviceError: The joints are still moving a second after the ramp should end.
        """
        zero, period = [0.0] * 6, self.control_period
        give_up = time.monotonic() + float(np.max(np.abs(self._read_state().qd))) \
            / deceleration + 1.0
        while True:  # each speedJ feeds the watchdog; a kick would overwrite it
            self._control_call("speedJ", lambda c: c.speedJ(zero, deceleration, period))
            qd = self._read_state().qd
            if np.max(np.abs(qd)) < REST_SPEED:
                return
            if time.monotonic() > give_up:
                raise DeviceError(f"the UR arm did not come to rest (qd "
                                  f"{np.round(qd, 3).tolist()} rad/s) after speedJ(0) at "
                                  f"{deceleration} rad/s^2")
            time.sleep(period)

    def _set_watchdog(self, min_frequency: float) -> None:
        self._control_call("setWatchdog", lambda c: c.setWatchdog(min_frequency))
        self._watchdog_hz = min_frequency

    def _kick_watchdog(self, only_parked: bool = False) -> None:
        self._control_call("kickWatchdog", lambda c: c.kickWatchdog(), only_parked)

    def _arm_watchdog(self) -> None:
        """Arm the watchdog at ``arm.watchdog_hz`` on a freshly started control script."""
        if self._cfg.watchdog_hz is not None:
            self._set_watchdog(self._cfg.watchdog_hz)

    def _keep_watchdog(self) -> None:
        """Kick the armed watchdog of a parked arm when nothing has for a third of its window."""
        while not self._keeper_stop.wait(0.01):
            hz = self._watchdog_hz
            if (hz is None or not self._parked
                    or time.monotonic() - self._last_kick < 1.0 / (3.0 * hz)):
                continue
            try:
                self._kick_watchdog(only_parked=True)
            except Exception as err:  # the control loop or the reset reports link errors
                logger.debug("watchdog keeper: %s", err)

    # ------------------------------------------------------------------ reset
    def _move_home(self, q: np.ndarray, duration: float) -> None:
        cfg = self._cfg
        self._clear_stop()
        state = self._read_state()
        distance = float(np.max(np.abs(q - state.q)))
        speed = min(cfg.home_speed, max(0.05, distance / max(duration, 1e-3)))
        goal = q.tolist()
        self._parked = False  # this loop feeds the watchdog while the arm moves
        self._control_call("moveJ", lambda c: c.moveJ(goal, speed, cfg.acceleration, True))
        expected = distance / speed + speed / cfg.acceleration
        deadline = time.monotonic() + 2.0 * expected + 5.0
        while True:
            time.sleep(0.02)
            if self._watchdog_hz is not None:
                self._kick_watchdog()
            state = self._read_state()
            if state.protective_stopped or state.emergency_stopped:
                raise ProtectiveStopError(f"the UR arm stopped while moving home to "
                                          f"{np.round(q, 3).tolist()}")
            if np.max(np.abs(q - state.q)) < 2e-3 and np.max(np.abs(state.qd)) < REST_SPEED:
                self._parked = True
                return
            if time.monotonic() > deadline:
                self._control_call("stopJ", lambda c: c.stopJ(cfg.acceleration))
                raise DeviceError(f"the UR arm did not reach home {np.round(q, 3).tolist()} "
                                  f"within {2.0 * expected + 5.0:.1f} s (at "
                                  f"{np.round(state.q, 3).tolist()})")

    def _clear_stop(self) -> None:
        """Clear a protective stop per ``arm.protective_stop_recovery``; restart the script."""
        cfg = self._cfg
        kind = self._stopped()
        if kind == "emergency":
            raise ProtectiveStopError(
                "the emergency stop is pressed: release it on the pendant, power the arm on "
                "and release the brakes, then start again")
        if kind == "protective":
            if cfg.protective_stop_recovery == "dashboard":
                self._unlock_by_dashboard()
            else:
                self._wait_for_operator()
        if not self._ctrl.isProgramRunning():
            logger.info("UR control script not running: uploading it again")
            if not self._control_call("reuploadScript", lambda c: c.reuploadScript()):
                raise ArmLinkLostError(f"could not restart the control script on {self.host}")
            self._parked = True
            self._wait_for_script()
            self._arm_watchdog()  # a new script starts without one

    def _wait_for_script(self, timeout: float = SCRIPT_START_TIMEOUT) -> None:
        """Wait until the re-uploaded control script runs (``isProgramRunning``).

        ur_rtde's ``reuploadScript`` returns once the script is sent, before the controller
        runs it; ``setWatchdog`` before then is refused ("the control script is not
        running").

        Raises:
            ArmLinkLostError: If it does not run within ``timeout`` s.
        """
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                try:
                    if self._ctrl.isProgramRunning():
                        return
                except RuntimeError as err:
                    raise ArmLinkLostError(f"UR isProgramRunning on {self.host} failed: "
                                           f"{err}") from None
            if time.monotonic() > end:
                raise ArmLinkLostError(
                    f"the control script re-uploaded to {self.host} did not start within "
                    f"{timeout:.0f} s; check the pendant (program state, popups) and start again")
            time.sleep(0.02)

    def _wait_for_operator(self) -> None:
        cfg = self._cfg
        logger.warning("UR protective stop: find the cause, then clear it on the pendant; "
                       "waiting up to %.0f s", cfg.protective_stop_wait)
        end = time.monotonic() + cfg.protective_stop_wait
        while self._stopped() == "protective":
            if time.monotonic() > end:
                raise ProtectiveStopError(
                    f"the protective stop was not cleared within arm.protective_stop_wait="
                    f"{cfg.protective_stop_wait:.0f} s; clear it on the pendant and start again")
            time.sleep(0.1)
        logger.info("UR protective stop cleared by the operator")

    def _unlock_by_dashboard(self) -> None:
        cfg = self._cfg
        dashboard = self._rtde.DashboardClient(cfg.host)
        try:
            dashboard.connect()
        except RuntimeError as err:
            raise ProtectiveStopError(f"cannot reach the dashboard server of {cfg.host} "
                                      f"(TCP 29999) to unlock the protective stop: {err}") \
                from None
        try:
            logger.warning("UR protective stop: unlocking it through the dashboard "
                           "(arm.protective_stop_recovery: dashboard)")
            end = time.monotonic() + max(cfg.protective_stop_wait, UNLOCK_DELAY + 1.0)
            refusal = ""
            while self._stopped() == "protective":
                if time.monotonic() > end:
                    raise ProtectiveStopError(
                        f"the dashboard of {cfg.host} did not unlock the protective stop "
                        f"within {cfg.protective_stop_wait:.0f} s ({refusal or 'no answer'})")
                dashboard.closeSafetyPopup()
                try:
                    dashboard.unlockProtectiveStop()
                except RuntimeError as err:  # ur_rtde raises on the controller's refusal,
                    refusal = str(err)       # which comes until 5 s after the stop
                time.sleep(0.5)
        finally:
            dashboard.disconnect()
        logger.info("UR protective stop unlocked")
