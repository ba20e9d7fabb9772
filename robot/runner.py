"""The robot process's agent loop: observe, reward, act, send, every 40 ms.

:class:`RobotRunner` drives a :class:`~robot.backends.base.Rig` (the sim mirror or the
real UR5; it never knows which) with a local :class:`~learner.policy.MadiPolicy` and a
:class:`~link.endpoints.RobotLink` to the learner (the ReLoD "Remote-Local" pattern).

One agent step ``t`` of an episode (``task.agent_period`` apart, sleep then spin):

1. read the newest camera frame and the arm state -> ``obs_t`` (frame stack, proprio);
2. reward of the previous action from that frame;
3. action ``a_t`` = the local policy (newest weights) or uniform random before any
   weights arrived (the paper's initial random steps) -> command to the control thread;
   ``obs -> action`` latency is measured from the frame read to the command;
4. send ``(obs_{t-1}, a_{t-1}, r_{t-1}, obs_t)`` to the learner without blocking;
5. service the link: heartbeats, control messages, newest weights.

The control thread (:class:`~robot.control.ControlLoop`) streams the command at the
controller tick with the safety limits and stops the arm when commands go stale. In
``fast`` pace (sim only) there is no thread: each agent step runs its ticks in lockstep
(:meth:`ControlLoop.step`), so the sim runs as fast as the loop does.

Resets (move home, draw a new target) are announced to the learner with Pause / Resume.
On the sim backend, between episodes (arm at rest, no command streaming), the robot waits
until the learner has made its ``agent.updates_per_step`` updates per env step
(``robot.hold_for_learner``), so the asynchronous run learns as much per env step as the
synchronous loop; the real arm never waits, and ``timing.json`` reports the ratio reached.
A protective stop ends the episode (truncated) and the next reset clears it. A lost arm
link (:class:`~robot.backends.base.ArmLinkLostError`: the RTDE stream stopped or the
control script died) ends the episode (``arm_link_lost``; the control thread has stopped
the arm, the controller's watchdog halts it if the stop could not be sent), then the arm
is reconnected (``arm.reconnect_attempts``, ``arm.reconnect_interval`` apart) and the
next reset goes on. A control thread that has not ticked for 2 agent periods ends the
episode (``control_stalled``); if it then cannot be stopped (stuck in an arm call) the run
ends, since the arm is not confirmed stopped (the controller's watchdog halts it). Any
other failure of the arm, the camera or the control thread stops the arm and ends the run
with the error. Commands carry the time of the frame they answer, so an action computed
from an old frame is already stale in the control loop. The learner going silent either leaves the
robot acting with its last weights (``robot.on_learner_lost: continue``; transitions are
dropped and counted) or ends the episode and holds the arm until a learner is back
(``stop``). ``madi train`` restarts a crashed learner: it calls
:meth:`RobotRunner.replace_learner`, and the arm is held until the new learner's hello is
accepted, whatever ``on_learner_lost``.

Outputs in ``run_dir``: ``episodes.csv`` (one row per episode), ``safety.csv`` (every
safety intervention of the control thread: tick, what was changed and why, requested and
applied command) and ``timing.json`` (agent-step and control-tick timing, obs -> action
latency, link counters), all written as the run goes, so a crash leaves them readable.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from learner.policy import MadiPolicy
from link.endpoints import RobotLink
from link.messages import Evaluation, Shutdown, Spaces, Step
from robot.backends.base import ArmLinkLostError, DeviceError, ProtectiveStopError, Rig
from robot.config import Config
from robot.control import ControlLoop
from robot.distractions import Distractions, make_distractions, screen
from robot.observation import FrameStack, action_to_qd, proprio
from robot.recorder import SessionRecorder
from robot.safety import SafetyLimits
from robot.task import RedTargetReward, draw_target, sample_target_center
from robot.timing import LoopTimer, SampleRing, latency_percentiles_ms, set_thread_priority
from robot.viewer import ViewerSink

logger = logging.getLogger(__name__)

#: Columns of ``episodes.csv``.
EPISODE_FIELDS = ("episode", "env_steps", "steps", "return", "success", "end",
                  "policy_version_first", "policy_version_last", "random_steps",
                  "safety_ticks", "safety_share", "stale_stops", "overruns", "wall_s")


#: Columns of ``eval.csv`` (one row per evaluation episode).
EVAL_FIELDS = ("env_steps", "distractions", "episode", "return", "success",
               "policy_version")

#: Columns of ``safety.csv`` (one row per control tick on which the limits intervened).
SAFETY_FIELDS = ("episode", "tick", "t_ns", "kinds", "details", "requested", "applied")


def spaces_of(cfg: Config) -> Spaces:
    """Observation/action spaces of the visual reacher under ``cfg``.

    Returns:
        ``Spaces((3k, H, W), 3n, n)`` with k = ``task.frame_stack``, (H, W) =
        ``camera.obs_size`` and n active joints.
    """
    h, w = cfg.camera.obs_size
    n = len(cfg.arm.active_joints)
    return Spaces((3 * cfg.task.frame_stack, h, w), 3 * n, n)


@dataclass
class EpisodeRecord:
    """One row of ``episodes.csv`` (see :data:`EPISODE_FIELDS`).

    Attributes:
        episode: Episode id (0 first).
        env_steps: Env steps of the run at the episode's end.
        steps: Transitions of the episode.
        return_: Sum of rewards.
        success: The target was reached at some step.
        end: ``time_limit``, ``success`` (sparse reward), ``protective_stop``,
            ``arm_link_lost``, ``control_stalled``, ``learner_lost``, ``stop_requested``
            or ``steps_done``.
        policy_version_first / policy_version_last: Weights version of the first / last
            action (0: random).
        random_steps: Actions chosen at random (no weights yet).
        safety_ticks: Control ticks on which the safety limits changed the command.
        safety_share: ``safety_ticks`` over the episode's control ticks.
        stale_stops: Times the control thread stopped the arm for a stale command.
        overruns: Agent steps that started late by more than the overrun threshold.
        wall_s: Wall time of the episode without its reset, s.
    """

    episode: int
    env_steps: int = 0
    steps: int = 0
    return_: float = 0.0
    success: bool = False
    end: str = ""
    policy_version_first: int = -1
    policy_version_last: int = 0
    random_steps: int = 0
    safety_ticks: int = 0
    safety_share: float = 0.0
    stale_stops: int = 0
    overruns: int = 0
    wall_s: float = 0.0

    def row(self) -> dict[str, Any]:
        """The CSV row."""
        d = asdict(self)
        d["return"] = round(d.pop("return_"), 6)
        d["wall_s"] = round(self.wall_s, 3)
        d["safety_share"] = round(self.safety_share, 4)
        d["policy_version_first"] = max(self.policy_version_first, 0)
        return d


@dataclass(frozen=True)
class _Seen:
    """What one agent step observed: ``obs_t``, the camera image and its times (ns)."""

    obs: dict[str, np.ndarray]
    image: np.ndarray
    t_frame: int  #: perf_counter_ns when the frame was read
    t_seen: int | None  #: when its information was current (control clock), realtime only


class _AgentLoop:
    """What an episode's agent steps carry from one step to the next.

    ``obs`` and ``prev_action`` are the previous step's observation and the action chosen
    on it; ``frame_time_ns``, ``action_time_ns`` and ``version_of_action`` its frame time,
    command time and weights version, which the transition of that step carries.
    """

    def __init__(self, frames: FrameStack, action_dim: int):
        self.frames = frames
        self.obs: dict[str, np.ndarray] | None = None
        self.prev_action = np.zeros(action_dim, np.float32)
        self.action = self.prev_action
        self.frame_time_ns = self.action_time_ns = self.acted_ns = 0
        self.version_of_action = self.version_now = 0

    def step(self, episode: int, index: int, next_obs: dict, reward: float, terminated: bool,
             truncated: bool, offset_ns: int) -> Step:
        """The transition (obs, prev_action -> next_obs) of step ``index``.

        Its frame and action times are shifted by ``offset_ns`` onto the link's clock.
        """
        return Step(episode, index, self.obs, self.prev_action, reward, next_obs, terminated,
                    truncated, self.frame_time_ns + offset_ns,
                    self.action_time_ns + offset_ns, self.version_of_action)

    def advance(self, seen: _Seen) -> None:
        """Move to the next step: this step's observation and action become the previous."""
        self.obs, self.prev_action = seen.obs, self.action
        self.frame_time_ns, self.action_time_ns = seen.t_frame, self.acted_ns
        self.version_of_action = self.version_now


class RobotRunner:
    """The agent loop of the robot process (see the module docstring).

    Args:
        cfg: Validated config.
        rig: The rig to drive (connected by :meth:`run`).
        run_dir: Folder for ``episodes.csv`` and ``timing.json``.
        link: Link to the learner, or None to act with ``policy`` alone (evaluation).
        total_steps: Env steps to run (None: ``train.total_steps``); the episode in which
            it is reached is cut there (truncated, ``end`` = ``steps_done``).
        realtime: True: control thread + agent steps on the wall clock; False: lockstep
            (sim only, ``sim.pace == "fast"``).
        policy: Inference policy; default: fresh networks of ``cfg.agent`` (random actions
            are used until the learner's first weights arrive).
        start_step: Env steps already done (``--resume``); episode ids continue from
            ``start_episode``.
        start_episode: See ``start_step``.
        progress: Callback ``progress(runner)`` after every episode and every second.
        recorder: Session recorder (:class:`robot.recorder.SessionRecorder`) fed with every
            transition, agent-step arm state, control tick and event; closed at the end
            of :meth:`run`. None: no session log.
        viewer: A live view (:class:`robot.viewer.ViewerSink`) fed with the same items
            (enqueue-only, like the recorder); its owner closes it. None: no view.

    Raises:
        ValueError: If ``realtime`` is False for a rig that cannot run in lockstep (only
            the sim and replay rigs can).
    """

    def __init__(self, cfg: Config, rig: Rig, run_dir: str | Path, link: RobotLink | None,
                 total_steps: int | None = None, realtime: bool = True,
                 policy: MadiPolicy | None = None, start_step: int = 0, start_episode: int = 0,
                 progress: Any = None, recorder: SessionRecorder | None = None,
                 viewer: ViewerSink | None = None):
        if not realtime and not rig.lockstep:
            raise ValueError(f"fast pace (lockstep) is for the sim and replay rigs only; "
                             f"this rig is {type(rig).__name__}")
        self.recorder = recorder
        # what records every transition, arm state, tick and event; each only enqueues
        self._sinks = tuple(s for s in (recorder, viewer) if s is not None)
        self.cfg = cfg
        self.rig = rig
        self.run_dir = Path(run_dir)
        self.link = link
        self.total_steps = cfg.train.total_steps if total_steps is None else int(total_steps)
        self.realtime = bool(realtime)
        self.spaces = spaces_of(cfg)
        self.policy = policy or MadiPolicy.from_config(
            cfg.agent, self.spaces.image_shape, self.spaces.proprio_dim, self.spaces.action_dim)
        self.policy_version = 0
        self.safety = SafetyLimits.for_rig(cfg)
        self.reward_fn = RedTargetReward(cfg.task)
        seeds = np.random.SeedSequence(cfg.seed).spawn(2)
        self._target_rng = np.random.default_rng(seeds[0])
        self._action_rng = np.random.default_rng(seeds[1])
        period = cfg.task.agent_period
        self.ticks_per_step = max(1, round(period / cfg.arm.control_period))
        self.agent_timer = LoopTimer(period, cfg.robot.agent_spin,
                                     cfg.robot.overrun_threshold or 0.1 * period)
        self.control_timer = LoopTimer(cfg.arm.control_period, cfg.robot.control_spin)
        self.latency = SampleRing(1 << 16)  # frame read -> command, ns
        self.camera_wait = SampleRing(1 << 16)  # camera.read() call, ns
        self.env_steps = int(start_step)
        self.episode = int(start_episode)
        self.returns: list[float] = []
        self.protective_stops = 0
        self.safety_ticks = 0
        self.stale_stops = 0
        self._control_stuck = False  # the last episode's control thread did not stop
        self.held_for_learner_s = 0.0  #: Wall time waited for the learner between episodes.
        self._stop = threading.Event()
        self.stop_reason = ""
        self._progress = progress
        self._last_progress = 0.0
        self._episodes_csv = self.run_dir / "episodes.csv"
        self._safety_csv = self.run_dir / "safety.csv"
        self._safety_writer: Any = None
        self._safety_file: Any = None
        self.arm_reconnects = 0
        self._eval_csv = self.run_dir / "eval.csv"
        self._eval_source: Distractions | None = None
        self._next_eval = (self.env_steps // cfg.train.eval_every + 1) * cfg.train.eval_every
        self._target_center = np.full(2, 0.5)
        #: ``(env_steps, mean return)`` of each periodic evaluation.
        self.eval_returns: list[tuple[int, float]] = []
        #: True while the arm is held because the learner is lost (``on_learner_lost: stop``
        #: or :meth:`replace_learner`) or between episodes for its updates.
        self.waiting_for_learner = False
        self._replacing_learner = False
        self._old_learner: str | None = None  # link session of the learner being replaced
        self._timing_json = self.run_dir / "timing.json"
        self._t_start = time.monotonic()
        # The loops time with perf_counter; messages carry time.monotonic_ns (one offset,
        # both are CLOCK_MONOTONIC based on Linux).
        self._monotonic_offset_ns = time.monotonic_ns() - time.perf_counter_ns()

    # ------------------------------------------------------------------ control
    def request_stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to stop at the next agent step (thread- and signal-safe)."""
        self.stop_reason = self.stop_reason or reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stop.is_set()

    def replace_learner(self) -> None:
        """Hold the arm until another learner session is accepted (the old one crashed).

        For the supervisor of ``madi train``, which restarts a crashed learner: whatever
        ``robot.on_learner_lost``, the episode ends at the next agent step
        (``learner_lost``, its last transition made as usual) and the arm waits at rest,
        the link serviced, until a learner session other than the current one has
        accepted the hello; no transition is made meanwhile. Call it from the agent
        thread (the ``progress`` callback).
        """
        self._replacing_learner = True
        self._old_learner = self.link.peer_session_id if self.link is not None else None

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Connect the rig and run episodes until ``total_steps`` or a stop request.

        Returns:
            Summary: ``env_steps``, ``episodes``, ``returns``, ``policy_version``,
            ``stop_reason`` and the timing report (as in ``timing.json``).

        Raises:
            robot.backends.base.DeviceError: If a device fails (the arm is stopped first).
            RuntimeError: If the control thread fails for another reason than a
                protective stop.
        """
        self.run_dir.mkdir(parents=True, exist_ok=True)
        new_csv = not self._episodes_csv.exists()
        new_safety = not self._safety_csv.exists()
        with open(self._episodes_csv, "a", newline="") as f, \
                open(self._safety_csv, "a", newline="") as safety_file, self.rig:
            writer = csv.DictWriter(f, fieldnames=EPISODE_FIELDS)
            self._safety_writer = csv.writer(safety_file)
            self._safety_file = safety_file
            if new_csv:
                writer.writeheader()
            if new_safety:
                self._safety_writer.writerow(SAFETY_FIELDS)
            if self.realtime:  # after connect: the sim's GL thread stays at normal priority
                set_thread_priority(self.cfg.robot.realtime_priority, "agent step")
            self._wait_for_learner()
            try:
                while self.env_steps < self.total_steps and not self.stopping:
                    if not self._learner_usable():
                        self._hold_until_learner()
                        continue
                    self._keep_update_ratio()
                    record = self._episode()
                    writer.writerow(record.row())
                    f.flush()
                    self._raise_if_control_stuck()
                    if record.end == "arm_link_lost":
                        self._reconnect_arm()
                    elif self._eval_due():
                        self._evaluate()
                    self._write_timing()
                    self._report_progress(force=True)
                if not self.stopping:
                    self.stop_reason = "steps done"
            finally:
                self._write_timing()
                if self.link is not None:
                    self.link.status_counters.update(self._counters())
                    self.link.shutdown(self.stop_reason or "robot error")
                if self.recorder is not None:
                    self.recorder.close({"stop_reason": self.stop_reason or "robot error",
                                         "env_steps": self.env_steps,
                                         "episodes": self.episode})
        logger.info("robot: %d env steps, %d episodes (%s)", self.env_steps, self.episode,
                    self.stop_reason)
        return {"env_steps": self.env_steps, "episodes": self.episode,
                "returns": list(self.returns), "policy_version": self.policy_version,
                "stop_reason": self.stop_reason, **self.timing()}

    def _wait_for_learner(self) -> None:
        """Before the first episode, wait (arm at rest) for the learner's handshake.

        Waits ``robot.learner_wait`` s, or, when that is unset in the sim with
        ``robot.hold_for_learner``, until the handshake or a stop request: in the sim time
        can wait, and a learner that is slow to start (a CUDA import on a loaded machine)
        would otherwise miss the first transitions. The ``progress`` callback runs meanwhile,
        so ``madi train``'s supervisor restarts a learner that crashes before it answers
        (``waiting_for_learner`` is set) or stops the run.
        """
        if self.link is None:
            return
        wait = self._learner_wait()
        end = math.inf if wait is None else time.monotonic() + wait
        self.waiting_for_learner = True
        try:
            while not self.link.accepted and time.monotonic() < end and not self.stopping:
                self._service_link()
                self._report_progress()
                time.sleep(0.01)
        finally:
            self.waiting_for_learner = False
        if self.link.accepted:
            logger.info("robot: learner %s accepted the handshake", self.link.peer_session_id)
        elif not self.stopping:
            logger.warning("robot: no learner at %s after %.0f s; acting anyway (transitions "
                           "are dropped until it comes)", self.link.addresses, wait)

    def _learner_wait(self) -> float | None:
        """``robot.learner_wait``, s; its default: 60, or None (no limit) when the sim holds."""
        robot = self.cfg.robot
        if robot.learner_wait is not None:
            return robot.learner_wait
        return None if self.cfg.backend == "sim" and robot.hold_for_learner else 60.0

    def _learner_usable(self) -> bool:
        link = self.link
        if link is None:
            return True
        if self._replacing_learner:
            if link.peer_session_id == self._old_learner or not link.learner_alive():
                return False
            self._replacing_learner = False
        return self.cfg.robot.on_learner_lost == "continue" or link.learner_alive()

    def _hold_until_learner(self) -> None:
        """Hold the arm at rest, servicing the link, until the learner is usable again.

        Entered when the learner is lost under ``on_learner_lost: stop``, or after
        :meth:`replace_learner`.
        """
        logger.warning("robot: learner lost; arm stopped, waiting for a learner at %s",
                       self.link.addresses)
        self.waiting_for_learner = True
        try:
            while not self.stopping and not self._learner_usable():
                self._service_link()
                self._report_progress()
                time.sleep(0.02)
        finally:
            self.waiting_for_learner = False
        if not self.stopping:
            logger.info("robot: learner back (session %s); resuming", self.link.peer_session_id)

    def _keep_update_ratio(self) -> None:
        """Sim only (``robot.hold_for_learner``): between episodes, wait for the learner.

        The arm is at rest and no command is streaming. Waits until the learner's reported
        update count reaches what its cap allows for the transitions it has received
        (``updates_due``, less one publication interval of slack, as both arrive with the
        learner's heartbeat), the learner goes silent, the run stops, or
        ``robot.hold_max`` s pass. A learner whose heartbeat lacks these counters is not
        waited for.
        """
        cfg = self.cfg
        if self.link is None or cfg.backend != "sim" or not cfg.robot.hold_for_learner:
            return
        t0 = time.monotonic()
        while not self.stopping and self.link.learner_alive():
            peer = self.link.peer_counters
            if "updates_due" not in peer or "updates" not in peer:
                break  # a learner that does not report its cap is not waited for
            behind = peer["updates_due"] - cfg.train.publish_every - peer["updates"]
            if behind <= 0:
                break
            if time.monotonic() - t0 > cfg.robot.hold_max:
                logger.warning("robot: the learner is %d updates behind after %.0f s; going on",
                               behind, cfg.robot.hold_max)
                break
            self.waiting_for_learner = True
            self._service_link()
            self._report_progress()
            time.sleep(0.01)
        self.waiting_for_learner = False
        self.held_for_learner_s += time.monotonic() - t0

    # ------------------------------------------------------------------ one episode
    def _reset(self, rng: np.random.Generator, distractions: Distractions | None) -> None:
        """New target (drawn from ``rng``, over ``distractions``), arm home.

        The link is serviced meanwhile (heartbeats, weights): ``move_home`` blocks for the
        move (seconds), so it runs on a helper thread; its error, if any, is raised here.
        """
        cfg = self.cfg
        display = self.rig.display
        w, h = display.size_px
        center = sample_target_center(rng, cfg.target.radius, w / h)
        self._target_center = center
        if distractions is not None:
            distractions.reset(rng)
        errors: list[BaseException] = []

        def move() -> None:
            try:
                display.show(draw_target((w, h), center, cfg.target) if distractions is None
                             else screen(distractions, 0, (w, h), center, cfg.target))
                self.rig.arm.move_home(np.asarray(cfg.arm.q_home), cfg.arm.reset_duration)
            except BaseException as err:  # re-raised on the agent thread below
                errors.append(err)

        self._record("reset", episode=self.episode, target_center=center,
                     q_home=list(cfg.arm.q_home), duration=cfg.arm.reset_duration)
        mover = threading.Thread(target=move, name="reset", daemon=True)
        mover.start()
        while mover.is_alive():
            mover.join(0.02)
            self._service_link()
        if errors:
            self._record("reset_failed", episode=self.episode, error=str(errors[0]))
            raise errors[0]
        self._record("reset_done", episode=self.episode)

    def _episode(self, evaluation: Distractions | None = None,
                 eval_rng: np.random.Generator | None = None) -> EpisodeRecord:
        """Run one episode; ``evaluation`` (a distraction set) makes it an evaluation.

        An evaluation episode acts with the deterministic policy, sends and records no
        transition, and counts no env step.
        """
        cfg = self.cfg
        link = self.link
        if link is not None:
            link.pause("reset")
        self._reset(self._target_rng if evaluation is None else eval_rng, evaluation)
        if link is not None:
            link.resume("reset done")
        control = ControlLoop(self.rig.arm, self.safety, acceleration=cfg.arm.acceleration,
                              deadline=cfg.robot.deadline(cfg.task.agent_period,
                                                          self.rig.camera.frame_wait()),
                              timer=self.control_timer, watchdog_hz=cfg.arm.watchdog_hz,
                              realtime_priority=cfg.robot.control_priority(),
                              on_tick=None if evaluation else self._tick_recorder(self.episode))
        if self.realtime:
            control.start()
        record = EpisodeRecord(self.episode)
        try:
            self._run_episode(control, record, evaluation)
        finally:
            self._control_stuck = not control.stop()
            self._log_safety(record.episode, control)
            self._record("eval_episode_end" if evaluation else "episode_end",
                         episode=record.episode, end=record.end, steps=record.steps,
                         return_=record.return_)
            self.safety_ticks += control.intervention_ticks
            self.stale_stops += control.stale_stops
            record.safety_ticks = control.intervention_ticks
            record.safety_share = control.intervention_ticks / max(
                1, record.steps * self.ticks_per_step)
            record.stale_stops = control.stale_stops
        record.env_steps = self.env_steps
        if evaluation is not None:
            return record
        self.returns.append(record.return_)
        self.episode += 1
        logger.debug("episode %d: return %.2f, %d steps, end %s", record.episode,
                     record.return_, record.steps, record.end)
        return record

    def _run_episode(self, control: ControlLoop, record: EpisodeRecord,
                     evaluation: Distractions | None = None) -> None:
        """One episode of agent steps: observe, reward and end, act, send (one per step).

        Step ``t`` observes ``obs_t`` and the reward of the action chosen at ``t - 1``,
        then (unless the episode ends) acts on ``obs_t``; the transition of step ``t - 1``
        goes to the recorder and the learner once its reward and end are known. An
        ``evaluation`` episode acts deterministically under ``evaluation``'s screen and
        sends nothing.
        """
        loop = _AgentLoop(FrameStack(self.cfg.task.frame_stack), self.spaces.action_dim)
        timer = self.agent_timer
        overruns0 = timer.overruns
        timer.restart()
        self.policy.reset()
        t_episode = time.monotonic()
        for t in range(self.cfg.task.episode_steps + 1):
            start = timer.wait() if self.realtime else time.perf_counter_ns()
            end = self._control_health(control, record)
            seen = self._observe(loop, record, t) if end is not None else None
            if seen is None:
                break  # record.end says why
            reward, terminated, end = self._reward_and_end(seen, record, t, end, evaluation)
            if not end:
                self._act(loop, seen, control, record, t, evaluation)
            if t > 0 and evaluation is None:
                self._send(loop.step(record.episode, t - 1, seen.obs, reward, terminated,
                                     truncated=bool(end) and not terminated,
                                     offset_ns=self._monotonic_offset_ns))
                self.env_steps += 1
            record.steps += t > 0
            if end:
                record.end = end
                break
            loop.advance(seen)
            record.policy_version_last = loop.version_of_action
            self._service_link()
            if not self.realtime:
                try:
                    control.step(self.ticks_per_step)
                except ProtectiveStopError:
                    pass  # the loop is "failed" now: the next step ends the episode
            timer.done(start)
            self._report_progress()
        record.overruns = timer.overruns - overruns0
        record.wall_s = time.monotonic() - t_episode
        self._log_episode_failure(record, control)

    def _control_health(self, control: ControlLoop, record: EpisodeRecord) -> str | None:
        """The control thread's state before a step.

        Returns:
            ``""`` when it is fine; ``"protective_stop"`` (the step still observes and
            sends, then the episode ends); None when the episode must end now
            (``record.end`` set).

        Raises:
            DeviceError: The control thread failed for another reason.
        """
        stall_ns = 2 * round(self.cfg.task.agent_period * 1e9)
        if control.tick_age_ns() > stall_ns:
            logger.critical("episode %d: the control loop has not ticked for %.0f ms; "
                            "ending the episode", record.episode, control.tick_age_ns() / 1e6)
            record.end = "control_stalled"
            return None
        if control.state != "failed":
            return ""
        if isinstance(control.error, ProtectiveStopError):
            return "protective_stop"
        if isinstance(control.error, ArmLinkLostError):
            record.end = "arm_link_lost"
            return None
        control.raise_if_failed()
        return ""

    def _observe(self, loop: _AgentLoop, record: EpisodeRecord, t: int) -> _Seen | None:
        """Read the camera and the arm: ``obs_t``, or None if the arm link is lost."""
        cfg = self.cfg
        t_read = time.perf_counter_ns()
        try:
            frame = self.rig.camera.read(cfg.robot.camera_timeout)
        except TimeoutError as err:
            raise DeviceError(f"camera failed: {err}; check its cable and robot.camera_timeout"
                              ) from err
        t_frame = time.perf_counter_ns()
        # when the frame's information was current, on the control loop's clock
        t_seen = t_frame - self.rig.camera.age_ns(frame) if self.realtime else None
        self.camera_wait.push(t_frame - t_read)
        if t == 0:
            loop.frames.reset(frame.image)
        else:
            loop.frames.push(frame.image)
        try:
            state = self.rig.arm.read_state()
            for sink in self._sinks:
                sink.arm_state(record.episode, t, state)
        except ArmLinkLostError as err:
            logger.error("episode %d: %s", record.episode, err)
            record.end = "arm_link_lost"
            return None
        obs = {"image": loop.frames.image(),
               "proprio": proprio(state.q, state.qd, loop.prev_action, cfg.arm)}
        return _Seen(obs, frame.image, t_frame, t_seen)

    def _reward_and_end(self, seen: _Seen, record: EpisodeRecord, t: int, end: str,
                        evaluation: Distractions | None) -> tuple[float, bool, str]:
        """The previous action's reward, whether ``obs_t`` is terminal, and the end reason.

        ``end`` is the reason found so far; ``""`` back means the episode goes on.
        """
        reward, terminated = 0.0, False
        if t > 0:
            result = self.reward_fn(seen.image)
            reward = result.reward
            record.return_ += result.reward
            record.success |= result.success
            terminated = self.cfg.task.reward == "sparse" and result.success
            if terminated:
                end = "success"
        if not end and t == self.cfg.task.episode_steps:
            end = "time_limit"
        if not end and not evaluation and self.env_steps + (t > 0) >= self.total_steps:
            end = "steps_done"  # the run's last transition, cut like a time limit
        if not end and self.stopping:
            end = "stop_requested"
        if not end and not self._learner_usable():
            end = "learner_lost"
        return reward, terminated, end

    def _act(self, loop: _AgentLoop, seen: _Seen, control: ControlLoop,
             record: EpisodeRecord, t: int, evaluation: Distractions | None) -> None:
        """Choose the action on ``obs_t`` and command it (speedJ, through the safety limits).

        The policy acts (deterministically in evaluation); before the first weights the
        action is uniform in [-1, 1].
        """
        cfg = self.cfg
        if evaluation is not None:
            loop.action = self.policy.act(seen.obs, deterministic=True)
        elif self.policy_version > 0:
            loop.action = self.policy.act(seen.obs, deterministic=False)
        else:
            loop.action = self._action_rng.uniform(-1.0, 1.0, self.spaces.action_dim
                                                   ).astype(np.float32)
            record.random_steps += 1
        control.set_command(action_to_qd(loop.action, cfg.arm), seen.t_seen)
        loop.acted_ns, loop.version_now = time.perf_counter_ns(), self.policy_version
        if evaluation is None:
            self.latency.push(loop.acted_ns - seen.t_frame)
            if record.policy_version_first < 0:
                record.policy_version_first = loop.version_now
        elif evaluation.dynamic:  # what the camera sees at the next step
            w, h = self.rig.display.size_px
            self.rig.display.show(screen(evaluation, t + 1, (w, h), self._target_center,
                                         cfg.target))

    def _log_episode_failure(self, record: EpisodeRecord, control: ControlLoop) -> None:
        """Record and log an episode that ended on a failure (arm, learner, control)."""
        if record.end in ("arm_link_lost", "protective_stop", "learner_lost", "control_stalled"):
            self._record(record.end, episode=record.episode, detail=str(control.error or ""))
        if record.end == "arm_link_lost":
            logger.error("episode %d: arm link lost (%s); the arm was told to stop",
                         record.episode, control.error)
        if record.end == "protective_stop":
            self.protective_stops += 1
            logger.warning("episode %d: protective stop (%s); the reset clears it",
                           record.episode, control.error)

    def _raise_if_control_stuck(self) -> None:
        """End the run if the last episode's control thread could not be stopped.

        Raises:
            DeviceError: The thread is stuck in an arm call; the arm is not confirmed
                stopped (the controller's watchdog halts it).
        """
        if self._control_stuck:
            raise DeviceError(
                "the control thread is stuck in an arm call and did not stop; the arm is not "
                "confirmed stopped (the RTDE watchdog halts it): check the arm, then start "
                "again")

    def _eval_due(self) -> bool:
        train = self.cfg.train
        return (train.eval_episodes > 0 and not self.stopping
                and self.env_steps >= self._next_eval and self.env_steps < self.total_steps)

    def _evaluate(self) -> None:
        """``train.eval_episodes`` deterministic episodes under ``train.eval_distractions``.

        Every evaluation sees the same targets and distractions (a fixed seed), so the
        curve in ``eval.csv`` compares policies, not luck. No transition goes to the
        learner; the returns go to it in an :class:`Evaluation` message, for its metrics.
        """
        cfg = self.cfg
        if self._eval_source is None:
            self._eval_source = make_distractions(cfg.train.eval_distractions,
                                                  self.rig.display.size_px, cfg.task)
        rng = np.random.default_rng(cfg.train.eval_seed)
        records = []
        for _ in range(cfg.train.eval_episodes):
            records.append(self._episode(self._eval_source, rng))
            self._raise_if_control_stuck()
        new = not self._eval_csv.exists()
        with open(self._eval_csv, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(EVAL_FIELDS)
            for i, r in enumerate(records):
                writer.writerow((self.env_steps, cfg.train.eval_distractions, i,
                                 f"{r.return_:.4f}", int(r.success), self.policy_version))
        returns = [r.return_ for r in records]
        self.eval_returns.append((self.env_steps, float(np.mean(returns))))
        if self.link is not None:  # for the learner's metrics (never blocks; drops counted)
            self.link.send_control(Evaluation(
                self.env_steps, cfg.train.eval_distractions, self.policy_version,
                np.array(returns, np.float64), np.array([r.success for r in records], bool)))
        logger.info("robot: eval at %d env steps (%s): return %.1f ± %.1f, success %d/%d",
                    self.env_steps, cfg.train.eval_distractions, np.mean(returns),
                    np.std(returns), sum(r.success for r in records), len(records))
        self._next_eval = (self.env_steps // cfg.train.eval_every + 1) * cfg.train.eval_every

    def _record(self, kind: str, **details: Any) -> None:
        """Put an event in the session log and the view (if any)."""
        for sink in self._sinks:
            sink.event(kind, **details)

    def _tick_recorder(self, episode: int):
        """The control loop's ``on_tick`` hook: every tick into the session log and view."""
        sinks = self._sinks
        if not sinks:
            return None

        def on_tick(tick: int, t_ns: int, state, applied: np.ndarray, stale: bool) -> None:
            for sink in sinks:
                sink.control_tick(episode, tick, t_ns, state, applied, stale)

        return on_tick

    def _log_safety(self, episode: int, control: ControlLoop) -> None:
        """Append the episode's safety interventions to ``safety.csv`` and the session log."""
        events = control.events()
        for ev in events:
            self._record("safety", episode=episode, tick=ev.tick, t_ns=ev.t_ns,
                         kinds=[i.kind for i in ev.interventions],
                         details=[i.detail for i in ev.interventions],
                         requested=ev.requested, applied=ev.applied)
        if self._safety_writer is None or not (events or control.dropped_events):
            return
        for ev in events:
            self._safety_writer.writerow((
                episode, ev.tick, ev.t_ns,
                " ".join(i.kind for i in ev.interventions),
                "; ".join(i.detail for i in ev.interventions),
                " ".join(f"{v:.4f}" for v in ev.requested),
                " ".join(f"{v:.4f}" for v in ev.applied)))
        if control.dropped_events:
            self._safety_writer.writerow((episode, "", "", "dropped",
                                          f"{control.dropped_events} events not logged "
                                          "(queue full)", "", ""))
        self._safety_file.flush()
        logger.info("episode %d: safety limits intervened on %d ticks (safety.csv)", episode,
                    control.intervention_ticks)

    def _reconnect_arm(self) -> None:
        """Reconnect the arm after a lost link, servicing the learner link meanwhile.

        Raises:
            ArmLinkLostError: If ``arm.reconnect_attempts`` attempts all failed.
        """
        arm, cfg = self.rig.arm, self.cfg.arm
        last: BaseException | None = None
        for attempt in range(1, cfg.reconnect_attempts + 1):
            if self.stopping:
                return
            arm.disconnect()
            try:
                arm.connect()
            except Exception as err:
                last = err
                self._record("arm_reconnect_failed", attempt=attempt, error=str(err))
                logger.warning("arm reconnect %d/%d failed: %s", attempt,
                               cfg.reconnect_attempts, err)
                end = time.monotonic() + cfg.reconnect_interval
                while time.monotonic() < end and not self.stopping:
                    self._service_link()
                    time.sleep(0.02)
                continue
            self.arm_reconnects += 1
            self._record("arm_reconnected", attempt=attempt)
            logger.info("arm reconnected (attempt %d); resetting", attempt)
            return
        raise ArmLinkLostError(f"the arm link is lost and {cfg.reconnect_attempts} reconnects "
                               f"failed (last: {last}); check the cable and the controller, "
                               "then start again (--resume continues the run)")

    # ------------------------------------------------------------------ link
    def _send(self, step: Step) -> None:
        """Hand one step to the session recorder, the view and the link (never blocks)."""
        for sink in self._sinks:
            sink.transition(step)
        if self.link is not None:
            self.link.send_step(step)

    def _service_link(self) -> None:
        link = self.link
        if link is None:
            return
        link.status_counters.update(self._counters())
        for msg in link.service():
            if isinstance(msg, Shutdown):
                logger.info("robot: the learner shuts down (%s)", msg.reason)
        weights = link.poll_weights()
        if weights is not None:
            self.policy.load_weights(weights.to_state_dicts(as_tensors=True))
            self.policy_version = weights.version
            logger.debug("robot: loaded weights version %d", weights.version)

    # ------------------------------------------------------------------ reporting
    def _counters(self) -> dict[str, int]:
        return {"env_steps": self.env_steps, "episodes": self.episode,
                "overruns": self.agent_timer.overruns, "policy_version": self.policy_version}

    def timing(self) -> dict[str, Any]:
        """The timing report: agent step, control tick, obs -> action latency, link.

        Returns:
            ``{"agent_step": {...}, "control_tick": {...}, "obs_to_action": {...},
            "camera_read": {...}, "camera": {...} (the device's counters), "link": {...},
            "protective_stops", "arm_reconnects",
            "safety_ticks",
            "stale_stops", "pace", "wall_s"}``; times in ms.
        """
        agent = self.agent_timer.report()
        control = self.control_timer.report()
        out = {
            "pace": "realtime" if self.realtime else "fast",
            "wall_s": round(time.monotonic() - self._t_start, 3),
            "env_steps": self.env_steps,
            "episodes": self.episode,
            "agent_step": {**asdict(agent), "overrun_sizes_ms": list(agent.overrun_sizes_ms)},
            "control_tick": {**asdict(control),
                             "overrun_sizes_ms": list(control.overrun_sizes_ms[-64:])},
            "obs_to_action": latency_percentiles_ms(self.latency.values()),
            "camera_read": latency_percentiles_ms(self.camera_wait.values()),
            "camera": self.rig.camera.stats(),
            "protective_stops": self.protective_stops,
            "arm_reconnects": self.arm_reconnects,
            "safety_ticks": self.safety_ticks,
            "stale_stops": self.stale_stops,
            "held_for_learner_s": round(self.held_for_learner_s, 3),
        }
        if self.link is not None:
            out["link"] = self.link.counters()
            peer = self.link.peer_counters
            learning_steps = self.env_steps - self.cfg.agent.init_random_steps
            out["learner_updates"] = peer.get("updates")
            out["updates_per_env_step"] = {
                "configured": self.cfg.agent.updates_per_step,
                "reached": (round(peer["updates"] / learning_steps, 4)
                            if "updates" in peer and learning_steps > 0 else None)}
        return out

    def _write_timing(self) -> None:
        tmp = self._timing_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.timing(), indent=1, default=float))
        tmp.replace(self._timing_json)

    def _report_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is None or (not force and now - self._last_progress < 1.0):
            return
        self._last_progress = now
        self._progress(self)

    def progress_fields(self) -> dict[str, str]:
        """Short status for a progress bar.

        Returns:
            Episodes, mean return of the last 10 episodes, agent-step overruns and, with
            a link: learner updates/s, policy lag (learner updates - version in use),
            dropped transitions, learner up/down.
        """
        rets = self.returns[-10:]
        fields = {"ep": str(self.episode),
                  "ret": f"{np.mean(rets):.1f}" if rets else "-",
                  "ovr": str(self.agent_timer.overruns)}
        if self.link is not None:
            peer = self.link.peer_counters
            c = self.link.counters()
            updates = peer.get("updates")
            fields["upd/s"] = f"{peer.get('updates_per_s_x100', 0) / 100:.1f}"
            fields["lag"] = str(updates - self.policy_version) if updates is not None else "-"
            fields["drop"] = str(c.get("dropped_full", 0) + c.get("dropped_no_peer", 0))
            fields["learner"] = "up" if self.link.learner_alive() else "down"
        return fields

