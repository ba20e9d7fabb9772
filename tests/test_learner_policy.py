"""Inference policy: mask cache equals uncached computation, one Masker pass per step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_learner_reference import SMALL
from toy_env import DotReacherEnv

from learner.agent import MadiSacAgent
from learner.config import AgentConfig
from learner.policy import MadiPolicy


def _agent():
    return MadiSacAgent(AgentConfig(variant="madi", **SMALL), (9, 24, 24), 2, 2)


def test_cached_masks_equal_uncached_and_one_masker_pass_per_step():
    agent = _agent()
    cached = agent.make_policy()
    uncached = MadiPolicy(
        agent.masker, agent.encoder, agent.actor, (9, 24, 24), 2, 2, use_cache=False
    )
    env = DotReacherEnv(size=24, frame_stack=3, distractor=True)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for policy in (cached, uncached):
        policy.reset()
    for _ in range(10):
        a = cached.act(obs)
        b = uncached.act(obs)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        assert a.dtype == np.float32 and a.shape == (2,) and np.all(np.abs(a) <= 1)
        obs, *_ = env.step(rng.uniform(-1, 1, 2))
    assert cached.masker_frames == 3 + 9  # k frames at the first step, then one per step
    assert uncached.masker_frames == 3 * 10


def test_cache_recomputes_after_reset_invalidate_and_discontinuity():
    agent = _agent()
    policy = agent.make_policy()
    env = DotReacherEnv(size=24, frame_stack=3)
    obs, _ = env.reset(seed=1)
    policy.act(obs)
    policy.invalidate()
    policy.act(obs)
    assert policy.masker_frames == 6
    obs2, _ = env.reset(seed=2)  # a new episode without reset(): detected, full recompute
    policy.act(obs2)
    assert policy.masker_frames == 9


def test_sampled_action_in_bounds_and_bad_obs_raises():
    policy = _agent().make_policy()
    obs, _ = DotReacherEnv(size=24).reset(seed=0)
    torch.manual_seed(0)
    a = policy.act(obs, deterministic=False)
    assert a.shape == (2,) and np.all(np.abs(a) <= 1)
    with pytest.raises(ValueError, match="image"):
        policy.act({"image": obs["image"][:3], "proprio": obs["proprio"]})
    with pytest.raises(ValueError, match="proprio"):
        policy.act({"image": obs["image"], "proprio": np.zeros(5, np.float32)})
