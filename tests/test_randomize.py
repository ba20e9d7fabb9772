"""Domain randomization of the sim: each draw within its range, reproducible per seed."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml

from madi.cli import CONFIGS
from robot.backends.sim import SimRig
from robot.calibration_file import CameraCalibration, HandEyeCalibration, save_section
from robot.config import RandomizeConfig, config_from_dict, load_config
from sim.env import VisualReacherEnv
from sim.randomize import sample


def config(**randomize):
    return config_from_dict({
        "camera": {"subsample": 8}, "task": {"episode_steps": 5},
        "sim": {"pace": "fast", "randomize": {"enabled": True, **randomize}}})


def test_each_randomization_stays_in_its_range_and_repeats_per_seed():
    cfg = config()
    r = cfg.sim.randomize
    draws = [sample(cfg, np.random.default_rng(s)) for s in range(30)]
    again = sample(cfg, np.random.default_rng(7))
    assert again.cfg == draws[7].cfg and np.array_equal(again.effects.gain, draws[7].effects.gain)
    assert draws[0].cfg != draws[1].cfg
    for d in draws:
        c, e = d.cfg, d.effects
        assert abs(c.camera.fx / cfg.camera.fx - 1) <= r.focal
        assert abs(c.camera.fy / cfg.camera.fy - 1) <= r.focal
        assert abs(c.camera.cx - cfg.camera.cx) <= r.principal
        assert np.all(np.abs(np.subtract(c.camera.mount_xyz, cfg.camera.mount_xyz))
                      <= r.camera_xyz)
        assert np.all(np.abs(np.subtract(c.camera.mount_rpy, cfg.camera.mount_rpy))
                      <= r.camera_rpy)
        assert np.all(np.abs(np.subtract(c.monitor.position, cfg.monitor.position))
                      <= r.monitor_xyz)
        assert np.all(np.abs(np.subtract(c.monitor.rpy, cfg.monitor.rpy)) <= r.monitor_rpy)
        drawn = np.array([[cfg.target.color_rgb, cfg.target.background_rgb]], np.uint8)
        shown = e.screen(drawn)[0].astype(int)
        assert np.all(np.abs(shown - drawn[0]) <= r.colour)
        half = e.screen(np.rint(drawn.mean(axis=1, keepdims=True)).astype(np.uint8))
        assert np.all(np.abs(half[0, 0] - shown.mean(axis=0)) <= 1.0)  # blends stay blends
        assert r.command_latency[0] <= c.sim.command_latency <= r.command_latency[1]
        assert r.camera_latency[0] <= c.sim.camera_latency <= r.camera_latency[1]
        assert abs(c.arm.acceleration / cfg.arm.acceleration - 1) <= r.acceleration
        lo = (1 - r.brightness) * (1 - r.white_balance)
        hi = (1 + r.brightness) * (1 + r.white_balance)
        assert np.all((e.gain >= lo - 1e-6) & (e.gain <= hi + 1e-6))
        assert 0 <= e.noise <= r.noise
    # Every quantity really varies across draws.
    red = np.array([[cfg.target.color_rgb]], np.uint8)
    for get in (lambda d: d.cfg.camera.fx, lambda d: tuple(d.effects.screen(red)[0, 0]),
                lambda d: d.cfg.camera.mount_xyz[0], lambda d: d.cfg.monitor.position[1],
                lambda d: d.cfg.sim.camera_latency, lambda d: d.cfg.arm.acceleration,
                lambda d: d.effects.noise):
        assert len({get(d) for d in draws}) > 20


def test_the_env_renders_each_episodes_rig_reproducibly():
    cfg = config()
    envs = [VisualReacherEnv(cfg) for _ in range(2)]
    try:
        first = [env.reset(seed=3)[0]["image"] for env in envs]
        np.testing.assert_array_equal(first[0], first[1])  # same seed, same rig and noise
        assert envs[0].cfg != cfg and envs[0].base_cfg is cfg
        other = envs[0].reset(seed=4)[0]["image"]
        assert np.abs(other.astype(int) - first[0].astype(int)).mean() > 1
        plain = VisualReacherEnv(config(enabled=False))
        try:
            assert plain.reset(seed=3)[0]["image"].shape == first[0].shape
            assert plain.cfg is plain.base_cfg
        finally:
            plain.close()
    finally:
        for env in envs:
            env.close()


def test_ranges_default_to_the_calibration_uncertainty(tmp_path):
    path = tmp_path / "calibration.yaml"
    when = {"measured_at": "2026-11-22T00:00:00+00:00", "method": "test"}
    save_section(path, "hand_eye", HandEyeCalibration(
        mount_xyz=[0.0, -0.05, 0.03], mount_rpy=[0.11, 0.0, 3.14159], residual_mm=2.0,
        residual_deg=0.5, views=10, **when))
    save_section(path, "camera", CameraCalibration(
        width=640, height=360, fx=500.0, fy=450.0, cx=320.0, cy=180.0, dist=[0.0] * 5,
        rms_px=0.3, std_px=[5.0, 9.0, 1.0, 2.0], views=10, **when))
    cfg = load_config(CONFIGS / "sim_quick.yaml", [f"calibration={path}"])
    r = cfg.sim.randomize
    assert r.camera_xyz == pytest.approx(0.006)
    assert r.camera_rpy == pytest.approx(3 * np.radians(0.5))
    assert r.focal == pytest.approx(3 * 9.0 / 450.0) and r.principal == pytest.approx(6.0)
    assert r.monitor_xyz == RandomizeConfig().monitor_xyz  # not measured: the default
    explicit = tmp_path / "cfg.yaml"
    explicit.write_text(yaml.safe_dump({"calibration": str(path),
                                        "sim": {"randomize": {"camera_xyz": 0.001}}}))
    assert load_config(explicit).sim.randomize.camera_xyz == 0.001  # the config wins


def test_the_sim_rig_draws_a_new_rig_at_each_reset_reproducibly():
    cfg = config()
    home = np.asarray(cfg.arm.q_home)
    screen_image = np.full((270, 480, 3), 255, np.uint8)
    screen_image[100:170, 200:280] = (255, 0, 0)
    frames, times = [], []
    for _ in range(2):
        with SimRig(cfg, realtime=False) as rig:
            episode = []
            for _ in range(2):
                rig.display.show(screen_image)
                rig.arm.move_home(home, 0.1)
                times.append(rig.arm.read_state().t_ns)
                episode.append(rig.camera.read().image)
            frames.append(episode)
    np.testing.assert_array_equal(frames[0][0], frames[1][0])  # same seed, same rigs
    np.testing.assert_array_equal(frames[0][1], frames[1][1])
    assert np.abs(frames[0][1].astype(int) - frames[0][0].astype(int)).mean() > 1
    assert times[1] > times[0]  # the clock carries on over a rebuilt mirror
    with SimRig(config(enabled=False), realtime=False) as plain:
        plain.display.show(screen_image)
        plain.arm.move_home(home, 0.1)
        nominal = plain.camera.read().image
    assert np.abs(nominal.astype(int) - frames[0][0].astype(int)).mean() > 1


def test_two_process_train_runs_on_a_randomized_sim(tmp_path):
    from madi.cli import main

    run = tmp_path / "run"
    assert main(["train", "--steps", "30", "--out", str(run), "--no-progress",
                 "--pace", "fast", "--config", str(CONFIGS / "sim_quick.yaml"),
                 "--set", "task.episode_steps=10", "--set", "agent.init_random_steps=20",
                 "--set", "agent.batch_size=8", "--set", "sim.randomize.enabled=true"]) == 0
    with open(run / "episodes.csv") as f:
        assert sum(int(row["steps"]) for row in csv.DictReader(f)) == 30
    assert load_config(run / "config.yaml").sim.randomize.enabled
