"""Sim-to-sim transfer: does a policy trained on one rig work on a second, and how fast
does fine-tuning there catch up with training from scratch?

Reads the runs of BENCHMARKS.md's "Sim-to-sim transfer" commands, laid out as
``RUNS/<name>_s<seed>/``:

- ``nominal_sS``, ``randomized_sS``: trained on configs/sim_quick.yaml's rig, without and
  with ``sim.randomize``;
- ``second_scratch_sS``: trained from scratch on the second rig
  (``--set calibration=benchmarks/transfer/second_rig.yaml``);
- ``second_finetune_<source>_sS``: fine-tuned on the second rig from ``<source>_sS``
  (``--init-from``).

and prints two markdown tables (and writes ``RUNS/transfer.json``):

1. Every nominal and randomized run's final policy evaluated (``sim.evaluate``,
   deterministic, the same episodes for every policy) on the first rig and on the
   second, with the return kept on the second rig, raw and above the random-action
   floor: ``(R_second - random_second) / (R_first - random_first)``.
2. Env steps on the second rig: the return the scratch run reaches (the mean training
   episode return over its last ``--window`` env steps) and the first env step at which
   each run's trailing mean training return over ``--window`` steps reaches it.

Usage::

    python benchmarks/transfer.py --runs runs/transfer --episodes 20 \\
        --plot docs/transfer_finetune.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECOND_RIG = ROOT / "benchmarks" / "transfer" / "second_rig.yaml"
CONFIG = ROOT / "configs" / "sim_quick.yaml"
EVAL_SEED = 2000


def rig_configs() -> dict:
    """The two rigs' configs: no randomization, fast pace."""
    from robot.config import load_config

    base = ["sim.randomize.enabled=false", "sim.pace=fast"]
    return {"first": load_config(CONFIG, base),
            "second": load_config(CONFIG, [*base, f"calibration={SECOND_RIG}"])}


def evaluate_transfer(runs: Path, episodes: int) -> dict:
    """Table 1's numbers: each trained policy and random actions on both rigs."""
    from learner.policy import MadiPolicy
    from sim.evaluate import RandomPolicy, evaluate

    rigs = rig_configs()

    def returns(make_policy) -> dict:  # a fresh policy per rig: the same random actions
        return {rig: evaluate(cfg, make_policy(), "none", episodes, EVAL_SEED).returns
                for rig, cfg in rigs.items()}

    out: dict = {"random": returns(RandomPolicy)}
    for run in sorted(runs.iterdir()):
        name = run.name.rsplit("_s", 1)[0]
        policy_file = run / "checkpoints" / "policy.pt"
        if name not in ("nominal", "randomized") or not policy_file.exists():
            continue
        out[run.name] = returns(lambda f=policy_file: MadiPolicy.from_checkpoint(f))
        print(f"{run.name}: mean " + ", ".join(f"{rig} {np.mean(r):.1f}" for rig, r
                                                in out[run.name].items()), flush=True)
    return out


def training_returns(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(env step at each episode's end, its return) from ``metrics.csv``."""
    steps, returns = [], []
    with open(run / "metrics.csv") as f:
        for row in csv.DictReader(f):
            if row.get("charts/episode_return"):
                steps.append(int(row["global_step"]))
                returns.append(float(row["charts/episode_return"]))
    return np.asarray(steps), np.asarray(returns)


def trailing_mean(steps: np.ndarray, returns: np.ndarray, window: int) -> np.ndarray:
    """Mean return of the episodes that ended within ``window`` env steps up to each end."""
    return np.array([returns[(steps > s - window) & (steps <= s)].mean() for s in steps])


def steps_to_reach(run: Path, target: float, window: int) -> int | None:
    """First env step (>= ``window``: a full window) whose trailing mean training return
    reaches ``target`` (None: never)."""
    steps, returns = training_returns(run)
    hit = np.nonzero((trailing_mean(steps, returns, window) >= target) & (steps >= window))[0]
    return int(steps[hit[0]]) if len(hit) else None


def finetune_table(runs: Path, window: int) -> dict:
    """Table 2's numbers, per seed of the scratch runs."""

    def row(run: Path, target: float) -> dict:
        steps, returns = training_returns(run)
        return {"steps": int(steps[-1]), "reached_at": steps_to_reach(run, target, window),
                "first_window": float(returns[steps <= window].mean()),
                "last_window": float(returns[steps > steps[-1] - window].mean())}

    out: dict = {}
    for scratch in sorted(p for p in runs.glob("second_scratch_s*") if p.is_dir()):
        seed = scratch.name.rsplit("_s", 1)[1]
        steps, returns = training_returns(scratch)
        target = float(returns[steps > steps[-1] - window].mean())
        rows = {"second_scratch": row(scratch, target)}
        for run in sorted(p for p in runs.glob(f"second_finetune_*_s{seed}") if p.is_dir()):
            rows[run.name.rsplit("_s", 1)[0]] = row(run, target)
        out[seed] = {"target": target, "window": window, "runs": rows}
    return out


def markdown(transfer: dict, finetune: dict) -> str:
    """The two tables (returns: mean ± standard error over the episodes)."""

    def cell(r: list[float]) -> str:
        return f"{np.mean(r):.1f} ± {np.std(r) / np.sqrt(len(r)):.1f}"

    mean = {name: {rig: float(np.mean(r)) for rig, r in runs.items()}
            for name, runs in transfer.items()}
    rnd = mean["random"]
    lines = ["| run | return, first rig | return, second rig | kept | kept above random |",
             "|---|---|---|---|---|"]
    for name, r in transfer.items():
        m = mean[name]
        above = ("-" if name == "random" else
                 f"{(m['second'] - rnd['second']) / (m['first'] - rnd['first']):.2f}")
        lines.append(f"| {'random actions' if name == 'random' else name} | {cell(r['first'])} "
                     f"| {cell(r['second'])} | {m['second'] / m['first']:.2f} | {above} |")
    lines += ["", "| seed | run | return, first window | return, last window | env steps "
              "to reach the target | env steps run |", "|---|---|---|---|---|---|"]
    for seed, t in finetune.items():
        for name, r in t["runs"].items():
            reached = r["reached_at"] if r["reached_at"] is not None else "not reached"
            lines.append(f"| {seed} | {name} | {r['first_window']:.1f} | "
                         f"{r['last_window']:.1f} | {reached} | {r['steps']} |")
        lines.append(f"| {seed} | target: scratch's last window | | {t['target']:.1f} | | |")
    return "\n".join(lines)


def plot(runs: Path, window: int, out: Path) -> None:
    """Trailing mean training return on the second rig, scratch vs fine-tuned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in sorted(p for p in runs.glob("second_*_s*") if p.is_dir()):
        steps, returns = training_returns(run)
        full = steps >= window  # from the first full window on, as steps_to_reach counts
        ax.plot(steps[full], trailing_mean(steps, returns, window)[full], label=run.name)
    for seed, t in finetune_table(runs, window).items():
        ax.axhline(t["target"], color="grey", linestyle="--", linewidth=1,
                   label=f"target: scratch's last {window} steps, seed {seed}")
    ax.set_xlabel("env steps on the second rig")
    ax.set_ylabel(f"training return, mean over {window} steps")
    ax.set_title("second rig: fine-tuned from the sim checkpoint vs from scratch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--window", type=int, default=2000,
                        help="env steps of the trailing mean training return")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--skip-eval", action="store_true",
                        help="reuse RUNS/transfer.json's evaluations (table 1); recompute "
                        "table 2 from the runs' metrics")
    args = parser.parse_args()
    if args.skip_eval:
        saved = json.loads((args.runs / "transfer.json").read_text())
        transfer, args.episodes = saved["transfer"], saved["episodes"]
    else:
        transfer = evaluate_transfer(args.runs, args.episodes)
    finetune = finetune_table(args.runs, args.window)
    (args.runs / "transfer.json").write_text(json.dumps(
        {"transfer": transfer, "finetune": finetune, "episodes": args.episodes,
         "eval_seed": EVAL_SEED}, indent=2))
    print(markdown(transfer, finetune))
    if args.plot:
        plot(args.runs, args.window, args.plot)


if __name__ == "__main__":
    main()
