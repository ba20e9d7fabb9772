"""``madi sim``: a scripted or random policy in the MuJoCo mirror; an emulated controller."""

from __future__ import annotations

import argparse
from pathlib import Path

from madi.common import SIM_CONFIG, UR5_CONFIG, add_config_args, load_args_config, log


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi sim``."""
    p.add_argument("action", nargs="?", choices=["controller"],
                   help="controller: serve RTDE, dashboard and script ports backed by the "
                   "mirror until Ctrl-C (sim/ur_controller.py)")
    p.add_argument("--model", choices=["ur5", "ur5e"], default="ur5",
                   help="controller: ur5 = CB3 at 125 Hz, ur5e = e-series at 500 Hz")
    p.add_argument("--host", default="127.0.0.1",
                   help="controller: address of its ports (any 127.x.y.z runs beside others)")
    p.add_argument("--http-port", type=int, default=8080,  # sim.ur_controller.DEFAULT_HTTP_PORT
                   help="controller: port of the wrist-camera stream (/camera.mjpg), the "
                   "target screen (/screen) and the faults (/fault/NAME) (sim/emulator_io.py)")
    add_config_args(p, SIM_CONFIG)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--policy", choices=["servo", "random"], default="servo")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for one mp4 and one PNG strip per episode")
    p.set_defaults(func=cmd_sim)


def cmd_sim(args: argparse.Namespace) -> int:
    """Run episodes in the mirror with a scripted policy and write what the camera saw.

    ``madi sim controller`` instead serves an emulated UR controller until Ctrl-C.
    """
    # The sim (MuJoCo, EGL) is imported only by the commands that run it: a robot PC may
    # have no EGL.
    if args.action == "controller":
        from sim.ur_controller import serve

        try:
            # the rig the camera renders: the real config's, or the one given
            rig = load_args_config(args, UR5_CONFIG if args.config == SIM_CONFIG else args.config)
            serve(args.model, args.host, http_port=args.http_port, rig=rig)
        except OSError as err:
            log.error("cannot open the controller's ports on %s: %s; pick another --host "
                      "(any 127.x.y.z) or stop what holds them", args.host, err)
            return 2
        return 0
    from sim.rollout import run_episodes

    args.overrides.insert(0, "sim.pace=fast")  # videos need no wall-clock pacing
    cfg = load_args_config(args, args.config)
    results = run_episodes(cfg, args.policy, args.episodes, args.out)
    for i, r in enumerate(results):
        log.info("episode %d: return %.1f, success %s (step %s), max red %.2f%%",
                 i, r.episode_return, r.success, r.success_step, 100 * r.max_red_fraction)
    if args.out:
        log.info("wrote videos and frame strips to %s", args.out)
    return 0
