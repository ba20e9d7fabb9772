"""``madi replay SESSION``: view, replay as a backend, reenact.

Viewing needs no extra (``--rerun``: the [viz] extra's rerun-sdk); PyTorch only comes in
with a policy (``--checkpoint``, ``--backend``), MuJoCo with a reenactment on the sim.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from madi.common import UR5_CONFIG, load_args_config, log
from robot.backends import make_rig
from robot.config import config_from_dict
from robot.rerun_log import RerunView, replay_to_rerun
from robot.session_log import SessionLog
from robot.session_replay import reenact, render_view, replay_backend


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi replay``."""
    p.add_argument("session", type=Path, help="a session log (runs/<run>/session.mcap)")
    p.add_argument("--view", type=Path, default=None, metavar="OUT.mp4",
                   help="write a video: frames (+ masks with --checkpoint), reward, joints")
    p.add_argument("--rerun", action="store_true",
                   help="stream it into Rerun (the [viz] extra): camera (+ masks with "
                   "--checkpoint), reward, joints, speedJ, events, the arm in 3D")
    p.add_argument("--rerun-save", type=Path, default=None, metavar="FILE.rrd",
                   help="with --rerun: write an .rrd file instead of opening a viewer")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="policy.pt: show its Masker's masks / act with it in --backend")
    p.add_argument("--backend", action="store_true",
                   help="run the agent loop on the recording and compare rewards/actions")
    p.add_argument("--reenact", action="store_true",
                   help="send the recorded commands to an arm and compare the joint paths")
    p.add_argument("--config", default=None, metavar="sim|ur5|PATH",
                   help="reenact on: sim (default), ur5 (the real arm), or a config file")
    p.add_argument("--confirm-real-arm", action="store_true",
                   help="reenact on the real arm (it moves, at --speed-cap)")
    p.add_argument("--speed-cap", type=float, default=0.3,
                   help="largest joint speed of a real-arm reenactment, rad/s")
    p.add_argument("--out", type=Path, default=None, help="folder of the --backend run")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a field of the recorded config")
    p.add_argument("--seed", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    """``madi replay SESSION``: view, replay as a backend, or reenact a recorded session."""
    session = SessionLog(args.session)
    if session.cut:
        log.warning("%s was cut (%s); using what is readable", args.session,
                    session.cut_detail)
    recorded = yaml.safe_load(session.config_yaml())
    policy = None
    if args.checkpoint is not None:
        from learner.policy import MadiPolicy  # PyTorch: only with a policy

        policy = MadiPolicy.from_checkpoint(args.checkpoint)
    if not (args.view or args.rerun or args.backend or args.reenact):
        log.error("say what to do: --view OUT.mp4, --rerun, --backend or --reenact")
        return 2
    if args.rerun_save is not None and not args.rerun:
        log.error("--rerun-save goes with --rerun")
        return 2
    if args.view:
        render_view(session, args.view, policy=policy)
        print(f"wrote {args.view}")
    if args.rerun:
        _to_rerun(session, recorded, policy, args.rerun_save)
    if args.backend:
        cfg = config_from_dict(recorded, str(args.session), args.overrides)
        out = args.out or Path(args.session).with_suffix("").parent / "replay"
        report = replay_backend(session, cfg, out, policy=policy,
                                policy_version=1 if policy is not None else 0)
        print(yaml.safe_dump({"replay": report}, sort_keys=False), end="")
    if args.reenact:
        return _reenact(session, recorded, args)
    return 0


def _to_rerun(session: SessionLog, recorded: dict | None, policy: Any,
              save: Path | None) -> None:
    """Stream ``session`` into Rerun (``policy``: its masks): a viewer, or the file ``save``."""
    model = ((recorded or {}).get("arm") or {}).get("model", "ur5")
    view = RerunView(session.path.name, save, model, policy=policy)
    try:
        shown = replay_to_rerun(session, view)
    finally:
        view.close()
    print(f"{'wrote ' + str(save) if save else 'sent to the Rerun viewer'}: {shown} agent steps")


def _reenact(session: SessionLog, recorded: dict, args: argparse.Namespace) -> int:
    target = args.config or "sim"
    if target == "sim":
        cfg = config_from_dict({**recorded, "backend": "sim"}, str(args.session),
                               ["sim.pace=fast", *args.overrides])
    elif target == "ur5" and recorded.get("backend") == "ur5":
        cfg = config_from_dict(recorded, str(args.session), args.overrides)
    else:
        cfg = load_args_config(args, UR5_CONFIG if target == "ur5" else Path(target))
    real = cfg.backend != "sim"
    if real and not args.confirm_real_arm:
        log.error("--reenact on the real arm moves it: add --confirm-real-arm (speed cap "
                  "%.2f rad/s; keep the emergency stop in reach)", args.speed_cap)
        return 2
    rig = make_rig(cfg)
    with rig:
        report = reenact(session, cfg, rig, realtime=real,
                         speed_cap=args.speed_cap if real else None)
    print(yaml.safe_dump({"reenact": {"backend": cfg.backend, **report}}, sort_keys=False),
          end="")
    return 0
