"""Checkpoints of the MaDi-SAC learner: full learner state and small policy-only files.

Both kinds are plain ``torch.save`` dicts of tensors, numbers, strings and lists; the
config travels as a JSON string, so loading uses ``torch.load(weights_only=True)`` and
never unpickles arbitrary objects. Files are written atomically (temporary file in the
same folder, fsync, ``os.replace``), so a crash leaves the previous checkpoint intact.

Loading a checkpoint made with another learning config or other observation/action
spaces fails with :class:`CheckpointMismatchError`, listing every difference as
``key: checkpoint value vs current value``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learner.agent import MadiSacAgent
from learner.checkpoint_file import (
    FORMAT_VERSION,
    KIND_FULL,
    KIND_POLICY,
    CheckpointError,
    CheckpointMismatchError,
    atomic_torch_save,
    read_checkpoint,
)
from learner.config import AgentConfig

__all__ = [
    "numpy_to_torch",
    "torch_to_numpy",
    "compare_settings",
    "load_checkpoint",
    "save_checkpoint",
    "save_policy",
    "start_from",
]

logger = logging.getLogger(__name__)


def _spaces(agent: MadiSacAgent) -> dict[str, Any]:
    return {
        "image_shape": list(agent.image_shape),
        "proprio_dim": agent.proprio_dim,
        "action_dim": agent.action_dim,
    }


def compare_settings(
    saved_config: dict[str, Any],
    saved_spaces: dict[str, Any],
    cfg: AgentConfig,
    spaces: dict[str, Any],
) -> dict[str, tuple[Any, Any]]:
    """Differences between a checkpoint's settings and the current ones.

    Runtime-only fields (device, amp, compile, ...) are ignored; a field the checkpoint
    lacks (added to the config later) counts as its default value.

    Args:
        saved_config: The checkpoint's :meth:`AgentConfig.learning_dict`.
        saved_spaces: The checkpoint's spaces (image_shape, proprio_dim, action_dim).
        cfg: The current config.
        spaces: The current spaces.

    Returns:
        ``{key: (checkpoint value, current value)}``; empty when they match. Space keys
        are prefixed ``spaces.``, config keys ``agent.``.
    """
    diffs: dict[str, tuple[Any, Any]] = {}
    current = cfg.learning_dict()
    for key in sorted(set(saved_config) | set(current)):
        # a field added after the checkpoint was written: it trained with the default
        field = AgentConfig.model_fields.get(key)
        missing = field.get_default(call_default_factory=True) if field else "<missing>"
        a, b = saved_config.get(key, missing), current.get(key, "<missing>")
        if a != b:
            diffs[f"agent.{key}"] = (a, b)
    for key in sorted(set(saved_spaces) | set(spaces)):
        a, b = saved_spaces.get(key, "<missing>"), spaces.get(key, "<missing>")
        if a != b:
            diffs[f"spaces.{key}"] = (a, b)
    return diffs


def numpy_to_torch(obj: Any) -> Any:
    """Replace numpy arrays/scalars by tensors/Python numbers for ``weights_only`` loads.

    ``torch.load(weights_only=True)`` refuses numpy arrays; this makes, e.g., a replay
    state dict loadable without allow-listing numpy's unpickling helpers.

    Args:
        obj: Nested dicts/lists of numpy arrays, numpy scalars and plain values.

    Returns:
        The same structure with tensors (uint64 arrays as ``{"__uint64__": int64 tensor}``).
    """
    if isinstance(obj, np.ndarray):
        if obj.dtype == np.uint64:  # torch has no general uint64 support: store bytes
            return {"__uint64__": torch.from_numpy(obj.view(np.int64).copy())}
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: numpy_to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [numpy_to_torch(v) for v in obj]
    return obj


def torch_to_numpy(obj: Any) -> Any:
    """Inverse of :func:`numpy_to_torch`: tensors back to numpy arrays (CPU tensors only)."""
    if isinstance(obj, dict):
        if set(obj) == {"__uint64__"}:
            return obj["__uint64__"].numpy().view(np.uint64)
        return {k: torch_to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, list):
        return [torch_to_numpy(v) for v in obj]
    return obj


def save_checkpoint(
    path: str | Path,
    agent: MadiSacAgent,
    counters: dict[str, Any] | None = None,
    replay: Any | None = None,
) -> Path:
    """Write the full learner state atomically.

    Args:
        path: Destination ``.pt`` file.
        agent: The agent (networks, optimizers, ``log_alpha``, update count, aug RNG).
        counters: Extra step counters, e.g. ``{"env_steps": 12000, "episodes": 80}``
            (numbers, strings, lists and dicts of them).
        replay: Optional replay buffer with ``state_dict()`` (numpy arrays and ints).

    Returns:
        The path written.

    Raises:
        NonFiniteError: If a weight is NaN or inf (nothing is written).
    """
    agent.check_weights_finite(f"save checkpoint {path}")
    data = {
        "kind": KIND_FULL,
        "format_version": FORMAT_VERSION,
        "config_json": json.dumps(agent.cfg.model_dump(mode="json"), sort_keys=True),
        "config_hash": agent.cfg.config_hash(),
        "spaces": _spaces(agent),
        "agent": agent.state_dict(),
        "counters": dict(counters or {}),
        "replay": numpy_to_torch(replay.state_dict()) if replay is not None else None,
    }
    out = atomic_torch_save(data, path)
    logger.info("saved learner checkpoint %s (update %d)", out, agent.num_updates)
    return out


def load_checkpoint(
    path: str | Path, agent: MadiSacAgent, replay: Any | None = None, require_replay: bool = True
) -> dict[str, Any]:
    """Restore a full learner checkpoint into ``agent`` (and optionally ``replay``).

    Args:
        path: File written by :func:`save_checkpoint`.
        agent: An agent built with the same learning config and spaces.
        replay: Optional replay buffer to restore (when the file holds one).
        require_replay: With ``replay`` given, a file without a replay buffer is an error
            (True) or leaves ``replay`` as it is (False).

    Returns:
        The saved step counters.

    Raises:
        CheckpointError: If the file is missing, unsafe/corrupt, of another kind, or
            holds no replay while ``replay`` is given and ``require_replay``.
        CheckpointMismatchError: If config or spaces differ (each difference listed).
    """
    data = read_checkpoint(path, KIND_FULL)
    saved_cfg = AgentConfig.model_validate(json.loads(data["config_json"])).learning_dict()
    diffs = compare_settings(saved_cfg, data["spaces"], agent.cfg, _spaces(agent))
    if diffs:
        raise CheckpointMismatchError(path, diffs)
    agent.load_state_dict(data["agent"])
    if replay is not None:
        if data.get("replay") is not None:
            replay.load_state_dict(torch_to_numpy(data["replay"]))
        elif require_replay:
            raise CheckpointError(f"checkpoint '{path}' holds no replay buffer")
    logger.info("loaded learner checkpoint %s (update %d)", path, agent.num_updates)
    return dict(data["counters"])


#: Learning fields that shape the networks: a checkpoint that differs in one of them (or
#: in the spaces) cannot initialise an agent.
NETWORK_FIELDS = ("variant", "masker_filters", "encoder_filters", "encoder_strides",
                  "mlp_hidden")


def _init_source(path: str | Path, cfg: AgentConfig,
                 spaces: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Load a full checkpoint for ``--init-from`` and check it fits ``cfg`` and ``spaces``."""
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "learner.pt"
    data = read_checkpoint(path, KIND_FULL)
    saved = AgentConfig.model_validate(json.loads(data["config_json"]))
    diffs = {f"agent.{k}": (getattr(saved, k), getattr(cfg, k)) for k in NETWORK_FIELDS
             if getattr(saved, k) != getattr(cfg, k)}
    for key in sorted(set(data["spaces"]) | set(spaces)):
        a, b = data["spaces"].get(key), spaces.get(key)
        if a != b:
            diffs[f"spaces.{key}"] = (a, b)
    if diffs:
        raise CheckpointMismatchError(path, diffs)
    return path, data


def check_init_source(path: str | Path, cfg: AgentConfig, image_shape: tuple[int, ...],
                      proprio_dim: int, action_dim: int) -> Path:
    """Check, before any process starts, that ``path`` can initialise an agent of ``cfg``.

    Returns:
        The checkpoint file.

    Raises:
        CheckpointError, CheckpointMismatchError: As :func:`init_from_checkpoint`.
    """
    spaces = {"image_shape": list(image_shape), "proprio_dim": int(proprio_dim),
              "action_dim": int(action_dim)}
    return _init_source(path, cfg, spaces)[0]


def init_from_checkpoint(path: str | Path, agent: MadiSacAgent,
                         prior_replay: Any | None = None) -> dict[str, Any]:
    """Start ``agent`` from another run's trained networks (``--init-from``).

    Loads every network (Masker, encoder, actor, critics, their targets) and the
    temperature; the optimizers start fresh with ``agent``'s learning rates. Unlike
    :func:`load_checkpoint` only the spaces and :data:`NETWORK_FIELDS` must match: the
    new run may learn with other rates, batch size or replay settings.

    Args:
        path: A full learner checkpoint (``learner.pt``), or a run directory holding
            ``checkpoints/learner.pt``.
        agent: The new agent.
        prior_replay: If given, filled with the checkpoint's replay buffer (when it holds
            one), to be mixed with the new run's data.

    Returns:
        ``{"path", "num_updates", "counters", "replay_loaded"}``.

    Raises:
        CheckpointError: If there is no full learner checkpoint at ``path`` (a policy-only
            file lacks the critics).
        CheckpointMismatchError: If the spaces or network sizes differ (each listed).
    """
    path, data = _init_source(path, agent.cfg, _spaces(agent))
    agent.load_networks(data["agent"])
    agent.num_updates = int(data["agent"]["num_updates"])
    loaded = False
    if prior_replay is not None and data.get("replay") is not None:
        prior_replay.load_state_dict(torch_to_numpy(data["replay"]))
        loaded = True
    logger.info("initialised from %s (update %d%s)", path, agent.num_updates,
                ", with its replay buffer" if loaded else "")
    return {"path": str(path), "num_updates": agent.num_updates,
            "counters": dict(data["counters"]), "replay_loaded": loaded}


def start_from(path: str | Path, agent: MadiSacAgent, prior_mix: float,
               new_replay: Callable[[], Any]) -> Any | None:
    """``--init-from`` for a training loop (learner process or ``--sync``).

    Loads ``path``'s networks into ``agent`` (:func:`init_from_checkpoint`) and, when
    ``prior_mix`` > 0, its replay buffer into a new one, to be mixed into every batch
    (:func:`learner.replay_buffer.sample_mixed`).

    Args:
        path: Run directory or ``learner.pt``.
        agent: The new agent.
        prior_mix: Share of each batch from the prior run's buffer, in [0, 1).
        new_replay: Makes an empty buffer of the new run's spaces.

    Returns:
        The prior buffer, or None (``prior_mix`` 0, or the checkpoint holds no buffer:
        logged as a warning, the run starts with an empty one).

    Raises:
        ValueError: If ``prior_mix`` is outside [0, 1).
        CheckpointError, CheckpointMismatchError: As :func:`init_from_checkpoint`.
    """
    if not 0.0 <= prior_mix < 1.0:
        raise ValueError(f"--init-replay-mix must be in [0, 1), got {prior_mix}")
    prior = new_replay() if prior_mix > 0 else None
    info = init_from_checkpoint(path, agent, prior)
    if prior is not None and not info["replay_loaded"]:
        logger.warning("%s holds no replay buffer (train.save_replay was false there); "
                       "starting with an empty one", info["path"])
        prior = None
    if prior is not None:
        logger.info("%.0f%% of each batch from its %d transitions", 100 * prior_mix,
                    len(prior))
    return prior


def policy_state_from_checkpoint(path: str | Path) -> dict[str, Any]:
    """The acting networks of a learner checkpoint, for the robot's local policy.

    Returns:
        ``{"masker": sd or None, "encoder": sd, "actor": sd, "version": num_updates}``.

    Raises:
        CheckpointError: If there is no full learner checkpoint at ``path``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "learner.pt"
    modules = read_checkpoint(path, KIND_FULL)["agent"]
    return {"masker": modules["modules"].get("masker"), "encoder": modules["modules"]["encoder"],
            "actor": modules["modules"]["actor"], "version": int(modules["num_updates"])}


def save_policy(path: str | Path, agent: MadiSacAgent, version: int | None = None) -> Path:
    """Write the small policy-only file (Masker + encoder + actor, spaces, sizes).

    Args:
        path: Destination ``.pt`` file.
        agent: The agent whose policy to export.
        version: Policy version stored in the file (default: the agent's update count).

    Returns:
        The path written.

    Raises:
        NonFiniteError: If a weight is NaN or inf (nothing is written).
    """
    agent.check_weights_finite(f"save policy {path}")
    cfg = agent.cfg

    def cpu_sd(module: torch.nn.Module | None) -> dict | None:
        if module is None:
            return None
        return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    data = {
        "kind": KIND_POLICY,
        "format_version": FORMAT_VERSION,
        "version": agent.num_updates if version is None else int(version),
        "config_json": json.dumps(cfg.model_dump(mode="json"), sort_keys=True),
        "config_hash": cfg.config_hash(),
        "spaces": _spaces(agent),
        "net": {
            "masker_filters": cfg.masker_filters if agent.masker is not None else None,
            "encoder_filters": cfg.encoder_filters,
            "encoder_strides": list(cfg.encoder_strides),
            "mlp_hidden": list(cfg.mlp_hidden),
            "actor_log_std_min": cfg.actor_log_std_min,
            "actor_log_std_max": cfg.actor_log_std_max,
        },
        "masker": cpu_sd(agent.masker),
        "encoder": cpu_sd(agent.encoder),
        "actor": cpu_sd(agent.actor),
    }
    return atomic_torch_save(data, path)


def save_run_checkpoints(
    ckpt_dir: str | Path, agent: MadiSacAgent, counters: dict[str, int], replay: Any | None = None,
    last_transition: dict[str, Any] | None = None,
) -> None:
    """Write a run's checkpoint set, each file atomically.

    ``learner.pt`` (full state, :func:`save_checkpoint`), ``policy.pt``
    (:func:`save_policy`) and ``progress.json`` (``counters`` plus ``updates``: what
    ``--resume`` and the robot process read without loading the big file).

    Args:
        ckpt_dir: The run's ``checkpoints/`` folder (created if missing).
        agent: The agent.
        counters: ``{"env_steps": int, "episodes": int}``.
        replay: Optional replay buffer to include in ``learner.pt``.
        last_transition: ``{"robot_session": str, "episode": int, "step": int}`` of the
            last transition the learner took, or None; kept in both files (as
            ``last_transition``) for a restarted learner's refill.
    """
    ckpt_dir = Path(ckpt_dir)
    mark = {} if last_transition is None else {"last_transition": dict(last_transition)}
    with torch.no_grad():
        save_checkpoint(ckpt_dir / "learner.pt", agent, counters={**counters, **mark},
                        replay=replay)
        save_policy(ckpt_dir / "policy.pt", agent)
    progress = {**{k: int(v) for k, v in counters.items()}, "updates": agent.num_updates,
                **mark}
    tmp = ckpt_dir / "progress.json.tmp"
    tmp.write_text(json.dumps(progress))
    tmp.replace(ckpt_dir / "progress.json")

