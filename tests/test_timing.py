"""LoopTimer: schedule, overruns with their sizes, skipped cycles without a burst."""

from __future__ import annotations

import time

import numpy as np
import pytest

from robot.timing import LoopTimer, SampleRing, latency_percentiles_ms


def test_a_late_cycle_is_an_overrun_and_the_schedule_moves_on():
    timer = LoopTimer(0.01, spin=0.001, overrun_threshold=0.002)
    starts = [timer.wait()]
    time.sleep(0.035)  # work of 3.5 periods: 3 cycles missed
    starts.append(timer.wait())
    starts.append(timer.wait())
    report = timer.report()
    assert report.overruns >= 1 and report.skipped >= 2
    assert max(report.overrun_sizes_ms) > 2.0
    # No burst: the cycle after the late one waits for its own slot.
    assert (starts[2] - starts[1]) / 1e6 > 2.0
    assert report.cycles == 3


def test_restart_drops_the_gap_from_the_period_statistics():
    timer = LoopTimer(0.005, spin=0.0005)
    for _ in range(5):
        timer.done(timer.wait())
    time.sleep(0.05)  # e.g. an episode reset
    timer.restart()
    for _ in range(5):
        timer.done(timer.wait())
    report = timer.report()
    assert report.samples == 8  # 4 periods in each half, none across the pause
    assert report.period_max_ms < 40  # the 50 ms pause is not a period
    assert report.busy_p50_ms >= 0 and report.nominal_ms == 5.0


def test_ring_keeps_the_newest_in_order_and_percentiles():
    ring = SampleRing(4)
    for v in range(1, 7):
        ring.push(v * 1_000_000)
    assert ring.values().tolist() == [3e6, 4e6, 5e6, 6e6]
    stats = latency_percentiles_ms(ring.values())
    assert stats["max_ms"] == 6.0 and stats["samples"] == 4
    assert latency_percentiles_ms(np.zeros(0, np.int64))["p99_ms"] == 0.0


@pytest.mark.parametrize("kwargs", [dict(period=0), dict(period=0.01, spin=-1),
                                    dict(period=0.01, overrun_threshold=0),
                                    dict(period=0.01, stats_size=0)])
def test_bad_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        LoopTimer(**kwargs)
