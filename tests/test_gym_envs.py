"""Gymnasium ids of the sim: make, the env checker, bounds, vector envs (sync and async)."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sim  # noqa: F401 - registers the ids
from robot.config import ConfigError
from sim.gym_envs import ENV_IDS

SMALL = ["camera.subsample=8", "task.episode_steps=4"]


@pytest.mark.parametrize("env_id", sorted(ENV_IDS))
def test_every_id_makes_a_checked_env_with_bounded_spaces(env_id):
    env = gym.make(env_id, render_mode="rgb_array", overrides=SMALL)
    model, reward = ENV_IDS[env_id]
    cfg = env.unwrapped.cfg
    assert (cfg.arm.model, cfg.task.reward, cfg.sim.pace) == (model, reward, "fast")
    assert cfg.arm.control_period == {"ur5": 0.008, "ur5e": 0.002}[model]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an unbounded Box or a bad dtype would warn
        check_env(env.unwrapped, skip_render_check=False)
    obs, _ = env.reset(seed=1)
    for _ in range(4):
        obs, reward_t, terminated, truncated, _ = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs)
    assert truncated or terminated
    assert env.render().shape == (*cfg.camera.obs_size, 3)
    env.close()


def test_make_validates_its_arguments(tmp_path):
    with pytest.raises(ValueError, match="render_mode"):
        gym.make("MadiRobot/UR5VisualReacher-v0", render_mode="human", overrides=SMALL)
    with pytest.raises(ConfigError, match="task.episode_steps"):
        gym.make("MadiRobot/UR5VisualReacher-v0", overrides=["task.episode_steps=0"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs_step_in_lockstep(mode):
    # async: spawned workers (a fork of a process with threads and an EGL context can
    # hang); the "sim:" prefix registers the ids in each worker
    extra = {"vector_kwargs": {"context": "spawn"}} if mode == "async" else {}
    envs = gym.make_vec("sim:MadiRobot/UR5VisualReacher-v0", num_envs=2,
                        vectorization_mode=mode, overrides=SMALL, **extra)
    try:
        obs, _ = envs.reset(seed=[3, 4])
        assert obs["image"].shape == (2, 9, 45, 80) and obs["proprio"].shape == (2, 15)
        for _ in range(5):  # crosses an episode end (autoreset)
            obs, reward, terminated, truncated, _ = envs.step(envs.action_space.sample())
            assert reward.shape == (2,) and np.all(np.isfinite(reward))
        assert envs.single_observation_space.contains(
            {k: v[0] for k, v in obs.items()})
    finally:
        envs.close()
