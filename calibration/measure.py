"""The five calibration procedures of ``madi calibrate``, on any rig (sim or real).

Each takes a connected :class:`robot.backends.base.Rig` (or saved views) and returns one
section of the calibration file (:mod:`robot.calibration_file`). The maths is OpenCV's:
ChArUco detection, ``cv2.calibrateCamera``, ``cv2.solvePnP``, ``cv2.calibrateHandEye``;
rotations are averaged with SciPy.

Views: the target display shows the ChArUco board (:mod:`calibration.board`), the arm
visits :func:`view_poses` (joint-space offsets around the home pose, inside the safety
limits) with its reset move, and at rest one fresh full-resolution frame is taken per
pose (the camera's ``subsample`` must be 1). :func:`save_views` / :func:`load_views` keep
them in a folder (``frame_NNN.png`` + ``views.json`` with the joint positions), so hand-eye
and monitor can be solved from the camera step's views, or from images taken elsewhere.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from calibration.board import ScreenBoard
from robot.backends.base import Frame, Rig
from robot.calibration_file import (
    CalibrationError,
    CameraCalibration,
    ColourCalibration,
    HandEyeCalibration,
    LatencyCalibration,
    MonitorCalibration,
    now_iso,
)
from robot.config import Config
from robot.kinematics import flange_pose
from robot.safety import SafetyLimits
from robot.task import draw_target

logger = logging.getLogger(__name__)

#: Refusal thresholds of the camera calibration.
MIN_VIEWS = 8
MAX_RMS_PX = 1.0
#: Corners a view must show to count.
MIN_CORNERS = 12
#: Joint offsets of the view poses around home, rad (base .. wrist 3).
VIEW_SPREAD = np.array([0.10, 0.06, 0.06, 0.15, 0.15, 0.35])


@dataclass
class View:
    """One calibration view: joint positions at rest and the frame taken there.

    Attributes:
        q: float64 (6,) joint positions, rad.
        frame: uint8 (H, W, 3) RGB at the capture size.
    """

    q: np.ndarray
    frame: np.ndarray


def view_poses(cfg: Config, n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` joint poses around home inside the safety limits (home first), rad."""
    safety = SafetyLimits.for_rig(cfg)
    home = np.asarray(cfg.arm.q_home, dtype=np.float64)
    rng = np.random.default_rng(seed)
    poses = [home]
    for _ in range(200 * n):
        if len(poses) >= n:
            break
        q = home + rng.uniform(-1, 1, 6) * VIEW_SPREAD
        if not np.any(safety.joint_violation(q)) and not np.any(safety.box_violation(q)):
            poses.append(q)
    return poses


def _settle(rig: Rig, seconds: float) -> None:
    """Let ``seconds`` pass at rest (the sim's clock runs only with commands)."""
    if rig.lockstep:
        for _ in range(round(seconds / rig.arm.control_period)):
            rig.arm.speedj(np.zeros(6), 1.0)
    else:
        time.sleep(seconds)


def _fresh_frame(rig: Rig, timeout: float = 2.0) -> Frame:
    """A frame captured after this call started (the arm at rest by then)."""
    if rig.lockstep:
        return rig.camera.read(timeout)
    start = time.monotonic_ns()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        frame = rig.camera.read(timeout)
        if frame.t_ns > start:
            return frame
        time.sleep(0.005)
    raise CalibrationError("no fresh camera frame within 2 s")


def collect_views(rig: Rig, cfg: Config, poses: list[np.ndarray], image: np.ndarray,
                  settle: float = 0.3) -> list[View]:
    """Show ``image`` on the display and take one frame at rest at each pose.

    Raises:
        CalibrationError: If the camera does not deliver full-resolution frames.
    """
    if tuple(rig.camera.obs_size) != (cfg.camera.height, cfg.camera.width):
        raise CalibrationError(f"calibration needs full-resolution frames "
                               f"({cfg.camera.width}x{cfg.camera.height}); the camera gives "
                               f"{rig.camera.obs_size[::-1]}: set camera.subsample=1")
    rig.display.show(image)
    views = []
    for i, q in enumerate(poses):
        distance = float(np.max(np.abs(q - rig.arm.read_state().q)))
        rig.arm.move_home(q, max(cfg.arm.reset_duration, distance / cfg.arm.home_speed))
        _settle(rig, settle + cfg.sim.camera_latency)
        views.append(View(rig.arm.read_state().q, _fresh_frame(rig).image))
        logger.info("view %d/%d taken", i + 1, len(poses))
    return views


def save_views(views: list[View], folder: Path) -> Path:
    """Write views as ``frame_NNN.png`` + ``views.json`` (joint positions, rad)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = []
    for i, v in enumerate(views):
        name = f"frame_{i:03d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(v.frame, cv2.COLOR_RGB2BGR))
        meta.append({"image": name, "q": [float(x) for x in v.q]})
    (folder / "views.json").write_text(json.dumps(meta, indent=1))
    return folder


def load_views(folder: Path) -> list[View]:
    """Read views written by :func:`save_views`.

    Raises:
        CalibrationError: If the folder, its ``views.json`` or an image is missing.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "views.json").read_text())
    except (OSError, ValueError) as err:
        raise CalibrationError(f"{folder} has no readable views.json ({err}); take views "
                               "with `madi calibrate camera` first") from None
    views = []
    for item in meta:
        image = cv2.imread(str(folder / item["image"]))
        if image is None:
            raise CalibrationError(f"cannot read {folder / item['image']}")
        views.append(View(np.asarray(item["q"], dtype=np.float64),
                          cv2.cvtColor(image, cv2.COLOR_BGR2RGB)))
    return views


def _detections(views: list[View], board: ScreenBoard) -> list[tuple[View, np.ndarray,
                                                                    np.ndarray]]:
    out = []
    for v in views:
        img, obj = board.detect(v.frame)
        if len(img) >= MIN_CORNERS:
            out.append((v, img, obj))
    return out


def camera_intrinsics(views: list[View], board: ScreenBoard, method: str) -> CameraCalibration:
    """Intrinsics, distortion and their standard deviations from board views.

    ``cv2.calibrateCameraExtended``; the deviations set the randomization's defaults.

    Raises:
        CalibrationError: With fewer than :data:`MIN_VIEWS` usable views or an RMS
            reprojection error above :data:`MAX_RMS_PX`; the message says which and why.
    """
    found = _detections(views, board)
    if len(found) < MIN_VIEWS:
        raise CalibrationError(
            f"only {len(found)} of {len(views)} views show at least {MIN_CORNERS} board "
            f"corners; {MIN_VIEWS} are needed. Is the board on the monitor in view? Take "
            "more views, or views closer to the home pose")
    h, w = views[0].frame.shape[:2]
    rms, k, dist, _, _, std, _, _ = cv2.calibrateCameraExtended(
        [f[2] for f in found], [f[1] for f in found], (w, h), None, None)
    if rms > MAX_RMS_PX:
        raise CalibrationError(
            f"RMS reprojection error {rms:.2f} px > {MAX_RMS_PX} px: blurred or "
            "mis-detected views (motion during capture, glare on the screen); retake them")
    return CameraCalibration(width=w, height=h, fx=float(k[0, 0]), fy=float(k[1, 1]),
                             cx=float(k[0, 2]), cy=float(k[1, 2]),
                             dist=[float(x) for x in dist.ravel()[:5]], rms_px=float(rms),
                             std_px=[float(x) for x in std.ravel()[:4]], views=len(found),
                             measured_at=now_iso(), method=method)


def _board_poses(found, k: np.ndarray, dist: np.ndarray) -> list[np.ndarray]:
    """Camera <- board transform of each view (``cv2.solvePnP``), (4, 4) m."""
    poses = []
    for _, img, obj in found:
        ok, rvec, tvec = cv2.solvePnP(obj, img, k, dist)
        if not ok:
            raise CalibrationError("solvePnP failed on a view")
        pose = np.eye(4)
        pose[:3, :3] = cv2.Rodrigues(rvec)[0]
        pose[:3, 3] = tvec.ravel()
        poses.append(pose)
    return poses


def _intrinsics(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    c = cfg.camera
    k = np.array([[c.fx, 0, c.cx], [0, c.fy, c.cy], [0, 0, 1]], dtype=np.float64)
    return k, np.zeros(5)


def hand_eye(views: list[View], board: ScreenBoard, cfg: Config,
             method: str) -> HandEyeCalibration:
    """The camera's pose on the flange (``cv2.calibrateHandEye``, Park's method).

    Uses ``cfg.camera``'s intrinsics (the calibration file's once `camera` is measured)
    and forward kinematics of each view's joint positions.

    Raises:
        CalibrationError: With fewer than 3 usable views.
    """
    found = _detections(views, board)
    if len(found) < 3:
        raise CalibrationError(f"hand-eye needs at least 3 views showing the board, got "
                               f"{len(found)}")
    k, dist = _intrinsics(cfg)
    cam_board = _board_poses(found, k, dist)
    base_flange = [flange_pose(v.q, cfg.arm.model) for v, _, _ in found]
    r, t = cv2.calibrateHandEye([p[:3, :3] for p in base_flange],
                                [p[:3, 3] for p in base_flange],
                                [p[:3, :3] for p in cam_board], [p[:3, 3] for p in cam_board],
                                method=cv2.CALIB_HAND_EYE_PARK)
    mount = np.eye(4)
    mount[:3, :3], mount[:3, 3] = r, t.ravel()
    board_in_base = np.stack([(bf @ mount @ cb)[:3, 3] for bf, cb in zip(base_flange, cam_board,
                                                                        strict=True)])
    spread = float(np.max(np.linalg.norm(board_in_base - board_in_base.mean(0), axis=1)))
    board_rot = [(bf @ mount @ cb)[:3, :3] for bf, cb in zip(base_flange, cam_board,
                                                               strict=True)]
    return HandEyeCalibration(
        mount_xyz=[float(x) for x in mount[:3, 3]],
        mount_rpy=[float(x) for x in Rotation.from_matrix(r).as_euler("xyz")],
        residual_mm=1000 * spread, residual_deg=_angle_spread(board_rot), views=len(found),
        measured_at=now_iso(), method=method)


def _angle_spread(rotations: list[np.ndarray]) -> float:
    """Largest angle of a rotation from their mean, deg."""
    rot = Rotation.from_matrix(np.stack(rotations))
    return float(np.degrees(np.max((rot.mean().inv() * rot).magnitude())))


def monitor_pose(views: list[View], board: ScreenBoard, cfg: Config,
                 method: str) -> MonitorCalibration:
    """The screen's pose in the base frame: board poses (solvePnP) through FK and hand-eye.

    Raises:
        CalibrationError: With no usable view.
    """
    found = _detections(views, board)
    if not found:
        raise CalibrationError("no view shows the board: is it on the monitor, in view?")
    k, dist = _intrinsics(cfg)
    board_screen = np.linalg.inv(board.screen_from_board())
    screens = [flange_pose(v.q, cfg.arm.model) @ cfg.camera.mount @ cb @ board_screen
               for (v, _, _), cb in zip(found, _board_poses(found, k, dist), strict=True)]
    centres = np.stack([s[:3, 3] for s in screens])
    centre = centres.mean(0)
    rotations = [s[:3, :3] for s in screens]
    rot = Rotation.from_matrix(np.stack(rotations)).mean()
    return MonitorCalibration(
        position=[float(x) for x in centre], rpy=[float(x) for x in rot.as_euler("xyz")],
        size_m=list(cfg.monitor.size_m), resolution_px=list(cfg.monitor.resolution_px),
        residual_mm=1000 * float(np.max(np.linalg.norm(centres - centre, axis=1))),
        residual_deg=_angle_spread(rotations), views=len(found), measured_at=now_iso(),
        method=method)


def colour(rig: Rig, cfg: Config, poses: list[np.ndarray], method: str,
           margin: int = 20) -> ColourCalibration:
    """Red thresholds from frames of the target vs the plain screen at the same poses.

    At each pose the display shows the plain screen, then the target (centred): pixels
    that changed a lot are the target. The thresholds span the target pixels' BGR values
    (1st..99th percentile) widened by ``margin``, clipped so they accept none of the
    plain-screen pixels where possible; the share of non-target pixels they accept is
    reported.

    Raises:
        CalibrationError: If the target is not seen at any pose.
    """
    w, h = rig.display.size_px
    plain = np.empty((h, w, 3), np.uint8)
    plain[:] = cfg.target.background_rgb
    target = draw_target((w, h), np.array([0.5, 0.5]), cfg.target)
    red, rest = [], []
    for q in poses:
        rig.arm.move_home(q, cfg.arm.reset_duration)
        frames = []
        for image in (plain, target):
            rig.display.show(image)
            _settle(rig, 0.2 + cfg.sim.camera_latency)
            frames.append(_fresh_frame(rig).image.astype(np.int16))
        changed = np.abs(frames[1] - frames[0]).sum(axis=2) > 350  # not the blended rim
        bgr = frames[1][:, :, ::-1]
        red.append(bgr[changed])
        rest.append(bgr[~changed])
    red_px = np.concatenate(red)
    if len(red_px) < 20:
        raise CalibrationError("the camera does not see the target: point it at the monitor "
                               "(madi robot check saves a frame)")
    rest_px = np.concatenate(rest)
    low = np.clip(np.percentile(red_px, 1, axis=0) - margin, 0, 255).astype(int)
    high = np.clip(np.percentile(red_px, 99, axis=0) + margin, 0, 255).astype(int)
    accepted = np.all((rest_px >= low) & (rest_px <= high), axis=1)
    return ColourCalibration(red_low_bgr=low.tolist(), red_high_bgr=high.tolist(),
                             target_pixels=int(len(red_px)),
                             false_positive_fraction=float(accepted.mean()),
                             measured_at=now_iso(), method=method)


def latency(rig: Rig, cfg: Config, trials: int, method: str) -> LatencyCalibration:
    """Command -> motion and display -> camera delays, ``trials`` of each.

    Command: from rest at home, a small speedJ step on the base joint is streamed every
    tick; the delay is the time from the first command to the first joint state that
    moves, less the one tick the controller needs to act on any command. Camera: the
    display turns from black to white; the delay is the time from ``show`` returning to
    the first frame that shows it. Times come from the arm's clock in lockstep (the sim)
    and from the monotonic clock otherwise.

    Raises:
        CalibrationError: If the arm or the camera never responds.
    """
    arm, period = rig.arm, rig.arm.control_period
    home = np.asarray(cfg.arm.q_home)
    command, camera = [], []
    step = np.zeros(6)
    step[0] = 0.05
    w, h = rig.display.size_px
    black, white = np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 255, np.uint8)
    for _ in range(trials):
        arm.move_home(home, cfg.arm.reset_duration)
        t0 = arm.read_state().t_ns
        for _ in range(round(0.5 / period)):
            wall = time.monotonic()
            arm.speedj(step, cfg.arm.acceleration)
            state = arm.read_state()
            if abs(state.qd[0]) > 0.002:
                command.append((state.t_ns - t0) / 1e9 - period)
                break
            if not rig.lockstep:
                time.sleep(max(0.0, period - (time.monotonic() - wall)))
        else:
            raise CalibrationError("the arm did not move within 0.5 s of a speedJ command")
        arm.speed_stop(cfg.arm.acceleration)
        rig.display.show(black)
        _settle(rig, 0.3 + cfg.sim.camera_latency)
        rig.display.show(white)
        t_show = arm.read_state().t_ns if rig.lockstep else time.monotonic_ns()
        for _ in range(round(1.0 / period)):
            frame = rig.camera.read(1.0)
            if frame.image.mean() > 127:
                seen = arm.read_state().t_ns if rig.lockstep else frame.t_ns
                camera.append(max(0.0, (seen - t_show) / 1e9))
                break
            _settle(rig, period)
        else:
            raise CalibrationError("the camera did not see the display change within 1 s")
    return LatencyCalibration(command_s=float(np.median(command)),
                              command_spread_s=float(np.ptp(command)),
                              camera_s=float(np.median(camera)),
                              camera_spread_s=float(np.ptp(camera)), samples=trials,
                              measured_at=now_iso(), method=method)

