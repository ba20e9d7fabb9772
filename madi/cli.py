"""The ``madi`` command line: the launch layer that wires config, sim, robot and learner.

Subcommands:
    madi sim      run a scripted or random policy in the MuJoCo mirror, write videos
    madi train    train MaDi-SAC: a learner process and the robot process on the sim,
                  linked by ZeroMQ (``--sync``: one process, the sim in fast pace)
    madi learner  the learner process alone (e.g. on a GPU machine): ``--bind ADDR``
    madi robot    the robot process alone (on the robot's computer): ``--learner ADDR``;
                  ``madi robot check --host IP [--move]``: preflight of the real rig
    madi replay   a recorded session: ``--view OUT.mp4``, ``--backend``, ``--reenact``
    madi sessions ``ls DIR|FILE``: one line per recorded session; ``export FILE...
                  --lerobot DIR``: a LeRobotDataset v3.0
    madi calibrate ``camera|hand-eye|monitor|colour|latency``: measure the rig
    madi eval     a policy under distraction sets (none, easy, hard, a folder)
    madi keys     ``new|allow|pin``: CURVE keys of a tcp link (docs/security.md)

Each command family is a module of this package (``sim_cmd``, ``train_cmd``,
``learner_cmd``, ``robot_cmd``, ``replay_cmd`` (replay, sessions), ``eval_cmd``,
``calibrate_cmd``, ``keys_cmd``), each with its arguments and its
``cmd_*`` function. Only this layer imports across packages; ``learner`` stays free of
robot and sim code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from learner.agent import NonFiniteError
from learner.checkpoint_file import CheckpointError
from learner.metrics import MetricsSinkError
from link.endpoints import LinkError
from madi import (
    calibrate_cmd,
    eval_cmd,
    keys_cmd,
    learner_cmd,
    replay_cmd,
    robot_cmd,
    sim_cmd,
    train_cmd,
)
from madi.common import CONFIGS, QUICK_CONFIG, SIM_CONFIG, UR5_CONFIG, log
from robot.backends.base import DeviceError
from robot.calibration_file import CalibrationError
from robot.config import ConfigError
from robot.distractions import DistractionError
from robot.session_log import SessionLogError

__all__ = ["CONFIGS", "QUICK_CONFIG", "SIM_CONFIG", "UR5_CONFIG", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The ``madi`` argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="madi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    sim_cmd.add_parser(sub)
    train_cmd.add_parser(sub)
    learner_cmd.add_parser(sub)
    robot_cmd.add_parser(sub)
    replay_cmd.add_replay_parser(sub)
    eval_cmd.add_parser(sub)
    calibrate_cmd.add_parser(sub)
    replay_cmd.add_sessions_parser(sub)
    keys_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madi`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, LinkError) as err:
        log.error("%s", err)
        return 2
    except DeviceError as err:  # the arm was stopped before this propagated
        log.error("robot stopped: %s", err)
        return 1
    except NonFiniteError as err:
        log.error("learner stopped: %s", err)
        return 1
    except (SessionLogError, CheckpointError, CalibrationError, DistractionError,
            MetricsSinkError) as err:
        log.error("%s", err)
        return 2
    except ModuleNotFoundError as err:  # an optional extra (sim/__init__.py names it)
        if "extra" not in str(err):
            raise
        log.error("madi %s: %s", args.command, err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
