"""``madi sessions ls|export``: list recorded sessions, export them as a LeRobotDataset.

Needs no extra: no PyTorch, MuJoCo or ur_rtde (a laptop that only looks at sessions).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from robot.lerobot_export import export_command
from robot.session_replay import format_sessions, list_sessions


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi sessions`` (``ls``, ``export``)."""
    p.add_argument("action", choices=["ls", "export"])
    p.add_argument("dir", type=Path, nargs="*", default=[Path("runs")], metavar="PATH",
                   help="session logs, or folders searched for them (default runs/)")
    p.add_argument("--lerobot", type=Path, metavar="DIR", help="export: write a "
                   "LeRobotDataset v3.0 into DIR (new or empty; robot/lerobot_export.py)")
    p.set_defaults(func=cmd_sessions)


def cmd_sessions(args: argparse.Namespace) -> int:
    """``madi sessions ls|export PATH...``: list session logs, or export them.

    ``ls``: one line per session log (PATH a file, or a folder). ``export ... --lerobot
    DIR``: the sessions as one LeRobotDataset (robot/lerobot_export.py).
    """
    if args.action == "export":
        return export_command(args.dir, args.lerobot)
    rows = [row for path in args.dir for row in list_sessions(path)]
    if not rows:
        print(f"no session logs (*.mcap) under {' '.join(map(str, args.dir))}")
        return 1
    print(format_sessions(rows))
    return 0
