"""The ``madi`` command line: the launch layer that wires config, sim, robot and learner.

Subcommands:
    madi sim      run a scripted or random policy in the MuJoCo mirror, write videos
    madi train    train MaDi-SAC: a learner process and the robot process on the sim,
                  linked by ZeroMQ (``--sync``: one process, the sim in fast pace)
    madi learner  the learner process alone (e.g. on a GPU machine): ``--bind ADDR``
    madi robot    the robot process alone (on the robot's computer): ``--learner ADDR``;
                  ``madi robot check --host IP [--move]``: preflight of the real rig
    madi replay   a recorded session: ``--view OUT.mp4``, ``--backend``, ``--reenact``
    madi sessions ``ls DIR|FILE``: one line per recorded session
    madi calibrate ``camera|hand-eye|monitor|colour|latency``: measure the rig
    madi eval     a policy under distraction sets (none, easy, hard, a folder)
    madi keys     ``new|allow|pin``: CURVE keys of a tcp link (docs/security.md)

Only this layer imports across packages; ``learner`` stays free of robot and sim code.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from robot.config import ConfigError, load_config

if TYPE_CHECKING:
    from robot.session_log import SessionLog
    from robot.supervisor import LearnerSupervisor

log = logging.getLogger("madi")

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SIM_CONFIG = CONFIGS / "sim_ur5_visual_reacher.yaml"
UR5_CONFIG = CONFIGS / "ur5_visual_reacher.yaml"
QUICK_CONFIG = CONFIGS / "sim_quick.yaml"


def _add_init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init-from", type=Path, default=None, metavar="RUN_OR_CHECKPOINT",
                   help="start from another run's trained networks (e.g. the sim run, for "
                   "the real arm): a run directory or its checkpoints/learner.pt")
    p.add_argument("--init-replay-mix", type=float, default=0.0, metavar="F",
                   help="with --init-from: share of each batch from that run's replay buffer "
                   "(needs train.save_replay there); 0 (default): an empty buffer")
    p.add_argument("--init-skip-random", action="store_true",
                   help="with --init-from: no initial random steps; act with the loaded "
                   "policy and update from the first step")


def _add_pretrain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pretrain", type=Path, nargs="+", default=None, metavar="SESSION",
                   help="load recorded sessions (session.mcap) into the replay buffer first")
    p.add_argument("--pretrain-updates", type=int, default=None, metavar="N",
                   help="updates on the loaded data before the robot starts (default: "
                   "updates_per_step x transitions loaded)")


def _add_config_args(p: argparse.ArgumentParser, default: Path | None) -> None:
    shown = default.name if default else f"{SIM_CONFIG.name} with CUDA, {QUICK_CONFIG.name} without"
    p.add_argument("--config", type=Path, default=default, help=f"YAML config (default: {shown})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set task.reward=sparse (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")


def _link_keys(cfg, role: str):
    """The CURVE keys of ``role`` from ``link.keys``, or None without a keys directory."""
    from link.keys import load_keys

    return load_keys(cfg.link.keys, role) if cfg.link.keys else None


def _load(args: argparse.Namespace, path: Path):
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    return load_config(path, overrides)


def cmd_sim(args: argparse.Namespace) -> int:
    """Run episodes in the mirror with a scripted policy and write what the camera saw.

    ``madi sim controller`` instead serves an emulated UR controller until Ctrl-C.
    """
    if args.action == "controller":
        from sim.ur_controller import serve

        try:
            serve(args.model, args.host)
        except OSError as err:
            log.error("cannot open the controller's ports on %s: %s; pick another --host "
                      "(any 127.x.y.z) or stop what holds them", args.host, err)
            return 2
        return 0
    from sim.rollout import run_episodes

    args.overrides.insert(0, "sim.pace=fast")  # videos need no wall-clock pacing
    cfg = _load(args, args.config)
    results = run_episodes(cfg, args.policy, args.episodes, args.out)
    for i, r in enumerate(results):
        log.info("episode %d: return %.1f, success %s (step %s), max red %.2f%%",
                 i, r.episode_return, r.success, r.success_step, 100 * r.max_red_fraction)
    if args.out:
        log.info("wrote videos and frame strips to %s", args.out)
    return 0


def default_train_config() -> Path:
    """The paper's learner config when CUDA is available, the CPU-feasible one otherwise."""
    import torch

    if torch.cuda.is_available():
        log.info("config: %s (CUDA available: the paper's learner sizes)", SIM_CONFIG.name)
        return SIM_CONFIG
    log.info("config: %s (no CUDA: the paper's learner takes ~30 s per update on a CPU, "
             "so a smaller learner of the same algorithm; pass --config to choose)",
             QUICK_CONFIG.name)
    return QUICK_CONFIG


def new_run_dir(parent: Path, config_path: Path, seed: int) -> Path:
    """Create ``parent/<UTC time>_<config stem>_s<seed>`` (suffixed if it exists)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = parent / f"{stamp}_{config_path.stem}_s{seed}"
    run_dir, n = base, 1
    while run_dir.exists():
        run_dir, n = base.with_name(f"{base.name}-{n}"), n + 1
    run_dir.mkdir(parents=True)
    return run_dir


#: Suffix of a run summary when a signal (Ctrl-C, SIGTERM) stopped the run.
INTERRUPTED = "; interrupted"


def _write_config(cfg, run_dir: Path) -> Path:
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def _log_to_file(path: Path) -> logging.Handler:
    """Also write this process's log to ``path`` (the session log of the run)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def _on_signals(stop) -> None:
    """Route SIGINT/SIGTERM to ``stop(reason)`` (a clean stop takes ~2 s at most).

    Repeated signals (an impatient Ctrl-C, or ``timeout`` signalling the child and then
    its group) do not interrupt the stop: the arm must come to rest and the files be
    written; SIGKILL remains for a hard kill.
    """
    def handler(signum, frame):
        name = signal.Signals(signum).name
        if handler.stopping:
            log.warning("%s again: already stopping (SIGKILL forces it)", name)
            return
        handler.stopping = True
        stop(f"{name} received")

    handler.stopping = False
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _steps_and_pace(args: argparse.Namespace) -> None:
    if args.steps is not None:
        args.overrides.append(f"train.total_steps={args.steps}")
    if args.pace:
        args.overrides.append(f"sim.pace={args.pace}")


def _train_config(args: argparse.Namespace):
    """Config and run dir of ``madi train`` (a new run, or the one given to --resume)."""
    _steps_and_pace(args)
    if args.resume is not None:
        _check_resumable(args.resume)
        config_path = args.resume / "config.yaml"
        return config_path, _load(args, config_path), args.resume
    config_path = args.config or default_train_config()
    cfg = _load(args, config_path)
    run_dir = args.out if args.out else new_run_dir(Path(cfg.train.run_dir), config_path,
                                                    cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    return config_path, cfg, run_dir


def _check_resumable(run_dir: Path) -> None:
    """Check, before anything starts, that ``run_dir`` holds what ``--resume`` reads.

    Raises:
        CheckpointError: If ``run_dir`` has no ``config.yaml``, no
            ``checkpoints/learner.pt`` or no valid ``checkpoints/progress.json``; the
            message names the missing file and what to do instead.
    """
    from learner.checkpoint_file import CheckpointError
    from learner.process import read_progress

    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"cannot resume {run_dir}: it has no config.yaml; pass --resume "
                              "the folder of a madi train run (runs/<run>)")
    for name in ("learner.pt", "progress.json"):
        if not (run_dir / "checkpoints" / name).is_file():
            raise CheckpointError(
                f"cannot resume {run_dir}: checkpoints/{name} is missing (the run stopped "
                "before its first checkpoint); start it again without --resume: madi train "
                f"--config {run_dir / 'config.yaml'}")
    try:
        read_progress(run_dir)
    except ValueError as err:
        raise CheckpointError(f"cannot resume {run_dir}: {err}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """Train MaDi-SAC: learner process + robot process on the sim or the real arm (or --sync)."""
    if args.sync:
        args.overrides.append("sim.pace=fast")
    config_path, cfg, run_dir = _train_config(args)
    if args.sync and args.pretrain:
        log.error("--pretrain works on the learner process: drop --sync")
        return 2
    if args.pretrain:  # check the sessions now, not in the learner child
        for _ in _recorded_transitions(cfg, args.pretrain):
            break
    if args.init_from is None and (args.init_replay_mix or args.init_skip_random):
        log.error("--init-replay-mix and --init-skip-random go with --init-from RUN")
        return 2
    if not 0.0 <= args.init_replay_mix < 1.0:
        log.error("--init-replay-mix must be in [0, 1), got %s", args.init_replay_mix)
        return 2
    if args.init_from is not None:
        from learner.checkpoint import check_init_source
        from robot.runner import spaces_of

        sp = spaces_of(cfg)
        source = check_init_source(args.init_from, cfg.agent, sp.image_shape, sp.proprio_dim,
                                   sp.action_dim)
        log.info("starting from %s", source)
    if cfg.backend != "sim" and args.sync:
        log.error("--sync runs the sim in lockstep; on the real arm (%s) the robot and the "
                  "learner always run as two processes: drop --sync", config_path)
        return 2
    _write_config(cfg, run_dir)
    log.info("run dir %s (config %s, task hash %s, variant %s)", run_dir, config_path.name,
             cfg.task_hash(), cfg.agent.variant)
    if args.sync:
        summary = _train_sync(cfg, run_dir, args)
    else:
        summary = _train_async(cfg, run_dir, args)
    if summary is None:
        return 1
    if summary.endswith(INTERRUPTED):  # stopped by a signal: exit now, files are flushed
        log.info("stopped: %s; plot the curve with: python benchmarks/plot_curves.py "
                 "--run %s=%s --out curve.png", summary, cfg.agent.variant, run_dir)
        return 0
    from learner.plots import plot_learning_curves

    png = plot_learning_curves({cfg.agent.variant: run_dir}, run_dir / "learning_curve.png",
                               title=f"{config_path.stem}, seed {cfg.seed}")
    log.info("done: %s; curve %s", summary, png)
    return 0


def _train_sync(cfg, run_dir: Path, args: argparse.Namespace) -> str:
    from learner.train_sync import train_sync
    from robot.distractions import make_distractions
    from sim.env import VisualReacherEnv

    env = VisualReacherEnv(cfg)
    eval_env = VisualReacherEnv(cfg, make_distractions(
        cfg.train.eval_distractions, tuple(cfg.sim.texture_px), cfg.task))
    try:
        summary = train_sync(
            env, cfg.agent, run_dir,
            total_steps=cfg.train.total_steps,
            eval_every=cfg.train.eval_every,
            eval_episodes=cfg.train.eval_episodes,
            eval_env=eval_env,
            checkpoint_every=cfg.train.checkpoint_every,
            save_replay=cfg.train.save_replay,
            progress=not args.no_progress,
            init_from=args.init_from,
            prior_mix=args.init_replay_mix,
            skip_random=args.init_skip_random,
            eval_seed=cfg.train.eval_seed,
            final_eval_episodes=cfg.train.final_eval_episodes,
            resume=args.resume is not None,
            sinks=cfg.train.sinks(),
        )
    finally:
        env.close()
        eval_env.close()
    evals = summary["eval_returns"]
    last = f"{evals[-1][1]:.1f}" if evals else "-"
    return (f"{summary['env_steps']} env steps, {summary['updates']} updates in "
            f"{summary['wall_s']:.0f} s; last eval return {last}")


def _train_async(cfg, run_dir: Path, args: argparse.Namespace) -> str | None:
    """Learner as a child process, robot process here; ``link.address`` or a private ipc dir."""
    import shutil
    import tempfile

    ipc_dir = None if cfg.link.address else tempfile.mkdtemp(prefix="madi-")
    try:
        return _train_async_at(cfg.link.address or f"ipc://{ipc_dir}", cfg, run_dir, args)
    finally:
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)


def _learner_command(address: str, run_dir: Path, args: argparse.Namespace, restart: bool,
                     refill: Path | None) -> list[str]:
    """The ``madi learner`` command line of ``madi train`` at ``address``.

    ``restart``: after a crash, refilling from the session log ``refill`` (if any); it
    continues from the run's checkpoint when there is one, else starts as the first did.
    """
    cmd = [sys.executable, "-m", "madi.cli", "learner", "--config",
           str(run_dir / "config.yaml"), "--bind", address, "--out", str(run_dir),
           "--exit-with-robot"]
    if refill is not None:
        cmd += ["--refill", str(refill)]
    if restart and (run_dir / "checkpoints" / "learner.pt").is_file():
        return cmd + ["--resume", str(run_dir)]
    if args.resume is not None:
        cmd += ["--resume", str(args.resume)]
    if args.init_from is not None:
        cmd += ["--init-from", str(args.init_from), "--init-replay-mix",
                str(args.init_replay_mix)] + (["--init-skip-random"] if args.init_skip_random
                                              else [])
    if args.pretrain:
        cmd += ["--pretrain", *map(str, args.pretrain)]
        if args.pretrain_updates is not None:
            cmd += ["--pretrain-updates", str(args.pretrain_updates)]
    return cmd


def _train_async_at(address: str, cfg, run_dir: Path, args: argparse.Namespace) -> str | None:
    """Run the robot here with a supervised learner child bound to ``address``."""
    from robot.supervisor import LearnerSupervisor

    learner = LearnerSupervisor(
        lambda restart, refill: _learner_command(address, run_dir, args, restart, refill),
        run_dir, cfg.train.learner_restarts)
    learner.start()
    try:
        result = _run_robot(cfg, address, run_dir, args, learner=learner)
    except BaseException:
        learner.terminate()  # it checkpoints and exits; no robot is coming
        raise
    finally:
        code = learner.wait()
    if learner.failure is not None:
        log.error("%s", learner.failure)
        return None
    return result if code == 0 else None


def _run_robot(cfg, address: str | None, run_dir: Path, args: argparse.Namespace,
               learner: LearnerSupervisor | None = None) -> str | None:
    """The robot process: rig, link, runner, progress bar; returns a summary line."""
    import torch
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from learner.process import read_progress
    from link.endpoints import LinkAddresses, RobotLink
    from robot.backends import make_rig
    from robot.recorder import SessionRecorder, session_path
    from robot.runner import RobotRunner, spaces_of
    from robot.timing import configure_process

    handler = _log_to_file(run_dir / "robot.log")
    torch.set_num_threads(cfg.robot.torch_threads)
    torch.manual_seed(cfg.seed)  # the policy's sampled actions
    start_step = start_episode = 0
    if getattr(args, "resume", None) is not None:
        progress = read_progress(args.resume)
        start_step, start_episode = progress["env_steps"], progress["episodes"]
    realtime = cfg.sim.pace == "realtime" or cfg.backend != "sim"
    link = None
    if address is not None:
        link = RobotLink(LinkAddresses.from_base(address), cfg.task_hash(), spaces_of(cfg),
                         run_id=run_dir.name, sndhwm=cfg.link.send_queue,
                         keyframe_every=cfg.link.keyframe_every,
                         heartbeat_interval_s=cfg.link.heartbeat_interval,
                         peer_timeout_s=cfg.link.peer_timeout, keys=_link_keys(cfg, "robot"))
    bar = tqdm(total=cfg.train.total_steps, initial=start_step, unit="step", desc="robot",
               disable=args.no_progress, dynamic_ncols=True)

    def progress(runner) -> None:
        bar.n = runner.env_steps
        bar.set_postfix(runner.progress_fields(), refresh=True)
        if learner is not None:
            learner.check(runner)

    recorder = None
    try:
        if cfg.robot.record:
            recorder = SessionRecorder(session_path(run_dir), spaces_of(cfg),
                                       {"config": yaml.safe_dump(cfg.model_dump(mode="json"),
                                                                 sort_keys=False),
                                        "backend": cfg.backend, "run": run_dir.name,
                                        "link_session": link.session_id if link else ""},
                                       keyframe_every=cfg.link.keyframe_every)
            log.info("recording the session to %s", recorder.path)
        rig = make_rig(cfg)
        runner = RobotRunner(cfg, rig, run_dir, link, realtime=realtime, start_step=start_step,
                             start_episode=start_episode, progress=progress,
                             recorder=recorder)
        if getattr(args, "init_from", None) is not None and args.init_skip_random:
            from learner.checkpoint import policy_state_from_checkpoint

            state = policy_state_from_checkpoint(args.init_from)
            runner.policy.load_weights(state)
            runner.policy_version = state["version"]
            log.info("robot: acting with %s's policy (version %d) from the first step",
                     args.init_from, state["version"])
        _on_signals(runner.request_stop)
        if realtime:
            configure_process(cfg.robot.cpu_affinity)
        with logging_redirect_tqdm():  # log lines above the bar, not through it
            summary = runner.run()
    finally:
        bar.close()
        if recorder is not None:
            recorder.close({"stop_reason": "robot error"})  # no-op after a clean run
        if link is not None:
            link.close()
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
    _steps_and_pace(args)
    if args.keys:
        args.overrides.append(f"link.keys={args.keys}")
    cfg = _load(args, config_path)
    address = args.learner or cfg.link.address
    if not address:
        log.error("no learner address: pass --learner tcp://HOST:PORT (or ipc:///dir) or set "
                  "link.address in %s", config_path)
        return 2
    run_dir = args.out or new_run_dir(Path(cfg.train.run_dir), config_path, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_config(cfg, run_dir)
    args.resume = None
    summary = _run_robot(cfg, address, run_dir, args)
    log.info("robot done: %s", summary)
    return 0


def cmd_robot_check(args: argparse.Namespace) -> int:
    """``madi robot check``: the real rig's preflight table; exit 0 if nothing failed."""
    from robot.preflight import Preflight, format_table

    if args.host:
        args.overrides.append(f"arm.host={args.host}")
    cfg = _load(args, args.config or UR5_CONFIG)
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


def cmd_replay(args: argparse.Namespace) -> int:
    """``madi replay SESSION``: view, replay as a backend, or reenact a recorded session."""
    from robot.config import config_from_dict
    from robot.session_log import SessionLog
    from robot.session_replay import render_view, replay_backend

    session = SessionLog(args.session)
    if session.cut:
        log.warning("%s was cut (%s); using what is readable", args.session,
                    session.cut_detail)
    recorded = yaml.safe_load(session.config_yaml())
    policy = None
    if args.checkpoint is not None:
        from learner.policy import MadiPolicy

        policy = MadiPolicy.from_checkpoint(args.checkpoint)
    if not (args.view or args.backend or args.reenact):
        log.error("say what to do: --view OUT.mp4, --backend or --reenact")
        return 2
    if args.view:
        render_view(session, args.view, policy=policy)
        print(f"wrote {args.view}")
    if args.backend:
        cfg = config_from_dict(recorded, str(args.session), args.overrides)
        out = args.out or Path(args.session).with_suffix("").parent / "replay"
        report = replay_backend(session, cfg, out, policy=policy,
                                policy_version=1 if policy is not None else 0)
        print(yaml.safe_dump({"replay": report}, sort_keys=False), end="")
    if args.reenact:
        return _reenact(session, recorded, args)
    return 0


def _reenact(session, recorded: dict, args: argparse.Namespace) -> int:
    from robot.backends import make_rig
    from robot.config import config_from_dict
    from robot.session_replay import reenact

    target = args.config or "sim"
    if target == "sim":
        cfg = config_from_dict({**recorded, "backend": "sim"}, str(args.session),
                               ["sim.pace=fast", *args.overrides])
    elif target == "ur5" and recorded.get("backend") == "ur5":
        cfg = config_from_dict(recorded, str(args.session), args.overrides)
    else:
        cfg = _load(args, UR5_CONFIG if target == "ur5" else Path(target))
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


def cmd_calibrate(args: argparse.Namespace) -> int:
    """``madi calibrate STEP``: measure one section of the calibration file."""
    from calibration import measure
    from calibration.board import ScreenBoard
    from robot.backends import make_rig
    from robot.calibration_file import save_section

    config_path = args.config or SIM_CONFIG
    first = _load(args, config_path)
    path = Path(args.file or first.calibration or "calibration.yaml").resolve()
    if path.exists():  # measure on top of what is known (intrinsics for hand-eye, ...)
        args.overrides.append(f"calibration={path}")
    views_step = args.step in ("camera", "hand-eye", "monitor")
    if views_step:
        args.overrides.append("camera.subsample=1")  # full-resolution frames
    if first.backend == "sim":
        # One rig for every view: a randomized sim would be a new rig at each pose.
        args.overrides += ["sim.pace=fast", "sim.randomize.enabled=false"]
    cfg = _load(args, config_path)
    method = f"madi calibrate {args.step} ({cfg.backend}, {config_path.name})"
    rig = None if (views_step and args.images) else make_rig(cfg)
    try:
        if rig is not None:
            rig.connect()
        if views_step:
            board = ScreenBoard(rig.display.size_px if rig else _screen_px(cfg),
                                tuple(cfg.monitor.size_m))
            if args.images:
                views = measure.load_views(args.images)
                method += f", views from {args.images}"
            else:
                poses = measure.view_poses(cfg, args.views, seed=cfg.seed)
                views = measure.collect_views(rig, cfg, poses, board.image())
                folder = measure.save_views(views, path.parent / f"views-{args.step}")
                log.info("views saved to %s (reuse them with --images)", folder)
            name, section = {
                "camera": ("camera", lambda: measure.camera_intrinsics(views, board, method)),
                "hand-eye": ("hand_eye", lambda: measure.hand_eye(views, board, cfg, method)),
                "monitor": ("monitor", lambda: measure.monitor_pose(views, board, cfg, method)),
            }[args.step]
            section = section()
        elif args.step == "colour":
            name = "colour"
            section = measure.colour(rig, cfg, measure.view_poses(cfg, 3, seed=cfg.seed),
                                     method)
        else:
            name = "latency"
            section = measure.latency(rig, cfg, args.trials, method)
    finally:
        if rig is not None:
            rig.disconnect()
    save_section(path, name, section)
    print(yaml.safe_dump({name: section.model_dump(mode="json")}, sort_keys=False), end="")
    print(f"written to {path}" + ("" if first.calibration else
                                  f"; use it with `calibration: {path}` in your config"))
    return 0


def _screen_px(cfg) -> tuple[int, int]:
    """Size of the image the display shows: the sim's texture or the real resolution."""
    size = cfg.sim.texture_px if cfg.backend == "sim" else cfg.monitor.resolution_px
    return int(size[0]), int(size[1])


def cmd_eval(args: argparse.Namespace) -> int:
    """``madi eval``: deterministic-policy return and success under distraction sets."""
    from learner.policy import MadiPolicy
    from sim.evaluate import evaluate, format_table, write_results

    config_path = args.config
    if config_path is None:  # the run the checkpoint came from
        config_path = args.checkpoint.resolve().parent.parent / "config.yaml"
        if not config_path.exists():
            log.error("no config.yaml next to %s's run: pass --config", args.checkpoint)
            return 2
    cfg = _load(args, config_path)
    policy = MadiPolicy.from_checkpoint(args.checkpoint)
    eval_seed = cfg.train.eval_seed if args.seed is None else args.seed  # fixed episodes
    results = []
    for spec in args.distractions:
        video = None
        if args.video is not None:
            video = (args.video if len(args.distractions) == 1 else
                     args.video.with_name(f"{args.video.stem}_{Path(spec).name}.mp4"))
        results.append(evaluate(cfg, policy, spec, args.episodes, eval_seed, video))
        log.info("eval %s: return %.1f ± %.1f, success %.0f%%", spec, results[-1].mean_return,
                 results[-1].std_return, 100 * results[-1].success_rate)
    print(format_table(results))
    out = args.out or args.checkpoint.resolve().parent.parent / "eval.json"
    write_results(results, out, {"checkpoint": str(args.checkpoint),
                                 "config": str(config_path), "episodes": args.episodes,
                                 "seed": eval_seed, "variant": cfg.agent.variant})
    print(f"results: {out}")
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    """``madi sessions ls PATH``: one line per session log (PATH a file, or a folder)."""
    from robot.session_replay import format_sessions, list_sessions

    rows = list_sessions(args.dir)
    if not rows:
        print(f"no session logs (*.mcap) under {args.dir}")
        return 1
    print(format_sessions(rows))
    return 0


def cmd_learner(args: argparse.Namespace) -> int:
    """The learner process alone: bind, learn from a robot, publish weights."""
    from learner.process import LearnerProcess
    from link.endpoints import LearnerLink, LinkAddresses, LinkError
    from robot.runner import spaces_of
    from robot.task import transition_bounds

    if args.keys:
        args.overrides.append(f"link.keys={args.keys}")
    cfg = _load(args, args.config)
    address = args.bind or cfg.link.address
    if not address:
        log.error("no address to bind: pass --bind tcp://0.0.0.0:5555 (or ipc:///dir) or set "
                  "link.address in %s", args.config)
        return 2
    run_dir = args.out or new_run_dir(Path(cfg.train.run_dir), args.config, cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        _write_config(cfg, run_dir)
    _log_to_file(run_dir / "learner.log")
    try:
        link = LearnerLink(LinkAddresses.from_base(address), cfg.task_hash(), spaces_of(cfg),
                           run_id=run_dir.name,
                           heartbeat_interval_s=cfg.link.heartbeat_interval,
                           peer_timeout_s=cfg.link.peer_timeout,
                           keys=_link_keys(cfg, "learner"))
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
        _on_signals(learner.request_stop)
        if args.pretrain:
            learner.pretrain(_recorded_transitions(cfg, args.pretrain),
                             args.pretrain_updates)
        if args.refill:
            session = _session_logs(cfg, [args.refill])[0]
            learner.refill(session.transitions(), session.meta.get("link_session", ""))
        log.info("learner bound to %s, task hash %s, run dir %s", address, cfg.task_hash(),
                 run_dir)
        summary = learner.run()
    log.info("learner done: %d env steps, %d updates, %d transitions in the replay buffer "
             "(%s); link %s", summary["env_steps"], summary["updates"],
             summary["replay_size"], summary["stop_reason"], summary["link"])
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """``madi keys new|allow|pin``: make key pairs, allow a robot, pin the learner."""
    from link.keys import allow_robot, fingerprint, new_keys, pin_learner, read_public_key

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


def _session_logs(cfg, sessions: list[Path]) -> list[SessionLog]:
    """Open recorded sessions, each checked to record the spaces of ``cfg``.

    Raises:
        SessionLogError: If a session cannot be read or records other spaces.
    """
    from robot.config import config_from_dict
    from robot.runner import spaces_of
    from robot.session_log import SessionLog, SessionLogError

    logs = [SessionLog(path) for path in sessions]
    want = spaces_of(cfg)
    for session in logs:
        have = spaces_of(config_from_dict(yaml.safe_load(session.config_yaml()),
                                          str(session.path)))
        if have != want:
            raise SessionLogError(f"{session.path} records spaces {have}, this run needs "
                                  f"{want}: pretrain from sessions of the same task")
    return logs


def _recorded_transitions(cfg, sessions: list[Path]):
    """Transitions of recorded sessions whose spaces fit ``cfg`` (for --pretrain).

    Raises:
        SessionLogError: If a session cannot be read or records other spaces.
    """
    for session in _session_logs(cfg, sessions):  # all checked before any is loaded
        yield from session.transitions()


def build_parser() -> argparse.ArgumentParser:
    """The ``madi`` argument parser (one subparser per command)."""
    parser = argparse.ArgumentParser(prog="madi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sim", help="run a scripted policy in the MuJoCo mirror; `madi sim "
                       "controller`: an emulated UR controller for ur_rtde")
    p.add_argument("action", nargs="?", choices=["controller"],
                   help="controller: serve RTDE, dashboard and script ports backed by the "
                   "mirror until Ctrl-C (sim/ur_controller.py)")
    p.add_argument("--model", choices=["ur5", "ur5e"], default="ur5",
                   help="controller: ur5 = CB3 at 125 Hz, ur5e = e-series at 500 Hz")
    p.add_argument("--host", default="127.0.0.1",
                   help="controller: address of its ports (any 127.x.y.z runs beside others)")
    _add_config_args(p, SIM_CONFIG)
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--policy", choices=["servo", "random"], default="servo")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for one mp4 and one PNG strip per episode")
    p.set_defaults(func=cmd_sim)

    p = sub.add_parser("train", help="train MaDi-SAC (the sim by default; the real UR5 "
                       "with a ur5 config)")
    _add_config_args(p, None)
    p.add_argument("--sync", action="store_true",
                   help="one process: act, step the sim in fast pace, update (no link)")
    _add_pretrain_args(p)
    _add_init_args(p)
    p.add_argument("--steps", type=int, default=None, help="env steps (train.total_steps)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: train.run_dir/<time>_<config>_s<seed>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a run from its last checkpoint (its config.yaml)")
    p.add_argument("--pace", choices=["realtime", "fast"], default=None,
                   help="sim pace (sim.pace): realtime = 40 ms agent steps on the wall "
                   "clock, as on the real arm; fast = as fast as the loop runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("learner", help="run the learner process alone (e.g. on a GPU box)")
    _add_config_args(p, SIM_CONFIG)
    p.add_argument("--bind", default=None, metavar="ADDR",
                   help="where robots connect: tcp://0.0.0.0:5555 or ipc:///dir "
                   "(default: link.address)")
    p.add_argument("--out", type=Path, default=None, help="run folder")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue from RUN_DIR/checkpoints/learner.pt")
    _add_pretrain_args(p)
    _add_init_args(p)
    p.add_argument("--exit-with-robot", action="store_true",
                   help="exit when the robot shuts down (used by madi train)")
    p.add_argument("--refill", type=Path, default=None, metavar="SESSION",
                   help="after a crash (madi train restarts its learner with it): add the "
                   "transitions SESSION recorded since the checkpoint to the replay buffer, "
                   "counted as env steps")
    p.add_argument("--keys", default=None, metavar="DIR",
                   help="CURVE keys (madi keys new --learner DIR): needed to bind tcp beyond "
                   "loopback (default: link.keys)")
    p.set_defaults(func=cmd_learner)

    p = sub.add_parser("robot", help="run the robot process alone, streaming to a learner; "
                       "`madi robot check`: preflight of the real rig")
    p.add_argument("action", nargs="?", choices=["run", "check"], default="run",
                   help="run (default): the robot process; check: preflight that moves "
                   "nothing (default config configs/ur5_visual_reacher.yaml)")
    _add_config_args(p, None)
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

    p = sub.add_parser("replay", help="look at, replay or reenact a recorded session")
    p.add_argument("session", type=Path, help="a session log (runs/<run>/session.mcap)")
    p.add_argument("--view", type=Path, default=None, metavar="OUT.mp4",
                   help="write a video: frames (+ masks with --checkpoint), reward, joints")
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

    p = sub.add_parser("eval", help="evaluate a policy (deterministic) under distraction "
                       "sets in the sim")
    p.add_argument("--checkpoint", type=Path, required=True, help="a policy.pt")
    _add_config_args(p, None)
    p.add_argument("--distractions", nargs="+", default=["none", "easy", "hard"],
                   metavar="SET", help="none | easy | hard | a folder of videos/images "
                   "(default: none easy hard)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per set (default 10)")
    p.add_argument("--video", type=Path, default=None, metavar="OUT.mp4",
                   help="camera frames with the Masker's mask beside them")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default: eval.json in the checkpoint's run)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("calibrate", help="measure the rig: camera, hand-eye, monitor, "
                       "colour, latency (into the calibration file)")
    p.add_argument("step", choices=["camera", "hand-eye", "monitor", "colour", "latency"])
    _add_config_args(p, None)
    p.add_argument("--file", type=Path, default=None,
                   help="calibration file to update (default: the config's calibration, "
                   "else ./calibration.yaml)")
    p.add_argument("--images", type=Path, default=None, metavar="DIR",
                   help="camera/hand-eye/monitor: solve from saved views (frame_NNN.png + "
                   "views.json) instead of moving the arm")
    p.add_argument("--views", type=int, default=15, help="poses to visit (default 15)")
    p.add_argument("--trials", type=int, default=10, help="latency: trials (default 10)")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("sessions", help="list recorded sessions")
    p.add_argument("action", choices=["ls"])
    p.add_argument("dir", type=Path, nargs="?", default=Path("runs"), metavar="PATH",
                   help="a session log, or a folder searched for them (default runs/)")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("keys", help="CURVE keys of a tcp link: new key pairs, allow a robot "
                       "on the learner, pin the learner on the robot (docs/security.md)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``madi`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from learner.agent import NonFiniteError
    from learner.checkpoint_file import CheckpointError
    from learner.metrics import MetricsSinkError
    from link.endpoints import LinkError
    from robot.backends.base import DeviceError
    from robot.calibration_file import CalibrationError
    from robot.distractions import DistractionError
    from robot.session_log import SessionLogError

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


if __name__ == "__main__":
    sys.exit(main())
