"""A scripted visual-servo policy for the visual reacher (no learning).

Image-based visual servoing (Chaumette & Hutchinson, "Visual servo control, Part I",
IEEE RAM 2006) reduced to what this task needs: translate the camera sideways so the
red centroid moves to the image centre and forward until the target covers a goal share
of the image, keeping the camera's orientation. The camera twist is mapped to the
active joints through the least-squares inverse of the camera Jacobian, computed by
finite differences of :func:`robot.kinematics.camera_pose`.

It uses only what the real robot has (the newest frame, joint positions from the
observation, the config's kinematics and camera model), so it serves both as a check of
the sim mirror (camera, kinematics, monitor, box and reward fit together) and as a
baseline on the real rig.
"""

from __future__ import annotations

import numpy as np

from robot.config import Config
from robot.kinematics import camera_pose
from robot.task import RedTargetReward


def _rotation_vector(rot: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a small rotation matrix (first order), rad."""
    return 0.5 * np.array([rot[2, 1] - rot[1, 2], rot[0, 2] - rot[2, 0], rot[1, 0] - rot[0, 1]])


class ServoPolicy:
    """Visual servo toward the red target.

    Args:
        cfg: Uses ``arm`` (model, active joints, fixed joints' positions from ``q_home``,
            ``speed_max``), ``camera`` (intrinsics, subsample, mount) and ``task``
            (red thresholds, success share).
        lateral_gain: Camera sideways speed per unit of normalised image error, m/s.
        approach_speed: Camera forward speed while the target is small, m/s.
        goal_factor: Approach until red covers ``goal_factor * success_red_fraction``.
    """

    def __init__(self, cfg: Config, lateral_gain: float = 0.5, approach_speed: float = 0.12,
                 goal_factor: float = 1.6):
        self.cfg = cfg
        self.reward = RedTargetReward(cfg.task)
        self.active = np.asarray(cfg.arm.active_joints)
        self.q_fixed = np.asarray(cfg.arm.q_home, np.float64)
        self.mount = cfg.camera.mount
        self.fx, self.fy, self.cx, self.cy = cfg.camera.intrinsics()
        self.lateral_gain = lateral_gain
        self.approach_speed = approach_speed
        self.goal = goal_factor * cfg.task.success_red_fraction

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Act on one observation.

        Args:
            obs: ``{"image": uint8 (3k, H, W), "proprio": float32 (3n,)}``; the newest
                frame is the last 3 channels, joint positions the first n proprio values.

        Returns:
            float32 (n,) action in [-1, 1] (fractions of ``speed_max``).
        """
        n = len(self.active)
        q = self.q_fixed.copy()
        q[self.active] = obs["proprio"][:n]
        frame = np.ascontiguousarray(obs["image"][-3:].transpose(1, 2, 0))
        mask = self.reward.red_mask(frame)
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            v_cam = np.array([0.0, 0.0, -0.5 * self.approach_speed])  # back off to find it
        else:
            ex = (cols.mean() - self.cx) / self.fx
            ey = (rows.mean() - self.cy) / self.fy
            share = rows.size / mask.size
            forward = self.approach_speed * float(np.clip(1.0 - share / self.goal, -1.0, 1.0))
            v_cam = np.array([self.lateral_gain * ex, self.lateral_gain * ey, forward])
        qd = self._joint_velocities(q, v_cam)
        return np.clip(qd / self.cfg.arm.speed_max, -1.0, 1.0).astype(np.float32)

    def _joint_velocities(self, q: np.ndarray, v_cam: np.ndarray, eps: float = 1e-6):
        model = self.cfg.arm.model
        pose = camera_pose(q, model, self.mount)
        jac = np.empty((6, len(self.active)))
        for col, j in enumerate(self.active):
            dq = q.copy()
            dq[j] += eps
            moved = camera_pose(dq, model, self.mount)
            jac[:3, col] = (moved[:3, 3] - pose[:3, 3]) / eps
            jac[3:, col] = _rotation_vector(moved[:3, :3] @ pose[:3, :3].T) / eps
        twist = np.concatenate([pose[:3, :3] @ v_cam, np.zeros(3)])
        qd, *_ = np.linalg.lstsq(jac, twist, rcond=None)
        return qd
