"""A robot session in Rerun (https://rerun.io): live from the robot loop, or from its log.

:class:`RerunView` turns what the robot loop records (arm states, transitions, control
ticks, events: the items of :meth:`RerunView.show`) into one Rerun recording, streamed to
a viewer or written to an ``.rrd`` file. :func:`replay_to_rerun` feeds it a recorded
session (``madi replay SESSION --rerun``); :class:`robot.viewer.ViewerSink` feeds it
while a run goes (``madi train --viz rerun``).

Timelines: ``agent_step`` (sequence: the agent steps of the session, one per arm state the
agent step read, evaluation episodes included) and ``time`` (duration: log time since the
first item, s). Entities:

===================  ===========================  =========================================
entity               archetype                    content
===================  ===========================  =========================================
``camera/image``     Image, RGB                   the newest frame of each transition
``camera/mask``      Image, L                     the policy's Masker mask of that frame
                                                  (white = kept), when a policy is given
``task/reward``      Scalars                      each transition's reward
``task/return``      Scalars                      the episode's return so far
``arm/q``            Scalars, one per joint       joint positions read by the agent step, rad
``arm/qd``           Scalars, one per joint       joint velocities, rad/s
``control/speedj``   Scalars, one per joint       the applied speedJ command of every
                                                  control tick, rad/s (``time`` only)
``events``           TextLog                      resets, episode ends, safety, link, arm
``world/tool0``      Transform3D                  the flange pose in the base frame, m
``world/arm``        LineStrips3D                 the arm: a line through the base and the
                                                  origins of DH frames 1 .. 6
===================  ===========================  =========================================

The per-joint series are named by :data:`robot.kinematics.JOINT_NAMES`. Rerun (the
``rerun-sdk`` package) comes with the ``[viz]`` extra and is imported only when a view
is made.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from robot.kinematics import JOINT_NAMES, link_transforms
from robot.session_log import (
    ARM_STATE_TOPIC,
    CONTROL_TICK_TOPIC,
    EVENTS,
    TRANSITION,
    SessionLog,
    SessionLogError,
)

logger = logging.getLogger(__name__)

STEP = "agent_step"  #: Sequence timeline: agent steps of the session.
TIME = "time"  #: Duration timeline: log time since the first item, s.
CAMERA = "camera/image"
MASK = "camera/mask"
REWARD = "task/reward"
RETURN = "task/return"
Q = "arm/q"
QD = "arm/qd"
SPEEDJ = "control/speedj"
EVENT_LOG = "events"
FLANGE = "world/tool0"
ARM = "world/arm"

#: Events logged at INFO; every other kind (safety, stops, lost links, ...) at WARN.
ROUTINE_EVENTS = frozenset({"reset", "reset_done", "episode_end", "eval_episode_end",
                            "arm_reconnected"})


class ViewerError(ValueError):
    """The Rerun view cannot be opened; the message says why and what to do."""


def import_rerun() -> Any:
    """The ``rerun`` module.

    Raises:
        ModuleNotFoundError: If rerun-sdk is not installed; the message names the
            ``[viz]`` extra and how to install it.
    """
    try:
        import rerun
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"the Rerun view needs the [viz] extra ({err.name} is not "
                                  "installed): pip install 'madi-robot[viz]'",
                                  name=err.name) from None
    return rerun


class RerunView:
    """One Rerun recording of a robot session (entities and timelines: module docstring).

    Not thread-safe: one thread calls :meth:`show` (the viewer sink's, or the replay's).

    Args:
        name: The recording's name in the viewer (the run or the session file).
        save: An ``.rrd`` file to write (its folder is created); None: spawn a Rerun
            viewer, or connect to the one already listening on Rerun's default port.
        model: Arm model, ``"ur5"`` or ``"ur5e"`` (the DH parameters of the 3D frames).
        policy: A :class:`learner.policy.MadiPolicy` whose Masker's masks to log; None, or
            a policy without a Masker: no masks. An attribute, settable later.
        mask_period: Least log time between two masks, s (0: a mask for every frame).

    Raises:
        ModuleNotFoundError: If rerun-sdk is not installed (:func:`import_rerun`).
        ViewerError: If ``save`` cannot be written or the viewer cannot be started.
    """

    def __init__(self, name: str, save: str | Path | None = None, model: str = "ur5",
                 policy: Any = None, mask_period: float = 0.0):
        rr = import_rerun()
        self._rr = rr
        self.model = model
        self.policy = policy
        self.mask_period = float(mask_period)
        self.start_ns: int | None = None  #: Monotonic ns at 0 s of ``time`` (the first item).
        self._step = -1  # agent step of the newest arm state
        self._episode: int | None = None
        self._return = 0.0
        self._last_mask_ns: int | None = None
        self._closed = False
        self.rec = rr.RecordingStream("madi-robot")
        try:
            if save is None:
                self.rec.spawn()
            else:
                Path(save).parent.mkdir(parents=True, exist_ok=True)
                self.rec.save(save)
        except (OSError, RuntimeError) as err:
            where = f"write {save}" if save else "start the Rerun viewer"
            fix = ("pass a writable .rrd path" if save
                   else "save to a file instead (--rerun-save / --viz-save FILE.rrd)")
            raise ViewerError(f"cannot {where} ({err}); {fix}") from None
        self.rec.send_recording_name(name)
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        for entity in (Q, QD, SPEEDJ):
            self.rec.log(entity, rr.SeriesLines(names=list(JOINT_NAMES)), static=True)
        self.rec.log(FLANGE, rr.TransformAxes3D(0.05), static=True)

    def show(self, items: Iterable[tuple[str, int, Any]]) -> None:
        """Log items of the robot loop, oldest first (one batch of columns per entity).

        Args:
            items: ``(kind, t_ns, payload)``, ``t_ns`` the monotonic log time, ns:
                ``("arm", t_ns, (q, qd))`` an arm state the agent step read (float (6,)
                rad, rad/s); ``("transition", t_ns, (episode, frame, reward))`` with
                ``frame`` the transition's newest camera frame, uint8 (3, H, W) RGB;
                ``("tick", t_ns, applied)`` a control tick's applied speedJ, float (6,)
                rad/s; ``("event", t_ns, event)`` a dict with ``kind`` and details.

        Raises:
            ValueError: If a frame does not fit the policy's image size (its mask).
        """
        arms, frames, masks, ticks, events = [], [], [], [], []
        for kind, t_ns, payload in items:
            if self.start_ns is None:
                self.start_ns = t_ns
            step = max(self._step, 0)
            if kind == "arm":
                self._step += 1
                arms.append((t_ns, self._step, *payload))
            elif kind == "transition":
                episode, frame, reward = payload
                if episode != self._episode:
                    self._episode, self._return = episode, 0.0
                self._return += float(reward)
                image = np.ascontiguousarray(frame.transpose(1, 2, 0))
                frames.append((t_ns, step, image, float(reward), self._return))
                if self._mask_due(t_ns):
                    masks.append((t_ns, step, self.policy.mask(image)))
            elif kind == "tick":
                ticks.append((t_ns, payload))
            else:
                events.append((t_ns, step, payload))
        if arms:
            self._arm(*map(np.asarray, zip(*arms, strict=True)))
        if frames:
            t_ns, steps, images, rewards, returns = zip(*frames, strict=True)
            self._images(CAMERA, t_ns, steps, np.stack(images), "RGB")
            self._send(REWARD, t_ns, steps, self._rr.Scalars.columns(scalars=rewards))
            self._send(RETURN, t_ns, steps, self._rr.Scalars.columns(scalars=returns))
        if masks:
            t_ns, steps, mask = zip(*masks, strict=True)
            self._images(MASK, t_ns, steps, (np.stack(mask) * 255).astype(np.uint8), "L")
        if ticks:
            t_ns, applied = zip(*ticks, strict=True)
            self._send(SPEEDJ, t_ns, None, self._rr.Scalars.columns(scalars=np.stack(applied)))
        if events:
            t_ns, steps, details = zip(*events, strict=True)
            self._send(EVENT_LOG, t_ns, steps, self._rr.TextLog.columns(
                text=[event_text(e) for e in details],
                level=["INFO" if e.get("kind") in ROUTINE_EVENTS else "WARN" for e in details]))

    def _mask_due(self, t_ns: int) -> bool:
        if getattr(self.policy, "masker", None) is None:
            return False
        if self._last_mask_ns is not None and t_ns - self._last_mask_ns < self.mask_period * 1e9:
            return False
        self._last_mask_ns = t_ns
        return True

    def _arm(self, t_ns: np.ndarray, steps: np.ndarray, q: np.ndarray, qd: np.ndarray) -> None:
        rr = self._rr
        self._send(Q, t_ns, steps, rr.Scalars.columns(scalars=q))
        self._send(QD, t_ns, steps, rr.Scalars.columns(scalars=qd))
        poses = np.array([link_transforms(qi, self.model) for qi in q])  # (N, 6, 4, 4)
        self._send(FLANGE, t_ns, steps, rr.Transform3D.columns(
            translation=poses[:, -1, :3, 3], mat3x3=poses[:, -1, :3, :3]))
        origins = np.concatenate([np.zeros((len(q), 1, 3)), poses[:, :, :3, 3]], axis=1)
        self._send(ARM, t_ns, steps, rr.LineStrips3D.columns(strips=list(origins)))

    def _images(self, entity: str, t_ns: Any, steps: Any, images: np.ndarray,
                color_model: str) -> None:
        """Log uint8 images (N, H, W[, 3]) as one column."""
        n, h, w = images.shape[:3]
        fmt = self._rr.components.ImageFormat(width=w, height=h, color_model=color_model,
                                              channel_datatype="U8")
        self._send(entity, t_ns, steps, self._rr.Image.columns(buffer=images.reshape(n, -1),
                                                               format=[fmt] * n))

    def _send(self, entity: str, t_ns: Any, steps: Any, columns: Any) -> None:
        """One column batch of ``entity`` on ``time`` (and ``agent_step`` unless None)."""
        rr = self._rr
        seconds = (np.asarray(t_ns, np.int64) - self.start_ns) / 1e9
        indexes = [rr.TimeColumn(TIME, duration=seconds)]
        if steps is not None:
            indexes.append(rr.TimeColumn(STEP, sequence=np.asarray(steps, np.int64)))
        self.rec.send_columns(entity, indexes=indexes, columns=columns)

    def close(self) -> None:
        """Send what is buffered and end the recording (the file is complete after it)."""
        if self._closed:
            return
        self._closed = True
        self.rec.flush()
        self.rec.disconnect()


def event_text(event: dict[str, Any]) -> str:
    """One line for a session event: its kind, then ``key=value`` details (4 digits)."""
    details = ", ".join(f"{k}={_text(v)}" for k, v in event.items() if k != "kind")
    return f"{event.get('kind', '?')}: {details}" if details else str(event.get("kind", "?"))


def _text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    return str(value)


def replay_to_rerun(log: SessionLog, view: RerunView, batch: int = 256) -> int:
    """Stream a recorded session into ``view``, in log-time order, ``batch`` items at a time.

    Args:
        log: The session.
        view: Where it goes (with a policy: a mask of every frame when ``mask_period`` is 0).
        batch: Items per :meth:`RerunView.show`.

    Returns:
        The number of transitions shown.

    Raises:
        SessionLogError: If the session has no transitions, a record is corrupt, or its
            frames do not fit the view's policy.
    """
    first = next(log.transitions(), None)
    if first is None:
        raise SessionLogError(f"{log.path} has no recorded agent steps to show")
    policy = view.policy
    if getattr(policy, "masker", None) is not None and \
            tuple(policy.image_shape[1:]) != first.frames.shape[2:]:
        raise SessionLogError(f"{log.path} has {first.frames.shape[2:]} frames, the policy "
                              f"takes {tuple(policy.image_shape[1:])}: pass the checkpoint "
                              "of a run with this camera size")
    shown = 0
    items = _session_items(log)
    while chunk := list(itertools.islice(items, batch)):
        view.show(chunk)
        shown += sum(kind == "transition" for kind, _, _ in chunk)
    return shown


def _session_items(log: SessionLog) -> Iterator[tuple[str, int, Any]]:
    """The session's arm states, transitions, control ticks and events as view items."""
    def times(topic: str) -> Iterator[int]:
        return (m.log_time_ns for m in log.messages(topic))

    streams = [
        (("arm", t, (r["q"], r["qd"])) for t, r in zip(times(ARM_STATE_TOPIC),
                                                        log.arm_states(), strict=True)),
        (("transition", t, (m.episode_id, m.frames[-1], m.reward))
         for t, m in zip(times(TRANSITION), log.transitions(), strict=True)),
        (("tick", t, r["applied"]) for t, r in zip(times(CONTROL_TICK_TOPIC),
                                                   log.control_ticks(), strict=True)),
        (("event", t, e) for t, e in zip(times(EVENTS), log.events(), strict=True)),
    ]
    return heapq.merge(*streams, key=lambda item: item[1])
