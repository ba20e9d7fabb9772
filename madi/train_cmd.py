"""``madi train``: a supervised learner child and the robot process, or ``--sync``."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from learner.agent import MadiSacAgent
from learner.checkpoint import check_init_source
from learner.checkpoint_file import CheckpointError
from learner.metrics import MetricsWriter, evaluation_row
from learner.process import read_progress
from learner.train_sync import train_sync, write_final_eval
from madi.common import (
    INTERRUPTED,
    QUICK_CONFIG,
    SIM_CONFIG,
    add_config_args,
    load_args_config,
    log,
    new_run_dir,
    steps_and_pace,
    write_config,
)
from madi.learner_cmd import (
    add_init_args,
    add_pretrain_args,
    learner_command,
    recorded_transitions,
)
from madi.robot_cmd import robot_process
from robot.config import Config
from robot.distractions import make_distractions
from robot.rerun_log import RerunView
from robot.runner import spaces_of
from robot.supervisor import LearnerSupervisor
from robot.viewer import MASK_PERIOD, ViewedEnv, ViewerSink


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``madi train``."""
    add_config_args(p, None)
    p.add_argument("--sync", action="store_true",
                   help="one process: act, step the sim in fast pace, update (no link)")
    add_pretrain_args(p)
    add_init_args(p)
    p.add_argument("--steps", type=int, default=None, help="env steps (train.total_steps)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: train.run_dir/<time>_<config>_s<seed>)")
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                   help="continue a run from its last checkpoint (its config.yaml)")
    p.add_argument("--pace", choices=["realtime", "fast"], default=None,
                   help="sim pace (sim.pace): realtime = 40 ms agent steps on the wall "
                   "clock, as on the real arm; fast = as fast as the loop runs")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--viz", choices=["rerun"], default=None,
                   help="watch the run live in Rerun (the [viz] extra): camera, the Masker's "
                   "mask, reward, joints, speedJ, events")
    p.add_argument("--viz-save", type=Path, default=None, metavar="FILE.rrd",
                   help="with --viz rerun: write the view to this file, not to a viewer")
    p.set_defaults(func=cmd_train)


def default_train_config() -> Path:
    """The paper's learner config when CUDA is available, the CPU-feasible one otherwise."""
    if torch.cuda.is_available():
        log.info("config: %s (CUDA available: the paper's learner sizes)", SIM_CONFIG.name)
        return SIM_CONFIG
    log.info("config: %s (no CUDA: the paper's learner takes ~30 s per update on a CPU, "
             "so a smaller learner of the same algorithm; pass --config to choose)",
             QUICK_CONFIG.name)
    return QUICK_CONFIG


def train_config(args: argparse.Namespace) -> tuple[Path, Config, Path]:
    """Config path, config and run dir of ``madi train`` (a new run, or ``--resume``'s)."""
    steps_and_pace(args)
    if args.resume is not None:
        check_resumable(args.resume)
        config_path = args.resume / "config.yaml"
        return config_path, load_args_config(args, config_path), args.resume
    config_path = args.config or default_train_config()
    cfg = load_args_config(args, config_path)
    run_dir = args.out if args.out else new_run_dir(Path(cfg.train.run_dir), config_path,
                                                    cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    return config_path, cfg, run_dir


def check_resumable(run_dir: Path) -> None:
    """Check, before anything starts, that ``run_dir`` holds what ``--resume`` reads.

    Raises:
        CheckpointError: If ``run_dir`` has no ``config.yaml``, no
            ``checkpoints/learner.pt`` or no valid ``checkpoints/progress.json``; the
            message names the missing file and what to do instead.
    """
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
    config_path, cfg, run_dir = train_config(args)
    if args.sync and args.pretrain:
        log.error("--pretrain works on the learner process: drop --sync")
        return 2
    if args.pretrain:  # check the sessions now, not in the learner child
        for _ in recorded_transitions(cfg, args.pretrain):
            break
    if args.init_from is None and (args.init_replay_mix or args.init_skip_random):
        log.error("--init-replay-mix and --init-skip-random go with --init-from RUN")
        return 2
    if not 0.0 <= args.init_replay_mix < 1.0:
        log.error("--init-replay-mix must be in [0, 1), got %s", args.init_replay_mix)
        return 2
    if args.init_from is not None:
        sp = spaces_of(cfg)
        source = check_init_source(args.init_from, cfg.agent, sp.image_shape, sp.proprio_dim,
                                   sp.action_dim)
        log.info("starting from %s", source)
    if cfg.backend != "sim" and args.sync:
        log.error("--sync runs the sim in lockstep; on the real arm (%s) the robot and the "
                  "learner always run as two processes: drop --sync", config_path)
        return 2
    if args.viz_save is not None and args.viz is None:
        log.error("--viz-save goes with --viz rerun")
        return 2
    view = None
    if args.viz:  # before anything starts: a missing [viz] extra fails here
        view = RerunView(run_dir.name, args.viz_save, cfg.arm.model, mask_period=MASK_PERIOD)
    write_config(cfg, run_dir)
    log.info("run dir %s (config %s, task hash %s, variant %s)", run_dir, config_path.name,
             cfg.task_hash(), cfg.agent.variant)
    try:
        if args.sync:
            summary = train_in_one_process(cfg, run_dir, args, view)
        else:
            summary = train_two_processes(cfg, run_dir, args, view)
    finally:
        if view is not None:
            view.close()
    if summary is None:
        return 1
    if summary.endswith(INTERRUPTED):  # stopped by a signal: exit now, files are flushed
        log.info("stopped: %s; plot the curve with: python benchmarks/plot_curves.py "
                 "--run %s=%s --out curve.png", summary, cfg.agent.variant, run_dir)
        return 0
    # Imported here: matplotlib (~3 s) only when a run ends, not in every madi command.
    from learner.plots import plot_learning_curves

    png = plot_learning_curves({cfg.agent.variant: run_dir}, run_dir / "learning_curve.png",
                               title=f"{config_path.stem}, seed {cfg.seed}")
    log.info("done: %s; curve %s", summary, png)
    return 0


def train_in_one_process(cfg: Config, run_dir: Path, args: argparse.Namespace,
                         view: RerunView | None = None) -> str:
    """``--sync``: :func:`learner.train_sync.train_sync` on the sim env; a summary line.

    With a ``view``, the training env's steps and the agent's masks go to it.
    """
    # The sim (MuJoCo, EGL) is imported only here: a robot PC may have no EGL.
    from sim.env import VisualReacherEnv

    env = VisualReacherEnv(cfg)
    eval_env = VisualReacherEnv(cfg, make_distractions(
        cfg.train.eval_distractions, tuple(cfg.sim.texture_px), cfg.task))
    sink = agent = None
    if view is not None:  # the agent train_sync would make, built here for its Masker
        sp = spaces_of(cfg)
        agent = MadiSacAgent(cfg.agent, sp.image_shape, sp.proprio_dim, sp.action_dim)
        view.policy = agent.make_policy()
        sink = ViewerSink(view)
    try:
        summary = train_sync(
            env if sink is None else ViewedEnv(env, sink), cfg.agent, run_dir,
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
            agent=agent,
        )
    finally:
        if sink is not None:
            sink.close()
        env.close()
        eval_env.close()
    evals = summary["eval_returns"]
    last = f"{evals[-1][1]:.1f}" if evals else "-"
    return (f"{summary['env_steps']} env steps, {summary['updates']} updates in "
            f"{summary['wall_s']:.0f} s; last eval return {last}")


def train_two_processes(cfg: Config, run_dir: Path, args: argparse.Namespace,
                        view: RerunView | None = None) -> str | None:
    """Learner as a child process, robot process here; ``link.address`` or a private ipc dir.

    With a ``view``, the robot process feeds it (:func:`robot.assemble.run_robot`).
    """
    ipc_dir = None if cfg.link.address else tempfile.mkdtemp(prefix="madi-")
    try:
        return _train_at(cfg.link.address or f"ipc://{ipc_dir}", cfg, run_dir, args, view)
    finally:
        if ipc_dir is not None:
            shutil.rmtree(ipc_dir, ignore_errors=True)


def _train_at(address: str, cfg: Config, run_dir: Path, args: argparse.Namespace,
              view: RerunView | None) -> str | None:
    """Run the robot here with a supervised learner child bound to ``address``."""
    learner = LearnerSupervisor(
        lambda restart, refill: learner_command(address, run_dir, args, restart, refill),
        run_dir, cfg.train.learner_restarts)
    learner.start()
    try:
        result = robot_process(cfg, address, run_dir, args, learner=learner, view=view)
    except BaseException:
        learner.terminate()  # it checkpoints and exits; no robot is coming
        raise
    finally:
        code = learner.wait()
    if learner.failure is not None:
        log.error("%s", learner.failure)
        return None
    if code != 0:
        return None
    if cfg.backend == "sim" and not result.endswith(INTERRUPTED):
        result += final_evaluation(cfg, run_dir)
    return result


def final_evaluation(cfg: Config, run_dir: Path) -> str:
    """The sim run's final policy on ``train.final_eval_episodes`` fixed episodes.

    Only for a run that made its ``train.total_steps`` (the learner's checkpoint says so).

    The same episodes (``train.eval_seed``, ``train.eval_distractions``) as ``--sync``'s
    final evaluation and ``madi eval``, in fast pace, with the learner's last
    ``checkpoints/policy.pt``; writes ``final_eval.json`` and the
    ``charts/final_eval_return`` row of ``metrics.csv`` (and the learner's TensorBoard and
    W&B runs) as ``--sync`` does.

    Returns:
        ``"; final eval M over N fixed episodes"`` for the summary line ("" with none).
    """
    episodes = cfg.train.final_eval_episodes
    env_steps = read_progress(run_dir)["env_steps"]
    if episodes <= 0 or env_steps < cfg.train.total_steps:  # none, or the run stopped early
        return ""
    # Imported here, as in --sync: the sim (MuJoCo, EGL) only where it runs.
    from learner.policy import MadiPolicy
    from sim.evaluate import evaluate

    policy = MadiPolicy.from_checkpoint(run_dir / "checkpoints" / "policy.pt")
    result = evaluate(cfg, policy, cfg.train.eval_distractions, episodes,
                      seed=cfg.train.eval_seed)
    write_final_eval(run_dir, env_steps, cfg.train.eval_seed, result.returns)
    metrics = MetricsWriter(run_dir / "metrics.csv", cfg.train.sinks())
    try:
        metrics.write(evaluation_row(env_steps, result.returns, final=True))
    finally:
        metrics.close()
    return f"; final eval {result.mean_return:.1f} over {episodes} fixed episodes"
