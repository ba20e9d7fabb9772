import numpy as np
import pytest

from robot.config import Config
from sim.env import VisualReacherEnv
from sim.rollout import make_policy, run_episode, run_episodes


@pytest.fixture(scope="module")
def env():
    e = VisualReacherEnv(Config())
    yield e
    e.close()


def test_spaces_match_the_real_task(env):
    obs, info = env.reset(seed=0)
    assert env.observation_space["image"].shape == (9, 90, 160)
    assert env.observation_space["proprio"].shape == (15,)
    assert env.action_space.shape == (5,)
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (9, 90, 160)
    assert obs["proprio"].dtype == np.float32 and obs["proprio"].shape == (15,)
    assert env.observation_space.contains(obs)
    np.testing.assert_allclose(obs["proprio"][:5], Config().arm.q_home[:5], atol=1e-6)
    # the frame stack starts as copies of the first frame
    np.testing.assert_array_equal(obs["image"][:3], obs["image"][6:])
    assert 0 < info["target_center"][0] < 1


def test_step_moves_arm_and_records_previous_action(env):
    env.reset(seed=0)
    action = np.array([0.2, 0, 0, 0, 0], np.float32)
    obs, reward, terminated, truncated, info = env.step(action)
    np.testing.assert_array_equal(obs["proprio"][10:], action)
    assert obs["proprio"][5] > 0  # base joint is speeding up
    assert not terminated and not truncated and reward >= 0
    assert info["applied_qd"][0] == pytest.approx(0.2 * Config().arm.speed_max)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(6, np.float32))


def test_episode_truncates_at_horizon():
    cfg = Config(task={"episode_steps": 7})
    e = VisualReacherEnv(cfg)
    try:
        r = run_episode(e, lambda obs: np.zeros(5, np.float32), seed=1)
    finally:
        e.close()
    assert r.steps == 7


def rollout_obs(cfg, seed, steps=12):
    e = VisualReacherEnv(cfg)
    rng = np.random.default_rng(5)
    try:
        out = [e.reset(seed=seed)[0]]
        for _ in range(steps):
            out.append(e.step(rng.uniform(-1, 1, 5).astype(np.float32))[0])
    finally:
        e.close()
    return out


def test_same_seed_same_observations_fast_and_realtime():
    fast = rollout_obs(Config(), seed=3)
    again = rollout_obs(Config(), seed=3)
    realtime = rollout_obs(Config(sim={"pace": "realtime"}, arm={"reset_duration": 0.0}), seed=3)
    other = rollout_obs(Config(), seed=4)
    for a, b, c in zip(fast, again, realtime, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["image"], c["image"])
        np.testing.assert_array_equal(a["proprio"], c["proprio"])
    assert not np.array_equal(fast[0]["image"], other[0]["image"])  # another target


def test_sparse_variant_terminates_on_success():
    cfg = Config(task={"reward": "sparse"})
    e = VisualReacherEnv(cfg)
    try:
        r = run_episode(e, make_policy("servo", cfg, e), seed=0)
    finally:
        e.close()
    assert r.success and r.steps == r.success_step < 150
    assert r.episode_return == -r.steps


def test_servo_policy_reaches_targets_and_beats_random():
    """Camera, kinematics, monitor, box and reward fit: a scripted servo reaches the dot."""
    cfg = Config(seed=100)
    servo = run_episodes(cfg, "servo", 10)
    random = run_episodes(cfg, "random", 3)
    assert sum(r.success for r in servo) >= 9, [r.max_red_fraction for r in servo]
    mean_servo = np.mean([r.episode_return for r in servo])
    mean_random = np.mean([r.episode_return for r in random])
    assert mean_servo > 2 * mean_random
