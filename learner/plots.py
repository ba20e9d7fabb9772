"""Learning-curve plots from the ``metrics.csv`` files that training writes."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metric(csv_path: str | Path, key: str) -> tuple[list[int], list[float]]:
    """Read one metric column of a ``metrics.csv``.

    Args:
        csv_path: File written by :class:`learner.metrics.MetricsWriter`.
        key: Column, e.g. ``"charts/eval_return"``.

    Returns:
        ``(steps, values)`` for the rows where the metric is present.

    Raises:
        FileNotFoundError: If the file is missing.
        KeyError: If the column does not exist.
    """
    steps, values = [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if key not in (reader.fieldnames or []):
            raise KeyError(f"{csv_path} has no column {key!r}; columns: {reader.fieldnames}")
        for row in reader:
            if row[key] not in ("", None):
                steps.append(int(float(row["global_step"])))
                values.append(float(row[key]))
    return steps, values


def eval_curve(run: str | Path) -> tuple[list[int], list[float]]:
    """Mean return of each periodic evaluation of a run, against env steps.

    The synchronous loop logs them as ``charts/eval_return`` in ``metrics.csv``; in
    ``madi train`` the robot process runs them and writes one row per episode to
    ``eval.csv`` (env_steps, return columns), used when ``metrics.csv`` has none.

    Args:
        run: A run directory, or a metrics CSV (the ``eval.csv`` beside it is used).

    Returns:
        ``(env_steps, mean_returns)``, both empty if the run has no evaluation yet.

    Raises:
        FileNotFoundError: If the run has no ``metrics.csv``.
    """
    run = Path(run)
    metrics_csv = run / "metrics.csv" if run.is_dir() else run
    steps, rets = read_metric(metrics_csv, "charts/eval_return")
    eval_csv = metrics_csv.parent / "eval.csv"
    if steps or not eval_csv.exists():
        return steps, rets
    by_step: dict[int, list[float]] = {}
    with open(eval_csv, newline="") as f:
        for row in csv.DictReader(f):
            by_step.setdefault(int(row["env_steps"]), []).append(float(row["return"]))
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def plot_learning_curves(runs: dict[str, str | Path], out_png: str | Path,
                         title: str = "Learning curves",
                         references: dict[str, float] | None = None) -> Path:
    """Plot training episode returns and evaluation returns against env steps.

    Args:
        runs: Label to run directory (holding ``metrics.csv``, and ``eval.csv`` when the
            robot process evaluated) or to the CSV itself.
        out_png: Output image path.
        title: Figure title.
        references: Optional label to return, drawn as horizontal lines (e.g. a random
            and a scripted policy's mean return).

    Returns:
        The written PNG path.
    """
    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, path in runs.items():
        path = Path(path)
        csv_path = path / "metrics.csv" if path.is_dir() else path
        steps, rets = read_metric(csv_path, "charts/episode_return")
        ax_train.plot(steps, rets, alpha=0.8, label=label)
        steps, rets = eval_curve(csv_path)
        ax_eval.plot(steps, rets, marker="o", label=label)
    for i, (label, value) in enumerate((references or {}).items()):
        for ax in (ax_train, ax_eval):
            ax.axhline(value, color=f"C{7 + i}", linestyle="--", linewidth=1, label=label)
    ax_train.set(title="training episodes", xlabel="env steps", ylabel="episode return")
    ax_eval.set(title="evaluation (deterministic policy)", xlabel="env steps")
    for ax in (ax_train, ax_eval):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
