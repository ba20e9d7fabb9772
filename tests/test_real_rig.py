"""The robot process on the real-rig backends, with faults: no hardware needed.

The rig is :class:`robot.backends.real.RealRig` as a user gets it, with the installed
ur_rtde driving the emulated UR controller (sim/ur_controller.py, in its own process on a
127.x.y.z address). What cannot run here is swapped at the narrowest boundary: the webcam
by a video file read through OpenCV, the monitor by the off-screen target display. One
test keeps ur_rtde's test double (tests/fake_ur_rtde.py): a link that drops under a
connected arm, because ur_rtde's control interface then reconnects on its own threads and
calls into it meanwhile crash or hang the calling process (docs/real-robot.md).
"""

from __future__ import annotations

import contextlib
import csv
import json
import threading
import time

import cv2
import fake_ur_rtde
import numpy as np
import pytest
from fake_ur_rtde import running_controller
from polling import wait_for
from test_robot_runner import LINK, FakeLearner

from link.endpoints import LinkAddresses, RobotLink
from robot.backends.base import DeviceError
from robot.backends.monitor import WindowDisplay, compose_screen
from robot.backends.real import RealRig
from robot.config import config_from_dict
from robot.runner import RobotRunner, spaces_of
from robot.task import draw_target

W, H, FPS = 320, 180, 25


def write_video(path, seconds):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    frame = np.full((H, W, 3), 255, np.uint8)
    cv2.circle(frame, (W // 2, H // 2), 20, (0, 0, 255), -1)
    for _ in range(int(seconds * FPS)):
        writer.write(frame)
    writer.release()
    return path


def rig_config(video, **arm):
    return config_from_dict({
        "backend": "ur5",
        "arm": {"host": "ur-fake", "reset_duration": 0.2, "reconnect_interval": 0.2,
                "protective_stop_recovery": "dashboard", **arm},
        "camera": {"device": str(video), "width": W, "height": H, "fps": FPS,
                   "fx": 228.5, "fy": 228.5, "cx": 159.5, "cy": 89.5, "subsample": 8},
        "monitor": {"output": "offscreen", "resolution_px": [640, 360]},
        "task": {"episode_steps": 10},
        "agent": {"masker_filters": 4, "encoder_filters": 8, "mlp_hidden": [32, 32]},
        "robot": {"camera_timeout": 0.5, "realtime_priority": None},
    })


def episodes(run_dir):
    with open(run_dir / "episodes.csv") as f:
        return list(csv.DictReader(f))



def real_runner(cfg, tmp_path, link=None, total_steps=40, rtde=None):
    """The robot loop on the real rig's backends (the installed ur_rtde, video camera)."""
    return RobotRunner(cfg, RealRig(cfg, rtde=rtde), tmp_path / "run", link,
                       total_steps=total_steps)


def emulated_rig_config(video, controller):
    """:func:`rig_config` for an emulated ``controller``, with a 2 Hz watchdog: a loaded
    test machine may starve a 10 Hz keeper (the emulator counts its own ticks)."""
    return rig_config(video, host=controller.host, watchdog_hz=2.0)


def watchdog_fired(controller) -> bool:
    return any("RTDE watchdog" in text for _, text in controller.status()["events"])


@contextlib.contextmanager
def running(runner):
    """Run ``runner`` in a thread; stop and join it at exit; its run must not fail."""
    out = {}

    def run():
        try:
            out["result"] = runner.run()
        except BaseException as err:
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        runner.request_stop()
        thread.join(15)
    assert "error" not in out, out.get("error")


def test_rtde_drop_mid_episode_stops_ends_the_episode_and_reconnects(tmp_path, caplog):
    cfg = rig_config(write_video(tmp_path / "cam.avi", 30))
    with running_controller(cfg, "ur-fake") as controller:
        runner = real_runner(cfg, tmp_path, rtde=fake_ur_rtde)
        with running(runner) as thread:
            assert wait_for(lambda: runner.env_steps >= 15)
            controller.drop_link()
            # The script runs on with the last target until the watchdog halts it.
            assert wait_for(lambda: controller.watchdog_fired, 2.0)
            np.testing.assert_array_equal(controller.target, 0.0)
            time.sleep(0.5)  # a few reconnect attempts fail meanwhile
            controller.restore_link()
            thread.join(30)
        ends = [r["end"] for r in episodes(tmp_path / "run")]
        assert "arm_link_lost" in ends
        assert runner.env_steps == 40 and runner.arm_reconnects == 1
        assert "arm reconnect 1/5 failed" in caplog.text
        assert "arm link lost" in caplog.text


def test_protective_stop_aborts_the_episode_and_the_dashboard_recovers(tmp_path,
                                                                       make_controller):
    controller = make_controller("ur5", unlock_delay=0.3)
    cfg = emulated_rig_config(write_video(tmp_path / "cam.avi", 30), controller)
    runner = real_runner(cfg, tmp_path)
    with running(runner) as thread:
        assert wait_for(lambda: runner.env_steps >= 15, 30)
        controller.protective_stop("test")
        thread.join(60)
    rows = episodes(tmp_path / "run")
    assert [r["end"] for r in rows].count("protective_stop") == 1
    assert runner.protective_stops == 1 and runner.env_steps == 40
    assert controller.faults()["safety_mode"] == "NORMAL"


def test_camera_unplugged_stops_the_arm_with_a_clear_message(tmp_path, make_controller):
    controller = make_controller("ur5")
    cfg = emulated_rig_config(write_video(tmp_path / "cam.avi", 2.0), controller)
    runner = real_runner(cfg, tmp_path, total_steps=1000)
    with pytest.raises(DeviceError, match="unplugged or stalled"):
        runner.run()
    assert wait_for(lambda: np.max(np.abs(controller.status()["qd"])) < 1e-9, 3.0)
    assert not controller.status()["program_running"]  # the script was stopped
    timing = json.loads((tmp_path / "run" / "timing.json").read_text())  # still readable
    assert timing["camera"]["frames_captured"] > 0 and "stale_frames" in timing["camera"]


def test_offscreen_display_shows_the_target_full_screen(tmp_path):
    cfg = rig_config(tmp_path / "unused.avi")
    display = WindowDisplay(cfg.monitor)
    with display:
        assert display.screen is None
        image = draw_target((480, 270), np.array([0.25, 0.5]), cfg.target)
        display.show(image)
        screen = display.screen
    assert screen.shape == (360, 640, 3) and display.shown == 1
    np.testing.assert_array_equal(screen, compose_screen(image, (640, 360)))
    # The target is where it was drawn: red around (0.25 W, 0.5 H), white far from it.
    assert tuple(screen[180, 160]) == (255, 0, 0) and tuple(screen[180, 600]) == (255, 255, 255)


def test_fullscreen_display_without_a_display_server_says_how_to_fix_it(tmp_path,
                                                                        monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cfg = rig_config(tmp_path / "unused.avi")
    display = WindowDisplay(cfg.monitor.model_copy(update={"output": "fullscreen"}))
    with pytest.raises(DeviceError, match="monitor.output: offscreen"):
        display.connect()
    assert not display.is_connected


def test_learner_lost_in_stop_mode_holds_the_real_arm(tmp_path, make_controller):
    controller = make_controller("ur5")
    cfg = emulated_rig_config(write_video(tmp_path / "cam.avi", 30), controller)
    cfg.robot.on_learner_lost = "stop"
    addrs = LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    learner = FakeLearner(addrs, cfg)
    link = RobotLink(addrs, cfg.task_hash(), spaces_of(cfg), **LINK)
    runner = real_runner(cfg, tmp_path, link, total_steps=1000)
    try:
        with running(runner):
            assert wait_for(lambda: runner.env_steps >= 15, 30)
            learner.close()
            # Mid-episode (end = learner_lost) or between episodes: the arm is held.
            assert wait_for(lambda: runner.waiting_for_learner, 10)
            steps = runner.env_steps
            time.sleep(0.5)
            assert runner.env_steps == steps  # no acting without a learner
            assert np.max(np.abs(controller.status()["qd"])) < 1e-2  # held at rest
            assert controller.status()["program_running"] and not watchdog_fired(controller)
    finally:
        link.close()
