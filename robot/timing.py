"""Periodic loops of the robot process: sleep-then-spin scheduling, timing stats, OS setup.

:class:`LoopTimer` is the clock of every periodic loop of the robot process (the
control tick and the 40 ms agent step). :meth:`LoopTimer.wait` sleeps until ``spin``
before the next scheduled start, then busy-waits on ``time.perf_counter_ns`` (SenseAct's
agent loop: sleep to 1 ms before the deadline, then spin). It records each start's
lateness, the period between starts and the work done per cycle into preallocated rings
(no allocation per cycle), and every overrun (a start more than ``overrun_threshold``
late) with its size. A start a whole period or more late moves the schedule on (the
missed cycles are counted, never run in a burst).

:func:`configure_process` applies the process-wide settings a real-time loop needs
(frozen GC, a short GIL switch interval, CPU affinity), :func:`set_thread_priority` puts
one loop thread under ``SCHED_FIFO`` where permitted, each saying in one line what it
could not apply; ``docs/realtime.md`` describes the OS setup of a robot PC.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingReport:
    """Timing of a periodic loop over its newest ``samples`` cycles; all times ms.

    Attributes:
        nominal_ms: The loop's period.
        samples: Cycles the percentiles are taken over (the rings keep the newest).
        period_p50_ms / period_p99_ms / period_max_ms: Time between cycle starts.
        jitter_p50_ms / jitter_p99_ms / jitter_max_ms: ``|period - nominal|``.
        late_p50_ms / late_p99_ms / late_max_ms: Cycle start after its scheduled time.
        busy_p50_ms / busy_p99_ms / busy_max_ms: Work per cycle (from the start to
            :meth:`LoopTimer.done`).
        overruns: Cycles (over the whole run) that started more than the overrun
            threshold late.
        overrun_threshold_ms: That threshold.
        overrun_sizes_ms: Lateness of the newest overruns (up to 1024).
        skipped: Whole cycles missed and not made up (the schedule moved on).
        cycles: Cycles over the whole run.
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
    overrun_threshold_ms: float
    overrun_sizes_ms: tuple[float, ...] = field(default=())
    skipped: int = 0
    cycles: int = 0


class SampleRing:
    """Preallocated int64 ring of the newest ``size`` samples (e.g. durations, ns).

    Args:
        size: Samples kept, >= 1.
    """

    def __init__(self, size: int):
        self.data = np.zeros(size, np.int64)
        self.count = 0

    def push(self, value: int) -> None:
        """Add one sample (the oldest drops out when full)."""
        self.data[self.count % len(self.data)] = value
        self.count += 1

    def values(self) -> np.ndarray:
        """int64 (n,) the kept samples, oldest first (a copy)."""
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


class LoopTimer:
    """Schedule and timing statistics of one periodic loop (see the module docstring).

    Not thread-safe for writing: one loop thread calls :meth:`wait` / :meth:`done`;
    :meth:`report` may be called from any thread (it copies the rings).

    Args:
        period: Loop period, s, > 0.
        spin: Busy-wait before each scheduled start, s, >= 0 (clamped to a quarter of
            the period); the loop sleeps until then.
        overrun_threshold: A start later than this is an overrun, s; None means 10 % of
            the period (SenseAct's "hiccup": 8.8 ms on an 8 ms tick).
        stats_size: Cycles kept for the percentiles (the newest), >= 1.

    Raises:
        ValueError: If a duration is out of range or ``stats_size`` < 1.
    """

    def __init__(self, period: float, spin: float = 0.0005,
                 overrun_threshold: float | None = None, stats_size: int = 16384):
        if not period > 0:
            raise ValueError(f"period must be > 0 s, got {period}")
        if not spin >= 0:
            raise ValueError(f"spin must be >= 0 s, got {spin}")
        if overrun_threshold is not None and not overrun_threshold > 0:
            raise ValueError(f"overrun_threshold must be > 0 s, got {overrun_threshold}")
        if stats_size < 1:
            raise ValueError(f"stats_size must be >= 1, got {stats_size}")
        self.period = float(period)
        self.period_ns = round(period * 1e9)
        self.spin_ns = min(round(spin * 1e9), self.period_ns // 4)
        threshold = 0.1 * period if overrun_threshold is None else overrun_threshold
        self.overrun_ns = round(threshold * 1e9)
        self._periods = SampleRing(stats_size)
        self._late = SampleRing(stats_size)
        self._busy = SampleRing(stats_size)
        self._overrun_sizes = SampleRing(1024)
        self.overruns = 0  #: Overruns over the whole run.
        self.skipped = 0  #: Whole cycles missed over the whole run.
        self.cycles = 0  #: Cycles started over the whole run.
        self._scheduled: int | None = None
        self._last_start = 0

    def restart(self, now_ns: int | None = None) -> None:
        """Schedule the next cycle at ``now`` (after a pause, e.g. an episode reset).

        No period sample spans the pause.

        Args:
            now_ns: ``time.perf_counter_ns()`` now (default: read the clock).
        """
        self._scheduled = time.perf_counter_ns() if now_ns is None else int(now_ns)
        self._last_start = 0

    def wait(self) -> int:
        """Wait for the next scheduled start (sleep, then spin) and record its timing.

        The first call (or the first after :meth:`restart`) starts at once.

        Returns:
            The cycle's start, ``time.perf_counter_ns()``.
        """
        if self._scheduled is None:
            self.restart()
        target = self._scheduled
        remaining = target - time.perf_counter_ns()
        if remaining > self.spin_ns:
            time.sleep((remaining - self.spin_ns) / 1e9)
        while time.perf_counter_ns() < target:
            pass
        start = time.perf_counter_ns()
        late = start - target
        period = self.period_ns
        if late >= period:  # whole cycles missed: move the schedule on, no burst
            missed = late // period
            self.skipped += missed
            target += missed * period
        if self._last_start:
            self._periods.push(start - self._last_start)
        self._last_start = start
        self._late.push(late)
        if late > self.overrun_ns:
            self.overruns += 1
            self._overrun_sizes.push(late)
        self.cycles += 1
        self._scheduled = target + period
        return start

    def done(self, start_ns: int) -> None:
        """Record the work of the cycle that started at ``start_ns`` (until now)."""
        self._busy.push(time.perf_counter_ns() - start_ns)

    def report(self) -> TimingReport:
        """Timing statistics so far (see :class:`TimingReport`)."""
        periods = self._periods.values()
        p50, p99, pmax = _percentiles_ms(periods)
        j50, j99, jmax = _percentiles_ms(np.abs(periods - self.period_ns))
        l50, l99, lmax = _percentiles_ms(self._late.values())
        b50, b99, bmax = _percentiles_ms(self._busy.values())
        sizes = tuple(float(v) / 1e6 for v in self._overrun_sizes.values())
        return TimingReport(
            nominal_ms=self.period * 1e3, samples=int(periods.size),
            period_p50_ms=p50, period_p99_ms=p99, period_max_ms=pmax,
            jitter_p50_ms=j50, jitter_p99_ms=j99, jitter_max_ms=jmax,
            late_p50_ms=l50, late_p99_ms=l99, late_max_ms=lmax,
            busy_p50_ms=b50, busy_p99_ms=b99, busy_max_ms=bmax,
            overruns=self.overruns, overrun_threshold_ms=self.overrun_ns / 1e6,
            overrun_sizes_ms=sizes, skipped=self.skipped, cycles=self.cycles)


def latency_percentiles_ms(samples_ns: np.ndarray) -> dict[str, float]:
    """p50 / p99 / max of latency samples.

    Args:
        samples_ns: int64 (N,) latencies, ns.

    Returns:
        ``{"p50_ms", "p99_ms", "max_ms", "samples"}`` (zeros when empty).
    """
    p50, p99, pmax = _percentiles_ms(np.asarray(samples_ns, np.int64))
    return {"p50_ms": p50, "p99_ms": p99, "max_ms": pmax, "samples": int(np.size(samples_ns))}


def configure_process(cpus: list[int] | None, switch_interval: float = 0.0005) -> list[str]:
    """Apply the process-wide settings of a real-time robot process.

    - ``gc.collect(); gc.freeze()``: existing objects leave the collector's generations,
      so its passes stay short (the loops allocate little per cycle);
    - ``sys.setswitchinterval(switch_interval)``: a thread holding the GIL (rendering,
      inference) is asked to hand it over after this long, not the default 5 ms;
    - ``os.sched_setaffinity(0, cpus)`` when ``cpus`` is given.

    Args:
        cpus: CPU indices to pin the process to, or None to leave affinity alone.
        switch_interval: GIL switch interval, s.

    Returns:
        Notices of what could not be applied (each also logged as one warning line).
    """
    notices: list[str] = []
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(switch_interval)
    if cpus:
        try:
            os.sched_setaffinity(0, cpus)
        except (OSError, ValueError) as err:
            notices.append(f"CPU affinity {cpus} not applied ({err}); the loops share all CPUs")
    for notice in notices:
        logger.warning("%s", notice)
    return notices


_priority_notice_given = False


def set_thread_priority(priority: int | None, name: str) -> str | None:
    """Run the calling thread under ``SCHED_FIFO`` at ``priority`` (Linux: per thread).

    Threads the caller creates afterwards inherit the policy, so call it at the top of
    the loop thread itself, after helper threads (the sim's GL thread) exist. Needs root,
    ``CAP_SYS_NICE`` or an ``rtprio`` limit (docs/realtime.md).

    Args:
        priority: 1..99, or None to leave the thread at normal scheduling.
        name: The loop's name, for the notice.

    Returns:
        None when applied (or not asked for), else the notice; the first refusal in a
        process is logged as one warning line.
    """
    global _priority_notice_given
    if priority is None:
        return None
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(priority)))
        return None
    except (OSError, AttributeError) as err:
        notice = (f"SCHED_FIFO priority {priority} for the {name} not permitted ({err}); "
                  "running at normal priority, expect more jitter (see docs/realtime.md)")
        if not _priority_notice_given:
            _priority_notice_given = True
            logger.warning("%s", notice)
        return notice
