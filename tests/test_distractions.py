"""Distraction sets, evaluation under them, and periodic evaluation during training."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from skimage import io as skio

from learner.augment import SKIMAGE_TEST_IMAGES, SKIMAGE_TRAIN_IMAGES
from learner.policy import MadiPolicy
from madi.cli import main
from robot.backends.sim import SimRig
from robot.config import config_from_dict
from robot.distractions import (
    DistractionError,
    VideoFolder,
    held_out_images,
    make_distractions,
    screen,
)
from robot.runner import RobotRunner, spaces_of
from robot.task import RedTargetReward
from sim.evaluate import evaluate

SIZE = (480, 270)


def small_config(**train):
    return config_from_dict({
        "camera": {"subsample": 8},
        "task": {"episode_steps": 15},
        "arm": {"reset_duration": 0.1},
        "sim": {"pace": "fast"},
        "agent": {"masker_filters": 4, "encoder_filters": 8, "mlp_hidden": [32, 32]},
        "train": train,
    })


def write_video(path: Path, frames: int = 12) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    for i in range(frames):
        image = np.zeros((48, 64, 3), np.uint8)
        image[:, :, 0] = 20 * i  # blue ramp: frames differ
        writer.write(image)
    writer.release()
    return path


def test_sets_are_disjoint_from_the_augmentation_images():
    assert not set(SKIMAGE_TEST_IMAGES) & set(SKIMAGE_TRAIN_IMAGES)
    root = Path(skimage.data.__file__).parent
    train = {hashlib.sha256(skio.imread(root / n).tobytes()).hexdigest()
             for n in SKIMAGE_TRAIN_IMAGES}
    for image, name in zip(held_out_images(), SKIMAGE_TEST_IMAGES, strict=True):
        raw = skio.imread(root / name)
        assert hashlib.sha256(raw.tobytes()).hexdigest() not in train, name
        assert image.dtype == np.uint8 and image.shape[2] == 3


@pytest.mark.parametrize("spec", ["none", "easy", "hard", "decoys", "folder"])
def test_the_dot_is_always_on_top_and_the_only_target_red(spec, tmp_path):
    cfg = small_config()
    if spec == "folder":
        write_video(tmp_path / "clip.avi")
        spec = str(tmp_path)
    source = make_distractions(spec, SIZE, cfg.task)
    reward = RedTargetReward(cfg.task)
    w, h = SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    for seed in range(4):
        rng = np.random.default_rng(seed)
        source.reset(rng)
        center = rng.uniform(0.2, 0.8, 2)
        r = cfg.target.radius * h
        inside = (xx + 0.5 - center[0] * w) ** 2 + (yy + 0.5 - center[1] * h) ** 2 < (r - 1.5) ** 2
        outside = (xx + 0.5 - center[0] * w) ** 2 + (yy + 0.5 - center[1] * h) ** 2 > (r + 1.5) ** 2
        for step in (0, 7, 40):
            image = screen(source, step, SIZE, center, cfg.target)
            assert np.all(image[inside] == cfg.target.color_rgb)  # drawn on top, intact
            assert not reward.red_mask(image)[outside].any()  # no red anywhere else


def test_hard_changes_every_step_easy_stays_still():
    cfg = small_config()
    for spec, dynamic in (("easy", False), ("hard", True), ("decoys", True)):
        source = make_distractions(spec, SIZE, cfg.task)
        source.reset(np.random.default_rng(0))
        changed = not np.array_equal(source.frame(0), source.frame(1))
        assert source.dynamic == dynamic == changed


def test_decoys_look_like_the_dot_but_for_its_hue():
    cfg = small_config()
    source = make_distractions("decoys", SIZE, cfg.task).source
    dot_luma = float(np.dot(cfg.target.color_rgb, [0.299, 0.587, 0.114]))
    for hue in np.linspace(60, 300, 25):
        colour = np.array(source.colour(hue), np.float64)
        assert abs(colour @ [0.299, 0.587, 0.114] - dot_luma) < 1.5
        hsv = cv2.cvtColor(colour.astype(np.uint8)[None, None], cv2.COLOR_RGB2HSV)[0, 0]
        assert 28 <= hsv[0] <= 152  # OpenCV hue (0-179): at least ~56 deg from red
    w, h = SIZE
    for seed in range(3):
        source.reset(np.random.default_rng(seed))
        frames = [source.frame(step) for step in (0, 30)]
        background = np.all(frames[0] == 255, axis=2)
        discs = np.count_nonzero(~background) / (np.pi * (0.07 * h) ** 2)
        assert 0.4 * source.n < discs < 1.8 * source.n  # n discs of about the dot's size
        still = np.all(frames[0] == frames[1], axis=2)
        assert np.any(~background & still) and not np.all(still)  # half fixed, half drift


def test_bad_distraction_folders_are_clear_errors(tmp_path):
    cfg = small_config()
    with pytest.raises(DistractionError, match="does not exist"):
        make_distractions(str(tmp_path / "nope"), SIZE, cfg.task)
    with pytest.raises(DistractionError, match="unknown distraction set"):
        make_distractions("medium", SIZE, cfg.task)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DistractionError, match="holds no video"):
        make_distractions(str(empty), SIZE, cfg.task)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mp4").write_bytes(b"not a video")
    (broken / "b.png").write_bytes(b"not an image")
    with pytest.raises(DistractionError, match="could be read"):
        make_distractions(str(broken), SIZE, cfg.task)
    clip = VideoFolder(SIZE, write_video(tmp_path / "v.avi").parent)
    assert len(clip.clips) == 1 and len(clip.clips[0]) == 12


def test_eval_is_deterministic_per_seed():
    cfg = small_config()
    s = spaces_of(cfg)
    policy = MadiPolicy.from_config(cfg.agent, s.image_shape, s.proprio_dim, s.action_dim)
    a = evaluate(cfg, policy, "hard", episodes=2, seed=3)
    b = evaluate(cfg, policy, "hard", episodes=2, seed=3)
    c = evaluate(cfg, policy, "hard", episodes=2, seed=4)
    assert a.returns == b.returns and a.successes == b.successes
    assert a.returns != c.returns
    assert a.mean_return == pytest.approx(np.mean(a.returns)) and 0 <= a.success_rate <= 1


def test_cli_eval_writes_json_table_and_video(tmp_path, capsys):
    cfg_file = tmp_path / "run" / "config.yaml"
    out = tmp_path / "run"
    assert main(["train", "--sync", "--config", str(Path("configs/sim_quick.yaml")),
                 "--steps", "20", "--out", str(out), "--no-progress",
                 "--set", "task.episode_steps=10", "--set", "train.eval_episodes=0"]) == 0
    assert cfg_file.exists()
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "policy.pt"),
                 "--distractions", "none", "hard", "--episodes", "1",
                 "--video", str(tmp_path / "ev.mp4")]) == 0
    table = capsys.readouterr().out
    assert "none" in table and "hard" in table
    results = json.loads((out / "eval.json").read_text())["results"]
    assert [r["distractions"] for r in results] == ["none", "hard"]
    assert (tmp_path / "ev_hard.mp4").stat().st_size > 1000
    assert main(["eval", "--checkpoint", str(out / "checkpoints" / "policy.pt"),
                 "--distractions", str(tmp_path / "missing")]) == 2


def test_periodic_eval_during_training_is_logged(tmp_path):
    cfg = small_config(eval_every=30, eval_episodes=2, eval_distractions="easy")
    runner = RobotRunner(cfg, SimRig(cfg), tmp_path, None, total_steps=75, realtime=False)
    summary = runner.run()
    assert summary["env_steps"] == 75  # evaluation steps are not env steps
    with open(tmp_path / "eval.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_steps"]) for r in rows] == [30, 30, 60, 60]
    assert {r["distractions"] for r in rows} == {"easy"}
    assert rows[0]["return"] == rows[2]["return"]  # same targets and policy each round
