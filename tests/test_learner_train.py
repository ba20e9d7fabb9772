"""Synchronous training loop: smoke test past the start of learning, and a learning test."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pytest
import torch
from toy_env import DotReacherEnv, random_return

from learner.config import AgentConfig
from learner.metrics import METRIC_KEYS
from learner.policy import MadiPolicy
from learner.train_sync import policy_returns, train_sync

TOY = dict(
    masker_filters=8,
    encoder_filters=16,
    encoder_strides=[2, 1],
    mlp_hidden=[128, 128],
    batch_size=64,
    actor_lr=1e-3,
    critic_lr=1e-3,
    masker_lr=1e-3,
    alpha_lr=1e-3,
    gamma=0.95,
    critic_tau=0.01,
    encoder_tau=0.05,
    shift_pad=2,
    replay_capacity=10_000,
)


def test_train_sync_smoke(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cfg = AgentConfig(
        variant="madi",
        init_random_steps=20,
        updates_per_step=0.5,
        seed=1,
        **{**TOY, "batch_size": 8},
    )
    out = train_sync(
        DotReacherEnv(horizon=10),
        cfg,
        tmp_path,
        total_steps=60,
        eval_every=30,
        eval_episodes=2,
        log_every=20,
        progress=False,
    )
    assert out["updates"] == 20 and out["episodes"] == 6
    assert [s for s, _ in out["eval_returns"]] == [30, 60]
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == METRIC_KEYS
    assert any(r["losses/critic"] for r in rows) and any(r["charts/episode_return"] for r in rows)
    assert any(r["charts/updates_per_s"] for r in rows)
    assert (tmp_path / "checkpoints" / "learner.pt").is_file()
    policy = MadiPolicy.from_checkpoint(tmp_path / "checkpoints" / "policy.pt")
    assert len(policy_returns(DotReacherEnv(horizon=5), policy, 1, seed=0)) == 1
    assert "eval return" in caplog.text


@pytest.mark.slow
def test_madi_learns_toy_reacher(tmp_path):
    torch.set_num_threads(2)
    random_mean = random_return(DotReacherEnv(), episodes=30, seed=100)  # about -16
    cfg = AgentConfig(variant="madi", init_random_steps=400, seed=0, **TOY)
    out = train_sync(
        DotReacherEnv(),
        cfg,
        tmp_path,
        total_steps=1200,
        eval_every=1200,
        eval_episodes=10,
        eval_env=DotReacherEnv(),
        log_every=400,
        progress=False,
    )
    ((_, learned_mean),) = out["eval_returns"]
    # a random policy leaves the dot ~0.8 from the centre; the learnt one centres it
    assert random_mean < -12.0
    assert learned_mean > 0.4 * random_mean, (learned_mean, random_mean)
    assert learned_mean > -6.0
    assert np.isfinite(learned_mean)


def test_fixed_evaluation_episodes_repeat_and_do_not_disturb_training_targets():
    env = DotReacherEnv(horizon=5)
    cfg = AgentConfig(variant="sac_crop", seed=0, **{**TOY, "batch_size": 8})
    from learner.agent import MadiSacAgent

    agent = MadiSacAgent(cfg, env.observation_space["image"].shape,
                         env.observation_space["proprio"].shape[0], 2)
    first = policy_returns(env, agent.make_policy(), 3, seed=7)
    again = policy_returns(DotReacherEnv(horizon=5), agent.make_policy(), 3, seed=7)
    assert first == again  # the same episodes (seed + i), the same policy: the same returns
    assert policy_returns(env, agent.make_policy(), 3, seed=8)[:2] == first[1:]


def test_train_sync_resume_final_eval_and_safety_share(tmp_path):
    cfg = AgentConfig(variant="madi", init_random_steps=10, updates_per_step=0.5, seed=2,
                      n_step=3, **{**TOY, "batch_size": 8})  # 3-step windows in the batches
    common = dict(eval_every=20, eval_episodes=1, eval_seed=5, checkpoint_every=20,
                  log_every=20, save_replay=True, progress=False)
    first = train_sync(DotReacherEnv(horizon=10), cfg, tmp_path, total_steps=40,
                       final_eval_episodes=0, **common)
    assert first["updates"] == 15 and not (tmp_path / "final_eval.json").exists()
    out = train_sync(DotReacherEnv(horizon=10), cfg, tmp_path, total_steps=60,
                     final_eval_episodes=3, resume=True, **common)
    assert out["env_steps"] == 60 and out["updates"] == 25  # 15 before + 10 after the resume
    assert [s for s, _ in out["eval_returns"]] == [60]  # 20 and 40 were the first part's
    final = (tmp_path / "final_eval.json").read_text()
    assert '"episodes": 3' in final and len(out["final_eval_returns"]) == 3
    assert out["final_eval_returns"][0] == out["eval_returns"][-1][1]  # episode seed 5 both
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    steps = [int(r["global_step"]) for r in rows if r["charts/episode_return"]]
    assert steps == sorted(steps) and steps[-1] == 60 and len(steps) == 6
    assert all(r["charts/safety_share"] == "0.0" for r in rows if r["charts/episode_return"])
    assert rows[-1]["charts/final_eval_return"]


def test_metrics_of_an_older_run_are_migrated_to_the_current_columns(tmp_path):
    from learner.metrics import METRIC_KEYS, MetricsWriter

    path = tmp_path / "metrics.csv"
    old_keys = [k for k in METRIC_KEYS if k != "charts/skipped_updates"]
    path.write_text(",".join(old_keys) + "\n" + "10,1.5" + "," * (len(old_keys) - 2) + "\n")
    writer = MetricsWriter(path)
    writer.write({"global_step": 20, "charts/skipped_updates": 1})
    writer.close()
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["global_step"] for r in rows] == ["10", "20"] and rows[0]["time_s"] == "1.5"
    assert rows[1]["charts/skipped_updates"] == "1" and rows[0]["charts/skipped_updates"] == ""
    path.write_text("global_step,no_such_metric\n1,2\n")
    with pytest.raises(KeyError, match="no_such_metric"):
        MetricsWriter(path)


def test_log_lines_print_above_the_progress_bar(tmp_path, monkeypatch, capsys, caplog):
    import sys

    from tqdm import std

    written = []
    write = std.tqdm.write.__func__

    def spy(cls, s, file=None, end="\n", nolock=False):
        written.append(s)
        write(cls, s, file=file, end=end, nolock=nolock)

    monkeypatch.setattr(std.tqdm, "write", classmethod(spy))
    caplog.set_level(logging.INFO)
    console = logging.StreamHandler(sys.stderr)  # as `madi`'s logging.basicConfig
    root = logging.getLogger()
    root.addHandler(console)
    cfg = AgentConfig(variant="madi", init_random_steps=20, seed=1, **{**TOY, "batch_size": 8})
    try:
        train_sync(DotReacherEnv(horizon=10), cfg, tmp_path, total_steps=20, eval_every=20,
                   eval_episodes=0, log_every=10, progress=True)
        assert console in root.handlers  # back after the run
    finally:
        root.removeHandler(console)
    assert any("step 10: updates 0" in line for line in written)  # while the bar was shown
    assert "step 10: updates 0" in capsys.readouterr().err
