"""MaDi's claim in the sim: return kept under distractions, MaDi vs masker-off vs overlay-only.

Reads training runs laid out as ``RUNS/<variant>_s<seed>/`` (each from
``madi train --sync --config configs/sim_quick.yaml --seed S --set agent.variant=V``),
evaluates every run's final ``checkpoints/policy.pt`` with ``madi eval``'s code on the
``none``, ``easy`` and ``hard`` sets (deterministic policy, the same episodes and seeds for
every run), and writes:

- ``RUNS/claim.json``: every run's results;
- a markdown table (printed): mean return per set (mean ± std over seeds) and the return
  kept under ``easy`` and ``hard`` as a fraction of ``none``;
- ``--plot``: a bar chart of the kept fractions;
- ``--masks``: the Masker picture (frames and masks side by side under each set) of one
  MaDi run.

Usage::

    python benchmarks/distraction_claim.py --runs runs/distractions --episodes 10 \\
        --plot docs/distraction_claim.png --masks docs/masker.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = ("none", "easy", "hard")
VARIANTS = {"madi": "MaDi", "sac_crop": "masker off (SAC+crop)",
            "svea_overlay": "overlay only (SVEA-style)", "random": "random actions"}


def evaluate_runs(runs: Path, episodes: int) -> dict:
    from learner.policy import MadiPolicy
    from robot.config import load_config
    from sim.evaluate import evaluate

    out: dict = {}
    for run in sorted(p for p in runs.iterdir() if (p / "checkpoints" / "policy.pt").exists()):
        variant, seed = run.name.rsplit("_s", 1)
        cfg = load_config(run / "config.yaml")
        policy = MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
        results = {s: evaluate(cfg, policy, s, episodes, seed=1000) for s in SETS}
        out.setdefault(variant, {})[seed] = {
            s: {"mean_return": r.mean_return, "success_rate": r.success_rate,
                "returns": r.returns} for s, r in results.items()}
        print(f"{run.name}: " + ", ".join(f"{s} {r.mean_return:.1f}"
                                          for s, r in results.items()), flush=True)
    return out


def evaluate_random(runs: Path, episodes: int) -> dict:
    from robot.config import load_config
    from sim.evaluate import RandomPolicy, evaluate

    cfg = load_config(next(runs.glob("*/config.yaml")))
    results = {s: evaluate(cfg, RandomPolicy(), s, episodes, seed=1000) for s in SETS}
    return {"0": {s: {"mean_return": r.mean_return, "success_rate": r.success_rate,
                      "returns": r.returns} for s, r in results.items()}}


def table(data: dict) -> str:
    lines = ["| method | seeds | none | easy | hard | kept under easy | kept under hard |",
             "|---|---|---|---|---|---|---|"]
    for variant, label in VARIANTS.items():
        seeds = data.get(variant, {})
        if not seeds:
            continue
        means = {s: np.array([seeds[k][s]["mean_return"] for k in sorted(seeds)]) for s in SETS}
        kept = {s: means[s] / np.maximum(means["none"], 1e-9) for s in ("easy", "hard")}
        cells = [f"{means[s].mean():.1f} ± {means[s].std():.1f}" for s in SETS]
        cells += [f"{kept[s].mean():.2f} ± {kept[s].std():.2f}" for s in ("easy", "hard")]
        lines.append(f"| {label} | {len(seeds)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.25
    for i, (variant, label) in enumerate(VARIANTS.items()):
        seeds = data.get(variant, {})
        if not seeds:
            continue
        vals = []
        for s in SETS:
            per_seed = [seeds[k][s]["mean_return"] / max(seeds[k]["none"]["mean_return"], 1e-9)
                        for k in sorted(seeds)]
            vals.append(per_seed)
        x = np.arange(len(SETS)) + (i - 1) * width
        ax.bar(x, [np.mean(v) for v in vals], width, yerr=[np.std(v) for v in vals],
               label=label, capsize=3)
    ax.set_xticks(np.arange(len(SETS)), SETS)
    ax.set_ylabel("return / return without distractions")
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.legend(fontsize=8)
    ax.set_title("Return kept under distractions (sim, deterministic policy)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def masks(run: Path, out: Path, scale: int = 4) -> None:
    """Camera frames and the Masker's masks under none / easy / hard, one row each."""
    from learner.policy import MadiPolicy
    from robot.config import load_config
    from robot.distractions import make_distractions
    from robot.observation import frame_with_mask
    from sim.env import VisualReacherEnv

    cfg = load_config(run / "config.yaml", ["sim.pace=fast"])
    policy = MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
    rows = []
    for s in SETS:
        env = VisualReacherEnv(cfg, make_distractions(s, tuple(cfg.sim.texture_px), cfg.task))
        obs, _ = env.reset(seed=1001)
        policy.reset()
        for _ in range(12):  # a few steps in: the arm has moved toward the dot
            obs, *_ = env.step(policy.act(obs, deterministic=True))
        frame = env.render()
        env.close()
        row = frame_with_mask(frame, policy, scale)
        cv2.putText(row, s, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.9, (255, 255, 0), 2)
        rows.append(row)
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "distractions")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--masks", type=Path, default=None)
    parser.add_argument("--masks-run", default="madi_s0")
    args = parser.parse_args()
    data = evaluate_runs(args.runs, args.episodes)
    data["random"] = evaluate_random(args.runs, args.episodes)
    (args.runs / "claim.json").write_text(json.dumps(data, indent=1))
    print(table(data))
    if args.plot:
        plot(data, args.plot)
    if args.masks:
        masks(args.runs / args.masks_run, args.masks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
