"""A live Rerun view of a run, fed where the session recorder is fed: ``--viz rerun``.

The robot process is real-time, so the view follows the recorder's rule: the producers
(:meth:`ViewerSink.transition`, :meth:`~ViewerSink.arm_state`,
:meth:`~ViewerSink.control_tick`, :meth:`~ViewerSink.event`, the recorder's signatures)
put a small tuple on a bounded queue and return; a full queue drops the item and counts
it. Only the ``viewer`` thread calls Rerun: it takes what has queued every
``batch_period`` seconds and logs it as one batch of columns per entity
(:meth:`robot.rerun_log.RerunView.show`), which computes the Masker's mask of a camera
frame at most every ``mask_period`` seconds of the view (with its policy, e.g. the robot's
local one).
:class:`ViewedEnv` feeds a sink from the Gymnasium env of ``madi train --sync``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from link.messages import Step
from robot.backends.base import ArmState
from robot.rerun_log import RerunView

logger = logging.getLogger(__name__)

#: Least time between two Masker masks of a live view, s (the mask runs on the viewer
#: thread, beside the robot loop or the learner).
MASK_PERIOD = 0.5

_CLOSE = ("close", 0, None)


class ViewerSink:
    """Feeds a :class:`~robot.rerun_log.RerunView` from its own thread (module docstring).

    Args:
        view: The view to log to; the caller closes it after :meth:`close`.
        batch_period: How long the viewer thread gathers items before logging them, s.
        queue_size: Items buffered before new ones are dropped.
    """

    def __init__(self, view: RerunView, batch_period: float = 0.2, queue_size: int = 4096):
        self.view = view
        self._batch_period = float(batch_period)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0  #: Items dropped because the queue was full.
        self.errors = 0  #: Batches Rerun failed to log (the first is logged).
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="viewer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers
    def _put(self, kind: str, payload: Any) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait((kind, time.monotonic_ns(), payload))
        except queue.Full:
            self.dropped += 1

    def transition(self, step: Step) -> None:
        """Show one agent step: its newest camera frame and reward."""
        self._put("transition", (step.episode_id, step.next_obs["image"][-3:], step.reward))

    def arm_state(self, episode: int, step: int, state: ArmState) -> None:
        """Show the arm state an agent step read (joints, arm in 3D)."""
        self._put("arm", (state.q, state.qd))

    def control_tick(self, episode: int, tick: int, t_ns: int, state: ArmState,
                     applied: np.ndarray, stale: bool) -> None:
        """Show one control tick's applied speedJ command (rad/s)."""
        self._put("tick", np.array(applied, np.float64))

    def event(self, kind: str, **details: Any) -> None:
        """Show an event (reset, episode end, safety, protective stop, link, ...)."""
        self._put("event", {"kind": kind, **details})

    # ------------------------------------------------------------------ viewer thread
    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            end = time.monotonic() + self._batch_period
            while items[-1] is not _CLOSE and (left := end - time.monotonic()) > 0:
                try:
                    items.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            closing = items[-1] is _CLOSE
            batch = items[:-1] if closing else items
            if batch:
                try:
                    self.view.show(batch)
                except Exception as err:  # the view must never stop the run
                    self.errors += 1
                    if self.errors == 1:
                        logger.error("viewer: Rerun failed to log (%s); going on", err)
            if closing:
                return

    def close(self, timeout: float = 30.0) -> None:
        """Show what is queued, then stop the viewer thread (the view stays open)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_CLOSE)
        self._thread.join(timeout)
        if self.dropped:
            logger.warning("viewer: %d items dropped (queue full)", self.dropped)


class ViewedEnv:
    """The sim's Gymnasium env with every reset and step also shown by a viewer sink.

    ``madi train --sync`` has no robot loop: each step the sink gets the arm state
    (the mirror's q, qd), the applied speedJ (one per agent step, ``info["applied_qd"]``)
    and the transition; each reset and episode end an event. Everything else
    (spaces, ``close``, ...) is the env's.

    Args:
        env: A :class:`sim.env.VisualReacherEnv` (its ``mirror`` gives q and qd).
        sink: Where the steps go (a :class:`ViewerSink`).
    """

    def __init__(self, env: Any, sink: ViewerSink):
        self.env = env
        self._sink = sink
        self._episode = -1
        self._t = 0
        self._obs: dict[str, np.ndarray] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)

    def _state(self) -> ArmState:
        mirror = self.env.mirror
        return ArmState(mirror.q, mirror.qd, time.monotonic_ns())

    def reset(self, **kwargs: Any) -> tuple[dict, dict]:
        """The env's reset (a ``reset`` event and the first arm state shown)."""
        obs, info = self.env.reset(**kwargs)
        self._episode, self._t, self._obs = self._episode + 1, 0, obs
        self._sink.event("reset", episode=self._episode)
        self._sink.arm_state(self._episode, 0, self._state())
        return obs, info

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        """The env's step (its arm state, command and transition shown)."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        state = self._state()
        self._t += 1
        sink, episode = self._sink, self._episode
        sink.arm_state(episode, self._t, state)
        sink.control_tick(episode, self._t, state.t_ns, state, info["applied_qd"], False)
        sink.transition(Step(episode, self._t - 1, self._obs, np.asarray(action, np.float32),
                             float(reward), obs, bool(terminated), bool(truncated), 0, 0, 0))
        if terminated or truncated:
            sink.event("episode_end", episode=episode, steps=self._t,
                       end="terminated" if terminated else "truncated")
        self._obs = obs
        return obs, reward, terminated, truncated, info
