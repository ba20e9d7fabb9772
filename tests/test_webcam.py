"""OpenCVCamera on tiny generated video files (no camera hardware needed)."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from robot.backends import webcam
from robot.backends.base import DeviceError, DeviceNotConnectedError
from robot.backends.webcam import OpenCVCamera, list_video_devices
from robot.config import CameraConfig, RobotLoopConfig

W, H, S = 160, 96, 4  # capture size, subsample -> obs 24 x 40
FPS = 50.0


def _frame(i: int) -> np.ndarray:
    """BGR frame i: top half pure red, bottom half a texture that moves with i."""
    img = np.zeros((H, W, 3), np.uint8)
    img[: H // 2] = (0, 0, 255)
    x = np.arange(W)[None, :]
    y = np.arange(H // 2, H)[:, None]
    img[H // 2:, :, 0] = (x * 3 + i * 7) % 256
    img[H // 2:, :, 1] = (y * 5 + i * 11) % 256
    img[H // 2:, :, 2] = ((x + y) * 2) % 256
    return img


def _write_video(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (W, H))
    assert writer.isOpened(), "this OpenCV build cannot write MJPG .avi"
    for i in range(n):
        writer.write(_frame(i))
    writer.release()
    return path


def _decode(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return frames


def _camera(path: Path | str | int, agent_period: float = 0.02, timeout: float = 0.3,
            **overrides) -> OpenCVCamera:
    device = str(path) if isinstance(path, Path) else path
    cfg = CameraConfig(device=device, width=W, height=H, fps=FPS, subsample=S,
                       **overrides)
    return OpenCVCamera(cfg, agent_period=agent_period, timeout=timeout)


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return _write_video(tmp_path / "clip.avi", 30)  # 0.6 s at 50 fps


def test_frames_rgb_and_subsampling(video: Path):
    decoded = _decode(video)
    assert len(decoded) == 30
    cam = _camera(video)
    assert cam.obs_size == (24, 40)
    with cam:
        for _ in range(3):
            frame = cam.read()
            assert frame.image.shape == (*cam.obs_size, 3)
            assert frame.image.dtype == np.uint8
            # Exactly the decoded capture, every S-th pixel, channels reversed.
            assert np.array_equal(frame.image, decoded[frame.seq][::S, ::S, ::-1])
            # Pure red BGR (0, 0, 255) reads back as RGB (255, 0, 0), JPEG tolerance.
            red = frame.image[2: H // S // 2 - 2].reshape(-1, 3).astype(int)
            assert np.all(np.abs(red - (255, 0, 0)) <= 8)
            time.sleep(0.03)
        assert cam.settings["width"] == W and cam.settings["height"] == H


def test_seq_and_timestamps_follow_playback(video: Path):
    cam = _camera(video)
    before = time.monotonic_ns()
    with cam:
        frames = {}
        end = time.monotonic() + 0.35
        while time.monotonic() < end:
            frame = cam.read()
            frames[frame.seq] = frame
            time.sleep(0.005)
        after = time.monotonic_ns()
        captured = cam.frames_captured
    seqs = sorted(frames)
    assert seqs[0] <= 2 and len(seqs) >= 5  # counts from 0 at connect
    stamps = [frames[s].t_ns for s in seqs]
    assert np.all(np.diff(stamps) > 0)
    assert before < stamps[0] and stamps[-1] < after  # the time.monotonic_ns clock
    # Real-time playback at camera.fps, not as fast as decoding goes (loose bounds).
    span = (stamps[-1] - stamps[0]) / 1e9
    nominal = (seqs[-1] - seqs[0]) / FPS
    assert 0.8 * nominal <= span <= 3 * nominal + 0.1
    assert captured < 30  # 0.35 s at 50 fps: not the whole 30-frame file yet


def test_frames_wait_for_the_reader_and_the_stale_deadline_allows_one_frame_interval(
        video: Path):
    # The agent step reads the newest frame at its own pace, not phase-locked to the
    # camera: the frame it gets has waited up to one frame interval since it arrived. A
    # command's age counts from that arrival, so the stale-command deadline needs the
    # interval on top of 2 agent periods (80 ms alone stopped the arm at every few steps
    # behind a 25 fps stream).
    cam = _camera(video)
    assert cam.frame_wait() == pytest.approx(1 / FPS)
    with cam:
        ages = []
        for i in range(12):
            time.sleep(0.013 + 0.007 * (i % 3))
            ages.append(cam.age_ns(cam.read()) / 1e9)
    assert min(ages) >= 0 and max(ages) > 0.002
    assert RobotLoopConfig().deadline(0.04, cam.frame_wait()) == pytest.approx(0.08 + 1 / FPS)
    assert RobotLoopConfig().deadline(0.04) == pytest.approx(0.08)  # the safety horizon
    assert RobotLoopConfig(command_deadline=0.2).deadline(0.04, cam.frame_wait()) == 0.2


def test_wrong_size_names_both_sizes(video: Path):
    cfg = CameraConfig(device=str(video), width=320, height=180, subsample=S)
    cam = OpenCVCamera(cfg, agent_period=0.02, timeout=0.3)
    with pytest.raises(DeviceError) as info:
        cam.connect()
    msg = str(info.value)
    assert f"{W}x{H}" in msg and "320x180" in msg and "camera.width" in msg
    assert not cam.is_connected


def test_missing_device_lists_devices(tmp_path: Path, monkeypatch):
    cam = _camera(tmp_path / "no_such_camera.avi")
    with pytest.raises(DeviceError) as info:
        cam.connect()
    msg = str(info.value)
    assert "camera.device" in msg and "video devices found" in msg
    found = list_video_devices()
    assert (", ".join(found) if found else "none found") in msg

    fake = ["/dev/video10", "/dev/video2", "/dev/video0"]
    monkeypatch.setattr(webcam.glob, "glob", lambda p: fake if p == "/dev/video*" else [])
    assert list_video_devices() == ["/dev/video0", "/dev/video2", "/dev/video10"]
    with pytest.raises(DeviceError, match=r"/dev/video0, /dev/video2, /dev/video10"):
        _camera(tmp_path / "missing.avi").connect()


def test_missing_device_index_fails_cleanly():
    with pytest.raises(DeviceError, match="camera.device=99"):
        _camera(99).connect()


def test_end_of_file_is_an_unplug(tmp_path: Path):
    cam = _camera(_write_video(tmp_path / "short.avi", 5), timeout=0.2)
    cam.connect()
    try:
        last = None
        with pytest.raises(DeviceError) as info:
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                last = cam.read()
                time.sleep(0.01)
        failed_at = time.monotonic_ns()
        assert last is not None and last.seq == 4
        assert (failed_at - last.t_ns) / 1e9 < 0.2 + 0.5  # timeout + slack
        msg = str(info.value)
        assert "no frame from camera.device=" in msg and "unplugged or stalled" in msg
        assert cam.frames_captured == 5
        time.sleep(0.05)
        with pytest.raises(DeviceError, match="unplugged or stalled"):
            cam.read()  # stays failed
        assert cam.failure is not None
    finally:
        cam.disconnect()
    assert not cam.is_connected
    cam.disconnect()
    # Connecting again replays the file from the start.
    with cam:
        assert cam.read().seq == 0 and cam.failure is None


def test_stale_frames_counted(video: Path):
    with _camera(video, agent_period=1e-6) as cam:
        for _ in range(4):
            cam.read()
        assert cam.stale_frames == 4
        ages = cam.frame_age_ms()
        assert ages["samples"] == 4 and 0 < ages["p50_ms"] <= ages["max_ms"] < 300
    with _camera(video, agent_period=0.5) as cam:
        for _ in range(4):
            cam.read()
        assert cam.stale_frames == 0


def test_lifecycle(video: Path):
    cam = _camera(video)
    with pytest.raises(DeviceNotConnectedError):
        cam.read()
    cam.connect()
    cam.connect()  # idempotent
    assert cam.is_connected and cam.read().seq >= 0
    cam.disconnect()
    cam.disconnect()  # idempotent
    assert not cam.is_connected
    with pytest.raises(DeviceNotConnectedError):
        cam.read()
    with pytest.raises(ValueError):
        _camera(video, timeout=0)
