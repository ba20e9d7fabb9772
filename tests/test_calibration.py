"""Calibration end to end on the sim: `madi calibrate` recovers the mirror's ground truth.

The ChArUco board is shown on the sim's virtual monitor and seen by the sim's camera,
whose intrinsics, mount and the monitor pose are known exactly (the config), as are its
command and camera delays. Reached here (one run): fx, fy within 0.2 %, cx, cy within
2 px (0.5 %), hand-eye and monitor translations within 3 mm and rotations within 0.2 deg,
latencies exact to the tick.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from scipy.spatial.transform import Rotation

from madi.cli import CONFIGS, main
from robot.backends.sim import SimRig
from robot.calibration_file import load_calibration, save_section
from robot.config import ConfigError, load_config
from robot.kinematics import rpy_matrix

CONFIG = str(CONFIGS / "sim_quick.yaml")


def angle_deg(rpy_a, rpy_b) -> float:
    relative = rpy_matrix(rpy_a).T @ rpy_matrix(rpy_b)
    return float(np.rad2deg(Rotation.from_matrix(relative).magnitude()))


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """camera (live views), then hand-eye and monitor from the saved views."""
    folder = tmp_path_factory.mktemp("calib")
    path = folder / "calibration.yaml"
    assert main(["calibrate", "camera", "--config", CONFIG, "--file", str(path),
                 "--views", "14"]) == 0
    for step in ("hand-eye", "monitor"):
        assert main(["calibrate", step, "--config", CONFIG, "--file", str(path),
                     "--images", str(folder / "views-camera")]) == 0
    return path


def test_camera_hand_eye_and_monitor_recover_the_sims_ground_truth(calibrated):
    truth = load_config(CONFIG)
    calib = load_calibration(calibrated)
    cam = calib.camera
    assert (cam.width, cam.height) == (640, 360) and cam.views >= 8 and cam.rms_px < 0.5
    assert cam.fx == pytest.approx(truth.camera.fx, rel=0.02)
    assert cam.fy == pytest.approx(truth.camera.fy, rel=0.02)
    assert cam.cx == pytest.approx(truth.camera.cx, rel=0.02)
    assert cam.cy == pytest.approx(truth.camera.cy, rel=0.02)
    he = calib.hand_eye
    assert np.abs(np.subtract(he.mount_xyz, truth.camera.mount_xyz)).max() < 0.005
    assert angle_deg(he.mount_rpy, truth.camera.mount_rpy) < 1.0
    mon = calib.monitor
    assert np.abs(np.subtract(mon.position, truth.monitor.position)).max() < 0.005
    assert angle_deg(mon.rpy, truth.monitor.rpy) < 1.0
    # The uncertainties are measured and small (fx, fy, cx, cy: 2.1, 2.0, 0.4, 0.6 px).
    assert all(0 < sd < 5.0 for sd in cam.std_px)
    assert 0 < he.residual_deg < 1.0 and 0 < mon.residual_deg < 1.0
    # Each step kept what the earlier ones measured, and says when and how.
    assert "views from" in mon.method and calib.camera.measured_at


def test_latency_recovers_the_configured_delays_within_a_tick(tmp_path):
    path = tmp_path / "calibration.yaml"
    assert main(["calibrate", "latency", "--config", CONFIG, "--file", str(path),
                 "--trials", "3", "--set", "sim.command_latency=0.016",
                 "--set", "sim.camera_latency=0.048"]) == 0
    lat = load_calibration(path).latency
    tick = 0.008
    assert abs(lat.command_s - 0.016) <= tick and abs(lat.camera_s - 0.048) <= tick


def test_colour_thresholds_separate_the_target_from_the_screen(tmp_path):
    path = tmp_path / "calibration.yaml"
    assert main(["calibrate", "colour", "--config", CONFIG, "--file", str(path)]) == 0
    col = load_calibration(path).colour
    assert col.target_pixels > 50 and col.false_positive_fraction < 0.01
    low, high = np.array(col.red_low_bgr), np.array(col.red_high_bgr)
    assert np.all(low <= [0, 0, 255]) and np.all(high >= [0, 0, 255])  # pure red inside
    assert not np.all((low <= 255) & (high >= 255))  # white outside


def test_too_few_views_are_refused_with_the_reason(tmp_path, caplog):
    assert main(["calibrate", "camera", "--config", CONFIG, "--file",
                 str(tmp_path / "c.yaml"), "--views", "3"]) == 2
    assert "8 are needed" in caplog.text
    assert not (tmp_path / "c.yaml").exists()


def test_the_sim_renders_from_the_calibration_file(calibrated, tmp_path):
    # A rig whose calibrated camera sits 2 cm higher than the config says.
    moved = tmp_path / "moved.yaml"
    moved.write_text(calibrated.read_text())
    calib = load_calibration(moved)
    shifted = calib.hand_eye.model_copy(update={"mount_xyz": [0.0, -0.07, 0.03]})
    save_section(moved, "hand_eye", shifted)
    plain = load_config(CONFIG)
    cfg = load_config(CONFIG, [f"calibration={moved}"])
    assert cfg.camera.mount_xyz == [0.0, -0.07, 0.03] and cfg.calibration == str(moved)
    assert cfg.camera.fx == calib.camera.fx
    frames = []
    for c in (plain, cfg):
        with SimRig(c, realtime=False) as rig:
            frames.append(rig.camera.read().image.astype(int))
    assert np.abs(frames[0] - frames[1]).mean() > 5  # the file is really used


def test_bad_or_missing_calibration_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read calibration file"):
        load_config(CONFIG, [f"calibration={tmp_path / 'none.yaml'}"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"camera": {"fx": -3}}))
    with pytest.raises(ConfigError, match="invalid calibration file"):
        load_config(CONFIG, [f"calibration={bad}"])
    relative = tmp_path / "cfg.yaml"  # a relative path is read next to the config
    relative.write_text(yaml.safe_dump({**yaml.safe_load(open(CONFIG)),
                                        "calibration": "bad.yaml"}))
    with pytest.raises(ConfigError, match=str(bad)):
        load_config(relative)
