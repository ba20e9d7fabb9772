"""Smoke tests of every `madi` subcommand, run past the start of learning on the sim."""

import csv
import logging
import time

import cv2
import pytest
from test_real_rig import write_video

from madi.cli import CONFIGS, main

TINY = ["--set", "agent.init_random_steps=40", "--set", "agent.batch_size=8",
        "--set", "task.episode_steps=30", "--set", "train.eval_every=60",
        "--set", "train.eval_episodes=1", "--no-progress"]


def test_sim_command_writes_videos(tmp_path):
    assert main(["sim", "--episodes", "1", "--policy", "servo", "--out", str(tmp_path),
                 "--set", "task.episode_steps=20"]) == 0
    assert (tmp_path / "episode_000_servo.mp4").stat().st_size > 1000
    strip = cv2.imread(str(tmp_path / "episode_000_servo.png"))
    assert strip.shape == (360, 640 * 10, 3)


def test_train_runs_past_the_start_of_learning(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    assert main(["train", "--sync", "--steps", "90", "--out", str(out), *TINY]) == 0
    assert "sim_quick.yaml (no CUDA" in caplog.text  # the CPU default, with its reason
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r["losses/critic"] for r in rows)
    assert [r["charts/eval_return"] for r in rows if r["charts/eval_return"]]
    for name in ("config.yaml", "learning_curve.png", "checkpoints/learner.pt",
                 "checkpoints/policy.pt"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("variant", ["sac_crop", "svea_overlay"])
def test_train_baselines_share_the_code_path(tmp_path, variant):
    assert main(["train", "--sync", "--config", str(CONFIGS / "sim_quick.yaml"), "--steps", "50",
                 "--out", str(tmp_path), "--set", f"agent.variant={variant}", *TINY]) == 0
    assert (tmp_path / "checkpoints" / "policy.pt").is_file()


def test_bad_config_exits_with_a_clear_message(tmp_path, caplog):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arm:\n  model: ur10\n")
    assert main(["sim", "--config", str(bad), "--episodes", "1"]) == 2
    assert "arm.model = 'ur10'" in caplog.text
    assert main(["train", "--sync", "--config", str(CONFIGS / "ur5_visual_reacher.yaml"),
                 "--steps", "5", "--out", str(tmp_path / "run")]) == 2
    assert "drop --sync" in caplog.text


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("content, problem", [
    (b"seed: 2024-01-01\n", "seed = datetime.date(2024, 1, 1) is a YAML date"),
    ("seed: 1  # café\n".encode("latin-1"), "not UTF-8 text (byte 14"),
])
def test_unreadable_config_is_one_line_and_exit_2(tmp_path, caplog, content, problem):
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(content)
    assert main(["train", "--sync", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    [message] = errors(caplog)
    assert message.startswith(f"invalid config {bad}: {problem}") and "\n" not in message
    assert not (tmp_path / "run").exists()


def test_resume_of_a_run_without_checkpoints_fails_before_starting(tmp_path, caplog,
                                                                   monkeypatch):
    def no_learner(*args, **kwargs):
        raise AssertionError("the learner was started")

    monkeypatch.setattr("robot.supervisor.subprocess.Popen", no_learner)
    run = tmp_path / "run"
    run.mkdir()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert errors(caplog) == [f"cannot resume {run}: it has no config.yaml; pass --resume the "
                              "folder of a madi train run (runs/<run>)"]
    (run / "config.yaml").write_text((CONFIGS / "sim_quick.yaml").read_text())
    for sync in ([], ["--sync"]):
        caplog.clear()
        assert main(["train", "--resume", str(run), "--no-progress", *sync]) == 2
        [message] = errors(caplog)
        assert message.startswith(f"cannot resume {run}: checkpoints/learner.pt is missing")
        assert message.endswith(f"without --resume: madi train --config {run}/config.yaml")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "learner.pt").write_bytes(b"")
    (run / "checkpoints" / "progress.json").write_text("{")
    caplog.clear()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    [message] = errors(caplog)
    assert "progress.json is not a valid progress file" in message and "\n" not in message
    assert not (run / "metrics.csv").exists() and not (run / "robot.log").exists()


def test_train_on_an_unreachable_arm_fails_fast_and_ends_the_learner(tmp_path, caplog):
    t0 = time.monotonic()
    code = main(["train", "--config", str(CONFIGS / "ur5_visual_reacher.yaml"), "--steps", "5",
                 "--out", str(tmp_path / "run"), *TINY,
                 "--set", "arm.host=127.0.0.9", "--set", "monitor.output=offscreen",
                 "--set", f"camera.device={write_video(tmp_path / 'cam.avi', 3)}",
                 "--set", "camera.width=320", "--set", "camera.height=180"])
    assert code == 1
    assert "cannot reach the UR controller at 127.0.0.9" in caplog.text
    assert time.monotonic() - t0 < 45  # the learner child was ended, not waited out
