"""Domain randomization of the mirror: a perturbed rig at every episode (sim -> real).

:func:`sample` draws, from ``cfg.sim.randomize`` and a seeded generator, one episode's rig:
camera pose on the flange and intrinsics, monitor pose, command and camera latencies and
the arm's acceleration (a perturbed :class:`Config` the mirror is rebuilt from), plus
:class:`ImageEffects`: the monitor's colour response (the target and screen colours it
shows) and the camera's lighting/exposure gain, white balance and sensor noise. The same
seed gives the same draws. Ranges are half-widths around the nominal (calibrated)
values, see :class:`robot.config.RandomizeConfig`. Both sims apply it:
:class:`sim.env.VisualReacherEnv` (``madi train --sync``) and the robot process's
:class:`robot.backends.sim.SimRig` (``madi train``), at every reset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot.config import Config


@dataclass(frozen=True)
class ImageEffects:
    """Per-episode monitor and camera colour effects.

    Attributes:
        screen_map: float (3, 4) affine RGB map of the monitor, ``rgb' = M @ [rgb, 1]``:
            the smallest change of the identity that takes the nominal target and screen
            colours to this episode's (a blend of the two maps to the same blend).
        gain: float (3,) RGB gain of the camera (brightness x white balance).
        noise: Gaussian noise sigma, levels.
    """

    screen_map: np.ndarray
    gain: np.ndarray
    noise: float

    def screen(self, image: np.ndarray) -> np.ndarray:
        """``image`` as this episode's monitor shows it, uint8 (h, w, 3) RGB."""
        out = image.astype(np.float32) @ self.screen_map[:, :3].T + self.screen_map[:, 3]
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    def camera(self, frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``frame`` as this episode's camera sees it (noise from ``rng``), uint8 (H, W, 3) RGB."""
        out = frame.astype(np.float32) * self.gain
        if self.noise > 0:
            out += rng.normal(0.0, self.noise, frame.shape).astype(np.float32)
        return np.clip(out, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class EpisodeRig:
    """One episode's randomized rig.

    Attributes:
        cfg: The perturbed config (camera, monitor, sim latencies, acceleration).
        effects: The monitor and camera colour effects.
    """

    cfg: Config
    effects: ImageEffects


def _jitter(rng: np.random.Generator, values, half_width: float) -> list[float]:
    return [float(v + rng.uniform(-half_width, half_width)) for v in values]


def _colour(rng: np.random.Generator, rgb, half_width: int) -> list[int]:
    return [int(np.clip(c + rng.integers(-half_width, half_width + 1), 0, 255)) for c in rgb]


def colour_map(nominal: list, shown: list) -> np.ndarray:
    """The affine RGB map closest to the identity that shows each ``nominal`` colour as ``shown``.

    The least-norm change of the identity: a blend of the colours maps to the same blend.

    Args:
        nominal: Colours drawn, e.g. ``[target_rgb, background_rgb]`` (levels).
        shown: The colours shown instead, same length.

    Returns:
        float (3, 4) ``M`` with ``M @ [rgb, 1]`` the shown colour.
    """
    x = np.column_stack([np.append(np.asarray(c, float), 1.0) for c in nominal])  # (4, n)
    base = np.hstack([np.eye(3), np.zeros((3, 1))])
    residual = np.column_stack([np.asarray(c, float) for c in shown]) - base @ x
    return (base + residual @ np.linalg.pinv(x)).astype(np.float32)


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
    shown = [_colour(rng, tgt.color_rgb, r.colour), _colour(rng, tgt.background_rgb, r.colour)]
    screen_map = colour_map([tgt.color_rgb, tgt.background_rgb], shown)
    sim = cfg.sim.model_copy(update={
        "command_latency": float(rng.uniform(*r.command_latency)),
        "camera_latency": float(rng.uniform(*r.camera_latency))})
    arm = cfg.arm.model_copy(update={
        "acceleration": cfg.arm.acceleration * float(1 + rng.uniform(-r.acceleration,
                                                                     r.acceleration))})
    gain = (1 + rng.uniform(-r.brightness, r.brightness)) * (
        1 + rng.uniform(-r.white_balance, r.white_balance, 3))
    effects = ImageEffects(screen_map, gain.astype(np.float32), float(rng.uniform(0, r.noise)))
    episode = cfg.model_copy(update={"camera": camera, "monitor": monitor, "sim": sim,
                                     "arm": arm})
    return EpisodeRig(episode, effects)
