"""``madi learner``: the learner process, alone or as the child ``madi train`` launches.

:func:`learner_command` is the one place that launches a learner: the command line of
the child ``madi train`` starts (and restarts after a crash, :mod:`robot.supervisor`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

from learner.process import LearnerProcess
from link.endpoints import LearnerLink, LinkAddresses, LinkError
from link.messages import Transition
from madi.common import (
    SIM_CONFIG,
    add_config_args,
    link_keys,
    load_args_config,
    log,
    log_to_file,
    new_run_dir,
    write_config,
)
from robot.assemble import stop_on_signals
from robot.config import Config, config_from_dict
from robot.recorder import session_paths
from robot.runner import spaces_of
from robot.session_log import SessionLog, SessionLogError
from robot.task import transition_bounds


def add_init_args(p: argparse.ArgumentParser) -> None:
    """``--init-from``, ``--init-replay-mix``, ``--init-skip-random``."""
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN_OR_CHECKPOINT",
                   help="start from another run's trained networks (e.g. the sim run, for "
                   "the real arm): a run directory or its checkpoints/learner.pt")
    p.add_argument("--init-replay-mix", type=float, default=0.0, metavar="F",
                   help="with --init-from: share of each batch from that run's replay buffer "
                   "(needs train.save_replay there); 0 (default): an empty buffer")
    p.add_argument("--init-skip-random", action="store_true",
                   help="with --init-from: no initial random steps; act with the loaded "
                   "policy and update from the first step")


def add_pretrain_args(p: argparse.ArgumentParser) -> None:
    """``--pretrain SESSION...`` and ``--pretrain-updates``."""
    p.add_argument("--pretrain", type=Path, nargs="+", default=None, metavar="SESSION",
                   help="load recorded sessions (session.mcap) into the replay buffer first")
    p.add_argument("--pretrain-updates", type=int, default=None, metavar="N",
                   help="updates on the loaded data before the robot starts (default: "
                   "updates_per_step x transitions loaded)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi learner``."""
    add_config_args(p, SIM_CONFIG)
    p.add_argument("--bind", default=None, metavar="ADDR",
                   help="where robots connect: tcp://0.0.0.0:5555 or ipc:///dir "
                   "(default: link.address)")
    p.add_argument("--out", type=Path, default=None, help="run folder")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue from RUN_DIR/checkpoints/learner.pt")
    add_pretrain_args(p)
    add_init_args(p)
    p.add_argument("--exit-with-robot", action="store_true",
                   help="exit when the robot shuts down (used by madi train)")
    p.add_argument("--refill", type=Path, nargs="+", default=None, metavar="SESSION",
                   help="with --resume or after a crash (madi train passes the run's session "
                   "logs, in recording order): refill the replay buffer from them; the "
                   "transitions since the checkpoint are counted as env steps")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys (madi keys new --learner DIR): needed to bind tcp beyond "
                   "loopback (default: link.keys)")
    p.set_defaults(func=cmd_learner)


def learner_command(address: str, run_dir: Path, args: argparse.Namespace, restart: bool,
                    refill: Path | None) -> list[str]:
    """The ``madi learner`` command line of ``madi train`` at ``address``.

    ``restart``: after a crash, refilling from the robot's session log ``refill`` (if any)
    and the run's earlier ones; it continues from the run's checkpoint when there is one,
    else starts as the first did. ``madi train --resume`` refills from the resumed run's
    session logs (its replay buffer is not in the checkpoint unless ``train.save_replay``).
    """
    cmd = [sys.executable, "-m", "madi.cli", "learner", "--config",
           str(run_dir / "config.yaml"), "--bind", address, "--out", str(run_dir),
           "--exit-with-robot"]
    if refill is not None:
        earlier = [p for p in session_paths(run_dir) if p != refill]
        cmd += ["--refill", *map(str, earlier), str(refill)]
    if restart and (run_dir / "checkpoints" / "learner.pt").is_file():
        return cmd + ["--resume", str(run_dir)]
    if args.resume is not None:
        cmd += ["--resume", str(args.resume)]
        logs = [] if restart else session_paths(args.resume)
        if logs:
            cmd += ["--refill", *map(str, logs)]
    if args.init_from is not None:
        cmd += ["--init-from", str(args.init_from), "--init-replay-mix",
                str(args.init_replay_mix)] + (["--init-skip-random"] if args.init_skip_random
                                              else [])
    if args.pretrain:
        cmd += ["--pretrain", *map(str, args.pretrain)]
        if args.pretrain_updates is not None:
            cmd += ["--pretrain-updates", str(args.pretrain_updates)]
    return cmd


def cmd_learner(args: argparse.Namespace) -> int:
    """The learner process alone: bind, learn from a robot, publish weights."""
    if args.keys:
        args.overrides.append(f"link.keys={args.keys}")
    cfg = load_args_config(args, args.config)
    address = args.bind or cfg.link.address
    if not address:
        log.error("no address to bind: pass --bind tcp://0.0.0.0:5555 (or ipc:///dir) or set "
                  "link.address in %s", args.config)
        return 2
    run_dir = args.out or new_run_dir(Path(cfg.train.run_dir), args.config, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        write_config(cfg, run_dir)
    log_to_file(run_dir / "learner.log")
    try:
        link = LearnerLink(LinkAddresses.from_base(address), cfg.task_hash(), spaces_of(cfg),
                           run_id=run_dir.name,
                           heartbeat_interval_s=cfg.link.heartbeat_interval,
                           peer_timeout_s=cfg.link.peer_timeout,
                           keys=link_keys(cfg, "learner"))
    except LinkError as err:
        log.error("%s", err)
        return 2
    with link:
        learner = LearnerProcess(
            cfg.agent, link, run_dir, publish_every=cfg.train.publish_every,
            checkpoint_every=cfg.train.checkpoint_every, log_every=cfg.train.log_every,
            save_replay=cfg.train.save_replay, resume=args.resume,
            exit_on_robot_shutdown=args.exit_with_robot, init_from=args.init_from,
            prior_mix=args.init_replay_mix, skip_random=args.init_skip_random,
            sinks=cfg.train.sinks(), bounds=transition_bounds(cfg))
        stop_on_signals(learner.request_stop)
        if args.pretrain:
            learner.pretrain(recorded_transitions(cfg, args.pretrain),
                             args.pretrain_updates)
        if args.refill:
            learner.refill([(session.transitions(), session.meta.get("link_session", ""))
                            for session in session_logs(cfg, args.refill)])
        log.info("learner bound to %s, task hash %s, run dir %s", address, cfg.task_hash(),
                 run_dir)
        summary = learner.run()
    log.info("learner done: %d env steps, %d updates, %d transitions in the replay buffer "
             "(%s); link %s", summary["env_steps"], summary["updates"],
             summary["replay_size"], summary["stop_reason"], summary["link"])
    return 0


def session_logs(cfg: Config, sessions: list[Path]) -> list[SessionLog]:
    """Open recorded sessions, each checked to record the spaces of ``cfg``.

    Raises:
        SessionLogError: If a session cannot be read or records other spaces.
    """
    logs = [SessionLog(path) for path in sessions]
    want = spaces_of(cfg)
    for session in logs:
        have = spaces_of(config_from_dict(yaml.safe_load(session.config_yaml()),
                                          str(session.path)))
        if have != want:
            raise SessionLogError(f"{session.path} records spaces {have}, this run needs "
                                  f"{want}: pretrain from sessions of the same task")
    return logs


def recorded_transitions(cfg: Config, sessions: list[Path]) -> Iterator[Transition]:
    """Transitions of recorded sessions whose spaces fit ``cfg`` (for --pretrain).

    Raises:
        SessionLogError: If a session cannot be read or records other spaces.
    """
    for session in session_logs(cfg, sessions):  # all checked before any is loaded
        yield from session.transitions()
