"""MuJoCo mirror of the UR5 visual-reacher rig: speedJ arm, wrist camera, virtual monitor.

The mirror stands in for the real UR5 + webcam + monitor. It speaks the same units and
frames as the real rig (joint rad, rad/s; poses in the controller's base frame, m) so the
task, safety and reward code run unchanged on either.

Arm (UR speedJ, UR Script manual ``speedj(qd, a, t)``): every controller tick the
reference joint velocity moves in a straight line (in joint-velocity space) towards the
newest target whose command latency has passed, the leading axis at ``arm.acceleration``,
so every joint obeys ``|d qd_ref / dt| <= a``. The reference position integrates the
reference velocity. MuJoCo physics follows the reference with stiff position servos
(implicit damping, ``implicitfast``), gravity compensation (``gravcomp``) and a computed
inertia/Coriolis feed-forward, so actual q, qd track the reference to micro-radians and
the actual joint acceleration equals the reference's bounded one.

Camera: :meth:`Mirror.render` draws the wrist camera at the joint positions of
``time - sim.camera_latency``, taken from a ring of per-tick snapshots into a scratch
``MjData`` (kinematics only), so a delayed frame costs no physics.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import TYPE_CHECKING

os.environ.setdefault("MUJOCO_GL", "egl")

import cv2  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402

from robot.kinematics import N_JOINTS  # noqa: E402
from sim.model import (  # noqa: E402
    CAMERA,
    SCREEN_TEXTURE,
    build_mjcf,
    principal_offset,
)
from sim.render import CameraRenderer  # noqa: E402

if TYPE_CHECKING:
    from robot.config import ArmConfig, CameraConfig, MonitorConfig, SimConfig

logger = logging.getLogger(__name__)

#: Base <- camera rotation change from MuJoCo camera axes (y up, looking along -z) to
#: OpenCV axes (y down, looking along +z): a turn by pi about x.
_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])
#: Sensor pixel pitch the MJCF uses for ``sensorsize``, m (only ratios matter).
_PIXEL_M = 1e-4


class Mirror:
    """The simulated rig: a UR arm streamed with speedJ, its wrist camera and the monitor.

    Args:
        arm: Arm model (DH table), control period, speedJ acceleration, home pose.
        camera: Capture size, intrinsics, observation subsampling, mount on the flange.
        monitor: Screen pose and size in the base frame.
        sim: Command and camera latencies, screen texture size, physics substeps.
        render: Build the camera renderer (an EGL context on this thread). False gives a
            physics-only mirror (the sim rig renders in a separate process) whose
            :meth:`render` raises.
        start_time: Sim clock at construction, s (rounded to whole ticks): a mirror
            rebuilt for a new episode's randomized rig carries on the old one's clock.

    Raises:
        ValueError: If the configuration gives an unknown arm model or bad sizes.
        sim.render.RenderError: If no OpenGL context can be created.

    Attributes:
        control_period: Controller tick, s (``arm.control_period``: 0.008 CB3, 0.002 e).
        model: The compiled ``mujoco.MjModel`` (read only, please).
    """

    def __init__(self, arm: ArmConfig, camera: CameraConfig, monitor: MonitorConfig,
                 sim: SimConfig, render: bool = True, start_time: float = 0.0):
        self._arm_model = arm.model
        self.control_period = float(arm.control_period)
        self._camera_cfg = camera
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(arm, camera, monitor, sim))
        self._data = mujoco.MjData(self.model)
        self._pose_data = mujoco.MjData(self.model)  # current pose, kinematics only
        self._view_data = mujoco.MjData(self.model)  # delayed pose for the camera
        self._substeps = int(sim.physics_substeps)
        self._h = float(self.model.opt.timestep)
        self._acceleration = float(arm.acceleration)
        kp = self.model.actuator_gainprm[:N_JOINTS, 0].copy()
        kv = -self.model.actuator_biasprm[:N_JOINTS, 2].copy()
        self._kv_over_kp = kv / kp
        self._flange_id = self.model.body("flange").id
        self._camera_id = self.model.cam(CAMERA).id

        # Latencies in whole ticks (the controller acts on tick boundaries).
        eps = 1e-9
        self._command_lag = math.ceil(sim.command_latency / self.control_period - eps)
        self._camera_lag = math.ceil(sim.camera_latency / self.control_period - eps)
        ring = self._camera_lag + 2
        self._ring_q = np.zeros((ring, N_JOINTS))
        self._ring_start = 0  # first tick with a valid snapshot (set by reset)

        # speedJ state: reference trajectory and pending (tick, target) commands.
        self._tick = round(start_time / self.control_period)
        self._q_ref = np.zeros(N_JOINTS)
        self._qd_ref = np.zeros(N_JOINTS)
        self._qd_target = np.zeros(N_JOINTS)
        self._target_acceleration = self._acceleration
        self._pending: deque[tuple[int, np.ndarray, float]] = deque()
        self._qdd_ref = np.zeros(N_JOINTS)
        self._feedforward = np.zeros(N_JOINTS)

        # Screen texture: a writable view into model.tex_data.
        self._texture_id = self.model.texture(SCREEN_TEXTURE).id
        tw = int(self.model.tex_width[self._texture_id])
        th = int(self.model.tex_height[self._texture_id])
        nc = int(self.model.tex_nchannel[self._texture_id])
        if nc != 3:
            raise ValueError(f"screen texture must have 3 channels, got {nc}")
        adr = int(self.model.tex_adr[self._texture_id])
        self._texture = self.model.tex_data[adr:adr + th * tw * 3].reshape(th, tw, 3)
        self._texture_wh = (tw, th)

        # Rendering at the observation size by default.
        self._geom_names = [self.model.geom(i).name for i in range(self.model.ngeom)]
        self._renderer = CameraRenderer(self.model, CAMERA) if render else None
        self._intrinsics_subsample: int | None = None
        self._closed = False
        self.set_screen(np.full((th, tw, 3), 255, np.uint8))
        self.reset(np.asarray(arm.q_home, dtype=np.float64))
        logger.debug("mirror of %s up: tick %.4f s, %d substeps, latencies %d/%d ticks",
                     arm.model, self.control_period, self._substeps, self._command_lag,
                     self._camera_lag)

    # ------------------------------------------------------------------ state
    @property
    def time(self) -> float:
        """Sim clock, s: whole controller ticks since ``start_time`` (never reset)."""
        return self._tick * self.control_period

    @property
    def q(self) -> np.ndarray:
        """Actual joint positions, float64 (6,), rad (a copy)."""
        return self._data.qpos[:N_JOINTS].copy()

    @property
    def qd(self) -> np.ndarray:
        """Actual joint velocities, float64 (6,), rad/s (a copy)."""
        return self._data.qvel[:N_JOINTS].copy()

    @property
    def q_reference(self) -> np.ndarray:
        """Reference joint positions of speedJ, float64 (6,), rad (a copy)."""
        return self._q_ref.copy()

    @property
    def qd_reference(self) -> np.ndarray:
        """Reference joint velocities of speedJ, float64 (6,), rad/s (a copy)."""
        return self._qd_ref.copy()

    # --------------------------------------------------------------- commands
    def reset(self, q: np.ndarray) -> None:
        """Teleport the arm to ``q`` at rest; pending commands are dropped, time runs on.

        Camera snapshots before the reset are discarded, so the next render shows ``q``
        even with a camera latency.

        Args:
            q: Joint positions, float (6,), rad.

        Raises:
            ValueError: If ``q`` is not 6 finite values.
        """
        q = self._check_vector(q, "q")
        self._check_open()
        mujoco.mj_resetData(self.model, self._data)  # also clears solver warm starts
        self._data.time = self.time
        self._data.qpos[:N_JOINTS] = q
        self._data.ctrl[:N_JOINTS] = q
        mujoco.mj_forward(self.model, self._data)  # inertia and bias for the feed-forward
        self._q_ref[:] = q
        self._qd_ref[:] = 0.0
        self._qd_target[:] = 0.0
        self._target_acceleration = self._acceleration
        self._pending.clear()
        self._ring_start = self._tick
        self._ring_q[self._tick % len(self._ring_q)] = q

    def command(self, qd: np.ndarray, acceleration: float | None = None) -> None:
        """Stream a speedJ target velocity.

        The target becomes active on the first controller tick at or after
        ``time + sim.command_latency``; until then the previous target is tracked.

        Args:
            qd: Target joint velocities, float (6,), rad/s.
            acceleration: Bound of the leading axis, rad/s^2 (speedJ's ``acceleration``);
                ``None`` or anything above ``arm.acceleration`` (the modelled arm's
                bound) tracks at ``arm.acceleration``.

        Raises:
            ValueError: If ``qd`` is not 6 finite values or ``acceleration`` is not > 0.
        """
        qd = self._check_vector(qd, "qd")
        acc = self._acceleration if acceleration is None else float(acceleration)
        if not (math.isfinite(acc) and acc > 0):
            raise ValueError(f"acceleration must be > 0 rad/s^2, got {acceleration}")
        self._pending.append((self._tick + self._command_lag, qd, min(acc, self._acceleration)))

    def advance(self, duration: float) -> None:
        """Run the controller and physics for ``duration``, rounded to whole ticks.

        Args:
            duration: Time to simulate, s, >= 0 (e.g. the 0.04 s agent period).

        Raises:
            ValueError: If ``duration`` is negative or not finite.
        """
        if not math.isfinite(duration) or duration < 0:
            raise ValueError(f"duration must be a finite time >= 0 s, got {duration}")
        self._check_open()
        for _ in range(round(duration / self.control_period)):
            self._controller_tick()

    def _controller_tick(self) -> None:
        m, d, h = self.model, self._data, self._h
        while self._pending and self._pending[0][0] <= self._tick:
            _, self._qd_target, self._target_acceleration = self._pending.popleft()
        q_ref, qd_ref, qdd_ref, ff = self._q_ref, self._qd_ref, self._qdd_ref, self._feedforward
        dv_max = self._target_acceleration * h
        for _ in range(self._substeps):
            # speedJ ramp: straight line in velocity space, leading axis at a.
            np.subtract(self._qd_target, qd_ref, out=qdd_ref)
            lead = float(np.max(np.abs(qdd_ref)))
            if lead > dv_max:
                qdd_ref *= dv_max / lead
            # Servo: stiffness on the reference at the step start, implicit damping on the
            # velocity at its end (what the implicit integrator pairs it with).
            d.ctrl[:N_JOINTS] = q_ref
            qd_ref += qdd_ref
            d.ctrl[:N_JOINTS] += self._kv_over_kp * qd_ref
            q_ref += h * qd_ref  # semi-implicit Euler, as MuJoCo integrates q
            qdd_ref /= h
            # Feed-forward M qdd_ref + Coriolis (gravity is cancelled by gravcomp), from
            # the inertia and bias of the previous step's state.
            mujoco.mj_mulM(m, d, ff, qdd_ref)
            d.qfrc_applied[:N_JOINTS] = ff + d.qfrc_bias[:N_JOINTS] \
                - d.qfrc_gravcomp[:N_JOINTS]
            mujoco.mj_step(m, d)
        self._tick += 1
        self._ring_q[self._tick % len(self._ring_q)] = d.qpos[:N_JOINTS]

    # --------------------------------------------------------------- the screen
    def set_screen(self, image: np.ndarray) -> None:
        """Show an image full-screen on the virtual monitor from the next render on.

        Args:
            image: uint8 (h, w, 3) RGB, row 0 at the top of the screen; resized to
                ``sim.texture_px`` (area interpolation) if its size differs.

        Raises:
            ValueError: If ``image`` is not a uint8 (h, w, 3) array.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"screen image must be uint8 (h, w, 3) RGB, got "
                             f"{image.dtype} {image.shape}")
        self._check_open()
        tw, th = self._texture_wh
        if image.shape[:2] == (th, tw):
            np.copyto(self._texture, image)
        else:
            self._texture[:] = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        if self._renderer is not None:
            self._renderer.upload_texture(self._texture_id)

    # ----------------------------------------------------------------- camera
    def camera_snapshot(self) -> tuple[np.ndarray, float]:
        """The joint positions the camera sees now, and when they were current.

        Returns:
            ``(q, t)``: float64 (6,) joint positions (rad) of the tick at
            ``time - sim.camera_latency`` (never before the last reset), and that tick's
            sim time (s). Cheap: a copy from the per-tick ring.
        """
        tick = max(self._tick - self._camera_lag, self._ring_start)
        return self._ring_q[tick % len(self._ring_q)].copy(), tick * self.control_period

    def render(self, subsample: int | None = None, out: np.ndarray | None = None,
               q: np.ndarray | None = None) -> np.ndarray:
        """Wrist camera image as of ``time - sim.camera_latency``.

        Args:
            subsample: Pixel step from the capture; ``None`` gives the observation
                (``camera.subsample``, 160x90 by default); 1 gives the full capture.
            out: Optional uint8 (H, W, 3) array to fill (saves an allocation).
            q: Optional joint positions to render instead, e.g. a :meth:`camera_snapshot`
                taken under a lock; rendering then reads no physics state, so another
                thread may step the mirror meanwhile (the renderer itself stays on the
                thread that built the mirror).

        Returns:
            uint8 (H, W, 3) RGB image, row 0 at the top, ``(H, W) = camera.obs_size`` by
            default; a new array unless ``out`` is given.

        Raises:
            ValueError: If ``subsample`` < 1 or ``out`` has the wrong shape.
            RuntimeError: If the mirror is closed or was built without a renderer.
        """
        self._check_open()
        if self._renderer is None:
            raise RuntimeError("this mirror was built with render=False")
        s = self._camera_cfg.subsample if subsample is None else int(subsample)
        height, width = self._camera_cfg.image_size(s)
        if s != self._intrinsics_subsample:
            fx, fy, _, _ = self._camera_cfg.intrinsics(s)
            m, c = self.model, self._camera_id
            m.cam_resolution[c] = (width, height)
            m.cam_sensorsize[c] = (width * _PIXEL_M, height * _PIXEL_M)
            m.cam_intrinsic[c] = (fx * _PIXEL_M, fy * _PIXEL_M,
                                  *(p * _PIXEL_M for p in principal_offset(self._camera_cfg, s)))
            self._intrinsics_subsample = s
        view = self._view_data
        view.qpos[:N_JOINTS] = self.camera_snapshot()[0] if q is None else q
        mujoco.mj_kinematics(self.model, view)
        mujoco.mj_camlight(self.model, view)
        return self._renderer.render(view, width, height, out)

    # ------------------------------------------------------------------ poses
    def _current_pose_data(self) -> mujoco.MjData:
        pd = self._pose_data
        pd.qpos[:] = self._data.qpos
        mujoco.mj_kinematics(self.model, pd)
        mujoco.mj_camlight(self.model, pd)
        return pd

    def flange_pose(self) -> np.ndarray:
        """Flange (tool0) pose of the actual joint positions, from MuJoCo's kinematics.

        Returns:
            float64 (4, 4) base <- flange, m; equals ``robot.kinematics.flange_pose(q)``.
        """
        pd = self._current_pose_data()
        pose = np.eye(4)
        pose[:3, :3] = pd.xmat[self._flange_id].reshape(3, 3)
        pose[:3, 3] = pd.xpos[self._flange_id]
        return pose

    def camera_pose(self) -> np.ndarray:
        """Wrist camera pose of the actual joint positions, OpenCV axes.

        Returns:
            float64 (4, 4) base <- camera (x right, y down, z forward), m.
        """
        pd = self._current_pose_data()
        pose = np.eye(4)
        pose[:3, :3] = pd.cam_xmat[self._camera_id].reshape(3, 3) @ _MJ_TO_CV
        pose[:3, 3] = pd.cam_xpos[self._camera_id]
        return pose

    def contacts(self) -> list[tuple[str, str]]:
        """Geom pairs touching in the last physics step, for protective-stop emulation.

        Pairs within a link and between adjacent links are never reported, static pairs
        (base, table, monitor) neither. Inside this project's safety limits (joint limits,
        flange box, screen clearance) none of 2,981 random poses touches anything
        (tests/test_safety.py); without the screen clearance 7 of 3,069 touched the bezel.

        Returns:
            Distinct ``(geom1, geom2)`` name pairs, e.g. ``("table", "link3_segment")``.
        """
        d, names = self._data, self._geom_names
        pairs: list[tuple[str, str]] = []
        for i in range(d.ncon):
            c = d.contact[i]
            pair = (names[c.geom1], names[c.geom2])
            if pair not in pairs:
                pairs.append(pair)
        return pairs

    # --------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Free the renderer's GL resources; later renders and steps raise RuntimeError."""
        if not self._closed:
            self._closed = True
            if self._renderer is not None:
                self._renderer.close()

    def __enter__(self) -> Mirror:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("mirror is closed")

    @staticmethod
    def _check_vector(v: np.ndarray, name: str) -> np.ndarray:
        arr = np.array(v, dtype=np.float64).reshape(-1)
        if arr.shape != (N_JOINTS,) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be {N_JOINTS} finite values, got {v!r}")
        return arr
