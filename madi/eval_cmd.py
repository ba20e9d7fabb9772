"""``madi eval``: a policy's return and success under distraction sets, in the sim."""

from __future__ import annotations

import argparse
from pathlib import Path

from learner.policy import MadiPolicy
from madi.common import add_config_args, load_args_config, log


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi eval``."""
    p.add_argument("--checkpoint", type=Path, required=True, help="a policy.pt")
    add_config_args(p, None)
    p.add_argument("--distractions", nargs="+", default=["none", "easy", "hard"],
                   metavar="SET", help="none | easy | hard | a folder of videos/images "
                   "(default: none easy hard)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per set (default 10)")
    p.add_argument("--video", type=Path, default=None, metavar="OUT.mp4",
                   help="camera frames with the Masker's mask beside them")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: eval.json in the checkpoint's run)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """``madi eval``: deterministic-policy return and success under distraction sets."""
    # The sim (MuJoCo, EGL) is imported only by the commands that run it: a robot PC may
    # have no EGL.
    from sim.evaluate import evaluate, format_table, write_results

    config_path = args.config
    if config_path is None:  # the run the checkpoint came from
        config_path = args.checkpoint.resolve().parent.parent / "config.yaml"
        if not config_path.exists():
            log.error("no config.yaml next to %s's run: pass --config", args.checkpoint)
            return 2
    cfg = load_args_config(args, config_path)
    policy = MadiPolicy.from_checkpoint(args.checkpoint)
    eval_seed = cfg.train.eval_seed if args.seed is None else args.seed  # fixed episodes
    results = []
    for spec in args.distractions:
        video = None
        if args.video is not None:
            video = (args.video if len(args.distractions) == 1 else
                     args.video.with_name(f"{args.video.stem}_{Path(spec).name}.mp4"))
        results.append(evaluate(cfg, policy, spec, args.episodes, eval_seed, video))
        log.info("eval %s: return %.1f ± %.1f, success %.0f%%", spec, results[-1].mean_return,
                 results[-1].std_return, 100 * results[-1].success_rate)
    print(format_table(results))
    out = args.out or args.checkpoint.resolve().parent.parent / "eval.json"
    write_results(results, out, {"checkpoint": str(args.checkpoint),
                                 "config": str(config_path), "episodes": args.episodes,
                                 "seed": eval_seed, "variant": cfg.agent.variant})
    print(f"results: {out}")
    return 0
