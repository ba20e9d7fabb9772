"""Roll out scripted policies in the mirror and save what the wrist camera saw."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import imageio.v2 as imageio
import numpy as np

from robot.config import Config
from robot.servo import ServoPolicy
from sim.env import VisualReacherEnv

Policy = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class EpisodeResult:
    """Summary of one episode.

    Attributes:
        episode_return: Sum of rewards.
        steps: Steps taken.
        success: Whether red ever covered ``task.success_red_fraction`` of the image.
        success_step: First step (1-based) meeting it, or ``None``.
        max_red_fraction: Largest red share of the image seen, in [0, 1].
        frames: uint8 (T+1, H, W, 3) RGB newest frames, from reset on (kept when asked).
    """

    episode_return: float
    steps: int
    success: bool
    success_step: int | None
    max_red_fraction: float
    frames: np.ndarray | None = None


def make_policy(name: str, cfg: Config, env: VisualReacherEnv) -> Policy:
    """Build a scripted policy by name: ``"servo"`` or ``"random"`` (uniform actions).

    Raises:
        ValueError: For an unknown name.
    """
    if name == "servo":
        return ServoPolicy(cfg)
    if name == "random":
        space = env.action_space
        space.seed(cfg.seed)
        return lambda obs: space.sample()
    raise ValueError(f"unknown policy {name!r}; allowed: servo, random")


def run_episode(env: VisualReacherEnv, policy: Policy, seed: int | None = None,
                keep_frames: bool = False) -> EpisodeResult:
    """Run one episode to its end.

    Args:
        env: The mirror environment.
        policy: Maps an observation to an action in [-1, 1].
        seed: Passed to ``env.reset`` (fixes the target position).
        keep_frames: Keep every newest frame for videos.

    Returns:
        The episode summary.
    """
    obs, _ = env.reset(seed=seed)
    frames = [env.render()] if keep_frames else None
    total, steps, success_step, max_red = 0.0, 0, None, 0.0
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += reward
        steps += 1
        max_red = max(max_red, info["red_fraction"])
        if info["success"] and success_step is None:
            success_step = steps
        if keep_frames:
            frames.append(env.render())
        done = terminated or truncated
    return EpisodeResult(total, steps, success_step is not None, success_step, max_red,
                         np.stack(frames) if keep_frames else None)


def save_episode(frames: np.ndarray, out: Path, name: str, fps: float, scale: int = 4) -> None:
    """Write an episode as ``name.mp4`` and a ``name.png`` strip of 10 evenly spaced frames.

    Args:
        frames: uint8 (T, H, W, 3) RGB.
        out: Folder (created if missing).
        name: File stem.
        fps: Video frame rate, frames/s (the agent rate, 25).
        scale: Integer upscaling (nearest neighbour) so small frames are easy to look at.
    """
    out.mkdir(parents=True, exist_ok=True)
    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    imageio.mimwrite(out / f"{name}.mp4", big, fps=fps, macro_block_size=1)
    picks = np.linspace(0, len(frames) - 1, num=min(10, len(frames))).round().astype(int)
    strip = np.concatenate([big[i] for i in picks], axis=1)
    cv2.imwrite(str(out / f"{name}.png"), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


def run_episodes(cfg: Config, policy_name: str, episodes: int,
                 out: Path | None = None) -> list[EpisodeResult]:
    """Run ``episodes`` episodes of a scripted policy; optionally save each one.

    Episode i uses target seed ``cfg.seed + i``.
    """
    env = VisualReacherEnv(cfg)
    try:
        policy = make_policy(policy_name, cfg, env)
        results = []
        for i in range(episodes):
            r = run_episode(env, policy, seed=cfg.seed + i, keep_frames=out is not None)
            if out is not None:
                save_episode(r.frames, Path(out), f"episode_{i:03d}_{policy_name}",
                             fps=1.0 / cfg.task.agent_period)
                r.frames = None
            results.append(r)
        return results
    finally:
        env.close()
