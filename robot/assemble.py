"""The robot process put together: link, session recorder, rig and runner, run to the end.

:func:`run_robot` is what ``madi train`` (with a supervised learner child) and
``madi robot`` (a learner elsewhere) run: it connects to the learner at ``address`` (or
acts alone without one), records the session, builds the rig of ``cfg.backend`` and runs
the agent loop (:class:`robot.runner.RobotRunner`) under a progress bar until the steps
are done or a signal stops it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from learner.checkpoint import policy_state_from_checkpoint
from learner.process import read_progress
from link.endpoints import LinkAddresses, RobotLink
from link.keys import CurveKeys
from robot.backends import make_rig
from robot.config import Config
from robot.recorder import SessionRecorder, session_path
from robot.rerun_log import RerunView
from robot.runner import RobotRunner, spaces_of
from robot.session_schemas import SceneFrames
from robot.supervisor import LearnerSupervisor
from robot.timing import configure_process
from robot.viewer import ViewerSink

log = logging.getLogger("madi")


def stop_on_signals(stop: Callable[[str], None]) -> None:
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


def run_robot(cfg: Config, address: str | None, run_dir: Path, *, keys: CurveKeys | None,
              resume: Path | None = None, init_from: Path | None = None,
              skip_random: bool = False, show_progress: bool = True,
              learner: LearnerSupervisor | None = None,
              view: RerunView | None = None) -> dict[str, Any]:
    """Run the robot process to its end and return the runner's summary.

    Args:
        cfg: The validated config.
        address: Base address of the learner's link, or None to act alone.
        run_dir: The run folder (session log, episodes.csv, timing.json, ...).
        keys: The robot's CURVE keys for a tcp link, or None.
        resume: A run folder to continue (its ``checkpoints/progress.json`` counters).
        init_from: With ``skip_random``: a run or checkpoint whose policy acts from the
            first step.
        skip_random: Act with ``init_from``'s policy instead of at random at first.
        show_progress: Show a progress bar.
        learner: The supervised learner child of ``madi train``, checked every step.
        view: A Rerun view of the run (``--viz rerun``), fed by a
            :class:`robot.viewer.ViewerSink` with masks of the local policy; its owner
            closes it.

    Returns:
        :meth:`robot.runner.RobotRunner.run`'s summary.
    """
    torch.set_num_threads(cfg.robot.torch_threads)
    torch.manual_seed(cfg.seed)  # the policy's sampled actions
    start_step = start_episode = 0
    if resume is not None:
        progress = read_progress(resume)
        start_step, start_episode = progress["env_steps"], progress["episodes"]
    realtime = cfg.sim.pace == "realtime" or cfg.backend != "sim"
    link = None
    if address is not None:
        link = RobotLink(LinkAddresses.from_base(address), cfg.task_hash(), spaces_of(cfg),
                         run_id=run_dir.name, sndhwm=cfg.link.send_queue,
                         keyframe_every=cfg.link.keyframe_every,
                         heartbeat_interval_s=cfg.link.heartbeat_interval,
                         peer_timeout_s=cfg.link.peer_timeout, keys=keys)
    bar = tqdm(total=cfg.train.total_steps, initial=start_step, unit="step", desc="robot",
               disable=not show_progress, dynamic_ncols=True)

    def progress(runner: RobotRunner) -> None:
        bar.n = runner.env_steps
        bar.set_postfix(runner.progress_fields(), refresh=True)
        if learner is not None:
            learner.check(runner)

    recorder = None
    viewer = ViewerSink(view) if view is not None else None
    try:
        if cfg.robot.record:
            recorder = SessionRecorder(session_path(run_dir), spaces_of(cfg),
                                       {"config": yaml.safe_dump(cfg.model_dump(mode="json"),
                                                                 sort_keys=False),
                                        "backend": cfg.backend, "run": run_dir.name,
                                        "link_session": link.session_id if link else ""},
                                       keyframe_every=cfg.link.keyframe_every,
                                       frames=SceneFrames.from_config(cfg))
            log_lines = recorder.log_handler()
            logging.getLogger().addHandler(log_lines)
            log.info("recording the session to %s", recorder.path)
        rig = make_rig(cfg)
        runner = RobotRunner(cfg, rig, run_dir, link, realtime=realtime, start_step=start_step,
                             start_episode=start_episode, progress=progress,
                             recorder=recorder, viewer=viewer)
        if view is not None:
            view.policy = runner.policy  # masks from the viewer thread, at its low rate
        if init_from is not None and skip_random:
            state = policy_state_from_checkpoint(init_from)
            runner.policy.load_weights(state)
            runner.policy_version = state["version"]
            log.info("robot: acting with %s's policy (version %d) from the first step",
                     init_from, state["version"])
        stop_on_signals(runner.request_stop)
        if realtime:
            configure_process(cfg.robot.cpu_affinity)
        with logging_redirect_tqdm():  # log lines above the bar, not through it
            return runner.run()
    finally:
        bar.close()
        if viewer is not None:
            viewer.close()
        if recorder is not None:
            logging.getLogger().removeHandler(log_lines)
            recorder.close({"stop_reason": "robot error"})  # no-op after a clean run
        if link is not None:
            link.close()
