"""The checkpoint file format: kinds, version, errors, atomic writes and safe reads.

What :mod:`learner.policy` needs to load a policy-only file and :mod:`learner.checkpoint`
builds its full and policy checkpoints on; it imports no agent, so the policy loads
without the update code.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from learner.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "KIND_FULL",
    "KIND_POLICY",
    "CheckpointError",
    "CheckpointMismatchError",
    "atomic_torch_save",
    "load_policy_file",
    "read_checkpoint",
]

#: Version of the checkpoint layout; bump when keys change.
FORMAT_VERSION = 1
KIND_FULL = "madi_learner"
KIND_POLICY = "madi_policy"


class CheckpointMismatchError(CheckpointError):
    """A checkpoint was made with another config or other spaces.

    Attributes:
        differences: ``{key: (checkpoint value, current value)}``.
    """

    def __init__(self, path: str | Path, differences: dict[str, tuple[Any, Any]]):
        self.differences = differences
        lines = [f"  {k}: checkpoint {a!r} vs current {b!r}" for k, (a, b) in differences.items()]
        super().__init__(
            f"checkpoint '{path}' does not match the current agent ({len(differences)} "
            f"difference(s)):\n" + "\n".join(lines)
        )


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace``.

    Args:
        obj: Object to save (tensors, dicts, lists, numbers, strings).
        path: Destination file; its folder is created if needed.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | Path, kind: str) -> dict[str, Any]:
    """Read a checkpoint file of ``kind`` safely (``torch.load(weights_only=True)``).

    Args:
        path: The ``.pt`` file.
        kind: :data:`KIND_FULL` or :data:`KIND_POLICY`.

    Returns:
        The saved dict.

    Raises:
        CheckpointError: If the file is missing, unsafe/corrupt, of another kind or of
            another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt / unsafe files
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read safely ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(data, dict) or data.get("kind") != kind:
        got = data.get("kind") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"checkpoint '{path}' is of kind {got!r}, expected {kind!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint '{path}' has format_version {data.get('format_version')!r}, "
            f"this code reads {FORMAT_VERSION}"
        )
    return data


def load_policy_file(
    path: str | Path,
    expected_spaces: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Read a policy-only file (``torch.load(weights_only=True)``).

    Args:
        path: File written by :func:`learner.checkpoint.save_policy`.
        expected_spaces: Optional spaces the caller needs (image_shape, proprio_dim,
            action_dim); a mismatch raises.

    Returns:
        The dict: ``net`` sizes, ``spaces``, state dicts ``masker`` (or None), ``encoder``,
        ``actor``, ``version``, ``config_json``, ``config_hash``.

    Raises:
        CheckpointError: If the file is missing, unsafe/corrupt or not a policy file.
        CheckpointMismatchError: If ``expected_spaces`` differ from the file's.
    """
    data = read_checkpoint(path, KIND_POLICY)
    if expected_spaces is not None:
        diffs = {
            f"spaces.{k}": (data["spaces"].get(k), v)
            for k, v in expected_spaces.items()
            if data["spaces"].get(k) != (list(v) if isinstance(v, tuple) else v)
        }
        if diffs:
            raise CheckpointMismatchError(path, diffs)
    return data
