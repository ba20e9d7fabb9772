"""Domain randomization of the mirror: a perturbed rig at every episode (sim -> real).

:func:`sample` draws, from ``cfg.sim.randomize`` and a seeded generator, one episode's rig:
camera pose on the flange and intrinsics, monitor pose, target and screen colours,
command and camera latencies and the arm's acceleration (a perturbed :class:`Config` the
env rebuilds its mirror from), plus image effects applied to every rendered frame
(:class:`ImageEffects`: lighting/exposure gain, white balance, sensor noise). The same
seed gives the same draws. Ranges are half-widths around the nominal (calibrated)
values, see :class:`robot.config.RandomizeConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot.config import Config


@dataclass(frozen=True)
class ImageEffects:
    """Per-episode camera effects.

    Attributes:
        gain: float (3,) RGB gain (brightness x white balance).
        noise: Gaussian noise sigma, levels.
    """

    gain: np.ndarray
    noise: float

    def apply(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The frame as this episode's camera sees it, uint8 (H, W, 3) RGB."""
        out = frame.astype(np.float32) * self.gain
        if self.noise > 0:
            out += rng.normal(0.0, self.noise, frame.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class EpisodeRig:
    """One episode's randomized rig.

    Attributes:
        cfg: The perturbed config (camera, monitor, target, sim latencies, acceleration).
        effects: The image effects.
    """

    cfg: Config
    effects: ImageEffects


def _jitter(rng: np.random.Generator, values, half_width: float) -> list[float]:
    return [float(v + rng.uniform(-half_width, half_width)) for v in values]


def _colour(rng: np.random.Generator, rgb, half_width: int) -> list[int]:
    return [int(np.clip(c + rng.integers(-half_width, half_width + 1), 0, 255)) for c in rgb]


def sample(cfg: Config, rng: np.random.Generator) -> EpisodeRig:
    """Draw one episode's rig around ``cfg`` (see module docstring).

    Args:
        cfg: The nominal config (its ``sim.randomize`` gives the ranges).
        rng: The episode's generator (the env's, seeded at reset).

    Returns:
        The perturbed config and image effects.
    """
    r = cfg.sim.randomize
    cam, mon, tgt = cfg.camera, cfg.monitor, cfg.target
    focal = 1.0 + rng.uniform(-r.focal, r.focal, 2)
    camera = cam.model_copy(update={
        "fx": cam.fx * focal[0], "fy": cam.fy * focal[1],
        "cx": cam.cx + rng.uniform(-r.principal, r.principal),
        "cy": cam.cy + rng.uniform(-r.principal, r.principal),
        "mount_xyz": _jitter(rng, cam.mount_xyz, r.camera_xyz),
        "mount_rpy": _jitter(rng, cam.mount_rpy, r.camera_rpy)})
    monitor = mon.model_copy(update={"position": _jitter(rng, mon.position, r.monitor_xyz),
                                     "rpy": _jitter(rng, mon.rpy, r.monitor_rpy)})
    target = tgt.model_copy(update={"color_rgb": _colour(rng, tgt.color_rgb, r.colour),
                                    "background_rgb": _colour(rng, tgt.background_rgb,
                                                              r.colour)})
    sim = cfg.sim.model_copy(update={
        "command_latency": float(rng.uniform(*r.command_latency)),
        "camera_latency": float(rng.uniform(*r.camera_latency))})
    arm = cfg.arm.model_copy(update={
        "acceleration": cfg.arm.acceleration * float(1 + rng.uniform(-r.acceleration,
                                                                     r.acceleration))})
    gain = (1 + rng.uniform(-r.brightness, r.brightness)) * (
        1 + rng.uniform(-r.white_balance, r.white_balance, 3))
    effects = ImageEffects(gain.astype(np.float32), float(rng.uniform(0, r.noise)))
    episode = cfg.model_copy(update={"camera": camera, "monitor": monitor, "target": target,
                                     "sim": sim, "arm": arm})
    return EpisodeRig(episode, effects)
