"""The ``madi`` command line: the launch layer that wires config, sim, robot and learner.

Subcommands:
    madi sim    run a scripted or random policy in the MuJoCo mirror, write videos
    madi train  train MaDi-SAC (``--sync``: one process against the sim in fast pace)

Only this layer imports across packages; ``learner`` stays free of robot and sim code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

import yaml

from robot.config import ConfigError, load_config

log = logging.getLogger("madi")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIM_CONFIG = CONFIGS / "sim_ur5_visual_reacher.yaml"
QUICK_CONFIG = CONFIGS / "sim_quick.yaml"


def _add_config_args(p: argparse.ArgumentParser, default: Path | None) -> None:
    shown = default.name if default else f"{SIM_CONFIG.name} with CUDA, {QUICK_CONFIG.name} without"
    p.add_argument("--config", type=Path, default=default, help=f"YAML config (default: {shown})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set task.reward=sparse (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")


def _load(args: argparse.Namespace, path: Path):
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(path, overrides)


def cmd_sim(args: argparse.Namespace) -> int:
    """Run episodes in the mirror with a scripted policy and write what the camera saw."""
    from sim.rollout import run_episodes

    cfg = _load(args, args.config)
    results = run_episodes(cfg, args.policy, args.episodes, args.out)
    for i, r in enumerate(results):
        log.info("episode %d: return %.1f, success %s (step %s), max red %.2f%%",
                 i, r.episode_return, r.success, r.success_step, 100 * r.max_red_fraction)
    if args.out:
        log.info("wrote videos and frame strips to %s", args.out)
    return 0


def default_train_config() -> Path:
    """The paper's learner config when CUDA is available, the CPU-feasible one otherwise."""
    import torch

    if torch.cuda.is_available():
        log.info("config: %s (CUDA available: the paper's learner sizes)", SIM_CONFIG.name)
        return SIM_CONFIG
    log.info("config: %s (no CUDA: the paper's learner takes ~30 s per update on a CPU, "
             "so a smaller learner of the same algorithm; pass --config to choose)",
             QUICK_CONFIG.name)
    return QUICK_CONFIG


def new_run_dir(parent: Path, config_path: Path, seed: int) -> Path:
    """Create ``parent/<UTC time>_<config stem>_s<seed>`` (suffixed if it exists)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = parent / f"{stamp}_{config_path.stem}_s{seed}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def cmd_train(args: argparse.Namespace) -> int:
    """Train MaDi-SAC on the simulated arm, synchronously in one process."""
    from learner.plots import plot_learning_curves
    from learner.train_sync import train_sync
    from sim.env import VisualReacherEnv

    config_path = args.config or default_train_config()
    if args.steps is not None:
        args.overrides.append(f"train.total_steps={args.steps}")
    cfg = _load(args, config_path)
    if cfg.backend != "sim":
        log.error("%s drives backend %r; training on the real arm needs the robot process "
                  "(not built yet); use a sim config", config_path, cfg.backend)
        return 2
    run_dir = args.out if args.out else new_run_dir(
        Path(cfg.train.run_dir), config_path, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"),
                                                        sort_keys=False))
    log.info("run dir %s (config digest %s, variant %s)", run_dir, cfg.digest(),
             cfg.agent.variant)
    env = VisualReacherEnv(cfg)
    try:
        summary = train_sync(
            env, cfg.agent, run_dir,
            total_steps=cfg.train.total_steps,
            eval_every=cfg.train.eval_every,
            eval_episodes=cfg.train.eval_episodes,
            checkpoint_every=cfg.train.checkpoint_every,
            progress=not args.no_progress,
        )
    finally:
        env.close()
    png = plot_learning_curves({cfg.agent.variant: run_dir}, run_dir / "learning_curve.png",
                               title=f"{config_path.stem}, seed {cfg.seed}")
    evals = summary["eval_returns"]
    log.info("done: %d env steps, %d updates in %.0f s; last eval return %s; curve %s",
             summary["env_steps"], summary["updates"], summary["wall_s"],
             f"{evals[-1][1]:.1f}" if evals else "-", png)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``madi`` argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="madi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sim", help="run a scripted policy in the MuJoCo mirror")
    _add_config_args(p, SIM_CONFIG)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--policy", choices=["servo", "random"], default="servo")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for one mp4 and one PNG strip per episode")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("train", help="train MaDi-SAC on the simulated arm")
    _add_config_args(p, None)
    p.add_argument("--sync", action="store_true",
                   help="one process: act, step the sim in fast pace, update (the only "
                   "mode until the asynchronous robot/learner stack lands)")
    p.add_argument("--steps", type=int, default=None, help="env steps (train.total_steps)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: train.run_dir/<time>_<config>_s<seed>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madi`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ConfigError as err:
        log.error("%s", err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
