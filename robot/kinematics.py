"""Forward kinematics of the UR5 (CB3) and UR5e from Universal Robots' DH parameters.

Source: Universal Robots, "DH parameters for calculations of kinematics and dynamics"
(support article, universal-robots.com/articles/ur/application-installation/
dh-parameters-for-calculations-of-kinematics-and-dynamics/). Standard (distal) DH
convention: the transform from frame i-1 to frame i is
``Rz(theta_i) @ Tz(d_i) @ Tx(a_i) @ Rx(alpha_i)`` with ``theta_i = q_i`` (UR's joint
zero positions need no offsets). Frame 0 is the robot's "base" frame as reported by the
DH frame 0; frame 6 is the tool flange (tool0), whose z axis is the tool axis.

Base frame: the controller's "Base" frame (the one getActualTCPPose and the teach
pendant report, and the one the MaDi safety box is given in) is DH frame 0 turned by
pi about z (x and y negated; the same relation as ROS ``base`` vs ``base_link``). All
poses returned here are in that base frame, so a TCP pose from ur_rtde and a pose from
this module can be compared directly.

Both the MuJoCo mirror (sim/) and the safety module use these functions, so the sim's
geometry and the real arm's box check agree by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_JOINTS = 6
JOINT_NAMES = ("base", "shoulder", "elbow", "wrist1", "wrist2", "wrist3")


@dataclass(frozen=True)
class DHParameters:
    """Standard DH parameters of a 6-joint UR arm.

    Attributes:
        d: Link offsets d_i, shape (6,), m.
        a: Link lengths a_i, shape (6,), m.
        alpha: Link twists alpha_i, shape (6,), rad.
    """

    d: tuple[float, ...]
    a: tuple[float, ...]
    alpha: tuple[float, ...]


_HALF_PI = np.pi / 2

#: UR's published DH tables, keyed by the config's ``arm.model``.
UR_DH: dict[str, DHParameters] = {
    "ur5": DHParameters(
        d=(0.089159, 0.0, 0.0, 0.10915, 0.09465, 0.0823),
        a=(0.0, -0.425, -0.39225, 0.0, 0.0, 0.0),
        alpha=(_HALF_PI, 0.0, 0.0, _HALF_PI, -_HALF_PI, 0.0),
    ),
    "ur5e": DHParameters(
        d=(0.1625, 0.0, 0.0, 0.1333, 0.0997, 0.0996),
        a=(0.0, -0.425, -0.3922, 0.0, 0.0, 0.0),
        alpha=(_HALF_PI, 0.0, 0.0, _HALF_PI, -_HALF_PI, 0.0),
    ),
}


def dh_transform(theta: float, d: float, a: float, alpha: float) -> np.ndarray:
    """Homogeneous transform of one standard DH link.

    Args:
        theta: Joint angle, rad.
        d: Offset along the previous z, m.
        a: Length along the new x, m.
        alpha: Twist about the new x, rad.

    Returns:
        float64 (4, 4) transform ``Rz(theta) Tz(d) Tx(a) Rx(alpha)``.
    """
    ct, st = np.cos(theta), np.sin(theta)
    ca, sa = np.cos(alpha), np.sin(alpha)
    return np.array(
        [
            [ct, -st * ca, st * sa, a * ct],
            [st, ct * ca, -ct * sa, a * st],
            [0.0, sa, ca, d],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )


#: Base frame <- DH frame 0: a rotation by pi about z.
BASE_FROM_DH0 = np.diag([-1.0, -1.0, 1.0, 1.0])


def link_transforms(q: np.ndarray, model: str = "ur5") -> list[np.ndarray]:
    """Poses of DH frames 1..6 in the (controller's) base frame.

    Args:
        q: Joint positions, shape (6,), rad.
        model: ``"ur5"`` (CB3) or ``"ur5e"``.

    Returns:
        Six float64 (4, 4) transforms; the last one is the flange (tool0) pose.

    Raises:
        ValueError: If ``model`` is unknown or ``q`` does not have 6 entries.
    """
    dh = dh_parameters(model)
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (N_JOINTS,):
        raise ValueError(f"q must have shape (6,) (rad), got {q.shape}")
    pose = BASE_FROM_DH0
    out = []
    for i in range(N_JOINTS):
        pose = pose @ dh_transform(q[i], dh.d[i], dh.a[i], dh.alpha[i])
        out.append(pose)
    return out


def flange_pose(q: np.ndarray, model: str = "ur5") -> np.ndarray:
    """Forward kinematics: the flange (tool0) pose in the base frame.

    Args:
        q: Joint positions, shape (6,), rad.
        model: ``"ur5"`` (CB3) or ``"ur5e"``.

    Returns:
        float64 (4, 4) homogeneous transform base <- flange, translation in m.
    """
    return link_transforms(q, model)[-1]


def flange_poses(qs: np.ndarray, model: str = "ur5") -> np.ndarray:
    """Forward kinematics of many joint vectors at once: flange poses in the base frame.

    The same chain as :func:`flange_pose`, batched (one (N, 4, 4) product per link), for
    checking points along a predicted path within a control tick.

    Args:
        qs: Joint positions, shape (N, 6), rad.
        model: ``"ur5"`` (CB3) or ``"ur5e"``.

    Returns:
        float64 (N, 4, 4) transforms base <- flange, translation in m.

    Raises:
        ValueError: If ``qs`` is not (N, 6) or ``model`` is unknown.
    """
    dh = dh_parameters(model)
    qs = np.asarray(qs, dtype=np.float64)
    if qs.ndim != 2 or qs.shape[1] != N_JOINTS:
        raise ValueError(f"qs must have shape (N, 6) (rad), got {qs.shape}")
    ct, st = np.cos(qs), np.sin(qs)
    links = np.zeros((N_JOINTS, len(qs), 4, 4))  # link i of every q, as in dh_transform
    ca, sa = np.cos(dh.alpha)[:, None], np.sin(dh.alpha)[:, None]
    links[:, :, 0, 0], links[:, :, 1, 0] = ct.T, st.T
    links[:, :, 0, 1], links[:, :, 1, 1] = -st.T * ca, ct.T * ca
    links[:, :, 0, 2], links[:, :, 1, 2] = st.T * sa, -ct.T * sa
    links[:, :, 0, 3], links[:, :, 1, 3] = np.asarray(dh.a)[:, None] * ct.T, \
        np.asarray(dh.a)[:, None] * st.T
    links[:, :, 2, 1], links[:, :, 2, 2] = sa, ca
    links[:, :, 2, 3] = np.asarray(dh.d)[:, None]
    links[:, :, 3, 3] = 1.0
    pose = BASE_FROM_DH0 @ links[0]
    for link in links[1:]:
        pose = pose @ link
    return pose


def flange_positions(qs: np.ndarray, model: str = "ur5",
                     point: np.ndarray | None = None) -> np.ndarray:
    """Positions of the flange origin, or of a point fixed on the flange, for many joint vectors.

    Args:
        qs: Joint positions, shape (N, 6), rad.
        model: ``"ur5"`` (CB3) or ``"ur5e"``.
        point: (3,) a point fixed in the flange frame, m (e.g. the wrist camera's lens);
            ``None`` is the flange origin.

    Returns:
        float64 (N, 3) positions of that point in the base frame, m.

    Raises:
        ValueError: If ``qs`` is not (N, 6) or ``model`` is unknown.
    """
    return point_positions(flange_poses(qs, model), point)


def point_positions(poses: np.ndarray, point: np.ndarray | None = None) -> np.ndarray:
    """Where a point fixed in a frame is, for many poses of that frame.

    Args:
        poses: float (N, 4, 4) transforms base <- frame (e.g. :func:`flange_poses`).
        point: (3,) the point in the frame, m; ``None`` is its origin.

    Returns:
        float64 (N, 3) positions in the base frame, m.
    """
    if point is None:
        return poses[:, :3, 3].copy()
    return poses[:, :3, :3] @ np.asarray(point, np.float64) + poses[:, :3, 3]


def flange_jacobian(q: np.ndarray, model: str = "ur5",
                    point: np.ndarray | None = None) -> np.ndarray:
    """Linear-velocity Jacobian of the flange origin (or a point on it) in the base frame.

    Geometric Jacobian of revolute joints (Siciliano et al., "Robotics: Modelling,
    Planning and Control", eq. 3.30): column i is ``z_{i-1} x (p - p_{i-1})``, with
    ``z_{i-1}`` and ``p_{i-1}`` the axis and origin of DH frame i-1 and ``p`` the point.

    Args:
        q: Joint positions, shape (6,), rad.
        model: ``"ur5"`` (CB3) or ``"ur5e"``.
        point: (3,) a point fixed in the flange frame, m; ``None`` is the flange origin.

    Returns:
        float64 (3, 6): the point's velocity (m/s) per joint velocity (rad/s).
    """
    frames = [BASE_FROM_DH0, *link_transforms(q, model)]
    p = frames[-1][:3, 3] if point is None else \
        frames[-1][:3, :3] @ np.asarray(point, np.float64) + frames[-1][:3, 3]
    return np.stack([np.cross(f[:3, 2], p - f[:3, 3]) for f in frames[:-1]], axis=1)


def dh_parameters(model: str) -> DHParameters:
    """Look up the DH table of an arm model.

    Raises:
        ValueError: If the model is not one of ``UR_DH``.
    """
    try:
        return UR_DH[model]
    except KeyError:
        raise ValueError(f"unknown arm model {model!r}; allowed: {sorted(UR_DH)}") from None


def rpy_matrix(rpy: np.ndarray) -> np.ndarray:
    """Rotation matrix of extrinsic roll-pitch-yaw angles (x, then y, then z; fixed axes).

    Args:
        rpy: (3,) roll, pitch, yaw, rad.

    Returns:
        float64 (3, 3) ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``.
    """
    r, p, y = (float(v) for v in rpy)
    cr, sr, cp, sp, cy, sy = np.cos(r), np.sin(r), np.cos(p), np.sin(p), np.cos(y), np.sin(y)
    return np.array([
        [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr],
        [sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr],
        [-sp, cp * sr, cp * cr],
    ])


def pose_matrix(xyz: np.ndarray, rpy: np.ndarray) -> np.ndarray:
    """Homogeneous transform from a translation (m) and extrinsic roll-pitch-yaw (rad).

    Returns:
        float64 (4, 4).
    """
    pose = np.eye(4)
    pose[:3, :3] = rpy_matrix(rpy)
    pose[:3, 3] = xyz
    return pose


def camera_pose(q: np.ndarray, model: str, mount: np.ndarray) -> np.ndarray:
    """Wrist camera pose in the base frame.

    Args:
        q: (6,) joint positions, rad.
        model: ``"ur5"`` or ``"ur5e"``.
        mount: (4, 4) flange <- camera transform (hand-eye; OpenCV camera axes: x right,
            y down, z forward), m.

    Returns:
        float64 (4, 4) base <- camera.
    """
    return flange_pose(q, model) @ mount
