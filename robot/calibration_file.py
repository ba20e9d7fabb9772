"""The calibration file: one YAML that the real backends and the sim mirror both read.

``madi calibrate camera|hand-eye|monitor|colour|latency`` each measure one section and
write it into the file named by the config's ``calibration`` key, keeping the sections
they did not measure. Every section records when (``measured_at``, UTC ISO 8601) and how
(``method``) it was measured. A config that names a calibration file takes these values
over its own (:func:`robot.config.load_config` applies them):

=========  ===============================================================  ==============
section    values                                                           config keys
=========  ===============================================================  ==============
camera     capture size, fx fy cx cy (px), distortion (k1 k2 p1 p2 k3),     camera.*
           RMS reprojection error
hand_eye   camera pose on the flange (xyz m, rpy rad), residuals            camera.mount_*
monitor    screen pose in the base frame (centre m, rpy rad), size m / px   monitor.*
colour     red target thresholds (BGR) under the camera's lighting          task.red_*_bgr
latency    command -> motion and display -> camera delays (s) and spread    sim.*_latency
=========  ===============================================================  ==============

The sim renders a pinhole camera: it uses the intrinsics, not the distortion.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Vec3 = Annotated[list[float], Field(min_length=3, max_length=3)]
BGR = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]
SECTIONS = ("camera", "hand_eye", "monitor", "colour", "latency")


class CalibrationError(ValueError):
    """A calibration file is missing, unreadable, or a measurement was refused."""


class _Measured(BaseModel):
    model_config = ConfigDict(extra="forbid")

    measured_at: str = Field(description="When, UTC ISO 8601.")
    method: str = Field(description="How: the command, views used, tool.")


class CameraCalibration(_Measured):
    """Pinhole intrinsics and distortion at the capture size (cv2.calibrateCamera)."""

    width: int = Field(gt=0)
    height: int = Field(gt=0)
    fx: float = Field(gt=0)
    fy: float = Field(gt=0)
    cx: float
    cy: float
    dist: Annotated[list[float], Field(min_length=5, max_length=5)]
    rms_px: float = Field(ge=0, description="RMS reprojection error, px.")
    std_px: Annotated[list[float], Field(min_length=4, max_length=4)] | None = Field(
        None, description="Standard deviations of fx, fy, cx, cy, px "
        "(cv2.calibrateCameraExtended).")
    views: int = Field(ge=1)


class _PoseMeasured(_Measured):
    """A pose solved from several views, with the spread of what the views say.

    Hand-eye: the board in the base frame; monitor: the screen. The residuals set the
    randomization's default ranges (:func:`randomize_defaults`).
    """

    residual_mm: float = Field(ge=0, description="Largest position offset from the mean, mm.")
    residual_deg: float | None = Field(None, ge=0, description="Largest orientation offset "
                                       "from the mean, deg.")
    views: int = Field(ge=1)


class HandEyeCalibration(_PoseMeasured):
    """The camera's pose on the flange (cv2.calibrateHandEye)."""

    mount_xyz: Vec3
    mount_rpy: Vec3


class MonitorCalibration(_PoseMeasured):
    """The screen's pose in the robot base frame (solvePnP, chained with hand-eye and FK)."""

    position: Vec3
    rpy: Vec3
    size_m: Annotated[list[float], Field(min_length=2, max_length=2)]
    resolution_px: Annotated[list[int], Field(min_length=2, max_length=2)]


class ColourCalibration(_Measured):
    """Red-target thresholds (OpenCV BGR order) from frames of the shown target."""

    red_low_bgr: BGR
    red_high_bgr: BGR
    target_pixels: int = Field(ge=0, description="Target pixels the thresholds were fit to.")
    false_positive_fraction: float = Field(
        ge=0, le=1, description="Share of non-target pixels the thresholds accept.")


class LatencyCalibration(_Measured):
    """Command -> motion and display -> camera delays."""

    command_s: float = Field(ge=0)
    command_spread_s: float = Field(ge=0)
    camera_s: float = Field(ge=0)
    camera_spread_s: float = Field(ge=0)
    samples: int = Field(ge=1)


class Calibration(BaseModel):
    """The whole file; a section is None until measured."""

    model_config = ConfigDict(extra="forbid")

    camera: CameraCalibration | None = None
    hand_eye: HandEyeCalibration | None = None
    monitor: MonitorCalibration | None = None
    colour: ColourCalibration | None = None
    latency: LatencyCalibration | None = None

    def age(self, now: datetime | None = None) -> dict[str, float]:
        """Age of each measured section, days."""
        now = now or datetime.now(timezone.utc)
        out = {}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None:
                try:
                    then = datetime.fromisoformat(section.measured_at)
                except ValueError:
                    continue
                out[name] = (now - then).total_seconds() / 86400
        return out


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds (for ``measured_at``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file.

    Raises:
        CalibrationError: If the file is missing, not YAML, or a value is invalid; the
            message names the file, the key and the fix.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise CalibrationError(f"cannot read calibration file {path}: {err.strerror}; run "
                               "`madi calibrate camera` (and the others) to make it, or "
                               "remove the config's calibration key") from None
    except yaml.YAMLError as err:
        raise CalibrationError(f"calibration file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"calibration file {path} must be a mapping of sections")
    try:
        return Calibration.model_validate(data)
    except ValidationError as err:
        lines = [f"invalid calibration file {path}:"]
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            lines.append(f"  {key}: {e['msg']}")
        lines.append("  re-run the `madi calibrate` step of that section")
        raise CalibrationError("\n".join(lines)) from None


def save_section(path: str | Path, name: str, section: BaseModel) -> Calibration:
    """Write one measured section into the file, keeping the others (created if absent).

    Returns:
        The whole calibration as written.

    Raises:
        CalibrationError: If an existing file cannot be read.
    """
    if name not in SECTIONS:
        raise ValueError(f"unknown calibration section {name!r}; one of {SECTIONS}")
    path = Path(path)
    calib = load_calibration(path) if path.exists() else Calibration()
    calib = calib.model_copy(update={name: section})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(calib.model_dump(mode="json", exclude_none=True),
                                  sort_keys=False))
    tmp.replace(path)
    return calib


def config_overrides(calib: Calibration) -> dict[str, dict[str, Any]]:
    """The config values a calibration sets, as ``{section: {key: value}}``."""
    out: dict[str, dict[str, Any]] = {}
    if calib.camera is not None:
        c = calib.camera
        out["camera"] = {"width": c.width, "height": c.height, "fx": c.fx, "fy": c.fy,
                         "cx": c.cx, "cy": c.cy}
    if calib.hand_eye is not None:
        out.setdefault("camera", {}).update(mount_xyz=calib.hand_eye.mount_xyz,
                                            mount_rpy=calib.hand_eye.mount_rpy)
    if calib.monitor is not None:
        m = calib.monitor
        out["monitor"] = {"position": m.position, "rpy": m.rpy, "size_m": m.size_m,
                          "resolution_px": m.resolution_px}
    if calib.colour is not None:
        out["task"] = {"red_low_bgr": calib.colour.red_low_bgr,
                       "red_high_bgr": calib.colour.red_high_bgr}
    if calib.latency is not None:
        out["sim"] = {"command_latency": calib.latency.command_s,
                      "camera_latency": calib.latency.camera_s}
    return out


def randomize_defaults(calib: Calibration) -> dict[str, Any]:
    """Domain-randomization ranges (``sim.randomize``) from the measured uncertainty.

    Three times the intrinsics' standard deviations (focal length as a fraction), three
    times the hand-eye and monitor residuals (position m, orientation rad), and the
    latencies' measured spread around their medians (s); what was not measured gives
    nothing (the config's ranges stay).
    """
    out: dict[str, Any] = {}
    if calib.camera is not None and calib.camera.std_px is not None:
        c = calib.camera
        sfx, sfy, scx, scy = c.std_px
        out["focal"] = min(0.5, 3 * max(sfx / c.fx, sfy / c.fy))
        out["principal"] = min(100.0, 3 * max(scx, scy))
    for section, xyz, rpy, cap in (("hand_eye", "camera_xyz", "camera_rpy", 0.1),
                                   ("monitor", "monitor_xyz", "monitor_rpy", 0.2)):
        measured = getattr(calib, section)
        if measured is not None:
            out[xyz] = min(cap, 3 * measured.residual_mm / 1000)
            if measured.residual_deg is not None:
                out[rpy] = min(0.5, 3 * np.radians(measured.residual_deg))
    if calib.latency is not None:
        lat = calib.latency
        out["command_latency"] = [max(0.0, lat.command_s - lat.command_spread_s),
                                  min(0.5, lat.command_s + lat.command_spread_s)]
        out["camera_latency"] = [max(0.0, lat.camera_s - lat.camera_spread_s),
                                 min(0.5, lat.camera_s + lat.camera_spread_s)]
    return out
