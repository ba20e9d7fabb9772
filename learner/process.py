"""The learner process: transitions in, MaDi-SAC updates, weights out.

:class:`LearnerProcess` owns a :class:`~link.endpoints.LearnerLink` (bound; robots connect
to it), a replay buffer and a :class:`~learner.agent.MadiSacAgent`. Its loop:

- receive transitions (without waiting while there is update work), rebuild them with a
  :class:`~link.messages.TransitionAssembler` and add them to the replay buffer;
- update while the cap allows: after ``init_random_steps`` env steps, at most
  ``updates_per_step`` updates per env step received (the same credit rule as the
  synchronous loop), never while the robot has paused the learner (episode resets);
- publish the actor's weights (Masker, encoder, actor; ``version`` = update count) every
  ``train.publish_every`` updates on the conflated channel;
- write ``metrics.csv`` rows (episode returns rebuilt from transitions, losses,
  throughput, link counters) and checkpoints (``checkpoints/learner.pt`` full state,
  ``checkpoints/policy.pt``, ``checkpoints/progress.json``) every
  ``train.checkpoint_every`` env steps, when the robot is lost, and on exit; with them
  the last transition taken, from which a learner restarted after a crash refills its
  replay buffer out of the robot's session log (:meth:`LearnerProcess.refill`).

Threads: the link's sockets belong to one I/O thread ("learner-link") that receives and
assembles transitions, answers handshakes, sends heartbeats and publishes the newest
weights every few milliseconds, so an update that takes seconds (the paper's networks on
a CPU) never makes the learner look dead to the robot. The main thread owns the agent and
the replay buffer; the two exchange assembled steps (and the robot's evaluation results,
logged as ``charts/eval_return``) through queues and the newest weights through a one-slot
mailbox.

It never touches hardware and never waits on the robot: a robot that dies leaves the
learner with its state; a new robot session (same task hash) is accepted at any time.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learner.agent import MadiSacAgent
from learner.checkpoint import load_checkpoint, save_run_checkpoints, start_from
from learner.config import AgentConfig
from learner.metrics import MetricsWriter, SinkConfig, evaluation_row
from learner.replay_buffer import Batch, ReplayBuffer, sample_mixed
from link.endpoints import LearnerLink
from link.messages import (
    Evaluation,
    Shutdown,
    Transition,
    TransitionAssembler,
    TransitionBounds,
    Weights,
)

__all__ = ["LearnerProcess", "read_progress"]

logger = logging.getLogger(__name__)



def read_progress(run_dir: str | Path) -> dict[str, int]:
    """The step counters of a run's last checkpoint (``checkpoints/progress.json``).

    Args:
        run_dir: The run directory.

    Returns:
        ``{"env_steps", "episodes", "updates"}``.

    Raises:
        FileNotFoundError: If the run has no checkpoint yet.
        ValueError: If the file is not valid.
    """
    path = Path(run_dir) / "checkpoints" / "progress.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} has no checkpoint to resume "
                                "from (a run writes one every train.checkpoint_every steps)")
    try:
        data = json.loads(path.read_text())
        return {k: int(data[k]) for k in ("env_steps", "episodes", "updates")}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid progress file ({err}); resume from a run "
                         "whose checkpoint was written completely") from None


def _assemble(transitions: Iterable[Transition], assembler: TransitionAssembler):
    """``(transition, replay.add arguments)`` of each transition that assembles (no gap)."""
    for t in transitions:
        step = assembler.push(t)
        if step is not None:
            yield t, step


@dataclass
class _Window:
    """Accumulators of one metrics row: since ``start`` (perf_counter s)."""

    start: float
    env_steps: int
    updates: int
    update_time: float = 0.0
    loss_count: int = 0
    loss_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))


class LearnerProcess:
    """The learner's loop (see the module docstring).

    Args:
        cfg: Learner hyperparameters.
        link: A bound learner link; its spaces give the observation/action shapes.
        run_dir: Folder for metrics.csv and checkpoints/.
        publish_every: Updates between weight publications.
        checkpoint_every: Env steps between checkpoints (None: only on robot loss/exit).
        log_every: Env steps between loss/throughput rows.
        save_replay: Include the replay buffer in the full checkpoint.
        resume: A run directory whose ``checkpoints/learner.pt`` to continue from.
        exit_on_robot_shutdown: Leave the loop when the robot says it shuts down (``madi
            train``); otherwise keep serving until :meth:`request_stop` (``madi learner``).
        init_from: Another run (directory or ``learner.pt``) whose trained networks and
            temperature this run starts from (sim -> real fine-tuning; see
            :func:`learner.checkpoint.init_from_checkpoint`). Ignored with ``resume``.
        prior_mix: With ``init_from``: share of every batch drawn from that run's replay
            buffer (when its checkpoint holds one), in [0, 1); 0: start with an empty one.
        skip_random: Update from the first env step instead of after
            ``init_random_steps`` (the robot acts with the loaded policy from the start).
        sinks: Where the metrics rows also go (TensorBoard, W&B); None: metrics.csv only.
        bounds: Value ranges of a transition from the robot (:func:`robot.task.
            transition_bounds`); one outside them is dropped and counted
            (``link/out_of_bounds``). None: shapes and finiteness only.

    Raises:
        learner.checkpoint_file.CheckpointError: If ``resume`` has no usable checkpoint, or
            ``init_from`` cannot initialise this agent.
        ValueError: If ``prior_mix`` is outside [0, 1).
    """

    def __init__(self, cfg: AgentConfig, link: LearnerLink, run_dir: str | Path, *,
                 publish_every: int = 10, checkpoint_every: int | None = None,
                 log_every: int = 1000, save_replay: bool = False,
                 resume: str | Path | None = None, exit_on_robot_shutdown: bool = False,
                 init_from: str | Path | None = None, prior_mix: float = 0.0,
                 skip_random: bool = False, sinks: SinkConfig | None = None,
                 bounds: TransitionBounds | None = None):
        spaces = link.spaces
        self.cfg = cfg
        self.link = link
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.publish_every = int(publish_every)
        self.checkpoint_every = checkpoint_every
        self.log_every = int(log_every)
        self.save_replay = bool(save_replay)
        self.exit_on_robot_shutdown = bool(exit_on_robot_shutdown)
        self.sinks = sinks
        self.agent = MadiSacAgent(cfg, spaces.image_shape, spaces.proprio_dim, spaces.action_dim)

        def new_replay(seed: int) -> ReplayBuffer:
            return ReplayBuffer(cfg.replay_capacity, spaces.frame_shape, spaces.frame_stack,
                                spaces.proprio_dim, spaces.action_dim, seed=seed,
                                frame_codec=cfg.replay_frame_codec, n_step=cfg.n_step,
                                gamma=cfg.gamma)

        self.replay = new_replay(cfg.seed)
        self.assembler = TransitionAssembler(spaces, bounds)
        self.env_steps = 0
        self.episodes = 0
        self.prior_mix = float(prior_mix)
        self.prior: ReplayBuffer | None = None
        self.random_steps = 0 if skip_random else cfg.init_random_steps
        #: ``{"robot_session", "episode", "step"}`` of the last transition taken (None:
        #: none yet); saved with every checkpoint, read back by :meth:`refill`.
        self.last_transition: dict[str, Any] | None = None
        self._replay_restored = False
        # Serve weights from the start: a resumed run, or a loaded policy that acts at once.
        self._publish_at_start = resume is not None or (init_from is not None and skip_random)
        if resume is not None:
            self._resume(Path(resume))
        elif init_from is not None:
            self.prior = start_from(init_from, self.agent, prior_mix,
                                    lambda: new_replay(cfg.seed + 1))
        self._stop = threading.Event()
        self.stop_reason = ""
        self._episode_returns: dict[int, float] = defaultdict(float)
        self._episode_lengths: dict[int, int] = defaultdict(int)
        self._robot_seen = False
        self._robot_lost_saved = True
        self._robot_lost = threading.Event()
        self._last_version_seen = 0
        self._steps: queue.SimpleQueue = queue.SimpleQueue()
        self._evaluations: queue.SimpleQueue = queue.SimpleQueue()  # the robot's results
        self._outbox: Weights | None = None
        # Written by the main thread, read by the link thread: every key exists from the
        # start, so the link thread's copy never sees the dict change size.
        self._status: dict[str, int] = {"updates": 0, "replay_size": 0,
                                        "updates_per_s_x100": 0, "updates_due": 0}
        self._io_stop = threading.Event()
        self._io_error: BaseException | None = None

    def _resume(self, run_dir: Path) -> None:
        path = run_dir / "checkpoints" / "learner.pt"
        counters = load_checkpoint(path, self.agent, self.replay, require_replay=False)
        if len(self.replay) == 0:
            logger.warning("learner: %s holds no replay buffer (train.save_replay was false); "
                           "the replay starts empty", path)
        self.env_steps = int(counters.get("env_steps", 0))
        self.episodes = int(counters.get("episodes", 0))
        self.last_transition = counters.get("last_transition")
        self._replay_restored = len(self.replay) > 0
        logger.info("learner: resumed from %s at env step %d, update %d", path, self.env_steps,
                    self.agent.num_updates)

    def _sample(self) -> Batch:
        """A batch: ``prior_mix`` of it from the init-from run's replay, the rest new data."""
        return sample_mixed(self.replay, self.prior, self.prior_mix, self.cfg.batch_size)

    def pretrain(self, transitions: Iterable[Transition], updates: int | None = None) -> dict:
        """Load recorded transitions into the replay buffer, then update on them.

        Offline pretraining, or continuing after a crash: the transitions of earlier
        sessions (:meth:`robot.session_log.SessionLog.transitions`) are assembled exactly as
        the link's are and added before the robot's first step. Call before :meth:`run`.

        Args:
            transitions: Recorded :class:`~link.messages.Transition` messages, in order.
            updates: Gradient updates to run on them afterwards (None:
                ``updates_per_step`` x transitions loaded, the online ratio).

        Returns:
            ``{"loaded", "gaps", "bad_shape", "updates"}``.
        """
        assembler = TransitionAssembler(self.link.spaces)
        loaded = 0
        for _, step in _assemble(transitions, assembler):
            self.replay.add(**step)
            loaded += 1
        n = round(self.cfg.updates_per_step * loaded) if updates is None else int(updates)
        n = n if len(self.replay) >= self.cfg.batch_size else 0
        for _ in range(n):
            if self._stop.is_set():
                break
            self.agent.update(self._sample())
        report = {"loaded": loaded, "gaps": assembler.counters["gaps"],
                  "bad_shape": assembler.counters["bad_shape"], "updates": n}
        logger.info("learner: pretrained on %d recorded transitions (%d updates, %d gaps, "
                    "%d of the wrong shape)", loaded, n, report["gaps"], report["bad_shape"])
        return report

    def refill(self, sessions: Sequence[tuple[Iterable[Transition], str]]) -> dict[str, int]:
        """After a crash or on ``--resume``: take back the robot's recorded transitions.

        ``madi train`` restarts a crashed learner, and resumes a run, with the run's session
        logs in recording order. A session before the one holding the checkpoint's last
        transition (:attr:`last_transition`) is all from before the checkpoint; in that
        session, the transitions after it are new; a later session (or every session, when
        none holds it) is all new. New transitions are added to the replay buffer and
        counted as env steps and episodes, so the counters and the update cap go on as if
        the learner had not stopped. When the checkpoint holds no replay buffer
        (``train.save_replay: false``) the earlier transitions are added too, without
        being counted again. Call before :meth:`run`.

        Args:
            sessions: Per session log, in recording order: its recorded transitions, in
                order (:meth:`robot.session_log.SessionLog.transitions`), and the link
                session id of the robot that recorded them (the log's ``link_session``
                metadata; "" if unknown).

        Returns:
            ``{"added", "counted", "gaps"}``: transitions added to the replay buffer, those
            of them counted as new env steps, and deltas left out for a missing keyframe.
        """
        marked, position = self._checkpoint_mark([sid for _, sid in sessions])
        added = counted = gaps = 0
        for i, (transitions, robot_session) in enumerate(sessions):
            if marked is not None and i < marked and self._replay_restored:
                continue  # all before the checkpoint, and the buffer has them
            assembler = TransitionAssembler(self.link.spaces)
            for t, step in _assemble(transitions, assembler):
                new = marked is None or i > marked or (
                    i == marked and (t.episode_id, t.step_index) > position)
                if not new and self._replay_restored:
                    continue
                self.replay.add(**step)
                added += 1
                if new:
                    counted += 1
                    self._count_step(t, step, robot_session)
            gaps += assembler.counters["gaps"]
        logger.info("learner: refilled %d recorded transitions from %d session log(s), %d of "
                    "them since the checkpoint (counted as env steps; %d gaps); now at env "
                    "step %d, %d in the replay buffer", added, len(sessions), counted, gaps,
                    self.env_steps, len(self.replay))
        return {"added": added, "counted": counted, "gaps": gaps}

    def _checkpoint_mark(self, robot_sessions: list[str]) -> tuple[int | None, tuple[int, int]]:
        """The checkpoint's last transition: which session holds it, and where.

        Returns:
            The index of the last session recorded by the mark's robot session (None: none
            was, or there is no mark) and the mark's (episode, step) in it.
        """
        mark = self.last_transition
        if mark is None or not mark.get("robot_session"):
            return None, (-1, -1)
        holders = [i for i, sid in enumerate(robot_sessions) if sid == mark["robot_session"]]
        if not holders:
            return None, (-1, -1)
        return holders[-1], (int(mark["episode"]), int(mark["step"]))

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to end (thread- and signal-safe); it checkpoints and returns."""
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    # ------------------------------------------------------------------ loop
    def run(self, max_seconds: float | None = None) -> dict[str, Any]:
        """Serve until a stop request (or the robot's shutdown, see the constructor).

        Args:
            max_seconds: Optional wall-time bound (tests).

        Returns:
            Summary: ``env_steps``, ``updates``, ``episodes``, ``stop_reason``,
            ``replay_size``, ``link`` counters and ``assembler`` counters.

        Raises:
            RuntimeError: If the link thread failed (the error is chained).
            learner.metrics.MetricsSinkError: If a sink in ``sinks`` cannot be opened.
        """
        agent, link, replay = self.agent, self.link, self.replay
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsWriter(self.run_dir / "metrics.csv", self.sinks)
        t_start = time.perf_counter()
        deadline = None if max_seconds is None else t_start + max_seconds
        if agent.num_updates > 0 and self._publish_at_start:
            self._publish()
        self._assembled = self.env_steps  # env steps received, counted by the link thread
        io = threading.Thread(target=self._io_loop, name="learner-link", daemon=True)
        io.start()
        window = _Window(t_start, self.env_steps, agent.num_updates)
        next_log = (self.env_steps // self.log_every + 1) * self.log_every
        next_ckpt = (None if not self.checkpoint_every else
                     (self.env_steps // self.checkpoint_every + 1) * self.checkpoint_every)
        try:
            while not self._stop.is_set():
                if deadline is not None and time.perf_counter() > deadline:
                    self.stop_reason = "time limit"
                    break
                if self._io_error is not None:
                    raise RuntimeError(f"learner link thread failed: {self._io_error!r}") \
                        from self._io_error
                self._drain(metrics, t_start, block=not self._update_allowed())
                if self._robot_lost.is_set():
                    self._robot_lost.clear()
                    logger.warning("learner: robot lost; checkpointing and waiting for a robot")
                    self.save()
                if self._update_allowed():
                    t0 = time.perf_counter()
                    out = agent.update(self._sample())
                    window.update_time += time.perf_counter() - t0
                    for key, value in out.items():
                        window.loss_sums[key] += value
                    window.loss_count += 1
                    if agent.num_updates % self.publish_every == 0:
                        self._publish()
                now = time.perf_counter()
                self._status["updates"] = agent.num_updates
                self._status["replay_size"] = len(replay)
                if now - window.start >= 1.0:
                    rate = (agent.num_updates - window.updates) / (now - window.start)
                    self._status["updates_per_s_x100"] = round(100 * rate)
                if self.env_steps >= next_log:
                    next_log += self.log_every
                    window = self._log_window(metrics, window, t_start)
                if next_ckpt is not None and self.env_steps >= next_ckpt:
                    next_ckpt += self.checkpoint_every
                    self.save()
        finally:
            self._io_stop.set()
            io.join(timeout=2.0)
            self._drain(metrics, t_start, block=False)
            if self.env_steps > window.env_steps:
                self._log_window(metrics, window, t_start)
            metrics.close()
            self.save()
        logger.info("learner: %d env steps, %d updates (%s)", self.env_steps, agent.num_updates,
                    self.stop_reason)
        return {"env_steps": self.env_steps, "updates": agent.num_updates,
                "episodes": self.episodes, "stop_reason": self.stop_reason,
                "replay_size": len(replay), "link": link.counters(),
                "assembler": dict(self.assembler.counters)}

    def _log_window(self, metrics: MetricsWriter, w: _Window, t_start: float) -> _Window:
        """Write the losses/throughput row of the window ``w``; return a new window."""
        agent = self.agent
        now = time.perf_counter()
        span = max(now - w.start, 1e-9)
        row = {
            "global_step": self.env_steps,
            "time_s": round(now - t_start, 3),
            "charts/updates": agent.num_updates,
            "charts/updates_per_s": (agent.num_updates - w.updates) / span,
            "charts/env_steps_per_s": (self.env_steps - w.env_steps) / span,
            "charts/replay_size": len(self.replay),
            "charts/policy_version": self._last_version_seen,
            "charts/policy_lag": agent.num_updates - self._last_version_seen,
            "timing/update_s": w.update_time,
            **self._link_metrics(),
        }
        if w.loss_count:
            row.update({k: v / w.loss_count for k, v in w.loss_sums.items()})
        metrics.write(row)
        return _Window(now, self.env_steps, agent.num_updates)

    def _drain(self, metrics: MetricsWriter, t_start: float, block: bool) -> None:
        """Move assembled steps from the link thread into the replay buffer.

        The robot's evaluation results become ``charts/eval_return`` rows first. With
        ``block`` (nothing else to do) it naps 2 ms when the queue is empty. It never calls
        ``SimpleQueue.get(timeout=...)``: a SIGINT arriving during that wait left the main
        thread waiting forever (seen with Python 3.11 on Linux).
        """
        while not self._evaluations.empty():
            ev = self._evaluations.get_nowait()
            metrics.write(evaluation_row(ev.env_steps, ev.returns.tolist(),
                                         time.perf_counter() - t_start))
        try:
            item = self._steps.get_nowait()
        except queue.Empty:
            if block:
                time.sleep(0.002)
            return
        while True:
            t, step, robot_session = item
            self.replay.add(**step)
            self._count_step(t, step, robot_session)
            self._track_episode(t, step, metrics, t_start)
            try:
                item = self._steps.get_nowait()
            except queue.Empty:
                return

    def _io_loop(self) -> None:
        """The link thread: the only user of the link's sockets."""
        link = self.link
        try:
            while not self._io_stop.is_set():
                for t in link.recv_transitions(max_n=64, timeout_ms=2):
                    step = self.assembler.push(t)
                    if step is not None:
                        self._steps.put((t, step, link.peer_session_id or ""))
                        self._assembled += 1
                # what the cap will allow once every step received is consumed
                self._status["updates_due"] = self._updates_due(self._assembled)
                link.status_counters.update(self._status)
                for msg in link.service():
                    if isinstance(msg, Shutdown) and self.exit_on_robot_shutdown:
                        self.request_stop(f"robot shut down ({msg.reason})")
                    elif isinstance(msg, Evaluation):
                        self._evaluations.put(msg)
                weights, self._outbox = self._outbox, None
                if weights is not None:
                    link.publish_weights(weights)
                self._watch_robot()
        except BaseException as err:  # reported to the main thread, which ends the run
            logger.exception("learner link thread failed")
            self._io_error = err

    def _update_allowed(self) -> bool:
        cfg = self.cfg
        prior = len(self.prior) if self.prior is not None else 0
        if (self.link.robot_paused or len(self.replay) < 1
                or len(self.replay) + prior < max(1, cfg.batch_size)):
            return False
        return self.agent.num_updates < self._updates_due(self.env_steps)

    def _updates_due(self, env_steps: int) -> int:
        """Updates the cap allows after ``env_steps`` env steps.

        ``updates_per_step`` per step after the random phase. With the steps the link
        thread has received, it is what a robot holding for the learner
        (``robot.hold_for_learner``) waits for.
        """
        learning_steps = max(0, env_steps - self.random_steps)
        return math.floor(learning_steps * self.cfg.updates_per_step)

    def _count_step(self, t: Transition, step: dict, robot_session: str) -> None:
        """Count a transition added to the replay buffer: env step, episode end, position."""
        self.env_steps += 1
        if step["terminated"] or step["truncated"]:
            self.episodes += 1
        self._last_version_seen = t.policy_version
        self.last_transition = {"robot_session": robot_session, "episode": t.episode_id,
                                "step": t.step_index}

    def _track_episode(self, t: Any, step: dict, metrics: MetricsWriter, t_start: float) -> None:
        ep = t.episode_id
        self._episode_returns[ep] += float(step["reward"])
        self._episode_lengths[ep] += 1
        if step["terminated"] or step["truncated"]:
            metrics.write({
                "global_step": self.env_steps,
                "time_s": round(time.perf_counter() - t_start, 3),
                "charts/episode_return": self._episode_returns.pop(ep),
                "charts/episode_length": self._episode_lengths.pop(ep),
                "charts/policy_version": t.policy_version,
            })
            for old in [e for e in self._episode_returns if e < ep]:  # lost episode ends
                self._episode_returns.pop(old)
                self._episode_lengths.pop(old, None)

    def _link_metrics(self) -> dict[str, int]:
        c = self.link.counters()
        peer = self.link.peer_counters
        return {
            "link/received": c.get("received_transitions", 0),
            "link/assembled": self.assembler.counters["assembled"],
            "link/gaps": self.assembler.counters["gaps"],
            "link/out_of_bounds": self.assembler.counters["out_of_bounds"],
            "link/rejected": c.get("rejected", 0),
            "link/robot_dropped": peer.get("dropped_full", 0) + peer.get("dropped_no_peer", 0),
            "robot/overruns": peer.get("overruns", 0),
        }

    def _watch_robot(self) -> None:
        """Flag once (for a checkpoint) when an accepted robot goes silent (killed, cable)."""
        if self.link.robot_alive():
            self._robot_seen, self._robot_lost_saved = True, False
            return
        if self._robot_seen and not self._robot_lost_saved:
            self._robot_lost_saved = True
            self.assembler.reset()
            self._robot_lost.set()

    def _publish(self) -> None:
        """Hand the newest weights to the link thread (it publishes the newest only).

        Raises:
            NonFiniteError: If a weight is NaN or inf (nothing reaches the robot).
        """
        agent = self.agent
        agent.check_weights_finite("publish weights to the robot")
        modules = {"masker": agent.masker.state_dict() if agent.masker is not None else None,
                   "encoder": agent.encoder.state_dict(), "actor": agent.actor.state_dict()}
        self._outbox = Weights.from_state_dicts(agent.num_updates, modules)

    def save(self) -> None:
        """Write ``learner.pt``, ``policy.pt`` and ``progress.json`` (each atomically)."""
        save_run_checkpoints(self.ckpt_dir, self.agent,
                             {"env_steps": self.env_steps, "episodes": self.episodes},
                             self.replay if self.save_replay else None, self.last_transition)
