"""RobotRunner in this process: real MuJoCo mirror, real ZeroMQ sockets (ipc in tmp_path).

The learner side is a real LearnerLink serviced by a test thread, or raw sockets that
send garbage, so the robot's own loop is checked against each failure of its peer.
"""

from __future__ import annotations

import contextlib
import csv
import json
import sys
import threading
import time

import numpy as np
import pytest
import zmq
from polling import wait_for

from learner.policy import MadiPolicy
from link.endpoints import LearnerLink, LinkAddresses, RobotLink
from link.messages import HelloAck, Weights, encode, encode_packed
from robot.backends.sim import SimRig
from robot.config import config_from_dict
from robot.runner import RobotRunner, spaces_of
from robot.supervisor import LearnerSupervisor

LINK = dict(heartbeat_interval_s=0.05, peer_timeout_s=0.4)


def small_config(**robot):
    return config_from_dict({
        "camera": {"subsample": 8},
        "task": {"episode_steps": 20},
        "arm": {"reset_duration": 0.1},
        "sim": {"pace": "fast"},
        "agent": {"masker_filters": 4, "encoder_filters": 8, "mlp_hidden": [32, 32]},
        "robot": {"learner_wait": 5.0, **robot},
    })


def episodes(run_dir):
    with open(run_dir / "episodes.csv") as f:
        return list(csv.DictReader(f))


class FakeLearner:
    """A real LearnerLink serviced by a thread; publishes given weights on demand."""

    def __init__(self, addresses, cfg):
        self.link = LearnerLink(addresses, cfg.task_hash(), spaces_of(cfg), **LINK)
        self.received = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.received += self.link.recv_transitions(timeout_ms=5)
            self.link.service()

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.link.close()


def run_in_thread(runner):
    result = {}
    thread = threading.Thread(target=lambda: result.update(runner.run()), daemon=True)
    thread.start()
    return thread, result



def test_lockstep_episodes_without_a_learner(tmp_path):
    cfg = small_config()
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path, link=None, total_steps=45, realtime=False)
    summary = runner.run()
    rows = episodes(tmp_path)
    assert [int(r["steps"]) for r in rows] == [20, 20, 5]  # the last episode is cut at 45
    assert [r["end"] for r in rows] == ["time_limit", "time_limit", "steps_done"]
    assert summary["env_steps"] == 45 and summary["episodes"] == 3
    assert [int(r["random_steps"]) for r in rows] == [20, 20, 5]
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["pace"] == "fast" and timing["obs_to_action"]["samples"] == 45
    assert not runner.rig.is_connected  # the rig is closed and the arm was stopped


def test_transitions_reach_the_learner_and_weights_reach_the_policy(tmp_path):
    cfg = small_config()
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    learner = FakeLearner(addrs, cfg)
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "run", link, total_steps=200,
                         realtime=False)
    spaces = spaces_of(cfg)
    source = MadiPolicy.from_config(cfg.agent, spaces.image_shape, spaces.proprio_dim,
                                    spaces.action_dim)
    thread, _ = run_in_thread(runner)
    try:
        assert wait_for(lambda: len(learner.received) >= 20)
        state = {m: getattr(source, m).state_dict() for m in ("masker", "encoder", "actor")}
        learner.link.publish_weights(Weights.from_state_dicts(7, state))
        assert wait_for(lambda: runner.policy_version == 7)
        for name, p in source.actor.state_dict().items():
            assert np.array_equal(runner.policy.actor.state_dict()[name].numpy(), p.numpy())
        thread.join(60)
    finally:
        runner.request_stop()
        thread.join(10)
        learner.close()
        link.close()
    assert not thread.is_alive()
    versions = [t.policy_version for t in learner.received]
    assert versions[0] == 0 and versions[-1] == 7
    assert versions == sorted(versions)


@contextlib.contextmanager
def running_beside(tmp_path, cfg, learner_counters, total_steps):
    """A runner in a thread beside a FakeLearner whose heartbeats carry the counters."""
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    learner = FakeLearner(addrs, cfg)
    learner.link.status_counters.update(learner_counters)
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "run", link, total_steps=total_steps,
                         realtime=False)
    thread, _ = run_in_thread(runner)
    try:
        yield runner, learner, thread
    finally:
        runner.request_stop()
        thread.join(10)
        learner.close()
        link.close()


def test_sim_robot_waits_between_episodes_until_the_learner_has_its_updates(tmp_path):
    cfg = small_config()  # 20-step episodes; publish_every (the slack) is 10 updates
    with running_beside(tmp_path, cfg, {"updates": 0, "updates_due": 50}, 60) as (
            runner, learner, thread):
        assert wait_for(lambda: runner.waiting_for_learner)  # at an episode boundary
        held_at = runner.env_steps
        time.sleep(0.5)  # 40 updates short: still held
        assert runner.waiting_for_learner and runner.env_steps == held_at
        assert held_at % 20 == 0
        learner.link.status_counters.update({"updates": 40})  # within the slack
        thread.join(30)
    assert not thread.is_alive() and runner.env_steps == 60
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())
    assert timing["held_for_learner_s"] >= 0.5 and timing["learner_updates"] == 40


def test_robot_does_not_wait_with_hold_off(tmp_path):
    cfg = small_config(hold_for_learner=False)
    with running_beside(tmp_path, cfg, {"updates": 0, "updates_due": 10_000}, 60) as (
            runner, _, thread):
        thread.join(60)
    assert runner.env_steps == 60 and runner.held_for_learner_s == 0.0


def test_sim_robot_waits_for_a_late_learner_and_loses_no_transition(tmp_path):
    """learner_wait unset in the sim: no time limit, nothing acted or dropped before the
    learner answers (a CUDA learner took 85 s to start on a loaded machine)."""
    cfg = small_config(learner_wait=None)
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "run", link, total_steps=40,
                         realtime=False)
    thread, _ = run_in_thread(runner)
    learner = None
    try:
        assert wait_for(lambda: runner.waiting_for_learner)
        time.sleep(1.0)
        assert runner.env_steps == 0 and runner.waiting_for_learner
        learner = FakeLearner(addrs, cfg)
        thread.join(60)
        assert wait_for(lambda: len(learner.received) == 40)
    finally:
        runner.request_stop()
        thread.join(10)
        link.close()
        if learner is not None:
            learner.close()
    assert not thread.is_alive() and runner.env_steps == 40
    assert link.counters().get("dropped_no_peer", 0) == 0


def test_a_learner_that_dies_before_its_handshake_ends_the_unlimited_wait(tmp_path):
    """madi train's supervisor sees the crash during the first wait and, with no restart
    left, stops the run: the robot never hangs on a learner that will not come."""
    cfg = small_config(learner_wait=None)
    link = RobotLink(LinkAddresses.from_base(f"ipc://{tmp_path}/link"), cfg.task_hash(),
                     spaces_of(cfg), **LINK)
    supervisor = LearnerSupervisor(
        lambda restart, refill: [sys.executable, "-c", "raise SystemExit(3)"], tmp_path, 0)
    supervisor.start()
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "run", link, total_steps=40,
                         realtime=False, progress=supervisor.check)
    thread, result = run_in_thread(runner)
    try:
        thread.join(30)
    finally:
        runner.request_stop()
        thread.join(10)
        link.close()
    assert result["stop_reason"] == "learner crashed" and result["env_steps"] == 0
    assert "exit code 3" in supervisor.failure


def test_learner_wait_defaults_to_a_limit_where_the_robot_cannot_hold():
    unset = dict(learner_wait=None)
    for robot, wait in ((unset, None), ({**unset, "hold_for_learner": False}, 60.0),
                        ({"learner_wait": 2.0}, 2.0)):
        cfg = small_config(**robot)
        assert RobotRunner(cfg, SimRig(cfg), "unused", None, 1, realtime=False
                           )._learner_wait() == wait


def test_learner_lost_in_stop_mode_holds_the_arm_until_a_learner_returns(tmp_path):
    cfg = small_config(on_learner_lost="stop")
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    learner = FakeLearner(addrs, cfg)
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    rig = SimRig(cfg)
    runner = RobotRunner(cfg, rig, tmp_path / "run", link, total_steps=10_000, realtime=False)
    thread, _ = run_in_thread(runner)
    learner2 = None
    try:
        assert wait_for(lambda: runner.env_steps >= 30)
        learner.close()
        # Mid-episode (end = learner_lost) or at an episode boundary: the arm is held.
        assert wait_for(lambda: runner.waiting_for_learner, 10)
        steps = runner.env_steps
        time.sleep(0.5)
        assert runner.env_steps == steps, "the robot must not act without its learner"
        assert np.allclose(rig.arm.read_state().qd, 0.0, atol=1e-3)  # the arm is stopped
        assert thread.is_alive()
        learner2 = FakeLearner(addrs, cfg)
        assert wait_for(lambda: runner.env_steps >= steps + 20, 20)
        assert wait_for(lambda: len(learner2.received) > 0)
    finally:
        runner.request_stop()
        thread.join(10)
        link.close()
        if learner2 is not None:
            learner2.close()
    assert not thread.is_alive()


def test_garbage_and_a_wrong_hash_from_the_learner_side_leave_the_loop_running(tmp_path):
    """A rogue peer bound where the learner should be: garbage on the weights channel,
    garbage and a wrong-hash ack on the control channel. The robot rejects and counts
    every message, never accepts the peer, and keeps stepping."""
    cfg = small_config()
    cfg.robot.learner_wait = 0.3
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    (tmp_path / "link").mkdir()
    ctx = zmq.Context()
    pub, router = ctx.socket(zmq.PUB), ctx.socket(zmq.ROUTER)
    pub.bind(addrs.weights)
    router.bind(addrs.control)
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path / "run", link, total_steps=10_000,
                         realtime=False)
    thread, _ = run_in_thread(runner)
    try:
        assert wait_for(lambda: runner.env_steps >= 20)
        bad_ack = HelloAck(True, "", "learner", "wrong-hash", "run", "rogue")
        weights = Weights.from_state_dicts(3, {"actor": {"w": np.ones(4, np.float32)}})
        for _ in range(30):
            pub.send(b"\xffnot a message")
            pub.send(encode_packed(weights))  # valid bytes, but from no accepted session
            if router.poll(10):
                identity = router.recv_multipart()[0]
                router.send_multipart([identity, b"garbage"])
                router.send_multipart([identity, *encode(bad_ack)])
            time.sleep(0.01)
        steps = runner.env_steps
        assert wait_for(lambda: runner.env_steps >= steps + 40)
    finally:
        runner.request_stop()
        thread.join(10)
        link.close()
        ctx.destroy(linger=0)
    counters = link.counters()
    reasons = counters["rejected_by_reason"]
    assert reasons.get("config_hash", 0) >= 1
    assert sum(reasons.values()) >= 5 and len(reasons) >= 2 and not link.accepted
    assert runner.policy_version == 0 and not thread.is_alive()


def test_fast_pace_is_refused_on_a_real_arm(tmp_path):
    from robot.backends.real import RealRig

    cfg = small_config()
    cfg.backend = "ur5"
    with pytest.raises(ValueError, match="fast pace .* RealRig"):
        RobotRunner(cfg, RealRig(cfg), tmp_path, None, realtime=False)


def test_a_stalled_control_thread_ends_the_episode_and_then_the_run(tmp_path):
    # The sim arm's speedJ hangs from its 30th call on (a control thread stuck in an arm
    # call): the agent step sees no tick for 2 agent periods, ends the episode, cannot stop
    # the thread and ends the run, since the arm is not confirmed stopped.
    from robot.backends.base import DeviceError

    cfg = small_config()
    cfg.sim.pace = "realtime"
    rig = SimRig(cfg)
    release, calls = threading.Event(), []
    speedj = rig.arm._speedj

    def hanging_speedj(qd, acceleration):
        calls.append(1)
        if len(calls) >= 30:
            release.wait(20)
        speedj(qd, acceleration)

    rig.arm._speedj = hanging_speedj
    runner = RobotRunner(cfg, rig, tmp_path, link=None, total_steps=40, realtime=True)
    try:
        with pytest.raises(DeviceError, match="control thread is stuck"):
            runner.run()
    finally:
        release.set()
    rows = episodes(tmp_path)
    assert rows[-1]["end"] == "control_stalled" and int(rows[-1]["steps"]) < 20


def test_a_camera_with_no_frame_stops_the_run_with_a_device_error(tmp_path, monkeypatch):
    # The render process (the sim camera) hangs mid-run (SIGSTOP): the read times out and
    # the run ends with a DeviceError naming the camera, the arm stopped and the rig closed.
    import os
    import signal

    import robot.backends.sim as sim_backend
    from robot.backends.base import DeviceError

    monkeypatch.setattr(sim_backend, "_RENDER_STALL_TIMEOUT", 0.5)
    cfg = small_config(camera_timeout=0.2)
    rig = SimRig(cfg)
    runner = RobotRunner(cfg, rig, tmp_path, link=None, total_steps=60, realtime=False)
    read, calls = rig.camera._read, []

    def read_then_hang(timeout):
        calls.append(1)
        if len(calls) == 30:
            os.kill(rig._core._render_process()._proc.pid, signal.SIGSTOP)
        return read(timeout)

    rig.camera._read = read_then_hang
    with pytest.raises(DeviceError, match="camera failed: sim render process did not answer"):
        runner.run()
    assert len(calls) == 30 and not rig.is_connected  # stopped and closed at the 30th read
    assert len(episodes(tmp_path)) == 1  # the first episode (20 steps) was written
