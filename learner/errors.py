"""The learner's errors that ``madi`` reports in one line; importable without PyTorch.

:mod:`learner.agent` raises :class:`NonFiniteError`, :mod:`learner.checkpoint_file`
:class:`CheckpointError`; both modules re-export them. Kept here so that the command line
catches them without importing torch (a laptop that only looks at sessions has none).
"""

__all__ = ["CheckpointError", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """A NaN or inf in the learner's loss or weights that must not reach a file or the robot."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or of the wrong kind."""
