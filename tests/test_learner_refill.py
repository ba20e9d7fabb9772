"""A learner restarted after a crash refills exactly what its checkpoint lacks.

In-process: a real LearnerProcess (bound on ipc, small networks) and a stream of link
transitions packed as the session recorder packs them (keyframes and deltas); and the
command line `madi train` restarts it with. The multi-process path (`madi train`
restarting a killed learner) is in test_async_train.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_learner_reference import SMALL

from learner.config import AgentConfig
from learner.process import LearnerProcess
from link.endpoints import LearnerLink
from link.messages import Spaces, Step, TransitionPacker

SPACES = Spaces((9, 16, 20), 4, 3)
EPISODES, STEPS = 4, 10  # 40 transitions; the checkpoint is taken after 23


def stream() -> list:
    """The transitions of 4 episodes of 10 steps, a keyframe every 7 messages."""
    packer = TransitionPacker(SPACES, keyframe_every=7)
    rng = np.random.default_rng(0)
    out = []
    for ep in range(EPISODES):
        frames = [rng.integers(0, 256, (3, 16, 20), dtype=np.uint8) for _ in range(3)]
        obs = {"image": np.concatenate(frames), "proprio": np.zeros(4, np.float32)}
        for t in range(STEPS):
            frames = [*frames[1:], rng.integers(0, 256, (3, 16, 20), dtype=np.uint8)]
            nxt = {"image": np.concatenate(frames), "proprio": np.full(4, t, np.float32)}
            out.append(packer.pack(Step(ep, t, obs, rng.uniform(-1, 1, 3).astype(np.float32), 0.5,
                                   nxt, False, t == STEPS - 1, frame_time_ns=t,
                                   action_time_ns=t, policy_version=0)))
            obs = nxt
    return out


@pytest.fixture
def learner(tmp_path):
    """``learner(name, **kwargs)``: a LearnerProcess writing to tmp_path/run."""
    links = []

    def make(name: str, **kwargs) -> LearnerProcess:
        link = LearnerLink(f"ipc://{tmp_path}/{name}", "hash", SPACES)
        links.append(link)
        return LearnerProcess(AgentConfig(**SMALL), link, tmp_path / "run", **kwargs)

    yield make
    for link in links:
        link.close()


@pytest.mark.parametrize("save_replay", [True, False])
def test_refill_takes_back_the_transitions_since_the_checkpoint(tmp_path, learner,
                                                                save_replay):
    transitions = stream()
    crashed = learner("a", save_replay=save_replay)
    crashed.refill([(transitions[:23], "robot-1")])  # what it took before its checkpoint
    crashed.save()
    progress = json.loads((tmp_path / "run" / "checkpoints" / "progress.json").read_text())
    assert progress["env_steps"] == 23 and progress["episodes"] == 2
    assert progress["last_transition"] == {"robot_session": "robot-1", "episode": 2, "step": 2}

    restarted = learner("b", save_replay=save_replay, resume=tmp_path / "run")
    report = restarted.refill([(transitions, "robot-1")])
    # every transition once in the buffer; only those since the checkpoint counted again
    assert report == {"added": 17 if save_replay else 40, "counted": 17, "gaps": 0}
    assert len(restarted.replay) == 40
    assert restarted.env_steps == 40 and restarted.episodes == EPISODES
    assert restarted.last_transition == {"robot_session": "robot-1", "episode": 3, "step": 9}


def test_refill_from_another_robot_session_counts_every_transition(tmp_path, learner):
    crashed = learner("a", save_replay=True)
    crashed.refill([(stream()[:23], "robot-1")])
    crashed.save()
    # A checkpoint of an earlier robot session (madi train --resume): its positions say
    # nothing about this session's episode ids, so all of this session is new.
    restarted = learner("b", save_replay=True, resume=tmp_path / "run")
    report = restarted.refill([(stream(), "robot-2")])
    assert report["counted"] == 40 and restarted.env_steps == 63
    assert len(restarted.replay) == 63


@pytest.mark.parametrize("save_replay", [True, False])
def test_refill_from_a_resumed_runs_session_logs(tmp_path, learner, save_replay):
    """Sessions in recording order: robot-1's (the checkpoint took 23 of its 40), then
    robot-2's (a resumed robot, 40 more). On --resume only robot-1's log exists: its rest
    is new. After a crash in robot-2's session: robot-1's log is all old."""
    first = learner("a", save_replay=save_replay)
    first.refill([(stream()[:23], "robot-1")])
    first.save()
    resumed = learner("b", save_replay=save_replay, resume=tmp_path / "run")
    report = resumed.refill([(stream(), "robot-1")])
    assert report == {"added": 17 if save_replay else 40, "counted": 17, "gaps": 0}
    assert resumed.env_steps == 40 and len(resumed.replay) == 40
    resumed.refill([([], "robot-1"), (stream()[:30], "robot-2")])  # robot-2 got 30 in
    resumed.save()
    assert resumed.env_steps == 70 and len(resumed.replay) == 70
    restarted = learner("c", save_replay=save_replay, resume=tmp_path / "run")
    report = restarted.refill([(stream(), "robot-1"), (stream(), "robot-2")])
    # robot-1's log precedes the checkpoint's session: added back only when the
    # checkpoint has no buffer, never counted; robot-2's last 10 are new
    assert report == {"added": 10 if save_replay else 80, "counted": 10, "gaps": 0}
    assert restarted.env_steps == 80 and len(restarted.replay) == 80
    assert restarted.last_transition == {"robot_session": "robot-2", "episode": 3, "step": 9}


def test_a_restarted_learner_resumes_from_the_checkpoint_if_there_is_one(tmp_path):
    from madi.cli import build_parser
    from madi.learner_cmd import learner_command

    argv = ["train", "--init-from", "sim_run", "--pretrain", "s.mcap"]
    args = build_parser("train").parse_args(argv)
    session = tmp_path / "session.mcap"
    first = learner_command("ipc:///x", tmp_path, args, restart=False, refill=None)
    assert "--init-from" in first and "--pretrain" in first and "--refill" not in first
    # before the first checkpoint: started as the first one was, refilled from the session
    fresh = learner_command("ipc:///x", tmp_path, args, restart=True, refill=session)
    assert fresh[fresh.index("--refill") + 1] == str(session) and "--init-from" in fresh
    assert "--resume" not in fresh
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "learner.pt").touch()
    resumed = learner_command("ipc:///x", tmp_path, args, restart=True, refill=session)
    assert resumed[resumed.index("--resume") + 1] == str(tmp_path) and "--refill" in resumed
    assert "--init-from" not in resumed and "--pretrain" not in resumed
    # robot.record: false leaves nothing to refill from; the checkpoint still counts
    assert "--resume" in learner_command("ipc:///x", tmp_path, args, restart=True, refill=None)


def test_the_learner_refills_from_every_session_log_of_the_run(tmp_path):
    """madi train --resume: the resumed run's logs; a restart: the earlier ones and the
    robot's own, in recording order."""
    from madi.cli import build_parser
    from madi.learner_cmd import learner_command

    def refills(cmd):
        start = cmd.index("--refill") + 1
        return cmd[start:next((i for i in range(start, len(cmd)) if cmd[i].startswith("--")),
                              len(cmd))]

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "learner.pt").touch()
    first, second = tmp_path / "session.mcap", tmp_path / "session-1.mcap"
    first.touch()
    args = build_parser("train").parse_args(["train", "--resume", str(tmp_path)])
    resumed = learner_command("ipc:///x", tmp_path, args, restart=False, refill=None)
    assert refills(resumed) == [str(first)] and "--resume" in resumed
    second.touch()  # the resumed robot's log
    restarted = learner_command("ipc:///x", tmp_path, args, restart=True, refill=second)
    assert refills(restarted) == [str(first), str(second)]
    assert restarted.count("--refill") == 1
    fresh = build_parser("train").parse_args(["train"])
    assert "--refill" not in learner_command("ipc:///x", tmp_path, fresh, False, None)
