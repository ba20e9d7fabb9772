"""The visual reaching task: the target image and the reward, shared by sim and real rig.

The same functions draw the image shown on the (virtual or real) monitor and score the
wrist-camera frames, so the sim mirror and the physical UR5 pose exactly one task.

Source: the UR5 visual reacher of MaDi (Grooten et al., AAMAS 2024) and ReLoD (Wang et
al., 2023): the reward constants of the MaDi UR5 scripts (github.com/bramgrooten/relod).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from link.messages import TransitionBounds
from robot.config import Config, TargetConfig, TaskConfig
from robot.observation import proprio_high


def sample_target_center(rng: np.random.Generator, radius: float, aspect: float) -> np.ndarray:
    """Draw a random circle centre that keeps the whole circle on the screen.

    Args:
        rng: Random generator (seeded per episode by the caller).
        radius: Circle radius as a fraction of the screen height.
        aspect: Screen width / height.

    Returns:
        float64 (2,) centre (x, y) as fractions of screen width and height, origin top left;
        the circle keeps a gap of 2% of the screen height to every edge.
    """
    margin_y = radius + 0.02
    margin_x = margin_y / aspect
    return np.array(
        [rng.uniform(margin_x, 1.0 - margin_x), rng.uniform(margin_y, 1.0 - margin_y)]
    )


def draw_target(
    size_wh: tuple[int, int],
    center: np.ndarray,
    target: TargetConfig,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Render the target image: a filled red circle on a white (or given) background.

    Args:
        size_wh: Image width and height, px (the monitor resolution, or the sim texture).
        center: (2,) circle centre as fractions of width and height, origin top left.
        target: Radius (fraction of height) and colours.
        background: Optional uint8 (h, w, 3) RGB image drawn behind the circle (test-time
            distractions); resized to ``size_wh``. ``None`` means the plain screen colour.

    Returns:
        uint8 (h, w, 3) RGB image.
    """
    w, h = int(size_wh[0]), int(size_wh[1])
    if background is None:
        image = np.empty((h, w, 3), np.uint8)
        image[:] = target.background_rgb
    else:
        image = cv2.resize(np.ascontiguousarray(background, np.uint8), (w, h),
                           interpolation=cv2.INTER_AREA)
    # cv2 draws with 4 fractional bits for sub-pixel accurate, antialiased edges.
    shift = 4
    cx, cy = (round(center[0] * w * (1 << shift) - (1 << (shift - 1))),
              round(center[1] * h * (1 << shift) - (1 << (shift - 1))))
    r = round(target.radius * h * (1 << shift))
    cv2.circle(image, (cx, cy), r, tuple(int(c) for c in target.color_rgb), -1,
               cv2.LINE_AA, shift)
    return image


@lru_cache(maxsize=8)
def _centre_weights(height: int, width: int) -> np.ndarray:
    rows = 0.5 - np.abs(np.arange(height) - height / 2) / height
    cols = 0.5 - np.abs(np.arange(width) - width / 2) / width
    weights = np.outer(rows, cols).astype(np.float64)
    weights.setflags(write=False)
    return weights


@dataclass(frozen=True)
class RewardInfo:
    """What the reward function saw in one frame.

    Attributes:
        reward: Step reward (dense: in [0, dense_clip]; sparse: -1.0 per step).
        red_fraction: Share of the image's pixels classified as target red, in [0, 1].
        success: ``red_fraction >= success_red_fraction`` (the minimum-time criterion).
    """

    reward: float
    red_fraction: float
    success: bool


class RedTargetReward:
    """Reward of the UR5 visual reacher, computed from the newest camera frame.

    Dense (MaDi/ReLoD): pixels whose BGR lies in ``[red_low_bgr, red_high_bgr]`` are red;
    ``r = clip(scale * sum_red (1/2 - |row - H/2|/H)(1/2 - |col - W/2|/W) / (W H), 0, clip)``,
    so a bigger and more centred target earns more. Sparse (minimum time): ``-1`` per
    step; the episode ends when red covers at least ``success_red_fraction`` of the image.

    Args:
        task: Thresholds and reward variant.
    """

    def __init__(self, task: TaskConfig):
        self.task = task
        # The thresholds are given in OpenCV's BGR order; frames here are RGB.
        self._low = np.array(task.red_low_bgr[::-1], np.uint8)
        self._high = np.array(task.red_high_bgr[::-1], np.uint8)

    def red_mask(self, image: np.ndarray) -> np.ndarray:
        """Classify target pixels.

        Args:
            image: uint8 (H, W, 3) RGB frame.

        Returns:
            bool (H, W), True where the pixel is target red.

        Raises:
            ValueError: If the image is not uint8 (H, W, 3).
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"reward expects a uint8 (H, W, 3) RGB frame, got "
                             f"{image.dtype} {image.shape}")
        return cv2.inRange(image, self._low, self._high) > 0

    def __call__(self, image: np.ndarray) -> RewardInfo:
        """Score one frame.

        Args:
            image: uint8 (H, W, 3) RGB frame, the newest observation frame.

        Returns:
            The reward, the red share of the image and the success flag.
        """
        mask = self.red_mask(image)
        h, w = mask.shape
        red_fraction = float(np.count_nonzero(mask)) / (h * w)
        success = red_fraction >= self.task.success_red_fraction
        if self.task.reward == "sparse":
            return RewardInfo(-1.0, red_fraction, success)
        weighted = float(_centre_weights(h, w)[mask].sum())
        reward = min(max(self.task.dense_scale * weighted / (w * h), 0.0), self.task.dense_clip)
        return RewardInfo(reward, red_fraction, success)


def reward_range(task: TaskConfig) -> tuple[float, float]:
    """Lowest and highest step reward of :class:`RedTargetReward`.

    Returns:
        ``(0, dense_clip)`` for the dense reward, ``(-1, -1)`` for the sparse one.
    """
    return (0.0, task.dense_clip) if task.reward == "dense" else (-1.0, -1.0)


def transition_bounds(cfg: Config) -> TransitionBounds:
    """What a robot of this task can send: the learner drops any transition outside it.

    Args:
        cfg: The run's config (``task`` for the reward, ``arm`` for proprio bounds).

    Returns:
        Reward range, proprio bound (:func:`robot.observation.proprio_high`), actions in
        [-1, 1].
    """
    low, high = reward_range(cfg.task)
    return TransitionBounds(low, high, proprio_high(cfg.arm))
