"""The ``madi`` command line: the launch layer that wires config, sim, robot and learner.

Subcommands:
    madi sim      run a scripted or random policy in the MuJoCo mirror, write videos
    madi train    train MaDi-SAC: a learner process and the robot process on the sim,
                  linked by ZeroMQ (``--sync``: one process, the sim in fast pace)
    madi learner  the learner process alone (e.g. on a GPU machine): ``--bind ADDR``
    madi robot    the robot process alone (on the robot's computer): ``--learner ADDR``;
                  ``madi robot check --host IP [--move]``: preflight of the real rig
    madi replay   a recorded session: ``--view OUT.mp4``, ``--rerun``, ``--backend``,
                  ``--reenact``
    madi sessions ``ls DIR|FILE``: one line per recorded session; ``export FILE...
                  --lerobot DIR``: a LeRobotDataset v3.0
    madi calibrate ``camera|hand-eye|monitor|colour|latency``: measure the rig
    madi eval     a policy under distraction sets (none, easy, hard, a folder)
    madi keys     ``new|allow|pin``: CURVE keys of a tcp link (docs/security.md)

Each command is a module of this package, ``madi.<command>_cmd``, with its arguments
(``add_arguments``) and its ``cmd_*`` function; :func:`main` imports only the module of
the command it runs, so commands that need no extra (``sessions``, ``replay --view``,
``keys``, ``--help``) run without PyTorch, MuJoCo or ur_rtde. Only this layer imports
across packages; ``learner`` stays free of robot and sim code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module

from learner.errors import CheckpointError, NonFiniteError
from learner.metrics import MetricsSinkError
from link.endpoints import LinkError
from madi.common import CONFIGS, QUICK_CONFIG, SIM_CONFIG, UR5_CONFIG, log
from robot.backends.base import DeviceError
from robot.calibration_file import CalibrationError
from robot.config import ConfigError
from robot.distractions import DistractionError
from robot.rerun_log import ViewerError
from robot.session_log import SessionLogError

__all__ = ["COMMANDS", "CONFIGS", "QUICK_CONFIG", "SIM_CONFIG", "UR5_CONFIG", "build_parser",
           "main"]

#: Every command: its help line, and the extra that brings the PyTorch it needs (None: it
#: never imports torch). Its arguments and its function are in ``madi.<command>_cmd``.
COMMANDS: dict[str, tuple[str, str | None]] = {
    "sim": ("run a scripted policy in the MuJoCo mirror; `madi sim controller`: an emulated "
            "UR controller for ur_rtde", "sim"),
    "train": ("train MaDi-SAC (the sim by default; the real UR5 with a ur5 config)", "sim"),
    "learner": ("run the learner process alone (e.g. on a GPU box)", "learner"),
    "robot": ("run the robot process alone, streaming to a learner; `madi robot check`: "
              "preflight of the real rig", "real"),
    "replay": ("look at, replay or reenact a recorded session", "learner"),
    "eval": ("evaluate a policy (deterministic) under distraction sets in the sim", "sim"),
    "calibrate": ("measure the rig: camera, hand-eye, monitor, colour, latency (into the "
                  "calibration file)", "sim"),
    "sessions": ("list recorded sessions; export them as a LeRobotDataset (export PATH... "
                 "--lerobot DIR)", None),
    "keys": ("CURVE keys of a tcp link: new key pairs, allow a robot on the learner, pin the "
             "learner on the robot (docs/security.md)", None),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``madi`` argument parser: every command with its help line.

    Args:
        command: The command whose arguments the parser takes (``add_arguments`` of
            ``madi.<command>_cmd``, imported here); the other commands are only named.
            None: all are only named (``madi --help``).

    Raises:
        ModuleNotFoundError: If ``command``'s module needs a package that is not
            installed (``torch``, for most).
    """
    parser = argparse.ArgumentParser(prog="madi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_line, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line)
        if name == command:
            import_module(f"madi.{name}_cmd").add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madi`` console script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    # the command: the first word (the options before it take no value)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = build_parser(command).parse_args(argv)
        if args.verbose:
            logging.getLogger().setLevel(logging.DEBUG)
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
            MetricsSinkError, ViewerError) as err:
        log.error("%s", err)
        return 2
    except ModuleNotFoundError as err:  # an optional extra
        extra = COMMANDS[command][1]
        if err.name == "torch" and extra is not None:
            log.error("madi %s needs the [%s] extra (torch is not installed): pip install "
                      "'madi-robot[%s]'", command, extra, extra)
            return 2
        if "extra" not in str(err):  # sim/__init__.py names its extra in the message
            raise
        log.error("madi %s: %s", command, err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
