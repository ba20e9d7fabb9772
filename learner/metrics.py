"""Training metrics: one CSV with fixed, namespaced columns, shared by both training loops.

Rows are events (an episode end, an evaluation, a log window); a row leaves empty the
columns it has no value for. ``learner/plots.py`` reads the file back.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["METRIC_KEYS", "MetricsWriter"]

#: Columns of ``metrics.csv`` (empty cells where a row has no value for a key).
METRIC_KEYS: tuple[str, ...] = (
    "global_step",
    "time_s",
    "losses/critic",
    "losses/actor",
    "losses/alpha",
    "charts/alpha",
    "charts/q",
    "charts/target_q",
    "charts/entropy",
    "charts/mask_mean",
    "charts/episode_return",
    "charts/episode_length",
    "charts/eval_return",
    "charts/eval_return_std",
    "charts/final_eval_return",
    "charts/final_eval_return_std",
    "charts/safety_share",
    "charts/updates",
    "charts/skipped_updates",
    "charts/updates_per_s",
    "charts/env_steps_per_s",
    "timing/act_s",
    "timing/env_step_s",
    "timing/replay_s",
    "timing/update_s",
    # the asynchronous learner (learner/process.py)
    "charts/replay_size",
    "charts/policy_version",
    "charts/policy_lag",
    "link/received",
    "link/assembled",
    "link/gaps",
    "link/rejected",
    "link/robot_dropped",
    "robot/overruns",
)


class MetricsWriter:
    """Append rows of namespaced metrics to a CSV with the fixed columns :data:`METRIC_KEYS`.

    Args:
        path: CSV file (created with a header, or appended to when it exists). A file
            written with an older column set (a run resumed after an upgrade) is first
            rewritten with the current columns, each value kept under its name.

    Raises:
        KeyError: From :meth:`write` when a key is not in :data:`METRIC_KEYS`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        if not new:
            _migrate_header(self.path)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=list(METRIC_KEYS))
        if new:
            self._writer.writeheader()

    def write(self, row: dict[str, float]) -> None:
        """Write one row and flush.

        Args:
            row: Metric name to value; names must be in :data:`METRIC_KEYS`.
        """
        unknown = set(row) - set(METRIC_KEYS)
        if unknown:
            raise KeyError(f"unknown metric keys {sorted(unknown)}; allowed: {METRIC_KEYS}")
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _migrate_header(path: Path) -> None:
    """Rewrite ``path`` with the :data:`METRIC_KEYS` columns if its header differs.

    Raises:
        KeyError: If the file has a column that is no longer a metric (nothing changed).
    """
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or list(reader.fieldnames) == list(METRIC_KEYS):
            return
        unknown = set(reader.fieldnames) - set(METRIC_KEYS)
        if unknown:
            raise KeyError(f"{path} has columns {sorted(unknown)} that are not metrics; "
                           "move the file aside to start a new one")
        rows = list(reader)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(METRIC_KEYS))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
