"""A recorded session as a rig: the robot process runs on it exactly as on the live arm.

:class:`ReplayRig` serves a session log (:mod:`robot.session_log`) back in time order,
one agent step at a time: :meth:`ReplayCamera.read` returns the next recorded frame of the
episode (the frame that agent step saw), :meth:`ReplayArm.read_state` the arm state that
step read, and :meth:`ReplayArm.move_home` (the reset) moves to the next episode. Commands
are accepted and kept (:attr:`ReplayArm.commands`), not executed: the recorded frames
already show what the arm did. Like the sim, the rig runs in lockstep with the agent loop
(``realtime=False``), so a replay run is deterministic: the same frames give the same
rewards, and the same weights and seed give the same actions.

Only whole episodes are served: those that ended by the time limit, by success (sparse
reward) or at the run's last step. An episode cut by a protective stop, a lost link or a
stop request cannot be reproduced by the agent loop's own rules and is skipped
(:attr:`ReplayRig.skipped` lists them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot.backends.base import (
    Arm,
    ArmState,
    Camera,
    DeviceError,
    Frame,
    Rig,
    TargetDisplay,
)
from robot.config import Config
from robot.session_log import SessionLog

#: Episode ends the agent loop reproduces on its own.
REPLAYABLE_ENDS = ("time_limit", "success", "steps_done")


@dataclass
class ReplayEpisode:
    """One recorded episode, per agent step.

    Attributes:
        episode: Recorded episode id.
        frames: uint8 (T+1, H, W, 3) RGB, the frame of each agent step 0..T.
        states: The arm state read at each agent step 0..T.
        rewards: float (T,) recorded rewards of the T transitions.
        actions: float32 (T, A) recorded actions.
        end: Why the recorded episode ended.
    """

    episode: int
    frames: np.ndarray
    states: list[ArmState]
    rewards: np.ndarray
    actions: np.ndarray
    end: str


def load_episodes(log: SessionLog) -> list[ReplayEpisode]:
    """Rebuild every recorded episode (frames, arm states, rewards, actions, end).

    Raises:
        robot.session_log.SessionLogError: If a record is corrupt.
    """
    ends = {e["episode"]: e["end"] for e in log.events() if e.get("kind") == "episode_end"}
    states: dict[int, dict[int, ArmState]] = {}
    for rec in log.arm_states():
        states.setdefault(int(rec["episode"]), {})[int(rec["step"])] = ArmState(
            q=rec["q"].copy(), qd=rec["qd"].copy(), t_ns=int(rec["t_ns"]),
            protective_stopped=bool(rec["protective_stopped"]),
            emergency_stopped=bool(rec["emergency_stopped"]))
    frames: dict[int, list[np.ndarray]] = {}
    rewards: dict[int, list[float]] = {}
    actions: dict[int, list[np.ndarray]] = {}
    for t in log.transitions():
        ep = t.episode_id
        images = frames.setdefault(ep, [])
        if t.step_index == 0:  # a keyframe: frames[k-1] is step 0's frame
            images.append(t.frames[-2].transpose(1, 2, 0))
        images.append(t.frames[-1].transpose(1, 2, 0))
        rewards.setdefault(ep, []).append(t.reward)
        actions.setdefault(ep, []).append(t.action)
    out = []
    for ep in sorted(frames):
        steps = states.get(ep, {})
        n = len(frames[ep])
        if any(i not in steps for i in range(n)):
            continue  # a cut file: the episode's states did not all make it
        out.append(ReplayEpisode(ep, np.stack(frames[ep]), [steps[i] for i in range(n)],
                                 np.asarray(rewards[ep]), np.stack(actions[ep]),
                                 ends.get(ep, "cut")))
    return out


class _Cursor:
    """The replay position shared by the three devices."""

    def __init__(self, episodes: list[ReplayEpisode]):
        self.episodes = episodes
        self.index = -1  # episode being served (-1: before the first reset)
        self.step = -1  # agent step of the last frame served

    def current(self) -> ReplayEpisode:
        if not 0 <= self.index < len(self.episodes):
            raise DeviceError("the replayed session has no more episodes")
        return self.episodes[self.index]


class ReplayArm(Arm):
    """The recorded arm: states per agent step; commands kept, not executed."""

    name = "replay arm"

    def __init__(self, cursor: _Cursor, control_period: float):
        super().__init__()
        self._cursor = cursor
        self._period = control_period
        self.commands: list[np.ndarray] = []  #: speedJ targets received, rad/s.

    @property
    def control_period(self) -> float:
        """Controller tick of the recorded arm, s."""
        return self._period

    def _connect(self) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def _read_state(self) -> ArmState:
        cursor = self._cursor
        episode = cursor.current()
        return episode.states[max(cursor.step, 0)]

    def _speedj(self, qd: np.ndarray, acceleration: float) -> None:
        self.commands.append(qd.copy())

    def _speed_stop(self, deceleration: float) -> None:
        pass

    def _move_home(self, q: np.ndarray, duration: float) -> None:
        cursor = self._cursor
        cursor.index += 1
        cursor.step = -1
        cursor.current()  # raises past the last episode

    def _set_watchdog(self, min_frequency: float) -> None:
        pass



class ReplayCamera(Camera):
    """The recorded camera: each read serves the next agent step's frame."""

    name = "replay camera"

    def __init__(self, cursor: _Cursor, obs_size: tuple[int, int]):
        super().__init__()
        self._cursor = cursor
        self._obs_size = obs_size
        self._seq = 0

    @property
    def obs_size(self) -> tuple[int, int]:
        """(H, W) of the recorded frames, px."""
        return self._obs_size

    def _connect(self) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def _read(self, timeout: float) -> Frame:
        cursor = self._cursor
        episode = cursor.current()
        if cursor.step + 1 >= len(episode.frames):
            raise DeviceError(f"recorded episode {episode.episode} has only "
                              f"{len(episode.frames)} frames; the replay asked for more")
        cursor.step += 1
        self._seq += 1
        return Frame(image=episode.frames[cursor.step], t_ns=episode.states[cursor.step].t_ns,
                     seq=self._seq - 1)


class ReplayDisplay(TargetDisplay):
    """The recorded monitor: the frames already show it; shown images are counted."""

    name = "replay display"

    def __init__(self, size_px: tuple[int, int]):
        super().__init__()
        self._size = size_px
        self.shown = 0

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height) the recording's target images had, px."""
        return self._size

    def _connect(self) -> None:
        pass

    def _disconnect(self) -> None:
        pass

    def _show(self, image: np.ndarray) -> None:
        self.shown += 1


class ReplayRig(Rig):
    """A session log served as a rig (see module docstring).

    Args:
        log: The opened session.
        cfg: The config the session was recorded with (:meth:`SessionLog.config_yaml`).

    Raises:
        DeviceError: If the session has no whole episode to serve.

    Attributes:
        episodes: The episodes served, in order.
        skipped: ``(episode, end)`` of the recorded episodes not served.
    """

    lockstep = True

    def __init__(self, log: SessionLog, cfg: Config):
        everything = load_episodes(log)
        self.episodes = [e for e in everything if e.end in REPLAYABLE_ENDS]
        self.skipped = [(e.episode, e.end) for e in everything if e.end not in REPLAYABLE_ENDS]
        if not self.episodes:
            raise DeviceError(f"{log.path} has no whole episode to replay (ends: "
                              f"{sorted({e.end for e in everything}) or 'none'})")
        cursor = _Cursor(self.episodes)
        h, w = self.episodes[0].frames.shape[1:3]
        size = (tuple(cfg.sim.texture_px) if cfg.backend == "sim"
                else tuple(cfg.monitor.resolution_px))
        super().__init__(ReplayArm(cursor, float(cfg.arm.control_period)),
                         ReplayCamera(cursor, (h, w)), ReplayDisplay(size),
                         stop_deceleration=cfg.arm.acceleration)

    @property
    def steps(self) -> int:
        """Transitions in the served episodes."""
        return sum(len(e.rewards) for e in self.episodes)

