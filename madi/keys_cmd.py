"""``madi keys new|allow|pin``: CURVE keys of a tcp link (docs/security.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from link.keys import allow_robot, fingerprint, new_keys, pin_learner, read_public_key
from madi.common import log


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi keys``: its ``new``, ``allow`` and ``pin`` actions."""
    keys = p.add_subparsers(dest="action", required=True)
    k = keys.add_parser("new", help="a key pair (ROLE.key public, ROLE.key_secret 0600)")
    role = k.add_mutually_exclusive_group(required=True)
    role.add_argument("--learner", type=Path, metavar="DIR", help="the learner's keys folder")
    role.add_argument("--robot", type=Path, metavar="DIR", help="a robot's keys folder")
    k = keys.add_parser("allow", help="add a robot's public key to the learner's allow-list")
    k.add_argument("--learner", type=Path, metavar="DIR", required=True,
                   help="the learner's keys folder")
    k.add_argument("key", type=Path, metavar="ROBOT.key", help="the robot's public key file")
    k.add_argument("--name", default=None,
                   help="file name in the allow-list (default robot-<fingerprint>)")
    k = keys.add_parser("pin", help="pin the learner's public key on a robot")
    k.add_argument("--robot", type=Path, metavar="DIR", required=True,
                   help="the robot's keys folder")
    k.add_argument("key", type=Path, metavar="LEARNER.key", help="the learner's public key file")
    p.set_defaults(func=cmd_keys)


def cmd_keys(args: argparse.Namespace) -> int:
    """``madi keys new|allow|pin``: make key pairs, allow a robot, pin the learner."""
    try:
        if args.action == "new":
            role = "learner" if args.learner else "robot"
            path = new_keys(args.learner or args.robot, role)
            step = (f"copy {path.name} (never {path.name}_secret) to the other machine; next "
                    + ("there: madi keys pin --robot DIR learner.key" if role == "learner"
                       else "on the learner: madi keys allow --learner DIR robot.key"))
        elif args.action == "allow":
            path = allow_robot(args.learner, args.key, args.name)
            step = "allowed: the robot may connect (restart it if it was refused before)"
        else:
            path = pin_learner(args.robot, args.key)
            step = "pinned: this robot talks only to the learner holding the secret key"
    except ValueError as err:
        log.error("%s", err)
        return 2
    key = read_public_key(path)
    print(f"{path}: public key {key.decode()} (fingerprint {fingerprint(key)}); check it "
          f"against the other machine's over a channel you trust")
    print(step)
    return 0
