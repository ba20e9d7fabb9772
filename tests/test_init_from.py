"""``--init-from``: start a run (e.g. on the real arm) from another run's trained networks."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch

from learner.agent import MadiSacAgent
from learner.checkpoint import (
    init_from_checkpoint,
    policy_state_from_checkpoint,
    save_checkpoint,
    save_policy,
)
from learner.checkpoint_file import CheckpointError, CheckpointMismatchError
from learner.config import AgentConfig
from learner.policy import MadiPolicy
from learner.replay_buffer import ReplayBuffer, sample_mixed
from madi.cli import CONFIGS, main

IMAGE = (9, 24, 32)
SMALL = dict(masker_filters=4, encoder_filters=8, mlp_hidden=[32, 32], batch_size=8,
             device="cpu")


def agent(seed=0, **kw):
    return MadiSacAgent(AgentConfig(seed=seed, **{**SMALL, **kw}), IMAGE, 15, 5)


def filled_replay(n=20, reward=0.0, seed=0):
    rng = np.random.default_rng(seed)
    replay = ReplayBuffer(100, (3, 24, 32), 3, 15, 5, seed=seed)
    frames = rng.integers(0, 256, (n + 3, 3, 24, 32), dtype=np.uint8)
    proprio = rng.standard_normal((n + 1, 15)).astype(np.float32)
    for i in range(n):  # one episode: each next_obs is the obs shifted by one frame
        obs = {"image": frames[i:i + 3].reshape(IMAGE), "proprio": proprio[i]}
        nxt = {"image": frames[i + 1:i + 4].reshape(IMAGE), "proprio": proprio[i + 1]}
        replay.add(obs, rng.uniform(-1, 1, 5), reward, nxt, False, i == n - 1)
    return replay


def test_init_from_loads_every_network_and_fresh_optimizers(tmp_path):
    trained = agent(seed=1)
    trained.update(filled_replay().sample(8))  # weights and Adam state move off init
    path = save_checkpoint(tmp_path / "learner.pt", trained, {"env_steps": 20},
                           replay=filled_replay(reward=1.0))
    new = agent(seed=2, actor_lr=1e-4)  # other learning rates are allowed
    prior = ReplayBuffer(100, (3, 24, 32), 3, 15, 5)
    info = init_from_checkpoint(path, new, prior)
    assert info["replay_loaded"] and len(prior) == 20
    for name, module in trained.modules().items():
        for key, value in module.state_dict().items():
            torch.testing.assert_close(new.modules()[name].state_dict()[key], value)
    torch.testing.assert_close(new.log_alpha, trained.log_alpha)
    assert new.num_updates == trained.num_updates == 1
    assert new.actor_optimizer.param_groups[0]["lr"] == 1e-4  # not the checkpoint's
    assert not new.actor_optimizer.state  # fresh moments


def test_the_starting_policy_acts_like_the_checkpoint(tmp_path):
    trained = agent(seed=1)
    trained.update(filled_replay().sample(8))
    path = save_checkpoint(tmp_path / "learner.pt", trained)
    reference = MadiPolicy.from_checkpoint(save_policy(tmp_path / "policy.pt", trained))
    fresh = MadiPolicy.from_config(trained.cfg, IMAGE, 15, 5)
    state = policy_state_from_checkpoint(path)
    fresh.load_weights(state)
    rng = np.random.default_rng(5)
    moved = False
    for _ in range(5):
        obs = {"image": rng.integers(0, 256, IMAGE, dtype=np.uint8),
               "proprio": rng.standard_normal(15).astype(np.float32)}
        a, b = fresh.act(obs), reference.act(obs)
        np.testing.assert_array_equal(a, b)
        moved |= not np.array_equal(a, MadiPolicy.from_config(
            AgentConfig(seed=9, **SMALL), IMAGE, 15, 5).act(obs))
    assert moved and state["version"] == 1  # it really changed the starting policy


def test_mismatched_checkpoints_are_refused_with_each_difference(tmp_path):
    path = save_checkpoint(tmp_path / "learner.pt", agent())
    other = MadiSacAgent(AgentConfig(**{**SMALL, "mlp_hidden": [64, 64]}), (9, 24, 40), 15, 5)
    with pytest.raises(CheckpointMismatchError) as err:
        init_from_checkpoint(path, other)
    assert set(err.value.differences) == {"agent.mlp_hidden", "spaces.image_shape"}
    assert "mlp_hidden" in str(err.value) and "image_shape" in str(err.value)
    save_policy(tmp_path / "policy.pt", agent())
    with pytest.raises(CheckpointError):  # a policy file has no critics
        init_from_checkpoint(tmp_path / "policy.pt", agent())


def test_batches_mix_the_prior_replay_at_the_configured_ratio():
    prior, new = filled_replay(reward=1.0, seed=1), filled_replay(reward=0.0, seed=2)
    batch = sample_mixed(new, prior, 0.75, 8)
    assert batch.frames.shape[0] == 8 and batch.reward.tolist() == [1.0] * 6 + [0.0] * 2
    empty = ReplayBuffer(100, (3, 24, 32), 3, 15, 5)
    assert sample_mixed(empty, prior, 0.75, 8).reward.tolist() == [1.0] * 8
    assert sample_mixed(new, None, 0.75, 8).reward.tolist() == [0.0] * 8


def test_train_init_from_a_sim_run_acts_with_its_policy_from_the_first_step(tmp_path,
                                                                             caplog):
    tiny = ["--set", "task.episode_steps=10", "--set", "agent.batch_size=8",
            "--set", "agent.init_random_steps=20", "--no-progress", "--pace", "fast"]
    config = str(CONFIGS / "sim_quick.yaml")
    first = tmp_path / "sim"
    assert main(["train", "--config", config, "--steps", "40", "--out", str(first),
                 "--set", "train.save_replay=true", *tiny]) == 0
    second = tmp_path / "second"
    assert main(["train", "--config", config, "--steps", "20", "--out", str(second),
                 "--init-from", str(first), "--init-replay-mix", "0.5",
                 "--init-skip-random", *tiny]) == 0
    with open(second / "episodes.csv") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[0]["random_steps"]) == 0 and int(rows[0]["policy_version_first"]) > 0
    log = (second / "learner.log").read_text()
    assert "initialised from" in log and "50% of each batch" in log
    bad = ["--set", "camera.subsample=4"]  # other image size: refused before starting
    assert main(["train", "--config", config, "--steps", "20", "--out", str(tmp_path / "x"),
                 "--init-from", str(first), *tiny, *bad]) == 2
    assert "spaces.image_shape" in caplog.text


def test_sync_train_init_from_loads_the_run_and_updates_from_the_first_step(tmp_path,
                                                                            caplog):
    caplog.set_level(logging.INFO)
    tiny = ["--sync", "--set", "task.episode_steps=10", "--set", "agent.batch_size=8",
            "--set", "agent.init_random_steps=20", "--set", "train.eval_episodes=0",
            "--no-progress"]
    config = str(CONFIGS / "sim_quick.yaml")
    first = tmp_path / "sim"
    assert main(["train", "--config", config, "--steps", "30", "--out", str(first),
                 "--set", "train.save_replay=true", *tiny]) == 0
    saved = torch.load(first / "checkpoints" / "learner.pt", weights_only=True)
    assert saved["replay"] is not None  # --sync honours train.save_replay
    loaded_updates = int(saved["agent"]["num_updates"])
    assert loaded_updates == 5  # 10 env steps after the random phase x 0.5
    second = tmp_path / "second"
    assert main(["train", "--config", config, "--steps", "20", "--out", str(second),
                 "--init-from", str(first), "--init-replay-mix", "0.5",
                 "--init-skip-random", *tiny]) == 0
    after = torch.load(second / "checkpoints" / "learner.pt", weights_only=True)
    assert int(after["agent"]["num_updates"]) == loaded_updates + 10  # no random phase
    assert "initialised from" in caplog.text and "50% of each batch" in caplog.text
    assert main(["train", "--config", config, "--steps", "20", "--out", str(tmp_path / "x"),
                 "--init-skip-random", *tiny]) == 2  # without --init-from
    assert "go with --init-from" in caplog.text
