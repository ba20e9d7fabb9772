"""A tiny pixel reacher for learner tests: bring a red dot to the image centre.

The camera "moves" with the action: the dot's position ``p`` in [-1, 1]^2 (image
coordinates) changes by ``-speed * action`` per step, so the agent must read the dot's
position from pixels (the proprioception holds only the previous action). Reward
``-|p|`` per step; episodes are truncated after ``horizon`` steps. Observations mimic
the UR5 reacher: ``{"image": uint8 (3k, H, W) stacked RGB frames, "proprio": float32}``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class DotReacherEnv(gym.Env):
    """Pixel toy task: centre a red dot on a white image with 2-D velocity actions."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        size: int = 24,
        frame_stack: int = 3,
        horizon: int = 20,
        speed: float = 0.25,
        radius: float = 2.5,
        distractor: bool = False,
    ):
        self.size = size
        self.k = frame_stack
        self.horizon = horizon
        self.speed = speed
        self.radius = radius
        self.distractor = distractor
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (3 * frame_stack, size, size), np.uint8),
                "proprio": spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        grid = (np.arange(size) + 0.5) / size * 2 - 1
        self._yy, self._xx = np.meshgrid(grid, grid, indexing="ij")
        self._frames: list[np.ndarray] = []

    def _render(self) -> np.ndarray:
        frame = np.full((3, self.size, self.size), 255, np.uint8)
        if self.distractor:
            frame[:] = self.np_random.integers(120, 256, (3, self.size, self.size), np.uint8)
            frame[0] = np.minimum(frame[0], 200)
        px = self.radius * 2 / self.size
        inside = (self._xx - self.p[0]) ** 2 + (self._yy - self.p[1]) ** 2 <= px**2
        frame[0][inside] = 230
        frame[1][inside] = 20
        frame[2][inside] = 20
        return frame

    def _obs(self) -> dict:
        return {"image": np.concatenate(self._frames, 0), "proprio": self.prev_action.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.p = self.np_random.uniform(-0.9, 0.9, 2)
        self.t = 0
        self.prev_action = np.zeros(2, np.float32)
        frame = self._render()
        self._frames = [frame] * self.k
        return self._obs(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32), -1.0, 1.0)
        self.p = np.clip(self.p - self.speed * a, -1.0, 1.0)
        self.prev_action = a
        self.t += 1
        self._frames = [*self._frames[1:], self._render()]
        reward = -float(np.linalg.norm(self.p))
        return self._obs(), reward, False, self.t >= self.horizon, {}


def random_return(env: DotReacherEnv, episodes: int, seed: int = 0) -> float:
    """Mean return of the uniform random policy."""
    env.action_space.seed(seed)
    total = 0.0
    for i in range(episodes):
        env.reset(seed=seed + i)
        done = False
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            total += r
            done = term or trunc
    return total / episodes
