"""``madi robot check``: a preflight of the real rig that moves nothing (unless ``--move``).

Each line of the table answers one question a user has before the first run:

=================  ===========================================================
controller         Does the dashboard server (TCP 29999) answer; which software
                   version; CB3 (125 Hz) or e-series (500 Hz), and does it match
                   ``arm.model``?
robot mode         Is the arm powered on with brakes released (RUNNING)?
safety status      NORMAL, or a protective / emergency stop to clear first?
remote control     e-series with ``control_mode: upload_script`` only: is the pendant
                   in remote control (else ur_rtde cannot upload its script)?
RTDE stream        Does the state stream (TCP 30004) deliver fresh samples, at what
                   rate (measured from the controller's timestamps over 0.5 s)?
joint state        The joint positions (deg); are they inside the safety joint limits
                   and is the flange inside the safety box?
control script     Does ur_rtde's control script start (upload or URCap) and does the
                   controller's step time match ``arm.control_period``? The script is
                   stopped again at once; the arm does not move.
calibration        The calibration file's age per section, and what is not measured.
target display     Does the full-screen target window open on the monitor?
camera             Does the webcam open at the configured size; measured frame rate;
                   one frame saved; does the camera see the red target the display shows?
jog joint N        ``--move`` only: each active joint moves a few degrees at low
                   speed and back (skipped if that would leave the safety limits).
=================  ===========================================================

Results are ``pass``, ``warn`` (works, but look at it), ``fail`` (fix before training)
or ``skip`` (not checked because an earlier check failed or it does not apply). The
table and the saved frame go to the output folder as well (``preflight.json``,
``camera_frame.png``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

import cv2
import numpy as np

from robot.backends.base import DeviceError
from robot.backends.monitor import WindowDisplay
from robot.backends.ur5 import CB3_MAJOR_VERSION, UR5Arm, load_ur_rtde
from robot.backends.webcam import OpenCVCamera
from robot.calibration_file import SECTIONS, CalibrationError, load_calibration
from robot.config import Config
from robot.safety import SafetyLimits
from robot.task import RedTargetReward, draw_target

logger = logging.getLogger(__name__)

#: A calibration section older than this is flagged, days.
CALIBRATION_MAX_AGE_DAYS = 30
#: Joint jog of ``--move``: amplitude, rad (3 deg), and speed, rad/s.
JOG_ANGLE = np.deg2rad(3.0)
JOG_SPEED = 0.1


@dataclass
class Check:
    """One line of the preflight table.

    Attributes:
        name: What was checked.
        status: ``pass``, ``warn``, ``fail`` or ``skip``.
        detail: What was found, and the fix when it is not a pass.
    """

    name: str
    status: str
    detail: str


def _version(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in match.groups()) if match else None


class Preflight:
    """Runs the checks of ``madi robot check`` (see module docstring) in order.

    Args:
        cfg: Config of the real rig (``backend: ur5``; ``arm.host`` set).
        out_dir: Folder for ``preflight.json`` and ``camera_frame.png``.
        move: Also jog each active joint (``--move``).
        rtde: ur_rtde's classes (module or namespace); default: the real ur_rtde.
    """

    def __init__(self, cfg: Config, out_dir: Path, move: bool = False,
                 rtde: ModuleType | SimpleNamespace | None = None):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.move = move
        self.rtde = rtde
        self.checks: list[Check] = []
        self.safety = SafetyLimits.for_rig(cfg)

    def add(self, name: str, status: str, detail: str) -> Check:
        """Record one result (and log it)."""
        check = Check(name, status, detail)
        self.checks.append(check)
        logger.debug("preflight %s: %s (%s)", name, status, detail)
        return check

    @property
    def passed(self) -> bool:
        """No check failed."""
        return all(c.status != "fail" for c in self.checks)

    def run(self) -> list[Check]:
        """Run every check; never raises for a device problem (it becomes a ``fail``).

        Returns:
            The checks in order.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        try:
            rtde = self.rtde or load_ur_rtde()
        except DeviceError as err:
            rtde = None
            self.add("controller", "fail", str(err))
        arm_ok = rtde is not None and self._controller(rtde)
        if arm_ok:
            arm_ok = self._rtde_stream(rtde)
        arm = self._control_script(rtde) if arm_ok else None
        if arm is None:
            for name in ("RTDE stream", "joint state", "control script"):
                if not any(c.name == name for c in self.checks):
                    self.add(name, "skip", "the controller checks failed")
        self._calibration()
        display = self._display()
        self._camera(display)
        if self.move:
            if arm is None:
                self.add("jog joints", "skip", "the arm is not ready")
            else:
                self._jog(arm)
        for device in (arm, display):
            if device is not None:
                try:
                    device.disconnect()
                except Exception as err:
                    logger.error("preflight: closing %s failed: %s", device.name, err)
        (self.out_dir / "preflight.json").write_text(
            json.dumps({"host": self.cfg.arm.host, "passed": self.passed,
                        "checks": [asdict(c) for c in self.checks]}, indent=2))
        return self.checks

    # ------------------------------------------------------------------ the arm
    def _controller(self, rtde) -> bool:
        cfg = self.cfg.arm
        if not cfg.host:
            self.add("controller", "fail", "arm.host is not set: pass --host IP")
            return False
        dashboard = rtde.DashboardClient(cfg.host)
        try:
            dashboard.connect()
            version_text = dashboard.polyscopeVersion()
            robot_mode = dashboard.robotmode()
            safety = dashboard.safetystatus()
            version = _version(version_text)
            remote = (dashboard.isInRemoteControl()
                      if version and version[0] > CB3_MAJOR_VERSION else None)
        except RuntimeError as err:
            self.add("controller", "fail",
                     f"no answer from {cfg.host} (dashboard, TCP 29999): {err}. Check the "
                     "cable, the PC's static IP in the robot's subnet, that the controller "
                     "is booted, and arm.host")
            return False
        finally:
            try:
                dashboard.disconnect()
            except RuntimeError:
                pass
        ok = True
        if version is None:
            self.add("controller", "warn", f"unrecognised version {version_text!r}")
        else:
            series = "CB3" if version[0] <= CB3_MAJOR_VERSION else "e-series"
            hz = 125 if series == "CB3" else 500
            want = "ur5" if series == "CB3" else "ur5e"
            detail = f"{version_text.strip()}: {series}, {hz} Hz control"
            if cfg.model != want:
                ok = False
                self.add("controller", "fail", f"{detail}, but arm.model is {cfg.model}; set "
                         f"arm.model: {want}")
            else:
                self.add("controller", "pass", detail)
        running = "RUNNING" in robot_mode.upper()
        self.add("robot mode", "pass" if running else "fail",
                 robot_mode.strip() + ("" if running else
                                       ": power on and release the brakes on the pendant"))
        normal = safety.strip().upper().endswith("NORMAL")
        self.add("safety status", "pass" if normal else "fail",
                 safety.strip() + ("" if normal else ": find the cause, clear it on the "
                                   "pendant"))
        if remote is None:
            self.add("remote control", "skip", "CB3: no remote control mode")
        elif cfg.control_mode == "urcap":
            self.add("remote control", "skip", "control_mode urcap: the program runs on the "
                     "pendant")
        else:
            self.add("remote control", "pass" if remote else "fail",
                     "in remote control" if remote else
                     "local mode: switch the pendant to remote control (top right), or use "
                     "arm.control_mode: urcap")
            ok = ok and remote
        return ok and running and normal

    def _rtde_stream(self, rtde) -> bool:
        cfg = self.cfg.arm
        try:
            rx = rtde.RTDEReceiveInterface(cfg.host)
        except RuntimeError as err:
            self.add("RTDE stream", "fail", f"cannot connect to {cfg.host}:30004: {err}")
            return False
        try:
            t0 = rx.getTimestamp()
            w0 = time.monotonic()
            time.sleep(0.5)
            t1 = rx.getTimestamp()
            elapsed = time.monotonic() - w0
            q = np.array(rx.getActualQ())
        finally:
            rx.disconnect()
        if not t1 > t0:
            self.add("RTDE stream", "fail", "connected, but the controller timestamp does not "
                     "advance (stale samples): restart the controller's RTDE server (reboot)")
            return False
        hz = 1.0 / cfg.control_period
        ratio = (t1 - t0) / elapsed
        self.add("RTDE stream", "pass" if 0.9 < ratio < 1.1 else "warn",
                 f"fresh samples, controller clock runs at {ratio:.2f}x wall time; speedJ "
                 f"will stream at {hz:.0f} Hz")
        self._joint_state(q)
        return True

    def _joint_state(self, q: np.ndarray) -> None:
        deg = ", ".join(f"{v:.1f}" for v in np.rad2deg(q))
        joints = np.flatnonzero(self.safety.joint_violation(q))
        box = self.safety.box_violation(q)
        problems = []
        if joints.size:
            problems.append(f"joints {joints.tolist()} outside safety.joint_*_deg")
        if np.any(box):
            problems.append(f"flange {np.round(box * 1000).astype(int).tolist()} mm outside "
                            "safety.box")
        screen = self.safety.screen_violation(q)
        if screen:
            problems.append(f"camera {-screen * 1000:.0f} mm inside safety.screen_clearance "
                            "of the monitor")
        far = float(np.rad2deg(np.max(np.abs(q - np.asarray(self.cfg.arm.q_home)))))
        detail = f"q = [{deg}] deg; {far:.0f} deg from home"
        if problems:
            detail += "; " + "; ".join(problems) + ": jog it inside with the pendant (freedrive)"
        self.add("joint state", "warn" if problems else "pass", detail)

    def _control_script(self, rtde) -> UR5Arm | None:
        arm = UR5Arm(self.cfg.arm, rt_priority=self.cfg.robot.control_priority(), rtde=rtde)
        try:
            arm.connect()
        except DeviceError as err:
            self.add("control script", "fail", str(err))
            return None
        self.add("control script", "pass",
                 f"{self.cfg.arm.control_mode}: running, step {arm.step_time * 1000:.0f} ms "
                 "matches arm.control_period")
        return arm

    def _jog(self, arm: UR5Arm) -> None:
        q0 = arm.read_state().q
        for j in self.cfg.arm.active_joints:
            name = f"jog joint {j}"
            targets = [q0.copy() for _ in range(2)]
            targets[0][j] += JOG_ANGLE
            targets[1][j] -= JOG_ANGLE
            target = next((t for t in targets if not np.any(self.safety.joint_violation(t))
                           and not np.any(self.safety.box_violation(t))
                           and not self.safety.screen_violation(t)), None)
            if target is None:
                self.add(name, "skip", "a 3 deg jog either way would leave the safety limits")
                continue
            try:
                reached = self._move(arm, target)
                self._move(arm, q0)
            except DeviceError as err:
                self.add(name, "fail", f"{err}")
                return
            error = np.rad2deg(np.max(np.abs(reached - target)))
            self.add(name, "pass" if error < 0.5 else "warn",
                     f"moved {np.rad2deg(target[j] - q0[j]):+.1f} deg and back; "
                     f"error {error:.2f} deg")

    def _move(self, arm: UR5Arm, q: np.ndarray) -> np.ndarray:
        distance = float(np.max(np.abs(q - arm.read_state().q)))
        arm.move_home(q, distance / JOG_SPEED)
        return arm.read_state().q

    def _calibration(self) -> None:
        path = self.cfg.calibration
        if not path:
            self.add("calibration", "warn", "no calibration file (config key calibration): "
                     "nominal camera/monitor values; run `madi calibrate camera` etc.")
            return
        try:
            ages = load_calibration(path).age()
        except CalibrationError as err:
            self.add("calibration", "fail", str(err))
            return
        missing = [s for s in SECTIONS if s not in ages]
        detail = ", ".join(f"{name} {days:.0f} d old" for name, days in ages.items())
        if missing:
            detail += f"; not measured: {', '.join(missing)}"
        stale = [name for name, days in ages.items() if days > CALIBRATION_MAX_AGE_DAYS]
        if stale:
            detail += (f"; older than {CALIBRATION_MAX_AGE_DAYS} days: re-measure "
                       f"{', '.join(stale)} if the rig was touched")
        self.add("calibration", "warn" if missing or stale else "pass", f"{path}: {detail}")

    # ------------------------------------------------------------------ display, camera
    def _display(self) -> WindowDisplay | None:
        cfg = self.cfg
        display = WindowDisplay(cfg.monitor)
        try:
            display.connect()
            w, h = display.size_px
            display.show(draw_target((w, h), np.array([0.5, 0.5]), cfg.target))
        except DeviceError as err:
            self.add("target display", "fail", str(err))
            display.disconnect()
            return None
        where = ("off-screen" if cfg.monitor.output == "offscreen" else
                 f"full-screen at {cfg.monitor.window_xy}")
        self.add("target display", "pass", f"{w}x{h} px {where}, red target in the centre")
        return display

    def _camera(self, display: WindowDisplay | None) -> None:
        cfg = self.cfg
        camera = OpenCVCamera(cfg.camera, cfg.task.agent_period, cfg.robot.camera_timeout)
        try:
            camera.connect()
            try:
                time.sleep(0.3)  # auto exposure settles
                first = camera.read(cfg.robot.camera_timeout)
                time.sleep(1.0)
                frame = camera.read(cfg.robot.camera_timeout)
                fps = (frame.seq - first.seq) / ((frame.t_ns - first.t_ns) / 1e9 or 1.0)
            finally:
                camera.disconnect()
        except (DeviceError, TimeoutError) as err:
            self.add("camera", "fail", str(err))
            return
        path = self.out_dir / "camera_frame.png"
        cv2.imwrite(str(path), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR))
        h, w = frame.image.shape[:2]
        status = "pass" if fps >= 0.9 * cfg.camera.fps else "warn"
        detail = (f"{cfg.camera.width}x{cfg.camera.height} -> {w}x{h} obs, {fps:.1f} fps "
                  f"measured (config {cfg.camera.fps:g}); frame saved to {path}")
        if display is not None:
            red = RedTargetReward(cfg.task)(frame.image).red_fraction
            detail += f"; red target covers {100 * red:.1f}% of the frame"
            if red == 0:
                status = "warn"
                detail += (" (not seen: point the camera at the monitor, or check the colour "
                           "thresholds task.red_*_bgr)")
        self.add("camera", status, detail)


def format_table(checks: list[Check]) -> str:
    """The checks as a fixed-width text table (one line per check)."""
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail", f"{'-' * width}  ------  ------"]
    lines += [f"{c.name:<{width}}  {c.status.upper():<6}  {c.detail}" for c in checks]
    return "\n".join(lines)
