"""Tests of the MuJoCo mirror: kinematics, speedJ, latencies, camera, screen, contacts."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2
import numpy as np
import pytest

from robot.config import ArmConfig, CameraConfig, MonitorConfig, SimConfig
from robot.kinematics import flange_pose, rpy_matrix
from sim.mirror import Mirror

#: Allowed excess of the actual joint acceleration over arm.acceleration (relative). The
#: servo with inertia feed-forward measures < 0.2 % over 1000 random agent steps.
ACC_TOL = 0.01
#: A small excursion from home that stays clear of the table, the monitor and itself.
QD_STEP = np.array([0.3, -0.5, 0.6, 0.4, -0.2, 0.0])


def make(arm=None, camera=None, monitor=None, sim=None) -> Mirror:
    return Mirror(arm or ArmConfig(), camera or CameraConfig(), monitor or MonitorConfig(),
                  sim or SimConfig())


@pytest.fixture(scope="module")
def mirror():
    with make() as m:
        yield m


def screen_point(monitor: MonitorConfig, u: float, v: float) -> np.ndarray:
    """Base-frame point at screen fractions (u right, v down from the top left)."""
    w, h = monitor.size_m
    local = np.array([(u - 0.5) * w, (0.5 - v) * h, 0.0])
    return np.asarray(monitor.position) + rpy_matrix(monitor.rpy) @ local


def project(mir: Mirror, point: np.ndarray, subsample=None, camera=None) -> np.ndarray:
    """OpenCV pinhole projection (pixel centres at integers) of a base-frame point."""
    pose = mir.camera_pose()
    p_cam = pose[:3, :3].T @ (point - pose[:3, 3])
    fx, fy, cx, cy = (camera or CameraConfig()).intrinsics(subsample)
    return np.array([fx * p_cam[0] / p_cam[2] + cx, fy * p_cam[1] / p_cam[2] + cy])


def red_centroid(img: np.ndarray) -> np.ndarray:
    mask = (img[..., 0].astype(int) - img[..., 1]) > 100
    weights = (img[..., 0].astype(float) - img[..., 1]) * mask
    rows, cols = np.indices(mask.shape)
    return np.array([(cols * weights).sum(), (rows * weights).sum()]) / weights.sum()


@pytest.mark.parametrize("model", ["ur5", "ur5e"])
def test_flange_pose_equals_dh(model):
    rng = np.random.default_rng(0)
    with make(arm=ArmConfig(model=model)) as mir:
        for _ in range(20):
            q = rng.uniform(-2 * np.pi, 2 * np.pi, 6)
            mir.reset(q)
            np.testing.assert_allclose(mir.q, q)
            ref = flange_pose(q, model)
            got = mir.flange_pose()
            assert np.abs(got[:3, 3] - ref[:3, 3]).max() < 1e-6
            assert np.abs(got[:3, :3] - ref[:3, :3]).max() < 1e-6


@pytest.mark.parametrize("model", ["ur5", "ur5e"])
def test_speedj_step_ramps_at_acceleration_and_tracks(model):
    arm = ArmConfig(model=model)
    with make(arm=arm) as mir:
        dt, a = mir.control_period, arm.acceleration
        mir.command(QD_STEP)
        qd_prev, accel, track = mir.qd, [], []
        for _ in range(round(1.0 / dt)):
            mir.advance(dt)
            qd = mir.qd
            accel.append(np.abs(qd - qd_prev).max() / dt)
            qd_prev = qd
            track.append(np.linalg.norm(flange_pose(mir.q, model)[:3, 3]
                                        - flange_pose(mir.q_reference, model)[:3, 3]))
        accel = np.array(accel)
        assert accel.max() <= a * (1 + ACC_TOL)
        lead_time = np.abs(QD_STEP).max() / a  # leading axis ramps at a
        ramp = accel[: int(lead_time / dt) - 1]
        assert ramp.min() >= a * (1 - ACC_TOL)  # it does use the bound
        np.testing.assert_allclose(mir.qd, QD_STEP, atol=1e-4)
        assert max(track) < 1e-3  # m
        assert mir.contacts() == []
        # Stop: ramps down at the bound too.
        mir.command(np.zeros(6))
        for _ in range(round(0.6 / dt)):
            mir.advance(dt)
            qd = mir.qd
            assert np.abs(qd - qd_prev).max() / dt <= a * (1 + ACC_TOL)
            qd_prev = qd
        np.testing.assert_allclose(mir.qd, 0.0, atol=1e-4)


def first_motion_time(mir: Mirror, t_command: float) -> float:
    while np.abs(mir.qd).max() < 1e-6:
        mir.advance(mir.control_period)
        assert mir.time - t_command < 1.0
    return mir.time - t_command


def test_command_latency_delays_response():
    latency = 0.02
    with make() as fast, make(sim=SimConfig(command_latency=latency)) as slow:
        dt = fast.control_period
        for mir in (fast, slow):
            mir.advance(0.04)
            mir.command(QD_STEP)
        t_fast = first_motion_time(fast, 0.04)
        t_slow = first_motion_time(slow, 0.04)
        assert t_fast == pytest.approx(dt)  # reacts on the very next tick
        assert latency - 1e-9 <= t_slow - t_fast <= latency + dt + 1e-9


def test_camera_latency_shows_earlier_pose():
    latency, period = 0.04, 0.04
    with make() as now, make(sim=SimConfig(camera_latency=latency)) as late:
        frames_now = []
        for _ in range(6):
            for mir in (now, late):
                mir.command(QD_STEP * 2)
                mir.advance(period)
            frames_now.append(now.render())
            delayed = late.render()
            np.testing.assert_array_equal(late.q, now.q)
        np.testing.assert_array_equal(delayed, frames_now[-2])
        assert not np.array_equal(delayed, frames_now[-1])


def test_render_shape_and_dtype(mirror):
    img = mirror.render()
    assert img.shape == (90, 160, 3) and img.dtype == np.uint8
    assert mirror.render(subsample=1).shape == (360, 640, 3)
    assert mirror.render().shape == (90, 160, 3)


def test_screen_colours_white_and_red(mirror):
    mirror.reset(np.array(ArmConfig().q_home))
    mirror.set_screen(np.full((50, 80, 3), 255, np.uint8))  # resized to the texture
    centre = mirror.render()[35:55, 70:90].reshape(-1, 3)
    assert centre.min() >= 230
    red = np.zeros((270, 480, 3), np.uint8)
    red[..., 0] = 255
    mirror.set_screen(red)
    bgr = mirror.render()[35:55, 70:90, ::-1].reshape(-1, 3)  # reward thresholds are BGR
    assert (bgr >= [0, 0, 120]).all() and (bgr <= [50, 50, 255]).all()


@pytest.mark.parametrize("subsample", [None, 1])
def test_projection_matches_render(subsample):
    # Off-centre principal point, so the sign of MuJoCo's principalpixel matters.
    camera = CameraConfig(cx=345.0, cy=160.0, fx=450.0, fy=470.0)
    monitor = MonitorConfig()
    with make(camera=camera, monitor=monitor) as mir:
        tw, th = 960, 540
        for u, v in [(0.3, 0.35), (0.7, 0.6), (0.5, 0.5)]:
            screen = np.full((th, tw, 3), 255, np.uint8)
            shift = 4
            centre = (round((u * tw - 0.5) * 16), round((v * th - 0.5) * 16))
            cv2.circle(screen, centre, 12 * 16, (255, 0, 0), -1, cv2.LINE_AA, shift)
            mir.set_screen(screen)
            got = red_centroid(mir.render(subsample))
            want = project(mir, screen_point(monitor, u, v), subsample, camera)
            assert np.abs(got - want).max() < 0.5, (u, v, got, want)


def test_home_view_sees_whole_screen(mirror):
    # The default mount (5 cm below the tool axis, tilted up 0.11 rad) frames the screen.
    monitor = MonitorConfig()
    mirror.reset(np.array(ArmConfig().q_home))
    mirror.set_screen(np.full((270, 480, 3), 255, np.uint8))
    for u in (0.0, 1.0):
        for v in (0.0, 1.0):
            x, y = project(mirror, screen_point(monitor, u, v))
            assert 0 <= x <= 160 and 0 <= y <= 90
    img = mirror.render()
    white = img.min(axis=2) >= 230
    assert white.mean() > 0.7
    assert not white[0].any() and not white[-1].any()  # bezel above and below


def test_set_screen_changes_image(mirror):
    mirror.reset(np.array(ArmConfig().q_home))
    mirror.set_screen(np.full((270, 480, 3), 255, np.uint8))
    before = mirror.render()
    mirror.set_screen(np.zeros((270, 480, 3), np.uint8))
    after = mirror.render()
    assert (before.astype(int) - after).mean() > 100
    with pytest.raises(ValueError):
        mirror.set_screen(np.zeros((270, 480), np.uint8))


def test_determinism():
    rng = np.random.default_rng(3)
    commands = rng.uniform(-0.5, 0.5, (25, 6))
    with make() as a, make() as b:
        for qd in commands:
            images = []
            for mir in (a, b):
                mir.command(qd)
                mir.advance(0.04)
                images.append(mir.render())
            np.testing.assert_array_equal(a.q, b.q)
            np.testing.assert_array_equal(a.qd, b.qd)
            np.testing.assert_array_equal(images[0], images[1])


def test_contacts_reports_table_and_none_at_home(mirror):
    home = np.array(ArmConfig().q_home)
    mirror.reset(home)
    mirror.advance(0.008)
    assert mirror.contacts() == []
    low = home.copy()
    low[1] = -0.5  # shoulder down: the wrist goes through the table
    mirror.reset(low)
    mirror.advance(0.008)
    pairs = mirror.contacts()
    assert ("table", "webcam") in pairs
    assert all(len(p) == 2 and all(isinstance(n, str) and n for n in p) for p in pairs)
    mirror.reset(home)


def test_reset_keeps_time_and_rejects_bad_input(mirror):
    t = mirror.time
    mirror.command(np.ones(6))
    mirror.reset(np.array(ArmConfig().q_home))
    assert mirror.time == t
    mirror.advance(0.04)
    np.testing.assert_array_equal(mirror.qd, 0.0)  # the pending command was dropped
    assert mirror.time == pytest.approx(t + 0.04)
    with pytest.raises(ValueError):
        mirror.command(np.ones(5))
    with pytest.raises(ValueError):
        mirror.reset(np.full(6, np.nan))
    with pytest.raises(ValueError):
        mirror.advance(-1.0)
