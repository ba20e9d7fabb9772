"""Rerun views: a recorded session replayed into an .rrd, the live view of the robot loop
and of ``madi train --sync``, read back with Rerun's own reader; the missing [viz] extra."""

from __future__ import annotations

import signal

import numpy as np
import pyarrow as pa
import pytest
import torch
from rerun.chunk import RrdReader
from test_cli import TINY
from test_extras import VIZ_EXTRA, assert_one_line_naming, madi_without
from test_session_log import record_session, small_config

from learner.agent import MadiSacAgent
from learner.checkpoint import save_policy
from learner.policy import MadiPolicy
from madi.cli import main
from robot.assemble import run_robot
from robot.kinematics import flange_pose
from robot.rerun_log import RerunView
from robot.runner import spaces_of
from robot.session_log import SessionLog


def read_rrd(path) -> dict[str, pa.Table]:
    """Every entity's timed rows (static ones left out), in log-time order."""
    batches: dict[str, list[pa.RecordBatch]] = {}
    for chunk in RrdReader(path).stream():
        if not chunk.is_static:
            batches.setdefault(chunk.entity_path, []).append(chunk.to_record_batch())
    return {entity: pa.Table.from_batches(b).sort_by([("time", "ascending")])
            for entity, b in batches.items()}


def values(table: pa.Table, column: str) -> np.ndarray:
    """A Scalars / Transform3D column as an array, one row per logged row."""
    return np.array(table.column(column).to_pylist(), dtype=np.float64)


def images(table: pa.Table, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([np.asarray(row[0], np.uint8).reshape(shape)
                     for row in table.column("Image:buffer").to_pylist()])


def newest_frames(log: SessionLog) -> np.ndarray:
    """The newest camera frame of each transition, (N, H, W, 3)."""
    return np.stack([t.frames[-1].transpose(1, 2, 0) for t in log.transitions()])


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    path, _ = record_session(tmp_path_factory.mktemp("rerun"), small_config(), steps=30)
    return path


def test_a_replayed_session_holds_every_frame_joint_command_and_event(session, tmp_path):
    out = tmp_path / "view" / "session.rrd"
    assert main(["replay", str(session), "--rerun", "--rerun-save", str(out)]) == 0
    log = SessionLog(session)
    rrd = read_rrd(out)
    frames = newest_frames(log)
    camera = rrd["/camera/image"]
    assert camera.num_rows == len(frames) == 30
    assert np.array_equal(images(camera, frames.shape[1:]), frames)
    states = log.arm_states()
    q = rrd["/arm/q"]
    assert np.array_equal(values(q, "Scalars:scalars"), states["q"])
    assert np.array_equal(values(rrd["/arm/qd"], "Scalars:scalars"), states["qd"])
    assert q.column("agent_step").to_pylist() == list(range(len(states)))
    ticks = log.control_ticks()
    assert np.array_equal(values(rrd["/control/speedj"], "Scalars:scalars"), ticks["applied"])
    rewards = [t.reward for t in log.transitions()]
    assert np.allclose(values(rrd["/task/reward"], "Scalars:scalars")[:, 0], rewards)
    # the return restarts with each episode: 20-step episodes, 30 transitions
    returns = values(rrd["/task/return"], "Scalars:scalars")[:, 0]
    assert np.allclose(returns, np.r_[np.cumsum(rewards[:20]), np.cumsum(rewards[20:])])
    texts = [row[0] for row in rrd["/events"].column("TextLog:text").to_pylist()]
    assert sum(t.startswith("episode_end:") for t in texts) == 2
    assert any(t.startswith("reset:") for t in texts)
    tool0 = values(rrd["/world/tool0"], "Transform3D:translation")[:, 0]  # float32
    assert np.allclose(tool0, [flange_pose(qi)[:3, 3] for qi in states["q"]], atol=1e-6)
    assert rrd["/world/arm"].num_rows == len(states)
    assert "/camera/mask" not in rrd  # no policy, no masks


def test_a_replay_with_a_policy_holds_its_mask_of_every_frame(session, tmp_path):
    cfg = small_config()
    sp = spaces_of(cfg)
    checkpoint = save_policy(tmp_path / "policy.pt", MadiSacAgent(
        cfg.agent, sp.image_shape, sp.proprio_dim, sp.action_dim))
    out = tmp_path / "masks.rrd"
    assert main(["replay", str(session), "--rerun", "--rerun-save", str(out),
                 "--checkpoint", str(checkpoint)]) == 0
    frames = newest_frames(SessionLog(session))
    masks = images(read_rrd(out)["/camera/mask"], frames.shape[1:3])
    policy = MadiPolicy.from_checkpoint(checkpoint)
    expected = np.stack([(policy.mask(f) * 255).astype(np.uint8) for f in frames])
    assert np.array_equal(masks, expected)


def test_the_live_view_of_the_robot_process_shows_what_its_session_log_records(tmp_path):
    cfg = small_config()
    cfg.train.total_steps = 25
    view = RerunView("live", tmp_path / "live.rrd", cfg.arm.model, mask_period=0.0)
    # run_robot sets the process's signal handlers and torch threads: put them back after
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    threads = torch.get_num_threads()
    try:  # the robot process alone (no learner), fast pace; its view gets the local policy
        run_robot(cfg, None, tmp_path, keys=None, show_progress=False, view=view)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
        view.close()
    log = SessionLog(tmp_path / "session.mcap")
    rrd = read_rrd(tmp_path / "live.rrd")
    frames = newest_frames(log)
    assert np.array_equal(images(rrd["/camera/image"], frames.shape[1:]), frames)
    assert rrd["/camera/mask"].num_rows == len(frames) == 25
    assert np.array_equal(values(rrd["/arm/q"], "Scalars:scalars"), log.arm_states()["q"])
    assert np.array_equal(values(rrd["/control/speedj"], "Scalars:scalars"),
                          log.control_ticks()["applied"])
    assert rrd["/events"].num_rows == len(log.events())


def test_train_sync_with_a_rerun_view_shows_camera_mask_reward_and_joints(tmp_path):
    out = tmp_path / "view.rrd"
    assert main(["train", "--sync", "--steps", "45", "--out", str(tmp_path / "run"),
                 "--viz", "rerun", "--viz-save", str(out), *TINY]) == 0
    rrd = read_rrd(out)
    assert rrd["/camera/image"].num_rows == rrd["/task/reward"].num_rows == 45
    assert rrd["/camera/mask"].num_rows >= 1  # at most one every 0.5 s, the first at once
    episodes = 2  # 30-step episodes
    assert rrd["/arm/q"].num_rows == 45 + episodes
    assert rrd["/control/speedj"].num_rows == 45


@pytest.mark.parametrize(("argv", "error"), [
    (["replay", "SESSION", "--rerun-save", "X", "--view", "v.mp4"], "--rerun-save goes"),
    (["train", "--sync", "--viz-save", "X", "--steps", "5", "--out", "RUN"], "--viz-save goes"),
])
def test_a_save_file_without_its_view_is_refused(argv, error, session, tmp_path, caplog):
    names = {"SESSION": str(session), "X": str(tmp_path / "x.rrd"), "RUN": str(tmp_path / "run")}
    assert main([names.get(arg, arg) for arg in argv]) == 2
    assert error in caplog.text
    assert not (tmp_path / "x.rrd").exists()


@pytest.mark.parametrize("argv", [
    ["replay", "SESSION", "--rerun", "--rerun-save", "x.rrd"],
    ["train", "--sync", "--steps", "10", "--viz", "rerun", "--viz-save", "x.rrd"],
])
def test_a_missing_viz_extra_is_one_line_naming_it(argv, session, tmp_path):
    argv = [str(session) if arg == "SESSION" else arg for arg in argv]
    assert_one_line_naming("viz", madi_without(VIZ_EXTRA, *argv, cwd=tmp_path))
    assert not (tmp_path / "x.rrd").exists()
