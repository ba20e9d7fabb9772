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
from pathlib import Path

from robot.config import ConfigError, load_config

log = logging.getLogger("madi")

SIM_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "sim_ur5_visual_reacher.yaml"


def _add_config_args(p: argparse.ArgumentParser, default: Path | None) -> None:
    p.add_argument("--config", type=Path, default=default,
                   help=f"YAML config (default: {default.name if default else 'by device'})")
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
