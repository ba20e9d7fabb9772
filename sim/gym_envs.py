"""Gymnasium ids of the simulated visual reacher, for ``gymnasium.make`` and vector envs.

Importing :mod:`sim` registers (Gymnasium's registry, ``gymnasium.register``):

============================================  =======  ======  ==========================
id                                            arm      reward  episode end
============================================  =======  ======  ==========================
``MadiRobot/UR5VisualReacher-v0``             UR5 CB3  dense   150 steps (truncated)
``MadiRobot/UR5VisualReacherSparse-v0``       UR5 CB3  sparse  target reached (terminated)
``MadiRobot/UR5eVisualReacher-v0``            UR5e     dense   150 steps (truncated)
``MadiRobot/UR5eVisualReacherSparse-v0``      UR5e     sparse  target reached (terminated)
============================================  =======  ======  ==========================

so that ``gymnasium.make("sim:MadiRobot/UR5VisualReacher-v0", render_mode="rgb_array")``
works in any script (the ``sim:`` prefix imports this package first), and so do
``gymnasium.make_vec(..., vectorization_mode="sync" | "async")``, Stable-Baselines3 and
CleanRL loops. For async workers in a process that already runs threads (torch, a
renderer) pass ``vector_kwargs={"context": "spawn"}``: a forked worker can inherit a held
lock and hang. The env runs at ``sim.pace: fast`` (as fast as the CPU allows); the
project's own loops keep building :class:`sim.env.VisualReacherEnv` from a config.

Keyword arguments of ``gymnasium.make`` (all optional): ``config`` (a YAML path or a
:class:`robot.config.Config`; default: the built-in defaults, the paper's 160x90 task),
``overrides`` (``section.key=value`` strings, as ``madi --set``), ``distractions`` (a
:mod:`robot.distractions` set name such as ``"hard"``) and ``render_mode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import gymnasium as gym

from robot.config import Config, config_from_dict, load_config

__all__ = ["ENV_IDS", "make_env", "register_envs"]

#: Registered id -> (arm model, reward variant).
ENV_IDS: dict[str, tuple[str, str]] = {
    "MadiRobot/UR5VisualReacher-v0": ("ur5", "dense"),
    "MadiRobot/UR5VisualReacherSparse-v0": ("ur5", "sparse"),
    "MadiRobot/UR5eVisualReacher-v0": ("ur5e", "dense"),
    "MadiRobot/UR5eVisualReacherSparse-v0": ("ur5e", "sparse"),
}


def make_env(model: str = "ur5", reward: str = "dense", config: str | Path | Config | None = None,
             overrides: Sequence[str] = (), distractions: str | None = None,
             render_mode: str | None = None) -> gym.Env:
    """Build a :class:`sim.env.VisualReacherEnv` at fast pace (the registered ids' entry point).

    Args:
        model: ``"ur5"`` (CB3, 125 Hz controller) or ``"ur5e"`` (e-series, 500 Hz).
        reward: ``"dense"`` (red-pixel reward) or ``"sparse"`` (-1 per step until reached).
        config: A YAML file, a validated config, or None for the defaults.
        overrides: ``section.key=value`` strings applied last (values parsed as YAML).
        distractions: A distraction set for the monitor (:func:`make_distractions`
            names: ``none``, ``easy``, ``hard``, or a folder of videos); None: plain.
        render_mode: None or ``"rgb_array"`` (the newest wrist-camera frame, uint8
            (H, W, 3)).

    Returns:
        The environment (observation ``{"image": uint8 (3k, H, W), "proprio": float32
        (15,)}``, action float32 (5,) in [-1, 1]).

    Raises:
        ConfigError: If the config or an override is invalid.
    """
    from robot.distractions import make_distractions
    from sim.env import VisualReacherEnv

    if isinstance(config, Config):
        data = config.model_dump(mode="json")
        source = "<Config>"
    elif config is None:
        data, source = {}, "<defaults>"
    else:
        data, source = load_config(config).model_dump(mode="json"), str(config)
    data.setdefault("arm", {})["model"] = model
    data["arm"].pop("control_period", None)  # follows the model
    data.setdefault("task", {})["reward"] = reward
    data.setdefault("sim", {})["pace"] = "fast"
    cfg = config_from_dict(data, source, list(overrides))
    sources = (None if distractions is None else
               make_distractions(distractions, tuple(cfg.sim.texture_px), cfg.task))
    return VisualReacherEnv(cfg, sources, render_mode=render_mode)


def register_envs() -> None:
    """Register :data:`ENV_IDS` with Gymnasium (idempotent)."""
    for env_id, (model, reward) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(env_id, entry_point="sim.gym_envs:make_env",
                         kwargs={"model": model, "reward": reward})
