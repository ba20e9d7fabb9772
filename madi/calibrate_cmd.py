"""``madi calibrate STEP``: measure one section of the calibration file."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from calibration.drive import VIEW_STEPS, measure_step
from madi.common import SIM_CONFIG, add_config_args, load_args_config
from robot.calibration_file import save_section


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi calibrate``."""
    p.add_argument("step", choices=["camera", "hand-eye", "monitor", "colour", "latency"])
    add_config_args(p, None)
    p.add_argument("--file", type=Path, default=None,
                   help="calibration file to update (default: the config's calibration, "
                   "else ./calibration.yaml)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="camera/hand-eye/monitor: solve from saved views (frame_NNN.png + "
                   "views.json) instead of moving the arm")
    p.add_argument("--views", type=int, default=15, help="poses to visit (default 15)")
    p.add_argument("--trials", type=int, default=10, help="latency: trials (default 10)")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``madi calibrate STEP``: measure one section of the calibration file."""
    config_path = args.config or SIM_CONFIG
    first = load_args_config(args, config_path)
    path = Path(args.file or first.calibration or "calibration.yaml").resolve()
    if path.exists():  # measure on top of what is known (intrinsics for hand-eye, ...)
        args.overrides.append(f"calibration={path}")
    if args.step in VIEW_STEPS:
        args.overrides.append("camera.subsample=1")  # full-resolution frames
    if first.backend == "sim":
        # One rig for every view: a randomized sim would be a new rig at each pose.
        args.overrides += ["sim.pace=fast", "sim.randomize.enabled=false"]
    cfg = load_args_config(args, config_path)
    method = f"madi calibrate {args.step} ({cfg.backend}, {config_path.name})"
    name, section = measure_step(args.step, cfg, path.parent, method, images=args.images,
                                 views=args.views, trials=args.trials)
    save_section(path, name, section)
    print(yaml.safe_dump({name: section.model_dump(mode="json")}, sort_keys=False), end="")
    print(f"written to {path}" + ("" if first.calibration else
                                  f"; use it with `calibration: {path}` in your config"))
    return 0
