"""The agent's observation and action mapping, shared by the sim env and the robot process.

Observation (MaDi / ReLoD UR5 visual reacher): ``{"image": uint8 (3k, H, W), "proprio":
float32 (3n,)}``: the k newest RGB wrist-camera frames stacked on the channel axis,
oldest first, and proprioception ``[q (rad), qd / speed_max, previous action]`` of the
n active joints. Action: float32 (n,) in [-1, 1], joint velocities of the active joints
as fractions of ``speed_max`` (rad/s); the other joints get 0. :func:`frame_with_mask`
draws a frame as videos show it, with the policy's Masker mask beside it.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import cv2
import numpy as np

from robot.config import ArmConfig

#: UR5 (CB3 and e-series) joint range and top joint speed: +-360 deg, 180 deg/s (UR5
#: technical specifications).
JOINT_RANGE_RAD = 2 * np.pi
JOINT_SPEED_MAX = np.pi


def proprio_high(arm: ArmConfig) -> np.ndarray:
    """Bound of :func:`proprio`'s absolute values for the arm's active joints.

    Args:
        arm: Gives ``active_joints`` and ``speed_max``.

    Returns:
        float32 (3n,): 2 pi rad for q, pi / speed_max for qd / speed_max, 1 for the
        previous action.
    """
    n = len(arm.active_joints)
    return np.concatenate([np.full(n, JOINT_RANGE_RAD), np.full(n, JOINT_SPEED_MAX / arm.speed_max),
                           np.ones(n)]).astype(np.float32)


class FrameStack:
    """The k newest frames as one channel-stacked image.

    Args:
        k: Frames stacked, >= 1.
    """

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"frame stack must be >= 1, got {k}")
        self._frames: deque[np.ndarray] = deque(maxlen=int(k))

    def reset(self, frame: np.ndarray) -> None:
        """Fill the stack with ``frame`` (uint8 (H, W, 3) RGB), as at an episode start."""
        self._frames.clear()
        for _ in range(self._frames.maxlen):
            self._frames.append(frame)

    def push(self, frame: np.ndarray) -> None:
        """Add the newest frame (uint8 (H, W, 3) RGB); the oldest drops out."""
        self._frames.append(frame)

    @property
    def newest(self) -> np.ndarray:
        """The newest frame, uint8 (H, W, 3)."""
        return self._frames[-1]

    def image(self) -> np.ndarray:
        """uint8 (3k, H, W): the frames channel-first, oldest first.

        Raises:
            RuntimeError: Before :meth:`reset`.
        """
        if not self._frames:
            raise RuntimeError("FrameStack.image() before reset()")
        return np.concatenate([f.transpose(2, 0, 1) for f in self._frames], axis=0)


def proprio(q: np.ndarray, qd: np.ndarray, prev_action: np.ndarray, arm: ArmConfig) -> np.ndarray:
    """Proprioception of the active joints.

    Args:
        q: (6,) joint positions, rad.
        qd: (6,) joint velocities, rad/s.
        prev_action: (n,) the previous action in [-1, 1] (zeros at an episode start).
        arm: Gives ``active_joints`` and ``speed_max``.

    Returns:
        float32 (3n,) ``[q, qd / speed_max, prev_action]``.
    """
    active = arm.active_joints
    return np.concatenate([np.asarray(q)[active], np.asarray(qd)[active] / arm.speed_max,
                           prev_action]).astype(np.float32)


def action_to_qd(action: np.ndarray, arm: ArmConfig) -> np.ndarray:
    """Map an action to a speedJ command.

    Args:
        action: float (n,) in [-1, 1] (clipped), one value per active joint.
        arm: Gives ``active_joints`` and ``speed_max``.

    Returns:
        float64 (6,) joint velocities, rad/s; inactive joints 0.

    Raises:
        ValueError: If the action does not have n finite values.
    """
    action = np.asarray(action, np.float64)
    n = len(arm.active_joints)
    if action.shape != (n,) or not np.all(np.isfinite(action)):
        raise ValueError(f"action must be {n} finite values in [-1, 1], got {action!r}")
    qd = np.zeros(6)
    qd[arm.active_joints] = np.clip(action, -1.0, 1.0) * arm.speed_max
    return qd


def frame_with_mask(frame: np.ndarray, policy: Any, scale: int) -> np.ndarray:
    """A camera frame with the policy's Masker mask beside it (white = kept), upscaled.

    Args:
        frame: uint8 (H, W, 3) RGB observation frame.
        policy: A :class:`learner.policy.MadiPolicy` (or None); without a Masker only
            the frame is shown.
        scale: Nearest-neighbour upscaling.

    Returns:
        uint8 (H * scale, W * scale * panels, 3) RGB, panels = 2 with a Masker, else 1.
    """
    tiles = [frame]
    if getattr(policy, "masker", None) is not None:
        mask = (policy.mask(frame) * 255).astype(np.uint8)
        tiles.append(np.repeat(mask[:, :, None], 3, axis=2))
    row = np.concatenate(tiles, axis=1)
    return cv2.resize(row, (row.shape[1] * scale, row.shape[0] * scale),
                      interpolation=cv2.INTER_NEAREST)
