"""Training metrics: one CSV with fixed, namespaced columns, shared by both training loops.

Rows are events (an episode end, an evaluation, a log window); a row leaves empty the
columns it has no value for. ``learner/plots.py`` reads the file back. The same rows can
also go to TensorBoard (``RUN_DIR/tb``) and to a Weights & Biases run (:class:`SinkConfig`),
under the same keys, at step ``global_step``.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

__all__ = ["METRIC_KEYS", "MetricsSinkError", "MetricsWriter", "SinkConfig", "evaluation_row"]

logger = logging.getLogger(__name__)

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
    "link/out_of_bounds",
    "link/rejected",
    "link/robot_dropped",
    "robot/overruns",
)


class MetricsSinkError(RuntimeError):
    """A metrics sink the config asks for cannot be opened (package missing, W&B refused)."""


@dataclass(frozen=True)
class SinkConfig:
    """Where metrics rows go besides ``metrics.csv`` (``train.tensorboard``, ``train.wandb``).

    Attributes:
        tensorboard: True: TensorBoard event files in ``RUN_DIR/tb``; ``"auto"``: the same
            when the ``tensorboard`` package is installed; False: none.
        wandb: ``"online"`` or ``"offline"`` (no network; ``wandb sync`` uploads later): a
            Weights & Biases run named after the run directory, its files in
            ``RUN_DIR/wandb``; None: none.
        wandb_project: The W&B project of that run.
    """

    tensorboard: bool | Literal["auto"] = "auto"
    wandb: Literal["online", "offline"] | None = None
    wandb_project: str = "madi-robot"


class MetricsWriter:
    """Append rows of namespaced metrics to a CSV with the fixed columns :data:`METRIC_KEYS`.

    Args:
        path: CSV file (created with a header, or appended to when it exists). A file
            written with an older column set (a run resumed after an upgrade) is first
            rewritten with the current columns, each value kept under its name.
        sinks: Where rows also go (TensorBoard and W&B beside ``path``); None: the CSV only.

    Raises:
        MetricsSinkError: If a sink in ``sinks`` needs a package that is not installed, or
            W&B cannot start its run.
        KeyError: From :meth:`write` when a key is not in :data:`METRIC_KEYS`.
    """

    def __init__(self, path: str | Path, sinks: SinkConfig | None = None):
        sinks = sinks or SinkConfig(tensorboard=False)
        _check_packages(sinks)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        if not new:
            _migrate_header(self.path)
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=list(METRIC_KEYS))
        if new:
            self._writer.writeheader()
        self._sinks: list[_TensorBoardSink | _WandbSink] = []
        try:
            if sinks.tensorboard is True or (sinks.tensorboard == "auto"
                                             and _installed("tensorboard")):
                self._sinks.append(_TensorBoardSink(self.path.parent / "tb"))
            if sinks.wandb is not None:
                self._sinks.append(_WandbSink(self.path.parent, sinks.wandb,
                                              sinks.wandb_project))
        except BaseException:
            self.close()
            raise

    def write(self, row: dict[str, float]) -> None:
        """Write one row to the CSV and every sink, and flush.

        Args:
            row: Metric name to value; names must be in :data:`METRIC_KEYS`; the sinks
                take ``global_step`` as the step.
        """
        unknown = set(row) - set(METRIC_KEYS)
        if unknown:
            raise KeyError(f"unknown metric keys {sorted(unknown)}; allowed: {METRIC_KEYS}")
        self._writer.writerow(row)
        self._file.flush()
        for sink in self._sinks:
            sink.write(row)

    def close(self) -> None:
        """Close the file and the sinks (the W&B run is finished)."""
        self._file.close()
        for sink in self._sinks:
            sink.close()


class _TensorBoardSink:
    """One scalar per key but ``global_step`` (the step); walltime: when the row is written."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))
        logger.info("metrics: TensorBoard events in %s (tensorboard --logdir %s)", log_dir,
                    log_dir.parent.parent)

    def write(self, row: dict[str, float]) -> None:
        step = row.get("global_step")
        for key, value in row.items():
            if key != "global_step":
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _WandbSink:
    """A W&B run whose charts use ``global_step`` as their x axis, one per run dir.

    The run's id is kept in ``RUN_DIR/wandb_run_id``: a later writer in the same run dir
    (``madi train``'s final evaluation, ``madi train --resume``) logs to the same W&B run
    (``wandb.init(id=..., resume="allow")``, W&B docs, "Resume a run").
    """

    def __init__(self, run_dir: Path, mode: str, project: str):
        import wandb

        id_file = run_dir / "wandb_run_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else None
        try:
            self._run = wandb.init(project=project, name=run_dir.name, dir=str(run_dir),
                                   mode=mode, config=_run_config(run_dir), id=run_id,
                                   resume="allow", settings=wandb.Settings(console="off"))
        except Exception as err:  # wandb raises several kinds (no login, no network)
            raise MetricsSinkError(f"W&B could not start a run ({err}); run `wandb login` "
                                   "or set train.wandb=offline") from None
        id_file.write_text(self._run.id)
        self._run.define_metric("*", step_metric="global_step")

    def write(self, row: dict[str, float]) -> None:
        self._run.log(row)

    def close(self) -> None:
        self._run.finish()


def evaluation_row(global_step: int, returns: list[float], time_s: float | None = None,
                   final: bool = False) -> dict[str, float]:
    """The metrics row of one evaluation: mean and SD of its episode returns.

    Both loops log evaluations this way: ``--sync`` itself, ``madi train`` from the robot
    process's results (:class:`link.messages.Evaluation`) and its final evaluation.

    Args:
        global_step: Env steps of training when the evaluation ran.
        returns: One undiscounted return per episode (at least one).
        time_s: Seconds since the run started, or None (the cell stays empty).
        final: The final evaluation (``charts/final_eval_return*``), else a periodic one
            (``charts/eval_return*``).

    Returns:
        ``{"global_step", ["time_s"], "charts/[final_]eval_return", "..._std"}``.
    """
    key = "charts/final_eval_return" if final else "charts/eval_return"
    row = {"global_step": global_step, key: float(np.mean(returns)),
           f"{key}_std": float(np.std(returns))}
    if time_s is not None:
        row["time_s"] = round(time_s, 3)
    return row


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _check_packages(sinks: SinkConfig) -> None:
    """Raise :class:`MetricsSinkError` if a sink asked for has no package to run on."""
    if sinks.tensorboard is True and not _installed("tensorboard"):
        raise MetricsSinkError("train.tensorboard is true but the tensorboard package is not "
                               "installed: pip install tensorboard (or set it to auto)")
    if sinks.wandb is not None and not _installed("wandb"):
        raise MetricsSinkError(f"train.wandb is {sinks.wandb} but the wandb package is not "
                               "installed: pip install wandb (or set train.wandb=null)")


def _run_config(run_dir: Path) -> dict[str, Any] | None:
    """The run's ``config.yaml`` (written by ``madi train``) for W&B, or None."""
    path = run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


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
