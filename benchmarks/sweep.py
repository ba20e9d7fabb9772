"""Seed sweep of `madi train --sync` recipes, resumable, with rliable interval estimates.

    python benchmarks/sweep.py --out runs/sweep --seeds 0 1 2 3 4 \
        --recipe recipe= \
        --recipe "old=agent.init_temperature=0.1 agent.batch_size=32 agent.masker_init_bias=0 \
safety.on_limit=brake" \
        --table docs/results/sweep.md --plot docs/learning_curve_sweep.png

Each (recipe, seed) is one run directory ``OUT/RECIPE/sSEED``: a recipe is the base config
plus ``--set`` overrides (space-separated ``key=value``; empty: the config as it is). Runs
go ``--jobs`` at a time (default 2), one torch thread each; this script waits for them
(start it with nohup for long sweeps). Stopped and started again, it skips finished runs
(those with ``final_eval.json``), resumes half-finished ones from their last checkpoint
(the replay buffer is in it: ``train.save_replay=true``) and starts the rest.

The report (``--report-only`` makes just that, from whatever has finished) follows
Agarwal et al., "Deep RL at the Edge of the Statistical Precipice" (NeurIPS 2021), with
their `rliable` library: per recipe, the interquartile mean (IQM) and mean of the final
fixed-episode evaluation over seeds with 95% stratified-bootstrap confidence intervals,
every seed's value, and an IQM learning curve (evaluation return over env steps) with a
95% CI band.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RUN_SETTINGS = ["agent.cpu_threads=1", "train.save_replay=true", "train.checkpoint_every=2500"]


def run_command(run_dir: Path, config: Path, seed: int, steps: int, sets: list[str]) -> list[str]:
    """The `madi train --sync` command that starts or resumes one run."""
    cmd = [sys.executable, "-m", "madi.cli", "train", "--sync", "--no-progress"]
    if (run_dir / "checkpoints" / "progress.json").exists():
        return [*cmd, "--resume", str(run_dir)]
    cmd += ["--config", str(config), "--seed", str(seed), "--steps", str(steps),
            "--out", str(run_dir)]
    for s in RUN_SETTINGS + sets:
        cmd += ["--set", s]
    return cmd


def run_all(jobs: list[tuple[Path, list[str]]], parallel: int) -> None:
    """Run the commands ``parallel`` at a time; each one's output goes to RUN/train.log."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel:
            run_dir, cmd = pending.pop(0)
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "a")  # noqa: SIM115 - closed when it ends
            print(f"start {run_dir}: {' '.join(cmd[2:])}", flush=True)
            running.append((run_dir, subprocess.Popen(cmd, stdout=log, stderr=log, env=env,
                                                      cwd=REPO), log))
        time.sleep(5)
        for item in list(running):
            run_dir, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                print(f"done {run_dir}: exit {proc.returncode}", flush=True)


def eval_points(run_dir: Path) -> list[tuple[int, float]]:
    """(env steps, mean return) of a finished run's periodic evaluations, then its final one.

    Works for `madi train --sync` runs and `madi train` ones (robot-process evaluations);
    a periodic evaluation at the final step (some runs have one) gives way to the final one.
    """
    from learner.plots import eval_curve

    final = json.loads((run_dir / "final_eval.json").read_text())
    periodic = [p for p in zip(*eval_curve(run_dir), strict=True) if p[0] < final["env_steps"]]
    return [*periodic, (final["env_steps"], final["mean"])]


def finished_runs(out: Path, recipe: str) -> dict[int, Path]:
    """Seed -> run dir of the recipe's runs that wrote ``final_eval.json``."""
    runs = {}
    for d in sorted((out / recipe).glob("s*")):
        if (d / "final_eval.json").exists():
            runs[int(d.name[1:])] = d
    return runs


def interval(scores: np.ndarray, func, reps: int = 20000) -> tuple[float, float, float]:
    """Point estimate and 95% stratified-bootstrap CI of ``func`` over runs (rliable).

    Args:
        scores: float (runs, tasks) scores.
        func: An rliable aggregate, e.g. ``metrics.aggregate_iqm``.
    """
    from rliable import library as rly

    with warnings.catch_warnings():  # arch deprecates the RandomState rliable passes it
        warnings.simplefilter("ignore", FutureWarning)
        point, ci = rly.get_interval_estimates({"x": scores}, lambda s: np.array([func(s)]),
                                               reps=reps,
                                               random_state=np.random.RandomState(0))
    return float(point["x"][0]), float(ci["x"][0, 0]), float(ci["x"][1, 0])


def summarise(out: Path, recipes: list[str]) -> dict:
    """Per recipe: every seed's final evaluation, IQM and mean with 95% CIs."""
    from rliable import metrics

    table = {}
    for name in recipes:
        runs = finished_runs(out, name)
        if not runs:
            continue
        finals = {s: json.loads((d / "final_eval.json").read_text()) for s, d in runs.items()}
        scores = np.array([[finals[s]["mean"]] for s in sorted(finals)])
        row = {"seeds": sorted(finals), "final": [finals[s]["mean"] for s in sorted(finals)],
               "episodes": finals[min(finals)]["episodes"],
               "eval_seed": finals[min(finals)]["seed"]}
        if len(scores) >= 2:
            row["iqm"] = interval(scores, metrics.aggregate_iqm)
            row["mean"] = interval(scores, metrics.aggregate_mean)
        table[name] = row
    return table


def markdown(table: dict) -> str:
    """The summary as a Markdown table."""
    lines = ["| recipe | seeds | final eval per seed | IQM [95% CI] | mean [95% CI] |",
             "|---|---|---|---|---|"]
    for name, row in table.items():
        per_seed = ", ".join(f"s{s}: {v:.0f}" for s, v in zip(row["seeds"], row["final"],
                                                               strict=True))
        fmt = (lambda t: f"{t[0]:.0f} [{t[1]:.0f}, {t[2]:.0f}]")  # noqa: E731
        lines.append(f"| {name} | {len(row['seeds'])} | {per_seed} | "
                     f"{fmt(row['iqm']) if 'iqm' in row else '-'} | "
                     f"{fmt(row['mean']) if 'mean' in row else '-'} |")
    return "\n".join(lines)


def plot(out: Path, recipes: list[str], png: Path, refs: dict[str, float]) -> None:
    """IQM evaluation curves over env steps with 95% CI bands, one line per recipe.

    Points are the k-th periodic evaluation of every run, then the final one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from rliable import metrics

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in recipes:
        runs = finished_runs(out, name)
        # the k-th evaluation of every run (evaluations wait for an episode's end, so
        # their steps differ by up to one episode between runs)
        curves = [eval_points(d) for d in runs.values()]
        n = min((len(c) for c in curves), default=0)
        if len(curves) < 2 or n == 0:
            continue
        steps = [float(np.mean([c[k][0] for c in curves])) for k in range(n)]
        points = [interval(np.array([[c[k][1]] for c in curves]), metrics.aggregate_iqm, 2000)
                  for k in range(n)]
        iqm, lo, hi = (np.array(v) for v in zip(*points, strict=True))
        ax.plot(steps, iqm, marker="o", label=f"{name} (IQM of {len(curves)} seeds)")
        ax.fill_between(steps, lo, hi, alpha=0.2)
    for label, value in refs.items():
        ax.axhline(value, ls="--", lw=1, color="grey")
        ax.text(0.01, value, label, va="bottom", fontsize=8, color="grey",
                transform=ax.get_yaxis_transform())
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return (fixed episodes)")
    ax.set_title("IQM over seeds, 95% CI (last point: final eval)",
                 fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--config", type=Path, default=REPO / "configs" / "sim_quick.yaml")
    p.add_argument("--recipe", action="append", required=True, metavar="NAME=SETS",
                   help="a name and its space-separated --set overrides (may be empty)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--table", type=Path, default=None, help="write the Markdown table here")
    p.add_argument("--json", type=Path, default=None, help="write the summary JSON here")
    p.add_argument("--plot", type=Path, default=None)
    p.add_argument("--ref", action="append", default=[], metavar="LABEL=RETURN")
    args = p.parse_args()
    recipes = dict(r.split("=", 1) for r in args.recipe)
    if not args.report_only:
        jobs = []
        for seed in args.seeds:  # seed-major: every recipe's seed 0 first
            for name, sets in recipes.items():
                run_dir = args.out / name / f"s{seed}"
                if not (run_dir / "final_eval.json").exists():
                    jobs.append((run_dir, run_command(run_dir, args.config, seed, args.steps,
                                                      sets.split())))
        run_all(jobs, args.jobs)
    table = summarise(args.out, list(recipes))
    text = markdown(table)
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))
    if args.plot:
        refs = {k: float(v) for k, v in (r.split("=", 1) for r in args.ref)}
        plot(args.out, list(recipes), args.plot, refs)


if __name__ == "__main__":
    main()
