"""MJCF of the UR5 visual-reacher rig, generated from UR's DH table and the rig config.

The arm is built link by link from :data:`robot.kinematics.UR_DH` so that MuJoCo's forward
kinematics *is* the DH formula of :mod:`robot.kinematics`: body ``link{i+1}`` sits in body
``link{i}`` at ``(a_i, 0, d_i)`` turned by ``alpha_i`` about x, and every link body has a
hinge about its local z. Standard DH gives ``T_{i-1,i} = Rz(q_i) Tz(d_i) Tx(a_i) Rx(alpha_i)``;
the hinge supplies ``Rz(q_i)`` and the body offset the rest. DH frame 0 (body ``base``) is
turned by pi about z in the world, so the MuJoCo world frame is the controller's base frame.

Geometry is deliberately simple (capsules and cylinders around the DH segments, UR's
published link masses) so that a render costs a few milliseconds on a CPU. The rig adds a
table plane at z = 0 (the mounting surface), the wrist camera with a small webcam body on
the flange, and the monitor: a bezel box plus a textured, emissive screen plane whose
texture the mirror rewrites at run time (see :class:`sim.mirror.Mirror`).

Frames and conventions:
    * World = controller base frame (x, y, z in m), the frame of ``robot.kinematics``.
    * Camera poses are given in OpenCV axes (x right, y down, z forward); MuJoCo cameras
      look along -z with y up, so the MJCF camera is the OpenCV frame turned pi about x.
    * Image coordinates: intrinsics follow OpenCV (pixel centres at integer coordinates),
      as :meth:`robot.config.CameraConfig.intrinsics` documents.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from robot.kinematics import N_JOINTS, dh_parameters, rpy_matrix

if TYPE_CHECKING:  # the sections are only read, never constructed here
    from robot.config import ArmConfig, CameraConfig, MonitorConfig, SimConfig

#: Joint names in the MJCF, base to wrist 3.
JOINTS = ("shoulder_pan", "shoulder_lift", "elbow", "wrist_1", "wrist_2", "wrist_3")
#: Link body names in the MJCF, base to wrist 3 (body ``link{i+1}`` carries joint i).
LINK_BODIES = tuple(f"link{i + 1}" for i in range(N_JOINTS))
CAMERA = "wrist_camera"
SCREEN_GEOM = "monitor_screen"
SCREEN_TEXTURE = "screen"

#: UR5 link masses, kg (Universal Robots, "DH parameters for calculations of kinematics and
#: dynamics"); reused for the UR5e, whose masses differ by < 20 %.
LINK_MASS = (3.7, 8.393, 2.275, 1.219, 1.219, 0.1879)
#: Joint housing (motor) radius of each link, m (plausible UR5 sizes).
HOUSING_RADIUS = (0.06, 0.06, 0.05, 0.045, 0.045, 0.04)
#: Radius of the tube along each DH segment, m.
SEGMENT_RADIUS = (0.06, 0.05, 0.04, 0.04, 0.04, 0.032)
#: Lateral offsets that the DH table folds into d4, m, along the parallel joint axes 2-4:
#: the upper arm's plane and the forearm's plane (UR's URDF: UR5 shoulder offset 0.13585,
#: elbow offset -0.1197; UR5e 0.138, -0.131). They keep the folded elbow of the home
#: pose free of self-contact, as on the real arm.
ARM_PLANES = {"ur5": (0.13585, 0.01615), "ur5e": (0.138, 0.007)}
#: Reflected rotor inertia of each joint drive, kg m^2 (harmonic drive ratio ~100; it also
#: keeps the stiff servo below MuJoCo's explicit-stiffness stability limit).
ARMATURE = (1.0, 1.0, 0.5, 0.1, 0.1, 0.1)


def principal_offset(camera: CameraConfig, subsample: int | None = None) -> tuple[float, float]:
    """MuJoCo ``principalpixel`` of the wrist camera rendered at a given subsampling.

    Measured with MuJoCo 4.0 (see ``tests/test_sim_mirror.py``): a ``principalpixel`` of
    ``(p, 0)`` moves the image content by ``-p`` columns (to the left) and ``(0, p)`` by
    ``-p`` rows (up), relative to a principal point at the image centre ``(W/2, H/2)`` in
    continuous coordinates (pixel centres at +0.5). An OpenCV principal point (pixel
    centres at integers, so at ``c + 0.5`` in continuous coordinates) right of / below the
    centre moves the content right / down, hence the negated displacement.

    Args:
        camera: Capture size and OpenCV intrinsics.
        subsample: Pixel step; ``None`` renders the observation size.

    Returns:
        ``(px, py)`` offsets, px of the rendered image.
    """
    _, _, cx, cy = camera.intrinsics(subsample)
    h, w = camera.image_size(subsample)
    return -(cx + 0.5 - w / 2), -(cy + 0.5 - h / 2)


def matrix_quat(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation matrix (Shepperd's method).

    Args:
        rot: (3, 3) rotation matrix.

    Returns:
        float64 (4,) quaternion with w >= 0.
    """
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def _vec(v) -> str:
    return " ".join(f"{float(x):.17g}" for x in v)


def _rod_inertia(mass: float, radius: float, start: np.ndarray, end: np.ndarray) -> str:
    """``<inertial>`` of a solid rod of ``radius`` between two points (or a disc if short)."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    length = float(np.linalg.norm(axis))
    u = axis / length if length > 1e-9 else np.array([0.0, 0.0, 1.0])
    i_perp = mass * (3 * radius**2 + length**2) / 12.0
    i_axis = mass * radius**2 / 2.0
    inertia = i_perp * (np.eye(3) - np.outer(u, u)) + i_axis * np.outer(u, u)
    full = (inertia[0, 0], inertia[1, 1], inertia[2, 2], inertia[0, 1], inertia[0, 2],
            inertia[1, 2])
    return (f'<inertial pos="{_vec((start + end) / 2)}" mass="{mass:.17g}" '
            f'fullinertia="{_vec(full)}"/>')


def servo_gains(control_period: float, substeps: int) -> tuple[np.ndarray, np.ndarray]:
    """Joint servo stiffness and damping of the position actuators.

    Each joint is a critically damped second-order loop of natural frequency ``omega``
    about its nominal inertia (armature + a rough link share), with ``omega * h = 0.35``
    for the physics step ``h`` so the explicit stiffness stays well inside the stable
    range (the damping is integrated implicitly by ``implicitfast``).

    Args:
        control_period: Controller tick, s.
        substeps: Physics steps per tick.

    Returns:
        ``(kp, kv)``: float64 (6,) each, N m / rad and N m s / rad.
    """
    h = control_period / substeps
    omega = min(0.35 / h, 400.0)
    inertia = np.array(ARMATURE) + np.array([0.3, 3.0, 0.5, 0.02, 0.02, 0.005])
    return inertia * omega**2, 2.0 * inertia * omega


def _arm_xml(model: str, camera_xml: str) -> str:
    """The arm's nested link bodies (DH table of ``model``); the flange carries ``camera_xml``.

    Each link has its joint housing (a cylinder on the joint axis, local z) and a tube
    along its DH segment, both shifted along z into the link's plane.
    """
    dh = dh_parameters(model)
    upper, fore = ARM_PLANES[model]
    housing_span = ((0.01, dh.d[0]), (-0.03, upper + 0.03), (fore - 0.02, upper + 0.02),
                    (fore - 0.02, dh.d[3]), (-0.045, 0.045), (-0.035, 0.035))
    segment_z = (0.0, upper, fore, fore, 0.0, 0.0)
    links = []
    for i in range(N_JOINTS):
        seg_end = np.array([dh.a[i], 0.0, dh.d[i]])
        z0, z1 = housing_span[i]
        tube_start = np.array([0.0, 0.0, segment_z[i]])
        tube_end = seg_end + tube_start if dh.a[i] != 0 else seg_end
        lines = [f'<joint name="{JOINTS[i]}" axis="0 0 1" armature="{ARMATURE[i]}"/>',
                 _rod_inertia(LINK_MASS[i], SEGMENT_RADIUS[i], tube_start, tube_end),
                 f'<geom name="link{i + 1}_housing" type="cylinder" material="joint" '
                 f'size="{HOUSING_RADIUS[i]} {(z1 - z0) / 2:.6f}" '
                 f'pos="0 0 {(z0 + z1) / 2:.6f}"/>']
        if i > 0 and np.linalg.norm(tube_end - tube_start) > 1e-9:
            lines.append(f'<geom name="link{i + 1}_segment" type="capsule" '
                         f'size="{SEGMENT_RADIUS[i]}" '
                         f'fromto="{_vec(tube_start)} {_vec(tube_end)}"/>')
        links.append((lines, seg_end, dh.alpha[i]))

    def placed(end: np.ndarray, alpha: float) -> str:  # a child at the end of its parent
        return f'pos="{_vec(end)}" quat="{np.cos(alpha / 2):.17g} {np.sin(alpha / 2):.17g} 0 0"'

    xml = f'<body name="flange" {placed(links[-1][1], links[-1][2])}>{camera_xml}</body>'
    for k in reversed(range(N_JOINTS)):
        pose = placed(*links[k - 1][1:]) if k > 0 else 'pos="0 0 0" quat="1 0 0 0"'
        xml = (f'<body name="{LINK_BODIES[k]}" {pose} gravcomp="1">'
               + "".join(links[k][0]) + xml + "</body>")
    return xml


def _camera_xml(camera: CameraConfig) -> str:
    """The wrist camera and its webcam housing, in the flange frame.

    The MuJoCo camera is the OpenCV camera frame turned pi about x.
    """
    obs_h, obs_w = camera.image_size()
    fx, fy, _, _ = camera.intrinsics()
    r_cv = rpy_matrix(camera.mount_rpy)
    cam_quat = matrix_quat(r_cv @ np.diag([1.0, -1.0, -1.0]))
    cam_pos = np.asarray(camera.mount_xyz, float)
    webcam_pos = cam_pos - 0.012 * r_cv[:, 2]  # housing behind the lens
    px, py = principal_offset(camera)
    pixel_m = 1e-4  # nominal sensor pixel pitch; only the ratios matter
    return (
        f'<camera name="{CAMERA}" pos="{_vec(cam_pos)}" quat="{_vec(cam_quat)}" '
        f'resolution="{obs_w} {obs_h}" focalpixel="{fx:.17g} {fy:.17g}" '
        f'principalpixel="{px:.17g} {py:.17g}" '
        f'sensorsize="{obs_w * pixel_m:.17g} {obs_h * pixel_m:.17g}"/>'
        f'<geom name="webcam" type="box" size="0.045 0.014 0.012" pos="{_vec(webcam_pos)}" '
        f'quat="{_vec(matrix_quat(r_cv))}" mass="0.1" material="webcam"/>'
    )


def build_mjcf(arm: ArmConfig, camera: CameraConfig, monitor: MonitorConfig,
               sim: SimConfig) -> str:
    """Generate the MJCF of the arm, wrist camera, table and monitor.

    Args:
        arm: ``model`` picks the DH table; ``control_period`` sets the physics step.
        camera: Capture size, intrinsics (for the observation size) and flange mount.
        monitor: Screen pose in the base frame and visible size.
        sim: ``texture_px`` (screen texture size) and ``physics_substeps``.

    Returns:
        MJCF XML text; compile with ``mujoco.MjModel.from_xml_string``.

    Raises:
        ValueError: If the arm model is unknown or a size is not positive.
    """
    dh_parameters(arm.model)  # an unknown model fails here, before anything else
    if arm.control_period is None or arm.control_period <= 0:
        raise ValueError(f"arm.control_period must be > 0 s, got {arm.control_period}")
    tex_w, tex_h = (int(v) for v in sim.texture_px)
    scr_w, scr_h = (float(v) for v in monitor.size_m)
    if min(tex_w, tex_h) < 1 or min(scr_w, scr_h) <= 0:
        raise ValueError(f"texture_px {sim.texture_px} and size_m {monitor.size_m} must be > 0")
    timestep = arm.control_period / sim.physics_substeps
    kp, kv = servo_gains(arm.control_period, sim.physics_substeps)
    obs_h, obs_w = camera.image_size()
    arm_xml = _arm_xml(arm.model, _camera_xml(camera))
    mon_quat = matrix_quat(rpy_matrix(monitor.rpy))
    bezel = 0.015
    actuators = "".join(
        f'<position name="{JOINTS[i]}" joint="{JOINTS[i]}" kp="{kp[i]:.17g}" kv="{kv[i]:.17g}"/>'
        for i in range(N_JOINTS)
    )
    # MuJoCo skips parent-child pairs, except a child of a body welded to the world.
    excludes = f'<exclude body1="base" body2="{LINK_BODIES[0]}"/>'
    return f"""<mujoco model="madi_{arm.model}_visual_reacher">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{timestep:.17g}" integrator="implicitfast"/>
  <statistic extent="1.5" center="0 0.35 0.3"/>
  <visual>
    <global offwidth="{max(camera.width, obs_w)}" offheight="{max(camera.height, obs_h)}"/>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <map znear="0.01" zfar="20"/>
  </visual>
  <asset>
    <texture name="{SCREEN_TEXTURE}" type="2d" builtin="flat" rgb1="1 1 1" rgb2="1 1 1"
             width="{tex_w}" height="{tex_h}"/>
    <material name="{SCREEN_TEXTURE}" texture="{SCREEN_TEXTURE}" rgba="1 1 1 1" emission="1"
              specular="0" shininess="0" reflectance="0"/>
    <material name="arm" rgba="0.72 0.74 0.78 1" specular="0.2" shininess="0.3"/>
    <material name="joint" rgba="0.25 0.45 0.7 1" specular="0.2"/>
    <material name="webcam" rgba="0.08 0.08 0.08 1" specular="0.1"/>
    <material name="bezel" rgba="0.05 0.05 0.05 1" specular="0.1"/>
    <material name="table" rgba="0.55 0.5 0.45 1" specular="0" reflectance="0"/>
  </asset>
  <default>
    <geom material="arm" contype="1" conaffinity="1" condim="3" density="0"/>
  </default>
  <worldbody>
    <light name="top" directional="true" pos="0 0 3" dir="0 0.3 -1" diffuse="0.5 0.5 0.5"
           specular="0 0 0" castshadow="false"/>
    <geom name="table" type="plane" size="2 2 0.1" pos="0 0 0" material="table"/>
    <body name="base" quat="0 0 0 1">
      <geom name="base" type="cylinder" size="0.075 0.01" pos="0 0 0.01" material="joint"/>
      {arm_xml}
    </body>
    <body name="monitor" pos="{_vec(monitor.position)}" quat="{_vec(mon_quat)}">
      <geom name="monitor_bezel" type="box" pos="0 0 -0.0105"
            size="{scr_w / 2 + bezel:.6f} {scr_h / 2 + bezel:.6f} 0.01"
            material="bezel"/>
      <geom name="{SCREEN_GEOM}" type="plane" size="{scr_w / 2:.17g} {scr_h / 2:.17g} 0.01"
            material="{SCREEN_TEXTURE}" contype="0" conaffinity="0"/>
    </body>
  </worldbody>
  <contact>{excludes}</contact>
  <actuator>{actuators}</actuator>
</mujoco>
"""
