"""Validated configuration of the rig, the task, the sim mirror and the learner.

One pydantic model per concern (arm, camera, monitor, target, task, safety, sim, agent),
gathered in :class:`Config` and loaded from YAML by :func:`load_config`. Every field has
a unit and an allowed range; unknown keys are refused. A bad file fails with a
:class:`ConfigError` that names the file, the key, the bad value and what is allowed.

Defaults reproduce the UR5 visual reacher of the MaDi paper (Grooten et al., AAMAS 2024)
and its ReLoD rig (github.com/bramgrooten/relod); see ``configs/*.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from learner.config import AgentConfig
from learner.metrics import SinkConfig
from robot.calibration_file import (
    CalibrationError,
    config_overrides,
    load_calibration,
    randomize_defaults,
)
from robot.kinematics import pose_matrix

Vec3 = Annotated[list[float], Field(min_length=3, max_length=3)]
Vec6 = Annotated[list[float], Field(min_length=6, max_length=6)]
#: A flange box coordinate, m: within the UR5's reach (0.85 m) with margin.
BoxCoord = Annotated[float, Field(ge=-1.5, le=1.5)]
#: A joint limit, deg: the UR5's joints turn +-360 deg.
JointDeg = Annotated[float, Field(ge=-360.0, le=360.0)]
BoxVec = Annotated[list[BoxCoord], Field(min_length=3, max_length=3)]
JointVec = Annotated[list[JointDeg], Field(min_length=6, max_length=6)]
RGB = Annotated[list[Annotated[int, Field(ge=0, le=255)]], Field(min_length=3, max_length=3)]

#: Controller tick of each arm generation, s (CB3: 125 Hz, e-series: 500 Hz; UR RTDE guide).
CONTROL_PERIOD = {"ur5": 0.008, "ur5e": 0.002}

#: URL schemes ``camera.device`` may name (streams OpenCV's FFmpeg backend opens).
_STREAM_SCHEMES = ("http", "https", "rtsp")

#: Home pose of the MaDi / ReLoD UR5 visual reacher, rad.
Q_HOME = [1.5707, -2.0, 2.17, -3.0415, -1.5707, 3.1415]


#: Arm fields that change what the agent learns (the link handshake compares them); the
#: connection and recovery settings of the real arm are each side's own business.
_ARM_TASK_FIELDS = {"model", "control_period", "speed_max", "acceleration", "q_home",
                    "reset_duration", "active_joints"}


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message says where and how to fix it."""


class _Section(BaseModel):
    # NaN and inf are refused everywhere: an inf limit would silently switch a check off.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ArmConfig(_Section):
    """The UR arm and how it is driven (speedJ streaming)."""

    model: Literal["ur5", "ur5e"] = Field("ur5", description="ur5 = CB3 UR5, ur5e = e-series.")
    host: str | None = Field(None, description="Controller IP or hostname (real arm only).")
    control_period: float | None = Field(
        None, gt=0, le=0.05,
        description="Controller tick, s; speedJ is streamed once per tick. "
        "Default from model: 0.008 (CB3) / 0.002 (e-series).",
    )
    speed_max: float = Field(
        2.0, gt=0, le=3.15, description="Joint speed that action 1.0 maps to, rad/s."
    )
    acceleration: float = Field(
        1.4, gt=0, le=40.0, description="speedJ acceleration bound, rad/s^2."
    )
    q_home: Vec6 = Field(default_factory=lambda: list(Q_HOME), description="Home pose, rad.")
    reset_duration: float = Field(2.0, ge=0, le=30, description="Time to move home, s.")
    active_joints: list[Annotated[int, Field(ge=0, le=5)]] = Field(
        default_factory=lambda: [0, 1, 2, 3, 4],
        min_length=1, max_length=6,
        description="Joints driven by the action (indices 0..5); the others stay still.",
    )

    # ---- the real arm (ur_rtde); the sim ignores these
    control_mode: Literal["upload_script", "urcap"] = Field(
        "upload_script",
        description="How ur_rtde runs its control script: upload_script = sent over the "
        "network at connect (robot in remote control); urcap = the ExternalControl URCap "
        "node of a program started on the pendant.",
    )
    urcap_port: int = Field(50002, ge=1, le=65535, description="ExternalControl URCap port.")
    home_speed: float = Field(
        0.5, gt=0, le=1.5, description="Highest joint speed of the reset move (moveJ), rad/s."
    )
    state_timeout: float = Field(
        0.1, gt=0, le=5.0,
        description="Longest time without a new joint-state sample (controller timestamp "
        "not advancing) before the link counts as lost, s.",
    )
    watchdog_hz: float | None = Field(
        10.0, gt=0, le=500,
        description="Controller-side RTDE watchdog: the control script halts the arm if "
        "the client sends nothing for 1/watchdog_hz s (null: not armed; refused with "
        "backend ur5).",
    )
    protective_stop_recovery: Literal["operator", "dashboard"] = Field(
        "operator",
        description="After a protective stop: operator = wait for a person to clear it on "
        "the pendant; dashboard = unlock it through the dashboard server (port 29999) "
        "after UR's 5 s wait. Only allow dashboard on a rig whose workspace is safe.",
    )
    protective_stop_wait: float = Field(
        600.0, gt=0, le=86400,
        description="Longest wait for a protective stop to clear before the run ends, s.",
    )
    reconnect_attempts: int = Field(
        5, ge=0, le=1000, description="Reconnects tried after the RTDE link drops."
    )
    reconnect_interval: float = Field(
        2.0, gt=0, le=60, description="Pause between reconnect attempts, s."
    )

    @model_validator(mode="after")
    def _fill_control_period(self) -> ArmConfig:
        if self.control_period is None:
            self.control_period = CONTROL_PERIOD[self.model]
        if len(set(self.active_joints)) != len(self.active_joints):
            raise ValueError(f"active_joints has duplicates: {self.active_joints}")
        return self


class CameraConfig(_Section):
    """The wrist camera: capture format, pinhole intrinsics, mount on the flange.

    The observation image is the capture subsampled by taking every ``subsample``-th
    pixel (as in the MaDi UR5 code: 640x360 -> 160x90). The default mount puts the
    webcam 5 cm below the tool axis, tilted up by 0.11 rad so that the whole screen is in
    view from the home pose.
    """

    device: int | str = Field(
        0, description="OpenCV device index, /dev/video path, a video file (played at "
        "fps, for dry runs and tests) or a network stream URL (http://, https://, "
        "rtsp://; e.g. an IP camera's MJPEG stream or the emulated controller's "
        "http://127.0.0.2:8080/camera.mjpg).",
    )
    fourcc: str | None = Field(
        "MJPG", min_length=4, max_length=4,
        description="Capture pixel format (MJPG lets USB 2 webcams reach 640x360 at 25+ "
        "fps; null: the driver's default).",
    )
    exposure: float | None = Field(
        None, description="Manual exposure in the driver's units (V4L2: 100 us steps); "
        "null: auto exposure.",
    )
    white_balance: float | None = Field(
        None, ge=1000, le=10000, description="Manual white balance, K; null: auto."
    )
    width: int = Field(640, ge=16, le=4096, description="Capture width, px.")
    height: int = Field(360, ge=16, le=4096, description="Capture height, px.")
    fps: float = Field(25.0, gt=0, le=240, description="Capture rate, frames/s.")
    fx: float = Field(457.0, gt=0, description="Focal length along x, px (capture size).")
    fy: float = Field(457.0, gt=0, description="Focal length along y, px (capture size).")
    cx: float = Field(
        319.5, description="Principal point x, px (capture size; OpenCV convention: pixel "
        "centres at integer coordinates, so the image centre of a 640 px row is 319.5).",
    )
    cy: float = Field(179.5, description="Principal point y, px (capture size; OpenCV).")
    subsample: int = Field(4, ge=1, le=16, description="Keep every n-th pixel for the obs.")
    mount_xyz: Vec3 = Field(
        default_factory=lambda: [0.0, -0.05, 0.03],
        description="Camera origin in the flange frame, m.",
    )
    mount_rpy: Vec3 = Field(
        default_factory=lambda: [0.11, 0.0, 3.141592653589793],
        description="Camera orientation in the flange frame (OpenCV axes: x right, y down, "
        "z forward), extrinsic roll-pitch-yaw, rad.",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: int | str) -> int | str:
        if isinstance(device, int):
            if device < 0:
                raise ValueError(f"a device index is >= 0, got {device}")
            return device
        if not device.strip():
            raise ValueError("camera.device is empty")
        scheme, sep, rest = device.strip().partition("://")
        if sep and (scheme.lower() not in _STREAM_SCHEMES or not rest.split("/")[0]):
            raise ValueError(f"{device!r}: a stream URL must be "
                             f"{', '.join(s + '://host...' for s in _STREAM_SCHEMES)}")
        return device

    @property
    def obs_size(self) -> tuple[int, int]:
        """Observation image size (height, width), px."""
        return self.image_size()

    def intrinsics(self, subsample: int | None = None) -> tuple[float, float, float, float]:
        """Pinhole intrinsics (fx, fy, cx, cy) of the capture subsampled by ``subsample``, px.

        OpenCV convention (as ``cv2.calibrateCamera`` reports them): pixel centres at
        integer coordinates. Subsampled pixel j is capture pixel s*j, so f' = f/s and
        c' = c/s. Rendering at the subsampled size with these intrinsics gives the same
        image as subsampling a full-size render.

        Args:
            subsample: Pixel step s; ``None`` means ``self.subsample`` (the observation),
                1 the full capture.

        Raises:
            ValueError: If ``subsample`` < 1.
        """
        s = self.subsample if subsample is None else int(subsample)
        if s < 1:
            raise ValueError(f"subsample must be >= 1, got {s}")
        return self.fx / s, self.fy / s, self.cx / s, self.cy / s

    def image_size(self, subsample: int | None = None) -> tuple[int, int]:
        """(height, width) of the capture subsampled by ``subsample`` (default: obs), px."""
        s = self.subsample if subsample is None else int(subsample)
        return (self.height + s - 1) // s, (self.width + s - 1) // s

    @property
    def mount(self) -> np.ndarray:
        """Flange <- camera transform (OpenCV camera axes), float64 (4, 4), m."""
        return pose_matrix(self.mount_xyz, self.mount_rpy)


class MonitorConfig(_Section):
    """The monitor that shows the target.

    Screen frame: origin at the screen centre, x to the screen's right, y up, z out of
    the screen towards the viewer.
    """

    position: Vec3 = Field(
        default_factory=lambda: [-0.109, 0.748, 0.359],
        description="Screen centre in the robot base frame, m.",
    )
    rpy: Vec3 = Field(
        default_factory=lambda: [1.30, 0.0, 0.0],
        description="Screen orientation in the base frame, extrinsic roll-pitch-yaw, rad.",
    )
    size_m: Annotated[list[float], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0.531, 0.299], description="Visible screen width, height, m."
    )
    resolution_px: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [1920, 1080], description="Screen width, height, px."
    )
    window_xy: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [0, 0],
        description="Top-left corner of the target monitor on the desktop, px (`xrandr` "
        "lists each output as WxH+X+Y); the full-screen window opens there.",
    )
    output: Literal["fullscreen", "offscreen"] = Field(
        "fullscreen",
        description="Real rig: fullscreen = an OpenCV window on the monitor; offscreen = "
        "compose the image without a window (dry runs without a monitor, tests).",
    )
    url: str | None = Field(
        None,
        description="Real rig: also send every target image to this HTTP URL (PUT, PNG), "
        "besides the window of `output` (offscreen: instead of one); the emulated "
        "controller shows it on the mirror's virtual monitor: "
        "http://127.0.0.2:8080/screen (docs/real-robot.md). null: no URL.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        scheme, sep, rest = url.strip().partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest.split("/")[0]:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return url.strip()


class TargetConfig(_Section):
    """The target image: a red circle on a white screen, redrawn at each reset."""

    radius: float = Field(
        0.07, gt=0, lt=0.5, description="Circle radius as a fraction of the screen height."
    )
    color_rgb: RGB = Field(default_factory=lambda: [255, 0, 0], description="Circle colour.")
    background_rgb: RGB = Field(
        default_factory=lambda: [255, 255, 255], description="Screen colour."
    )


class TaskConfig(_Section):
    """Agent timing, episode and reward of the visual reacher (MaDi UR5 task)."""

    agent_period: float = Field(0.04, gt=0, le=1.0, description="Agent step, s (25 Hz).")
    episode_steps: int = Field(150, ge=1, le=100_000, description="Fixed horizon, steps.")
    frame_stack: int = Field(3, ge=1, le=8, description="Frames stacked in the obs.")
    reward: Literal["dense", "sparse"] = Field(
        "dense", description="dense: red-pixel reward; sparse: -1 per step, done on success."
    )
    success_red_fraction: float = Field(
        0.015, gt=0, lt=1, description="Red share of the image that counts as reached."
    )
    red_low_bgr: RGB = Field(default_factory=lambda: [0, 0, 120], description="BGR low.")
    red_high_bgr: RGB = Field(default_factory=lambda: [50, 50, 255], description="BGR high.")
    dense_scale: float = Field(800.0, gt=0, description="Dense reward scale.")
    dense_clip: float = Field(4.0, gt=0, description="Dense reward upper clip.")


class SafetyConfig(_Section):
    """Limits enforced on every command, in the sim and on the real arm alike."""

    box_low: BoxVec = Field(
        default_factory=lambda: [-0.4, 0.17, 0.37], description="Flange box low, base frame, m."
    )
    box_high: BoxVec = Field(
        default_factory=lambda: [0.15, 0.7, 0.63], description="Flange box high, base frame, m."
    )
    joint_low_deg: JointVec = Field(
        default_factory=lambda: [55.0, -120.0, 0.0, -215.0, -130.0, 50.0],
        description="Joint position low limits, deg (MaDi setup, but wrist 2 at -130 instead "
        "of -135: from -133 on, the wrist camera's housing touches the link-4 housing).",
    )
    joint_high_deg: JointVec = Field(
        default_factory=lambda: [125.0, -30.0, 135.0, -135.0, -45.0, 190.0],
        description="Joint position high limits, deg.",
    )
    on_box_exit: Literal["return", "stop"] = Field(
        "return",
        description="When the arm is outside the box or joint limits: return = drive back "
        "toward the home pose; stop = hold still. (A command that would leave them is "
        "always replaced by a brake.)",
    )
    return_gain: float = Field(
        2.0, gt=0, le=20, description="Gain of the drive back to home, 1/s."
    )
    on_limit: Literal["slide", "brake"] = Field(
        "slide",
        description="A command that would end outside: slide = remove only what pushes "
        "through the limit (scaled down if still needed); brake = stop every joint (the "
        "earlier rule, kept for comparison).",
    )
    slide_inward_speed: float = Field(
        0.02, ge=0, le=0.2,
        description="When a command would carry the flange through a box face, its outward "
        "component is replaced by this inward speed, m/s (robot/safety.py).",
    )

    screen_clearance: float = Field(
        0.06, ge=0, le=0.5,
        description="Closest the wrist camera's lens may come to the monitor's screen "
        "plane, m (0: no check). 0.06 keeps the whole webcam (up to 5.3 cm from its lens) "
        "off the screen and its bezel; without it a trained reacher drove the webcam or the "
        "wrist into the bezel (robot/safety.py).",
    )

    @model_validator(mode="after")
    def _ordered(self) -> SafetyConfig:
        for name, lo, hi in (
            ("box", self.box_low, self.box_high),
            ("joint", self.joint_low_deg, self.joint_high_deg),
        ):
            bad = [i for i, (a, b) in enumerate(zip(lo, hi, strict=True)) if a >= b]
            if bad:
                raise ValueError(f"{name} low must be < high at index {bad}: {lo} vs {hi}")
        return self


Range = Annotated[list[Annotated[float, Field(ge=0, le=0.5)]],
                  Field(min_length=2, max_length=2)]


class RandomizeConfig(_Section):
    """Domain randomization of the sim, drawn anew at every episode (sim -> real transfer).

    Each value is the half-width of a uniform range around the (calibrated) nominal value,
    or for latencies the range itself. With a calibration file, the ranges it can inform
    default to its measured uncertainty (see :func:`config_from_dict`).
    """

    enabled: bool = Field(False, description="Randomize the sim at every episode.")
    camera_xyz: float = Field(0.005, ge=0, le=0.1, description="Camera position on the "
                              "flange, ± m per axis.")
    camera_rpy: float = Field(0.02, ge=0, le=0.5, description="Camera orientation, ± rad.")
    focal: float = Field(0.03, ge=0, le=0.5, description="fx, fy, ± fraction.")
    principal: float = Field(4.0, ge=0, le=100, description="cx, cy, ± px (capture).")
    monitor_xyz: float = Field(0.02, ge=0, le=0.2, description="Monitor position, ± m.")
    monitor_rpy: float = Field(0.03, ge=0, le=0.5, description="Monitor orientation, ± rad.")
    brightness: float = Field(0.15, ge=0, le=0.9, description="Image gain (lighting and "
                              "exposure), ± fraction.")
    white_balance: float = Field(0.08, ge=0, le=0.5, description="Per-channel gain, ± "
                                 "fraction.")
    noise: float = Field(3.0, ge=0, le=50, description="Sensor noise, Gaussian sigma up to "
                         "this many levels.")
    colour: int = Field(20, ge=0, le=100, description="Target and screen colours, ± levels "
                        "per channel.")
    command_latency: Range = Field(default_factory=lambda: [0.0, 0.016],
                                   description="Command delay range, s.")
    camera_latency: Range = Field(default_factory=lambda: [0.0, 0.04],
                                  description="Camera delay range, s.")
    acceleration: float = Field(0.15, ge=0, le=0.9, description="Arm acceleration, ± "
                                "fraction.")

    @model_validator(mode="after")
    def _ordered(self) -> RandomizeConfig:
        for name in ("command_latency", "camera_latency"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: low {lo} > high {hi}")
        return self


class SimConfig(_Section):
    """The MuJoCo mirror."""

    pace: Literal["fast", "realtime"] = Field(
        "fast", description="fast: as fast as possible; realtime: one agent step per period."
    )
    command_latency: float = Field(0.0, ge=0, le=0.5, description="Command delay, s.")
    camera_latency: float = Field(0.0, ge=0, le=0.5, description="Frame delay, s.")
    texture_px: Annotated[list[int], Field(min_length=2, max_length=2)] = Field(
        default_factory=lambda: [480, 270], description="Screen texture width, height, px."
    )
    physics_substeps: int = Field(
        4, ge=1, le=64, description="MuJoCo steps per controller tick."
    )
    randomize: RandomizeConfig = Field(default_factory=RandomizeConfig)


class RobotLoopConfig(_Section):
    """The robot process's loops: timing, OS real-time settings, what to do without a learner."""

    command_deadline: float | None = Field(
        None, gt=0, le=1.0,
        description="Longest age of the newest command, from the arrival of the frame it "
        "answers, before the control thread stops the arm, s. Default: 2 agent periods, plus "
        "one frame interval for a camera with a capture thread (webcam, network stream).",
    )
    agent_spin: float = Field(
        0.002, ge=0, le=0.01,
        description="The agent step sleeps until this long before its deadline, then spins, s.",
    )
    control_spin: float = Field(
        0.0005, ge=0, le=0.002, description="The same for the control tick, s."
    )
    overrun_threshold: float | None = Field(
        None, gt=0, le=1.0,
        description="An agent step starting later than this is an overrun, s. Default: 10% "
        "of the agent period (4 ms).",
    )
    on_learner_lost: Literal["continue", "stop"] = Field(
        "continue",
        description="When the learner goes silent: continue = keep acting with the last "
        "weights (transitions are dropped and counted); stop = end the episode, stop the "
        "arm and wait for a learner.",
    )
    learner_wait: float | None = Field(
        None, ge=0, le=3600,
        description="At start, wait this long for the learner's handshake before acting, s "
        "(the robot acts either way afterwards; it never blocks on the learner mid-run). "
        "Default: 60 s, except in the sim with robot.hold_for_learner, where the robot "
        "waits until the learner answers or the run stops (`madi train` stops it when its "
        "learner dies for good), so a slow-starting learner loses no transitions.",
    )
    hold_for_learner: bool = Field(
        True,
        description="Sim backend only: between episodes, wait (arm at rest) until the "
        "learner has made agent.updates_per_step updates per env step after the random "
        "phase, so `madi train` learns as much per env step as --sync on any machine. The "
        "real arm never waits; timing.json reports the ratio reached either way.",
    )
    hold_max: float = Field(
        300.0, gt=0, le=3600,
        description="Longest wait for the learner at one episode boundary, s (then the robot "
        "goes on and logs a warning).",
    )
    cpu_affinity: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="CPUs to pin the robot process to (null: all)."
    )
    realtime_priority: int | None = Field(
        50, ge=1, le=89,
        description="SCHED_FIFO priority of the agent-step thread; the control thread gets "
        "10 more (null: normal scheduling). Needs root, CAP_SYS_NICE or an rtprio limit; "
        "otherwise a one-line notice.",
    )
    torch_threads: int = Field(
        1, ge=1, le=64, description="Threads of the local policy inference."
    )
    camera_timeout: float = Field(
        0.5, gt=0, le=10, description="Longest wait for a camera frame before failing, s."
    )
    record: bool = Field(
        True, description="Record the session log (session.mcap in the run folder: frames, "
        "transitions, joint state at the control rate, commands, events)."
    )

    def control_priority(self) -> int | None:
        """SCHED_FIFO priority of the control thread (``realtime_priority + 10``)."""
        return None if self.realtime_priority is None else self.realtime_priority + 10

    def deadline(self, agent_period: float, frame_wait: float = 0.0) -> float:
        """The stale-command deadline, s: ``command_deadline``, or 2 agent periods + ``frame_wait``.

        A command's age counts from the arrival of the frame it answers. A camera with its
        own capture thread (:meth:`robot.backends.base.Camera.frame_wait`: one frame
        interval) hands the agent step a frame up to that old, so its commands need that
        much more time: at 25 fps and a 40 ms agent period, up to 40 + 40 ms plus the
        step's own time, against 80 ms. The safety layer's prediction horizon is 2 agent
        periods (``frame_wait`` 0) either way.
        """
        return self.command_deadline or 2.0 * agent_period + frame_wait


class LinkConfig(_Section):
    """The robot <-> learner link (ZeroMQ; link/endpoints.py)."""

    address: str | None = Field(
        None,
        description="Learner address: ipc:///a/dir or tcp://host:port (the learner binds, "
        "the robot connects). null: ipc under the temp dir, one per run.",
    )
    keys: str | None = Field(
        None,
        description="This side's CURVE keys directory (`madi keys new`, docs/security.md): "
        "encrypts and authenticates the link; needed for a tcp address beyond loopback. "
        "null: no keys (ipc, loopback tcp).",
    )
    heartbeat_interval: float = Field(0.25, gt=0, le=10, description="Heartbeat period, s.")
    peer_timeout: float = Field(
        2.0, gt=0, le=60, description="A peer is lost after this long without a message, s."
    )
    send_queue: int = Field(
        16, ge=1, le=10_000, description="Transitions queued at most before sends are dropped."
    )
    keyframe_every: int = Field(
        50, ge=0, le=10_000, description="A full-window transition at least every N messages."
    )

    @model_validator(mode="after")
    def _timeout_covers_heartbeats(self) -> LinkConfig:
        if self.peer_timeout < 2 * self.heartbeat_interval:
            raise ValueError(f"peer_timeout ({self.peer_timeout} s) must be at least two "
                             f"heartbeat intervals ({self.heartbeat_interval} s)")
        return self


class TrainConfig(_Section):
    """Length and bookkeeping of a training run (``madi train``)."""

    total_steps: int = Field(100_000, ge=1, description="Env steps to train (paper: ~100k).")
    eval_every: int = Field(5_000, ge=1, description="Env steps between evaluations.")
    eval_episodes: int = Field(5, ge=0, description="Episodes per evaluation (0: none).")
    eval_seed: int = Field(
        1000, ge=0, description="Seed of the fixed evaluation episodes: every evaluation of "
        "every run (and `madi eval` by default) shows the same targets and start states."
    )
    final_eval_episodes: int = Field(
        20, ge=0, description="Fixed episodes evaluated after the last env step (--sync: "
        "final_eval.json; 0: none)."
    )
    eval_distractions: str = Field(
        "none", description="What the monitor shows behind the target during evaluations: "
        "none | easy | hard | a folder of videos or images (robot/distractions.py)."
    )
    checkpoint_every: int | None = Field(
        10_000, ge=1, description="Env steps between checkpoints (null: only at the end)."
    )
    run_dir: str = Field("runs", description="Parent folder of run directories.")
    publish_every: int = Field(
        10, ge=1, description="Learner updates between weight publications to the robot."
    )
    log_every: int = Field(1000, ge=1, description="Env steps between metrics rows.")
    save_replay: bool = Field(
        False, description="Put the replay buffer in the learner checkpoint (for --resume; "
        "large: capacity x frame size)."
    )
    learner_restarts: int = Field(
        3, ge=0, description="Times `madi train` restarts a crashed learner (non-zero exit or "
        "killed by a signal) from its last checkpoint, refilled with the transitions since "
        "from the session log, the arm held meanwhile; one more crash ends the run (exit 1)."
    )
    tensorboard: bool | Literal["auto"] = Field(
        "auto", description="TensorBoard event files in RUN_DIR/tb, the metrics.csv keys at "
        "step global_step: true | false | auto (when the tensorboard package is installed)."
    )
    wandb: Literal["online", "offline"] | None = Field(
        None, description="Also log the metrics to a Weights & Biases run (pip install "
        "wandb): online | offline (no network; `wandb sync` later) | null (off)."
    )
    wandb_project: str = Field(
        "madi-robot", pattern=r"^[^/\\#?%:]{1,128}$",
        description="W&B project of the runs (train.wandb)."
    )

    def sinks(self) -> SinkConfig:
        """Where the learner's metrics rows go besides metrics.csv."""
        return SinkConfig(self.tensorboard, self.wandb, self.wandb_project)


class Config(_Section):
    """Everything a run needs; see ``configs/*.yaml`` for annotated examples."""

    backend: Literal["sim", "ur5"] = Field("sim", description="Which rig drives the task.")
    calibration: str | None = Field(
        None, description="Calibration file (robot/calibration_file.py; relative to this config's "
        "folder): its camera, hand-eye, monitor, colour and latency values replace the "
        "config's. null: none."
    )
    seed: int = Field(0, ge=0, description="Seed of targets, policy and learner.")
    arm: ArmConfig = Field(default_factory=ArmConfig)
    camera: CameraConfig = Field(default_factory=CameraConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    task: TaskConfig = Field(default_factory=TaskConfig)
    safety: SafetyConfig = Field(default_factory=SafetyConfig)
    sim: SimConfig = Field(default_factory=SimConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    robot: RobotLoopConfig = Field(default_factory=RobotLoopConfig)
    link: LinkConfig = Field(default_factory=LinkConfig)

    @model_validator(mode="after")
    def _one_seed(self) -> Config:
        if "seed" in self.agent.model_fields_set and self.agent.seed != self.seed:
            raise ValueError(f"agent.seed ({self.agent.seed}) differs from seed ({self.seed}); "
                             "set the seed once, at the top level")
        self.agent.seed = self.seed
        return self

    @model_validator(mode="after")
    def _watchdog_on_the_arm(self) -> Config:
        if self.backend == "ur5" and self.arm.watchdog_hz is None:
            raise ValueError("arm.watchdog_hz is null with backend ur5: the real arm must run "
                             "with the RTDE watchdog; set arm.watchdog_hz (e.g. 10)")
        return self

    def task_hash(self) -> str:
        """Hash of what robot and learner must agree on (checked at the link handshake).

        Covers the backend, the arm (but its host), the camera, the task and what the
        learner learns (:meth:`AgentConfig.learning_dict`); not pacing, timing, link or
        bookkeeping settings, which each side may set for itself.

        Returns:
            12 hex characters.
        """
        data = {
            "backend": self.backend,
            "arm": self.arm.model_dump(mode="json", include=_ARM_TASK_FIELDS),
            "camera": self.camera.model_dump(mode="json"),
            "task": self.task.model_dump(mode="json"),
            "agent": self.agent.learning_dict(),
        }
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; check the spelling against configs/*.yaml")
            continue
        lines.append(f"  {key} = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one ``dotted.key=value`` override; the value is read as YAML.

    Raises:
        ConfigError: If there is no ``=``, the key is empty or the value is not YAML.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        return key.strip().split("."), yaml.safe_load(value)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({problem}); "
                          "quote it, e.g. key='value'") from None


def _apply_overrides(data: dict, overrides: list[str]) -> None:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value


def config_from_dict(data: dict, source: str = "<dict>", overrides: list[str] = (),
                     base_dir: str | Path | None = None) -> Config:
    """Validate a config mapping, applying the calibration file and overrides.

    Precedence, lowest first: the mapping, the calibration file it names (``calibration``;
    see :mod:`robot.calibration_file`), the ``dotted.key=value`` overrides. A relative
    calibration path is taken from ``base_dir`` when the mapping names it, and from the
    working directory when an override does (``--set calibration=PATH`` on the command
    line). The validated config holds the calibration's absolute path.

    Raises:
        ConfigError: If any field is missing, unknown or out of range, or the calibration
            file is missing or invalid.
    """
    data = _json_copy(data, source)
    merged = json.loads(json.dumps(data))
    _apply_overrides(merged, overrides)
    if merged.get("calibration"):
        path = Path(merged["calibration"])
        if not path.is_absolute() and merged["calibration"] == data.get("calibration"):
            path = Path(base_dir or ".") / path
        try:
            calib = load_calibration(path)
        except CalibrationError as err:
            raise ConfigError(f"config {source}: {err}") from None
        for section, values in config_overrides(calib).items():
            node = data.setdefault(section, {})
            if isinstance(node, dict):
                node.update(values)
        explicit = data.setdefault("sim", {}).setdefault("randomize", {})
        for key, value in randomize_defaults(calib).items():
            explicit.setdefault(key, value)  # the config's own ranges win
        data["calibration"] = str(path.resolve())
        _apply_overrides(data, [o for o in overrides if not o.startswith("calibration=")])
    else:
        data = merged
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(source, err)) from None


def _json_copy(data: dict, source: str) -> dict:
    """A deep copy of a config mapping through JSON (what YAML configs must be).

    Raises:
        ConfigError: If a value is not JSON: a YAML date or time, a set, a binary, a
            recursive alias; the message names the key.
    """
    try:
        return json.loads(json.dumps(data))
    except (TypeError, ValueError) as err:  # ValueError: a recursive alias, not walkable
        where = _non_json(data) if isinstance(err, TypeError) else ""
        raise ConfigError(f"invalid config {source}: {where or err}; write numbers, strings, "
                          "lists and mappings, and quote dates and times ('2024-01-01')") \
            from None


def _non_json(value: Any, key: str = "") -> str:
    """``key = value`` of the first value under ``value`` that JSON cannot hold ("" if none)."""
    if isinstance(value, dict):
        children = [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
    elif isinstance(value, list):
        children = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, (str, int, float, bool, type(None))):
        return ""
    else:
        return f"{key or '(top level)'} = {value!r} is a YAML {type(value).__name__}"
    return next((found for k, v in children if (found := _non_json(v, k))), "")


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Load and validate a YAML config file.

    Args:
        path: YAML file, e.g. ``configs/sim_ur5_visual_reacher.yaml``.
        overrides: ``section.key=value`` strings applied on top (values parsed as YAML).

    Returns:
        The validated :class:`Config`.

    Raises:
        ConfigError: If the file is missing, not UTF-8 text, not YAML of JSON types (a
            date, a set), or a field is invalid; the message names the key, the bad value
            and what is allowed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}; pass an existing "
                          "file, e.g. configs/sim_ur5_visual_reacher.yaml") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"invalid config {path}: not UTF-8 text (byte {err.start}: "
                          f"{err.reason}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, got {type(data).__name__}")
    return config_from_dict(data, str(path), overrides, base_dir=path.parent)
