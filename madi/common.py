"""What every ``madi`` command shares: config files and arguments, run folders, log files."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from pathlib import Path

import yaml

from link.keys import CurveKeys, load_keys
from robot.config import Config, load_config

log = logging.getLogger("madi")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIM_CONFIG = CONFIGS / "sim_ur5_visual_reacher.yaml"
UR5_CONFIG = CONFIGS / "ur5_visual_reacher.yaml"
QUICK_CONFIG = CONFIGS / "sim_quick.yaml"

#: Suffix of a run summary when a signal (Ctrl-C, SIGTERM) stopped the run.
INTERRUPTED = "; interrupted"


def add_config_args(p: argparse.ArgumentParser, default: Path | None) -> None:
    """``--config``, ``--set KEY=VALUE`` (repeatable) and ``--seed``."""
    shown = default.name if default else f"{SIM_CONFIG.name} with CUDA, {QUICK_CONFIG.name} without"
    p.add_argument("--config", type=Path, default=default, help=f"YAML config (default: {shown})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set task.reward=sparse (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")


def load_args_config(args: argparse.Namespace, path: Path) -> Config:
    """The config at ``path`` with the command's ``--set`` overrides and ``--seed``."""
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(path, overrides)


def steps_and_pace(args: argparse.Namespace) -> None:
    """Turn ``--steps`` and ``--pace`` into config overrides."""
    if args.steps is not None:
        args.overrides.append(f"train.total_steps={args.steps}")
    if args.pace:
        args.overrides.append(f"sim.pace={args.pace}")


def link_keys(cfg: Config, role: str) -> CurveKeys | None:
    """The CURVE keys of ``role`` from ``link.keys``, or None without a keys directory."""
    return load_keys(cfg.link.keys, role) if cfg.link.keys else None


def new_run_dir(parent: Path, config_path: Path, seed: int) -> Path:
    """Create ``parent/<UTC time>_<config stem>_s<seed>`` (suffixed if it exists)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = parent / f"{stamp}_{config_path.stem}_s{seed}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def write_config(cfg: Config, run_dir: Path) -> Path:
    """Write the validated config as ``run_dir/config.yaml``."""
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def log_to_file(path: Path) -> logging.Handler:
    """Also write this process's log to ``path`` (the session log of the run)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler
