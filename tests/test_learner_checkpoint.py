"""Checkpoints: round trip, atomic writes, weights_only loading, mismatch refusal."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from test_learner_reference import SMALL, make_batch
from toy_env import DotReacherEnv

from learner.agent import MadiSacAgent
from learner.checkpoint import (
    load_checkpoint,
    save_checkpoint,
    save_policy,
)
from learner.checkpoint_file import CheckpointError, CheckpointMismatchError, load_policy_file
from learner.config import AgentConfig
from learner.policy import MadiPolicy
from learner.replay_buffer import ReplayBuffer


def _agent(**kw):
    cfg = AgentConfig(**{**SMALL, **kw})
    return MadiSacAgent(cfg, (9, 16, 20), 4, 3)


def _filled_replay():
    replay = ReplayBuffer(50, (3, 16, 20), 3, 4, 3, seed=0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (3, 16, 20), dtype=np.uint8) for _ in range(3)]
    obs = {"image": np.concatenate(frames), "proprio": np.zeros(4, np.float32)}
    for t in range(10):
        frames = [*frames[1:], rng.integers(0, 256, (3, 16, 20), dtype=np.uint8)]
        nxt = {"image": np.concatenate(frames), "proprio": np.full(4, t, np.float32)}
        replay.add(obs, rng.uniform(-1, 1, 3).astype(np.float32), 0.5, nxt, False, t == 9)
        obs = nxt
    return replay


def test_full_round_trip_with_replay(tmp_path):
    agent = _agent()
    for s in range(2):
        agent.update(make_batch(8, 3, (16, 20), 4, 3, seed=s))
    replay = _filled_replay()
    path = save_checkpoint(tmp_path / "ck" / "learner.pt", agent, {"env_steps": 7}, replay)
    assert [p.name for p in path.parent.iterdir()] == ["learner.pt"]  # no temp files left

    other = _agent()
    replay2 = ReplayBuffer(50, (3, 16, 20), 3, 4, 3, seed=5)
    counters = load_checkpoint(path, other, replay2)
    assert counters == {"env_steps": 7} and other.num_updates == 2
    for name, module in agent.modules().items():
        for p, q in zip(
            module.state_dict().values(), other.modules()[name].state_dict().values(), strict=True
        ):
            assert torch.equal(p, q), name
    assert torch.equal(agent.log_alpha, other.log_alpha)
    assert len(replay2) == len(replay)
    np.testing.assert_array_equal(replay2.sample(4).frames, replay.sample(4).frames)
    # identical continuation: same optimizer state, aug RNG and global RNG
    batch = make_batch(8, 3, (16, 20), 4, 3, seed=9)
    torch.manual_seed(0)
    a = agent.update(batch)
    torch.manual_seed(0)
    b = other.update(batch)
    assert a == b


def test_mismatch_lists_every_difference(tmp_path):
    path = save_checkpoint(tmp_path / "learner.pt", _agent())
    other = MadiSacAgent(
        AgentConfig(**{**SMALL, "critic_lr": 1e-3, "mlp_hidden": [16]}), (9, 16, 24), 4, 3
    )
    with pytest.raises(CheckpointMismatchError) as err:
        load_checkpoint(path, other)
    msg = str(err.value)
    assert "agent.critic_lr: checkpoint 0.0003 vs current 0.001" in msg
    assert "agent.mlp_hidden: checkpoint [32, 32] vs current [16]" in msg
    assert "spaces.image_shape: checkpoint [9, 16, 20] vs current [9, 16, 24]" in msg
    assert set(err.value.differences) == {
        "agent.critic_lr",
        "agent.mlp_hidden",
        "spaces.image_shape",
    }
    # runtime-only fields may differ
    load_checkpoint(path, _agent(channels_last=False, device="cpu"))


def test_policy_file_round_trip_and_refuses_pickles(tmp_path):
    agent = _agent()
    path = save_policy(tmp_path / "policy.pt", agent)
    assert path.stat().st_size < 2_000_000
    policy = MadiPolicy.from_checkpoint(path)
    live = MadiPolicy(agent.masker, agent.encoder, agent.actor, (9, 16, 20), 4, 3)
    obs = {
        "image": np.random.default_rng(0).integers(0, 256, (9, 16, 20), dtype=np.uint8),
        "proprio": np.ones(4, np.float32),
    }
    np.testing.assert_allclose(policy.act(obs), live.act(obs), rtol=1e-6, atol=1e-6)
    with pytest.raises(CheckpointMismatchError, match="spaces.action_dim"):
        load_policy_file(path, expected_spaces={"action_dim": 5})
    with pytest.raises(CheckpointError, match="kind"):
        load_checkpoint(path, agent)

    evil = tmp_path / "evil.pt"
    torch.save({"kind": "madi_policy", "payload": DotReacherEnv}, evil, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_policy_file(evil)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy_file(tmp_path / "missing.pt")
