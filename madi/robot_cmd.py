"""``madi robot``: the robot process alone, streaming to a learner; ``madi robot check``."""

from __future__ import annotations

import argparse
import logging
from datetime import datetime, timezone
from pathlib import Path

from madi.common import (
    INTERRUPTED,
    SIM_CONFIG,
    UR5_CONFIG,
    add_config_args,
    link_keys,
    load_args_config,
    log,
    log_to_file,
    new_run_dir,
    steps_and_pace,
    write_config,
)
from robot.assemble import run_robot
from robot.config import Config
from robot.preflight import Preflight, format_table
from robot.rerun_log import RerunView
from robot.supervisor import LearnerSupervisor


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi robot``."""
    p.add_argument("action", nargs="?", choices=["run", "check"], default="run",
                   help="run (default): the robot process; check: preflight that moves "
                   "nothing (default config configs/ur5_visual_reacher.yaml)")
    add_config_args(p, None)
    p.add_argument("--host", default=None, help="check: the controller's IP (arm.host)")
    p.add_argument("--move", action="store_true",
                   help="check: also jog each active joint 3 deg at low speed and back")
    p.add_argument("--learner", default=None, metavar="ADDR",
                   help="the learner's address, e.g. tcp://gpu-box:5555 (default: "
                   "link.address)")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys (madi keys new --robot DIR, the learner's key pinned): "
                   "needed for tcp beyond loopback (default: link.keys)")
    p.add_argument("--steps", type=int, default=None, help="env steps (train.total_steps)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (check: where the table and a camera frame go)")
    p.add_argument("--pace", choices=["realtime", "fast"], default=None,
                   help="sim pace (sim only)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_robot)


def robot_process(cfg: Config, address: str | None, run_dir: Path, args: argparse.Namespace,
                  learner: LearnerSupervisor | None = None, view: RerunView | None = None) -> str:
    """The robot process (:func:`robot.assemble.run_robot`), logged to ``robot.log``.

    ``view``: a Rerun view of the run (``madi train --viz rerun``), or None.

    Returns:
        A one-line summary, ending in :data:`madi.common.INTERRUPTED` when a signal
        stopped it.
    """
    handler = log_to_file(run_dir / "robot.log")
    try:
        keys = link_keys(cfg, "robot") if address is not None else None
        summary = run_robot(cfg, address, run_dir, keys=keys,
                            resume=getattr(args, "resume", None),
                            init_from=getattr(args, "init_from", None),
                            skip_random=getattr(args, "init_skip_random", False),
                            show_progress=not args.no_progress, learner=learner, view=view)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    a, c, lat = summary["agent_step"], summary["control_tick"], summary["obs_to_action"]
    line = (f"{summary['env_steps']} env steps, {summary['episodes']} episodes, policy "
            f"version {summary['policy_version']} ({summary['stop_reason']}); agent step p99 "
            f"{a['period_p99_ms']:.1f} ms, {a['overruns']} overruns; control jitter p99 "
            f"{c['jitter_p99_ms']:.2f} ms; obs->action p99 {lat['p99_ms']:.1f} ms")
    return line + (INTERRUPTED if summary["stop_reason"].endswith(" received") else "")


def cmd_robot(args: argparse.Namespace) -> int:
    """The robot process alone: drive the rig, act locally, stream to a learner."""
    if args.action == "check":
        return cmd_robot_check(args)
    config_path = args.config or SIM_CONFIG
    steps_and_pace(args)
    if args.keys:
        args.overrides.append(f"link.keys={args.keys}")
    cfg = load_args_config(args, config_path)
    address = args.learner or cfg.link.address
    if not address:
        log.error("no learner address: pass --learner tcp://HOST:PORT (or ipc:///dir) or set "
                  "link.address in %s", config_path)
        return 2
    run_dir = args.out or new_run_dir(Path(cfg.train.run_dir), config_path, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir)
    args.resume = None
    summary = robot_process(cfg, address, run_dir, args)
    log.info("robot done: %s", summary)
    return 0


def cmd_robot_check(args: argparse.Namespace) -> int:
    """``madi robot check``: the real rig's preflight table; exit 0 if nothing failed."""
    if args.host:
        args.overrides.append(f"arm.host={args.host}")
    cfg = load_args_config(args, args.config or UR5_CONFIG)
    out = args.out or Path(cfg.train.run_dir) / (
        "preflight-" + datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S"))
    if args.move:
        log.warning("--move: each active joint jogs 3 deg at %.1f rad/s and back; keep the "
                    "emergency stop in reach", 0.1)
    preflight = Preflight(cfg, out, move=args.move)
    print(format_table(preflight.run()))
    verdict = "PASS" if preflight.passed else "FAIL"
    print(f"\npreflight {verdict} ({cfg.arm.host}); details in {out / 'preflight.json'}")
    return 0 if preflight.passed else 1
