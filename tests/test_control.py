"""ControlLoop: streaming on the tick, stale-command stop, failures, stop(), safety.

Assertions are on the recorded command sequence; wall-clock bounds are generous because
the test machine is loaded (2 cores, a training run beside).
"""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest
from polling import wait_for

from robot.backends.base import Arm, ArmState, DeviceError, ProtectiveStopError
from robot.config import Config
from robot.control import ControlLoop
from robot.safety import SafetyLimits

PERIOD = 0.005
CMD = np.array([0.1, -0.2, 0.3, 0.0, 0.0, 0.0])


class FakeArm(Arm):
    """Test double at the Arm API: records every call with its time; can raise or stall."""

    name = "fake arm"

    def __init__(self, period=PERIOD, fail_after=None, stall_after=None):
        super().__init__()
        self.period = period
        self.calls: list[tuple[str, int, np.ndarray | None, float | None]] = []
        self.fail_after = fail_after
        self.stall_after = stall_after
        self.release = threading.Event()
        self.protective = False
        self.lock = threading.Lock()

    @property
    def control_period(self):
        return self.period

    def _connect(self):
        pass

    def _disconnect(self):
        pass

    def _read_state(self):
        return ArmState(np.zeros(6), np.zeros(6), time.perf_counter_ns(),
                        protective_stopped=self.protective)

    def _speedj(self, qd, acceleration):
        with self.lock:
            self.calls.append(("speedj", time.perf_counter_ns(), qd.copy(), acceleration))
            n = len(self.speedj_calls())
        if self.fail_after is not None and n > self.fail_after:
            raise DeviceError("RTDE link lost")
        if self.stall_after is not None and n > self.stall_after:
            self.release.wait(10)

    def _speed_stop(self, deceleration):
        with self.lock:
            self.calls.append(("speed_stop", time.perf_counter_ns(), None, deceleration))

    def _move_home(self, q, duration):
        pass

    def _set_watchdog(self, min_frequency):
        with self.lock:
            self.calls.append(("set_watchdog", time.perf_counter_ns(), None, min_frequency))


    def speedj_calls(self):
        return [c for c in self.calls if c[0] == "speedj"]

    def kinds(self):
        with self.lock:
            return [c[0] for c in self.calls]



def as_metrics(timing, prefix: str = "control") -> dict[str, float]:
    return {f"{prefix}/{k}": float(v) for k, v in timing.__dict__.items()
            if k != "overrun_sizes_ms"}


@pytest.fixture
def arm():
    with FakeArm() as a:
        yield a


def test_streams_the_newest_command_every_tick(arm):
    loop = ControlLoop(arm, None, acceleration=2.0, deadline=0.2, watchdog_hz=10.0)
    loop.start()
    t0 = time.perf_counter()
    second = CMD * 2
    while time.perf_counter() - t0 < 0.3:
        loop.set_command(CMD, t_ns=time.perf_counter_ns())
        time.sleep(0.01)
    loop.set_command(second)
    assert wait_for(lambda: np.allclose(loop.status().applied, second))
    assert loop.stop(2.0)
    elapsed = time.perf_counter() - t0
    assert loop.state == "stopped" and loop.error is None
    calls = arm.speedj_calls()
    kinds = arm.kinds()
    assert kinds[0] == "set_watchdog" and kinds[-1] == "speed_stop"
    # One speedj per tick: never more than the ticks that fit, at least a third of them.
    assert elapsed / PERIOD / 3 <= len(calls) <= elapsed / PERIOD + 2
    gaps = np.diff([c[1] for c in calls]) / 1e9
    assert 0.5 * PERIOD < np.median(gaps) < 2 * PERIOD
    sent = np.array([c[2] for c in calls])
    assert all(c[3] == 2.0 for c in calls)
    # Zero until the first command, then CMD, then the newest command only.
    first = int(np.argmax(np.any(sent != 0, axis=1)))
    assert np.all(sent[:first] == 0)
    rest = sent[first:]
    is_cmd, is_second = np.all(rest == CMD, axis=1), np.all(rest == second, axis=1)
    assert np.all(is_cmd | is_second)
    assert not np.any(is_cmd[int(np.argmax(is_second)):])  # never back to the old one
    status = loop.status()
    assert status.ticks == len(calls) and status.arm is not None
    timing = loop.timing()
    assert timing.samples == len(calls) - 1 and timing.nominal_ms == PERIOD * 1e3
    assert 0.5 * PERIOD * 1e3 < timing.period_p50_ms < 2 * PERIOD * 1e3
    assert timing.overruns == len(timing.overrun_sizes_ms)
    assert "control/jitter_p99_ms" in as_metrics(timing)


def test_stale_command_ramps_to_zero_within_deadline_plus_a_tick(arm):
    deadline = 0.05
    loop = ControlLoop(arm, None, acceleration=1.5, deadline=deadline)
    with loop:
        assert wait_for(lambda: loop.status().ticks > 2)
        assert loop.stale  # no command yet
        sent_at = time.perf_counter_ns()
        loop.set_command(CMD)
        assert wait_for(lambda: loop.status().ticks > 0 and not loop.stale)
        assert wait_for(lambda: loop.stale, timeout=5.0)
        status = loop.status()
        assert np.all(status.applied == 0) and status.command_t_ns is None
        assert loop.stale_stops == 1
    # Calls from ticks that started before the command arrived are zero; skip them.
    calls = [c for c in arm.speedj_calls() if c[1] >= sent_at]
    nonzero = np.any(np.array([c[2] for c in calls]) != 0, axis=1)
    assert nonzero.any() and not nonzero[-1]
    calls = calls[int(np.argmax(nonzero)):]
    nonzero = np.any(np.array([c[2] for c in calls]) != 0, axis=1)
    n_fresh = int(np.argmin(nonzero))
    assert np.all(np.array([c[2] for c in calls[:n_fresh]]) == CMD)
    assert not np.any(nonzero[n_fresh:])  # once stopped, it stays stopped
    # The command was followed for at most the ticks that fit in the deadline (+1 for the
    # tick already under way when it arrived), and then replaced by speedj(0) at the bound.
    assert n_fresh <= deadline / PERIOD + 2
    assert all(c[3] == 1.5 for c in calls[n_fresh:])
    first_zero_ns = calls[n_fresh][1]
    # Deadline + one tick, plus slack for a loaded machine.
    assert (first_zero_ns - sent_at) / 1e9 <= deadline + PERIOD + 0.1
    assert loop.state == "stopped"


def test_a_command_from_an_old_frame_is_stale_on_arrival(arm):
    with ControlLoop(arm, None, acceleration=1.0, deadline=0.05) as loop:
        for _ in range(20):  # arriving every 10 ms, but answering a frame 100 ms old
            loop.set_command(CMD, t_ns=time.perf_counter_ns() - 100_000_000)
            time.sleep(0.01)
        assert loop.stale and not np.any(arm.speedj_calls()[-1][2])
        assert all(not np.any(c[2]) for c in arm.speedj_calls())
        loop.set_command(CMD, t_ns=time.perf_counter_ns())
        assert wait_for(lambda: np.allclose(loop.status().applied, CMD))


def test_fresh_command_after_stale_resumes(arm):
    with ControlLoop(arm, None, acceleration=1.0, deadline=0.03) as loop:
        loop.set_command(CMD)
        assert wait_for(lambda: not loop.stale)
        assert wait_for(lambda: loop.stale)
        loop.set_command(-CMD)
        assert wait_for(lambda: np.allclose(loop.status().applied, -CMD))
    assert loop.stale_stops >= 1


def test_arm_exception_fails_the_loop_and_stops_the_arm():
    with FakeArm(fail_after=5) as arm:
        loop = ControlLoop(arm, None, acceleration=1.0, stop_deceleration=4.0)
        loop.start()
        loop.set_command(CMD)
        assert wait_for(lambda: loop.state == "failed")
        assert isinstance(loop.error, DeviceError) and "RTDE" in str(loop.error)
        assert loop.stop(2.0)
        kinds = arm.kinds()
        assert kinds[-1] == "speed_stop" and arm.calls[-1][3] == 4.0
        assert kinds.count("speedj") == 6
        with pytest.raises(RuntimeError, match="control loop failed"):
            loop.raise_if_failed()


def test_protective_stop_reported_by_the_arm_fails_the_loop(arm):
    loop = ControlLoop(arm, None, acceleration=1.0)
    loop.start()
    assert wait_for(lambda: loop.status().ticks > 0)
    arm.protective = True
    assert wait_for(lambda: loop.state == "failed")
    assert isinstance(loop.error, ProtectiveStopError)
    assert arm.kinds()[-1] == "speed_stop"
    loop.stop(2.0)


def test_stop_returns_within_its_timeout_when_the_arm_hangs():
    with FakeArm(stall_after=3) as arm:
        loop = ControlLoop(arm, None, acceleration=1.0)
        loop.start()
        assert wait_for(lambda: len(arm.speedj_calls()) > 3)
        age = loop.tick_age_ns()
        time.sleep(0.1)
        assert loop.tick_age_ns() >= age + 100_000_000  # no tick while stalled: it grows
        t0 = time.monotonic()
        assert loop.stop(timeout=0.2) is False
        assert time.monotonic() - t0 < 1.0
        assert loop.state == "failed" and isinstance(loop.error, TimeoutError)
        arm.release.set()  # the hung call returns: the thread stops the arm and ends
        assert wait_for(lambda: arm.kinds()[-1] == "speed_stop")
        assert loop.state == "failed"


def test_lifecycle_and_validation(arm):
    loop = ControlLoop(arm, None, acceleration=1.0)
    assert loop.state == "idle"
    with pytest.raises(ValueError, match="6 finite"):
        loop.set_command(np.ones(5))
    with pytest.raises(ValueError, match="deadline"):
        ControlLoop(arm, None, acceleration=1.0, deadline=0)
    loop.start()
    with pytest.raises(RuntimeError, match="already started"):
        loop.start()
    assert loop.stop(2.0) and loop.state == "stopped"
    assert loop.stop(2.0)  # a second stop is harmless
    never = ControlLoop(arm, None, acceleration=1.0)
    assert never.stop() and never.state == "stopped"


def test_safety_brakes_a_command_toward_a_joint_limit_on_the_sim_arm():
    from robot.backends.sim import SimRig

    cfg = Config()
    limits = SafetyLimits(cfg.safety, cfg.arm, cfg.task.agent_period)
    q0 = np.array(cfg.arm.q_home)
    q0[4] = np.deg2rad(cfg.safety.joint_high_deg[4] - 5.0)  # wrist 2, 5 deg below its limit
    toward = np.zeros(6)
    toward[4] = cfg.arm.speed_max
    with SimRig(cfg) as rig:
        rig.arm.move_home(q0, 0.0)
        loop = ControlLoop(rig.arm, limits, acceleration=cfg.arm.acceleration,
                           event_queue_size=8)
        loop.start()
        qs = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0 and len(qs) < 60:
            loop.set_command(toward)
            time.sleep(0.01)
            status = loop.status()
            if status.arm is not None:
                qs.append(status.arm.q[4])
            if loop.state != "running":
                break
        assert loop.stop(2.0), loop.error
        assert loop.state == "stopped"
        events = loop.events()
        assert events, "the command was never braked"
        assert any(i.kind == "joint_limit" for e in events for i in e.interventions)
        for e in events:
            assert np.all(e.requested == toward)
            assert np.all(e.applied == 0)  # a full brake
        assert max(qs) > q0[4]  # it did move toward the limit
        final = rig.arm.read_state()
        assert final.q[4] <= np.deg2rad(cfg.safety.joint_high_deg[4])
        np.testing.assert_allclose(final.qd, 0.0, atol=1e-6)  # stopped on loop.stop
        # Bounded queue: the newest events beyond its size are dropped and counted.
        assert len(events) <= 8
        assert len(events) + loop.dropped_events == loop.intervention_ticks
