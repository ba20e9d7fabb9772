"""The control thread: streams the newest joint-velocity command to the arm on every tick.

:class:`ControlLoop` owns the arm while it runs. Once per controller tick (the arm's
``control_period``: 8 ms CB3, 2 ms e-series) it reads the arm, passes the newest command
through :meth:`robot.safety.SafetyLimits.apply` and sends what that returns with
:meth:`Arm.speedj` (SenseAct's UR communicator: one speedj per 125 Hz packet, while the
agent acts every 40 ms). The agent step talks to it only through :meth:`ControlLoop.set_command`
(a fixed-schema, timestamped command; house rule 4) and reads back :meth:`ControlLoop.status`.

It never lets the arm run on a stale command: when no new command has arrived for
``deadline`` (default 80 ms = 2 agent periods) it sends ``speedj(0)`` at the acceleration
bound (a controlled stop) and flags ``stale`` until a fresh command comes. Any exception
(from the arm, the safety check or the loop itself) stops the arm (``speed_stop``) and
leaves the loop in state ``"failed"`` with the exception kept in :attr:`ControlLoop.error`;
``"stopped"`` means a clean :meth:`ControlLoop.stop`.

Timing: the loop sleeps until ``spin`` before the tick, then busy-waits on
``time.perf_counter_ns``. Tick period, lateness and busy time go into preallocated rings
(no allocation per tick for the statistics); :meth:`ControlLoop.timing` reports period and
jitter percentiles and every overrun (a tick starting more than ``overrun_threshold``
late) with its size.

What the owner must do (process-wide settings a library thread must not change):
``gc.collect(); gc.freeze()`` (and, if the allocation rate allows, ``gc.disable()``)
before :meth:`ControlLoop.start`, so the cyclic collector does not pause the thread;
``sys.setswitchinterval`` of ~0.5 ms so that a thread holding the GIL cannot delay a tick
by the default 5 ms; CPU affinity and ``SCHED_FIFO`` where permitted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from robot.backends.base import (
    N_JOINTS,
    Arm,
    ArmState,
    ProtectiveStopError,
    as_joint_vector,
    check_positive,
)
from robot.safety import Intervention, SafetyLimits

logger = logging.getLogger(__name__)

#: Loop states. ``idle``: built, not started; ``running``: streaming; ``stopped``: ended by
#: :meth:`ControlLoop.stop` with the arm stopped; ``failed``: ended by an error.
STATES = ("idle", "running", "stopped", "failed")


@dataclass(frozen=True)
class SafetyEvent:
    """A tick on which the safety limits changed the command.

    Attributes:
        tick: Tick index (0 = first tick of the loop).
        t_ns: Tick start, ns (``time.perf_counter_ns``).
        requested: float64 (6,) command asked for, rad/s.
        applied: float64 (6,) command sent, rad/s.
        interventions: What the safety check changed and why.
    """

    tick: int
    t_ns: int
    requested: np.ndarray
    applied: np.ndarray
    interventions: tuple[Intervention, ...]


@dataclass(frozen=True)
class ControlStatus:
    """A snapshot of the loop for the agent step and the recorder.

    Attributes:
        state: One of :data:`STATES`.
        stale: True when the last tick sent the stale-command stop (also before the
            first command).
        ticks: Ticks run so far.
        applied: float64 (6,) the command the last tick actually sent, rad/s (after the
            safety limits or the stale stop; house rule 7).
        applied_t_ns: When the last tick started, ns (``time.perf_counter_ns``); 0 before.
        command_t_ns: ``t_ns`` of the command the last tick followed (None when stale).
        arm: The arm state the last tick read (None before the first tick).
    """

    state: str
    stale: bool
    ticks: int
    applied: np.ndarray
    applied_t_ns: int
    command_t_ns: int | None
    arm: ArmState | None


@dataclass(frozen=True)
class TimingReport:
    """Tick timing over the last ``samples`` ticks; all times ms.

    Attributes:
        nominal_ms: The controller tick.
        samples: Ticks the percentiles are taken over (the ring keeps the newest).
        period_p50_ms / period_p99_ms / period_max_ms: Time between tick starts.
        jitter_p50_ms / jitter_p99_ms / jitter_max_ms: ``|period - nominal|``.
        late_p50_ms / late_p99_ms / late_max_ms: Tick start after its scheduled time.
        busy_p50_ms / busy_p99_ms / busy_max_ms: Work per tick (read, safety, speedj).
        overruns: Ticks (over the whole run) that started more than the overrun
            threshold late.
        overrun_sizes_ms: Lateness of the newest overruns (up to the ring size).
        skipped_ticks: Whole ticks missed and not made up (the schedule moved on).
    """

    nominal_ms: float
    samples: int
    period_p50_ms: float
    period_p99_ms: float
    period_max_ms: float
    jitter_p50_ms: float
    jitter_p99_ms: float
    jitter_max_ms: float
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    busy_p50_ms: float
    busy_p99_ms: float
    busy_max_ms: float
    overruns: int
    overrun_sizes_ms: tuple[float, ...] = field(default=())
    skipped_ticks: int = 0

    def as_dict(self) -> dict[str, float]:
        """Scalar fields under namespaced metric keys, e.g. ``control/jitter_p99_ms``."""
        return {f"control/{k}": float(v) for k, v in self.__dict__.items()
                if k != "overrun_sizes_ms"}


class _Ring:
    """Preallocated int64 ring of the newest ``size`` samples (ns)."""

    def __init__(self, size: int):
        self.data = np.zeros(size, np.int64)
        self.count = 0

    def push(self, value: int) -> None:
        self.data[self.count % len(self.data)] = value
        self.count += 1

    def values(self) -> np.ndarray:
        n = min(self.count, len(self.data))
        if self.count <= len(self.data):
            return self.data[:n].copy()
        start = self.count % len(self.data)
        return np.concatenate([self.data[start:], self.data[:start]])


def _percentiles_ms(ns: np.ndarray) -> tuple[float, float, float]:
    if ns.size == 0:
        return 0.0, 0.0, 0.0
    p50, p99 = np.percentile(ns, [50, 99])
    return float(p50) / 1e6, float(p99) / 1e6, float(ns.max()) / 1e6


class ControlLoop:
    """A thread that streams the newest joint-velocity command to an arm every tick.

    Args:
        arm: A connected arm; the loop owns it between :meth:`start` and the end of the
            thread (nobody else may command it meanwhile).
        safety: Limits applied to every command; ``None`` sends commands unchecked (tests
            and calibration only).
        acceleration: speedJ acceleration bound, rad/s^2 (``arm.acceleration``); also the
            rate of the stale-command stop.
        deadline: Longest age of the newest command before the loop stops the arm, s
            (default 0.08 = 2 agent periods of 40 ms).
        stop_deceleration: Deceleration of ``speed_stop`` on stop or failure, rad/s^2;
            ``None`` means ``acceleration``.
        spin: Busy-wait before each tick, s; the loop sleeps until then. Clamped to a
            quarter of the tick.
        overrun_threshold: A tick starting later than this is an overrun, s; ``None``
            means 10 % of the tick (SenseAct's "hiccup" at 8.8 ms on an 8 ms tick).
        watchdog_hz: If set, arm the controller-side watchdog at this rate, Hz, and kick
            it every tick.
        stats_size: Ticks kept for the timing percentiles (the newest).
        event_queue_size: Safety events kept until :meth:`events` drains them; more are
            dropped and counted (the loop never blocks on its owner).

    Raises:
        ValueError: If a duration or rate is not > 0 or a size is < 1.

    Example:
        >>> gc.collect(); gc.freeze()  # doctest: +SKIP
        >>> with ControlLoop(rig.arm, limits, acceleration=1.4) as loop:  # doctest: +SKIP
        ...     loop.set_command(qd)  # every agent step
    """

    def __init__(self, arm: Arm, safety: SafetyLimits | None, *, acceleration: float,
                 deadline: float = 0.08, stop_deceleration: float | None = None,
                 spin: float = 0.0005, overrun_threshold: float | None = None,
                 watchdog_hz: float | None = None, stats_size: int = 16384,
                 event_queue_size: int = 256):
        self._arm = arm
        self._safety = safety
        self.period = check_positive(arm.control_period, "arm.control_period", "s")
        self.acceleration = check_positive(acceleration, "acceleration", "rad/s^2")
        self.deadline = check_positive(deadline, "deadline", "s")
        self.stop_deceleration = (self.acceleration if stop_deceleration is None else
                                  check_positive(stop_deceleration, "stop_deceleration",
                                                 "rad/s^2"))
        if spin < 0:
            raise ValueError(f"spin must be >= 0 s, got {spin}")
        self.watchdog_hz = (None if watchdog_hz is None else
                            check_positive(watchdog_hz, "watchdog_hz", "Hz"))
        if stats_size < 1 or event_queue_size < 1:
            raise ValueError(f"stats_size and event_queue_size must be >= 1, got "
                             f"{stats_size} and {event_queue_size}")
        self._period_ns = round(self.period * 1e9)
        self._deadline_ns = round(self.deadline * 1e9)
        self._spin_ns = min(round(spin * 1e9), self._period_ns // 4)
        threshold = 0.1 * self.period if overrun_threshold is None else check_positive(
            overrun_threshold, "overrun_threshold", "s")
        self._overrun_ns = round(threshold * 1e9)

        # Newest command (written by set_command, read by the loop), under _cmd_lock.
        self._cmd_lock = threading.Lock()
        self._cmd = np.zeros(N_JOINTS)
        self._cmd_t_ns = 0
        self._cmd_arrival_ns = 0
        self._have_cmd = False
        # Loop-private buffers and published status, under _status_lock.
        self._requested = np.zeros(N_JOINTS)
        self._zero = np.zeros(N_JOINTS)
        self._status_lock = threading.Lock()
        self._applied = np.zeros(N_JOINTS)
        self._applied_t_ns = 0
        self._applied_cmd_t_ns: int | None = None
        self._arm_state: ArmState | None = None
        self._stale = True
        self._ticks = 0
        self.stale_stops = 0  #: Times the loop went stale (fresh -> stale transitions).

        self._events: queue.Queue[SafetyEvent] = queue.Queue(maxsize=event_queue_size)
        self.dropped_events = 0  #: Safety events dropped because the queue was full.
        self.intervention_ticks = 0  #: Ticks on which the safety limits changed the command.

        self._periods = _Ring(stats_size)
        self._late = _Ring(stats_size)
        self._busy = _Ring(stats_size)
        self._overrun_sizes = _Ring(1024)
        self._overruns = 0
        self._skipped = 0

        self._state = "idle"
        self._error: BaseException | None = None
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ owner API
    @property
    def state(self) -> str:
        """One of :data:`STATES`: ``idle``, ``running``, ``stopped`` or ``failed``."""
        return self._state

    @property
    def error(self) -> BaseException | None:
        """The exception that failed the loop (None unless ``state == "failed"``)."""
        return self._error

    @property
    def stale(self) -> bool:
        """Whether the last tick sent the stale-command stop (True before any command)."""
        return self._stale

    def start(self) -> None:
        """Start the control thread (once).

        Raises:
            RuntimeError: If the loop was started before.
        """
        if self._thread is not None:
            raise RuntimeError(f"control loop already started (state {self._state}); "
                               "build a new ControlLoop to restart")
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()
        logger.info("control loop started: tick %.1f ms, deadline %.0f ms, safety %s",
                    self.period * 1e3, self.deadline * 1e3,
                    "on" if self._safety is not None else "OFF")

    def set_command(self, qd: np.ndarray, t_ns: int | None = None) -> None:
        """Hand the loop a new joint-velocity command; it replaces any older one.

        Never blocks on the loop (a short lock around a 6-value copy). The command's age
        for the stale check counts from this call, on the loop's clock.

        Args:
            qd: float (6,) joint velocities, rad/s (before the safety limits).
            t_ns: When the command was made, ns, e.g. the capture time of the frame it
                answers; kept for the record (:attr:`ControlStatus.command_t_ns`).
                ``None``: now (``time.perf_counter_ns``).

        Raises:
            ValueError: If ``qd`` is not 6 finite values.
        """
        qd = as_joint_vector(qd, "command")
        now = time.perf_counter_ns()
        with self._cmd_lock:
            self._cmd[:] = qd
            self._cmd_t_ns = now if t_ns is None else int(t_ns)
            self._cmd_arrival_ns = now
            self._have_cmd = True

    def status(self) -> ControlStatus:
        """A consistent snapshot of the last tick (see :class:`ControlStatus`)."""
        with self._status_lock:
            return ControlStatus(state=self._state, stale=self._stale, ticks=self._ticks,
                                 applied=self._applied.copy(),
                                 applied_t_ns=self._applied_t_ns,
                                 command_t_ns=self._applied_cmd_t_ns, arm=self._arm_state)

    def events(self) -> list[SafetyEvent]:
        """Take every pending safety event, oldest first (never blocks)."""
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                return out

    def raise_if_failed(self) -> None:
        """Re-raise the loop's error in the owner's thread, if it failed.

        Raises:
            RuntimeError: If ``state == "failed"``, chained to the original error.
        """
        if self._state == "failed":
            raise RuntimeError(f"control loop failed: {self._error!r}") from self._error

    def stop(self, timeout: float = 1.0) -> bool:
        """Stop the arm and end the thread, waiting at most ``timeout``.

        The thread sends ``speed_stop`` before it exits. If it does not end in time (an
        arm call hangs), the loop is marked ``failed`` with a TimeoutError and the arm is
        not touched from this thread (the hung call may hold it): the controller-side
        watchdog must stop it.

        Args:
            timeout: Longest wait, s.

        Returns:
            True if the thread ended within ``timeout`` (or never ran).
        """
        self._stop_event.set()
        thread = self._thread
        if thread is None:
            if self._state == "idle":
                self._state = "stopped"
            return True
        thread.join(timeout)
        if thread.is_alive():
            err = TimeoutError(f"control thread did not end within {timeout} s (stuck in an "
                               "arm call?); the arm is not confirmed stopped")
            logger.critical("%s", err)
            self._fail(err)
            return False
        return True

    def timing(self) -> TimingReport:
        """Tick timing statistics so far (safe to call while running)."""
        periods = self._periods.values()
        p50, p99, pmax = _percentiles_ms(periods)
        j50, j99, jmax = _percentiles_ms(np.abs(periods - self._period_ns))
        l50, l99, lmax = _percentiles_ms(self._late.values())
        b50, b99, bmax = _percentiles_ms(self._busy.values())
        sizes = tuple(float(v) / 1e6 for v in self._overrun_sizes.values())
        return TimingReport(
            nominal_ms=self.period * 1e3, samples=int(periods.size),
            period_p50_ms=p50, period_p99_ms=p99, period_max_ms=pmax,
            jitter_p50_ms=j50, jitter_p99_ms=j99, jitter_max_ms=jmax,
            late_p50_ms=l50, late_p99_ms=l99, late_max_ms=lmax,
            busy_p50_ms=b50, busy_p99_ms=b99, busy_max_ms=bmax,
            overruns=self._overruns, overrun_sizes_ms=sizes, skipped_ticks=self._skipped)

    def __enter__(self) -> ControlLoop:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ the thread
    def _fail(self, err: BaseException) -> None:
        with self._status_lock:
            if self._state != "failed":
                self._error = err
                self._state = "failed"

    def _run(self) -> None:
        arm = self._arm
        try:
            if self.watchdog_hz is not None:
                arm.set_watchdog(self.watchdog_hz)
            period = self._period_ns
            scheduled = time.perf_counter_ns()
            last_start = 0
            while not self._stop_event.is_set():
                self._wait_until(scheduled)
                start = time.perf_counter_ns()
                late = start - scheduled
                if late >= period:  # whole ticks missed: move the schedule on, no burst
                    missed = late // period
                    self._skipped += missed
                    scheduled += missed * period
                if last_start:
                    self._periods.push(start - last_start)
                last_start = start
                self._late.push(late)
                if late > self._overrun_ns:
                    self._overruns += 1
                    self._overrun_sizes.push(late)
                self._tick(start)
                self._busy.push(time.perf_counter_ns() - start)
                scheduled += period
            arm.speed_stop(self.stop_deceleration)
            with self._status_lock:
                if self._state == "running":
                    self._state = "stopped"
            logger.info("control loop stopped after %d ticks", self._ticks)
        except BaseException as err:
            logger.error("control loop failed: %r; stopping the arm", err)
            try:
                arm.speed_stop(self.stop_deceleration)
            except BaseException as stop_err:
                logger.critical("speed_stop after the failure failed too: %r", stop_err)
            self._fail(err)

    def _wait_until(self, target_ns: int) -> None:
        remaining = target_ns - time.perf_counter_ns()
        if remaining > self._spin_ns:
            time.sleep((remaining - self._spin_ns) / 1e9)
        while time.perf_counter_ns() < target_ns:
            pass

    def _tick(self, now: int) -> None:
        arm = self._arm
        with self._cmd_lock:
            fresh = self._have_cmd and now - self._cmd_arrival_ns <= self._deadline_ns
            self._requested[:] = self._cmd
            cmd_t_ns = self._cmd_t_ns
        state = arm.read_state()
        if state.protective_stopped or state.emergency_stopped:
            kind = "emergency" if state.emergency_stopped else "protective"
            raise ProtectiveStopError(f"the arm reports a {kind} stop")
        if fresh:
            applied = self._requested
            if self._safety is not None:
                result = self._safety.apply(state.q, state.qd, self._requested)
                applied = result.qd
                if result.interventions:
                    self._report(now, result.qd, tuple(result.interventions))
        else:
            applied = self._zero
            if not self._stale:
                self.stale_stops += 1
                logger.warning("no command for %.0f ms: stopping the arm",
                               (now - self._cmd_arrival_ns) / 1e6)
        arm.speedj(applied, self.acceleration)
        if self.watchdog_hz is not None:
            arm.kick_watchdog()
        with self._status_lock:
            self._applied[:] = applied
            self._applied_t_ns = now
            self._applied_cmd_t_ns = cmd_t_ns if fresh else None
            self._arm_state = state
            self._stale = not fresh
            self._ticks += 1

    def _report(self, now: int, applied: np.ndarray,
                interventions: tuple[Intervention, ...]) -> None:
        self.intervention_ticks += 1
        event = SafetyEvent(tick=self._ticks, t_ns=now, requested=self._requested.copy(),
                            applied=applied.copy(), interventions=interventions)
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped_events += 1
