"""The control thread: streams the newest joint-velocity command to the arm on every tick.

:class:`ControlLoop` owns the arm while it runs. Once per controller tick (the arm's
``control_period``: 8 ms CB3, 2 ms e-series) it reads the arm, passes the newest command
through :meth:`robot.safety.SafetyLimits.apply` and sends what that returns with
:meth:`Arm.speedj` (SenseAct's UR communicator: one speedj per 125 Hz packet, while the
agent acts every 40 ms). The agent step talks to it only through :meth:`ControlLoop.set_command`
(a fixed-schema, timestamped command; house rule 4) and reads back :meth:`ControlLoop.status`.

It never lets the arm run on a stale command: when the newest command is older than
``deadline`` (default 80 ms = 2 agent periods; the runner adds one frame interval for a
camera with a capture thread, :meth:`robot.config.RobotLoopConfig.deadline`), counted
from the arrival of the frame it answers when the caller gives that time, it sends
``speedj(0)`` at the acceleration bound (a controlled stop) and flags ``stale`` until a
fresh command comes. The owner can tell a
stalled loop from :meth:`ControlLoop.tick_age_ns`. Any exception
(from the arm, the safety check or the loop itself) stops the arm (``speed_stop``) and
leaves the loop in state ``"failed"`` with the exception kept in :attr:`ControlLoop.error`;
``"stopped"`` means a clean :meth:`ControlLoop.stop`.

Timing: a :class:`robot.timing.LoopTimer` schedules the ticks (sleep, then spin) and keeps
period, jitter, lateness, busy time and every overrun; :meth:`ControlLoop.timing` reports
them. Pass one timer to successive loops (one per episode) to get one report for a run.

Lockstep (the sim in fast pace): a loop that is never started can run its ticks on the
caller's thread with :meth:`ControlLoop.step`, on a virtual clock of whole ticks. Every
tick does the same work (safety, stale check, speedj) as in the thread.

What the owner must do (process-wide settings a library thread must not change):
:func:`robot.timing.configure_process` (frozen GC, a ~0.5 ms GIL switch interval, CPU
affinity). The thread puts itself under ``SCHED_FIFO`` at ``realtime_priority``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

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
from robot.timing import LoopTimer, TimingReport, set_thread_priority

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
            quarter of the tick. Ignored when ``timer`` is given.
        overrun_threshold: A tick starting later than this is an overrun, s; ``None``
            means 10 % of the tick (SenseAct's "hiccup" at 8.8 ms on an 8 ms tick).
            Ignored when ``timer`` is given.
        watchdog_hz: If set, arm the controller-side watchdog at this rate, Hz. The
            speedJ of every tick feeds it (ur_rtde writes each command's id to the
            watched register); the loop sends no separate kick, which would overwrite
            that speedJ before the control script reads it.
        stats_size: Ticks kept for the timing percentiles (the newest).
        timer: A :class:`~robot.timing.LoopTimer` with the arm's period to schedule and
            time the ticks (shared across loops for a run-long report); default: a new
            one from ``spin``, ``overrun_threshold`` and ``stats_size``.
        realtime_priority: ``SCHED_FIFO`` priority of the control thread (above the agent
            step's), set by the thread itself; None: normal scheduling.
        event_queue_size: Safety events kept until :meth:`events` drains them; more are
            dropped and counted (the loop never blocks on its owner).
        on_tick: Called at the end of every tick with ``(tick, t_ns, state, applied,
            stale)`` (the recorder); it must return at once (it runs in the tick).

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
                 event_queue_size: int = 256, timer: LoopTimer | None = None,
                 realtime_priority: int | None = None,
                 on_tick: Callable[[int, int, ArmState, np.ndarray, bool], None] | None = None):
        self._arm = arm
        self._safety = safety
        self.period = check_positive(arm.control_period, "arm.control_period", "s")
        self.acceleration = check_positive(acceleration, "acceleration", "rad/s^2")
        self.deadline = check_positive(deadline, "deadline", "s")
        self.stop_deceleration = (self.acceleration if stop_deceleration is None else
                                  check_positive(stop_deceleration, "stop_deceleration",
                                                 "rad/s^2"))
        self.watchdog_hz = (None if watchdog_hz is None else
                            check_positive(watchdog_hz, "watchdog_hz", "Hz"))
        if event_queue_size < 1:
            raise ValueError(f"event_queue_size must be >= 1, got {event_queue_size}")
        if timer is None:
            timer = LoopTimer(self.period, spin, overrun_threshold, stats_size)
        elif abs(timer.period - self.period) > 1e-12:
            raise ValueError(f"timer period {timer.period} s != arm control period {self.period} s")
        self.timer = timer
        self.realtime_priority = realtime_priority
        self._on_tick = on_tick
        self._period_ns = timer.period_ns
        self._deadline_ns = round(self.deadline * 1e9)
        self._virtual_ns: int | None = None  # lockstep clock (step()), None when threaded

        # Newest command (written by set_command, read by the loop), under _cmd_lock.
        self._cmd_lock = threading.Lock()
        self._cmd = np.zeros(N_JOINTS)
        self._cmd_t_ns = 0
        self._have_cmd = False
        self._started_ns = 0
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
        self._started_ns = time.perf_counter_ns()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._thread.start()
        logger.info("control loop started: tick %.1f ms, deadline %.0f ms, safety %s",
                    self.period * 1e3, self.deadline * 1e3,
                    "on" if self._safety is not None else "OFF")

    def set_command(self, qd: np.ndarray, t_ns: int | None = None) -> None:
        """Hand the loop a new joint-velocity command; it replaces any older one.

        Never blocks on the loop (a short lock around a 6-value copy). The command's age
        for the stale check counts from ``t_ns``, on the loop's clock: a command computed
        from an old frame is stale however recently it arrived.

        Args:
            qd: float (6,) joint velocities, rad/s (before the safety limits).
            t_ns: When the information behind the command was current, ns on the loop's
                clock (``time.perf_counter_ns``), e.g. the capture of the frame it answers;
                also kept for the record (:attr:`ControlStatus.command_t_ns`). ``None`` or
                a future time: now.

        Raises:
            ValueError: If ``qd`` is not 6 finite values.
        """
        qd = as_joint_vector(qd, "command")
        now = self._now()
        with self._cmd_lock:
            self._cmd[:] = qd
            self._cmd_t_ns = now if t_ns is None else min(int(t_ns), now)
            self._have_cmd = True

    def tick_age_ns(self) -> int:
        """Time since the last tick started (or since :meth:`start`, before one), ns.

        A running loop ticks every ``control_period``; an age of several agent periods
        means the control thread is stalled (the owner stops the episode; the
        controller-side watchdog stops the arm). 0 in lockstep or before :meth:`start`.
        """
        if self._thread is None:
            return 0
        with self._status_lock:
            last = max(self._applied_t_ns, self._started_ns)
        return time.perf_counter_ns() - last

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
            if self._state == "running":  # lockstep: stop the arm from this thread
                try:
                    self._arm.speed_stop(self.stop_deceleration)
                except BaseException as err:
                    self._fail(err)
                    raise
            if self._state in ("idle", "running"):
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
        """Tick timing statistics so far (safe to call while running; empty in lockstep)."""
        return self.timer.report()

    def step(self, n: int) -> None:
        """Run ``n`` ticks now, on the caller's thread (lockstep; the sim in fast pace).

        Time is virtual: each tick advances the loop's clock by one period, so a command
        is stale after ``deadline`` worth of ticks without :meth:`set_command`, however
        long the caller took between calls. On an error the arm is stopped, the loop is
        marked ``failed`` and the error is raised.

        Args:
            n: Ticks to run, >= 0.

        Raises:
            RuntimeError: If the loop thread was started, or the loop has failed/stopped.
            Exception: Whatever the arm or the safety check raised.
        """
        if self._thread is not None or self._state not in ("idle", "running"):
            raise RuntimeError(f"step() needs a loop that was never started (state "
                               f"{self._state}, thread {'yes' if self._thread else 'no'})")
        if self._virtual_ns is None:
            self._virtual_ns = 0
            if self.watchdog_hz is not None:
                self._arm.set_watchdog(self.watchdog_hz)
        self._state = "running"
        try:
            for _ in range(int(n)):
                self._virtual_ns += self._period_ns
                self._tick(self._virtual_ns)
        except BaseException as err:
            logger.error("control loop (lockstep) failed: %r; stopping the arm", err)
            self._stop_arm_after(err)
            raise

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

    def _now(self) -> int:
        return time.perf_counter_ns() if self._virtual_ns is None else self._virtual_ns

    def _stop_arm_after(self, err: BaseException) -> None:
        try:
            self._arm.speed_stop(self.stop_deceleration)
        except BaseException as stop_err:
            logger.critical("speed_stop after the failure failed too: %r", stop_err)
        self._fail(err)

    def _run(self) -> None:
        arm, timer = self._arm, self.timer
        set_thread_priority(self.realtime_priority, "control thread")
        try:
            if self.watchdog_hz is not None:
                arm.set_watchdog(self.watchdog_hz)
            timer.restart()
            while not self._stop_event.is_set():
                start = timer.wait()
                self._tick(start)
                timer.done(start)
            arm.speed_stop(self.stop_deceleration)
            with self._status_lock:
                if self._state == "running":
                    self._state = "stopped"
            logger.info("control loop stopped after %d ticks", self._ticks)
        except BaseException as err:
            logger.error("control loop failed: %r; stopping the arm", err)
            self._stop_arm_after(err)

    def _tick(self, now: int) -> None:
        arm = self._arm
        with self._cmd_lock:
            fresh = self._have_cmd and now - self._cmd_t_ns <= self._deadline_ns
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
                logger.warning("no command younger than %.0f ms: stopping the arm",
                               (now - self._cmd_t_ns) / 1e6)
        arm.speedj(applied, self.acceleration)  # also feeds the controller's watchdog
        with self._status_lock:
            self._applied[:] = applied
            self._applied_t_ns = now
            self._applied_cmd_t_ns = cmd_t_ns if fresh else None
            self._arm_state = state
            self._stale = not fresh
            self._ticks += 1
        if self._on_tick is not None:
            self._on_tick(self._ticks - 1, now, state, applied, not fresh)

    def _report(self, now: int, applied: np.ndarray,
                interventions: tuple[Intervention, ...]) -> None:
        self.intervention_ticks += 1
        event = SafetyEvent(tick=self._ticks, t_ns=now, requested=self._requested.copy(),
                            applied=applied.copy(), interventions=interventions)
        try:
            self._events.put_nowait(event)
        except queue.Full:
            self.dropped_events += 1
