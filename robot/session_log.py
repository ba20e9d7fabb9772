"""Session logs: what one robot run recorded, in MCAP, and how to read it back.

A session log (``session.mcap`` in the run folder) holds every robot run, sim or real.
MCAP (https://mcap.dev) keeps multi-rate topics with nanosecond log times, indexed and
zstd-compressed per chunk, and opens in Foxglove Studio. The topics:

=====================  ==========  ===========  ==========================================
topic                  rate        encoding     content
=====================  ==========  ===========  ==========================================
``/agent/transition``  25 Hz       madi-link    the link's :class:`learner.messages.Transition`
                                                (the same validated codec, no pickle): the
                                                camera frame the agent saw, lossless (a
                                                keyframe carries the whole frame stack),
                                                proprio, action, reward, done flags, policy
                                                version, frame and action times
``/agent/arm_state``   25 Hz       madi-struct  the arm state each agent step read
                                                (:data:`ARM_STATE`)
``/control/tick``      125/500 Hz  madi-struct  every control tick: joint state read, command
                                                applied, stale flag (:data:`CONTROL_TICK`)
``/events``            sparse      json         resets, episode ends, safety interventions,
                                                protective stops, arm and learner link events
=====================  ==========  ===========  ==========================================

Metadata records: ``session`` at the start (config YAML, code version, backend, host,
start time) and ``session_end`` just before the file is closed (steps, episodes, why the
run ended). "madi-struct" messages are one record of a little-endian numpy structured
dtype, described in the channel's schema (JSON ``{"dtype": [[name, type, shape], ...]}``).
Log times are ``time.monotonic_ns()`` of the robot machine; fast-pace sim sessions
stamp the same clock although their sim time runs faster.

Crash safety: the recorder closes a chunk at least every second, so a process killed at
any moment leaves a file readable up to its last complete chunk. :class:`SessionLog`
reads such a file without its summary and says where it was cut.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mcap.exceptions import McapError
from mcap.stream_reader import StreamReader

from learner.messages import MessageError, Transition, decode

logger = logging.getLogger(__name__)

#: MCAP profile of madi session logs.
PROFILE = "madi-session"
#: Format version, in the ``session`` metadata; readers refuse newer majors.
FORMAT_VERSION = "1"

TRANSITION = "/agent/transition"
ARM_STATE_TOPIC = "/agent/arm_state"
CONTROL_TICK_TOPIC = "/control/tick"
EVENTS = "/events"

#: One ``/agent/arm_state`` record: the arm state read at an agent step.
ARM_STATE = np.dtype([("episode", "<i8"), ("step", "<i8"), ("t_ns", "<i8"),
                      ("q", "<f8", (6,)), ("qd", "<f8", (6,)),
                      ("protective_stopped", "u1"), ("emergency_stopped", "u1")])
#: One ``/control/tick`` record: a control-thread tick.
CONTROL_TICK = np.dtype([("episode", "<i8"), ("tick", "<i8"), ("t_ns", "<i8"),
                         ("q", "<f8", (6,)), ("qd", "<f8", (6,)),
                         ("applied", "<f8", (6,)), ("stale", "u1")])


class SessionLogError(ValueError):
    """A file is not a readable madi session log; the message says what and how to fix it."""


def dtype_schema(dtype: np.dtype) -> bytes:
    """The schema text of a madi-struct channel: JSON of the dtype's fields."""
    fields = [[name, dtype.fields[name][0].base.str, list(dtype.fields[name][0].shape)]
              for name in dtype.names]
    return json.dumps({"dtype": fields}).encode()


def struct_bytes(dtype: np.dtype, **values: Any) -> bytes:
    """Pack one record of ``dtype`` (little-endian) from keyword values."""
    rec = np.zeros((), dtype)
    for key, value in values.items():
        rec[key] = value
    return rec.tobytes()


@dataclass
class SessionInfo:
    """What ``madi sessions ls`` shows of one session.

    Attributes:
        path: The file.
        started: Start time (ISO 8601, UTC) from the ``session`` metadata.
        backend: ``sim`` or ``ur5``.
        steps: Agent transitions recorded.
        episodes: Episodes with at least one transition.
        mean_return: Mean return of the whole episodes (nan when none).
        duration_s: Log time of the last message minus the first, s.
        size_bytes: File size.
        cut: The file ends without its summary (the process died); ``cut_detail`` says
            where.
        end_reason: Why the run ended (``session_end`` metadata; "" when cut).
    """

    path: Path
    started: str = ""
    backend: str = ""
    steps: int = 0
    episodes: int = 0
    mean_return: float = float("nan")
    duration_s: float = 0.0
    size_bytes: int = 0
    cut: bool = False
    cut_detail: str = ""
    end_reason: str = ""
    returns: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LogMessage:
    """One message of a session log.

    Attributes:
        topic: Channel topic, e.g. :data:`TRANSITION`.
        log_time_ns: When it was recorded, ns (``time.monotonic_ns`` of the robot PC).
        data: The payload bytes (decode with :meth:`SessionLog.decode`).
    """

    topic: str
    log_time_ns: int
    data: bytes


class SessionLog:
    """Read a session log, whole or cut.

    Args:
        path: The ``.mcap`` file.

    Raises:
        SessionLogError: If the file is missing, not MCAP, not a madi session, or of a
            newer format version; the message names the file and the problem.

    Attributes:
        meta: The ``session`` metadata (``config`` YAML text, ``code_version``,
            ``backend``, ``started``, ...).
        end: The ``session_end`` metadata ({} if the file was cut before it).
        cut: True if the file has no summary (the writer did not finish).
        cut_detail: Where the readable part ends (byte offset, last log time).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SessionLogError(f"no session log at {self.path}; pass a session.mcap "
                                  "(runs/<run>/session.mcap)")
        with open(self.path, "rb") as f:
            magic = f.read(8)
        if magic != b"\x89MCAP0\r\n":
            raise SessionLogError(f"{self.path} is not an MCAP file (it starts with "
                                  f"{magic[:8]!r}); pass a session.mcap written by madi")
        self.meta: dict[str, str] = {}
        self.end: dict[str, str] = {}
        self.cut = False
        self.cut_detail = ""
        self._messages: list[LogMessage] | None = None
        self._scan()
        if not self.meta:
            raise SessionLogError(f"{self.path} is an MCAP file but not a madi session (no "
                                  "'session' metadata); record with madi robot/train")
        major = self.meta.get("format_version", "0").split(".")[0]
        if major != FORMAT_VERSION:
            raise SessionLogError(f"{self.path} has session format {major}; this madi reads "
                                  f"{FORMAT_VERSION}: use the madi version that wrote it")

    def _scan(self) -> None:
        """Read every record once, tolerating a cut end (no summary, partial chunk)."""
        messages: list[LogMessage] = []
        channels: dict[int, str] = {}
        size = self.path.stat().st_size
        offset = 0
        with open(self.path, "rb") as f:
            reader = StreamReader(f, skip_magic=False, emit_chunks=False,
                                  validate_crcs=True)
            try:
                for record in reader.records:
                    kind = type(record).__name__
                    if kind == "Channel":
                        channels[record.id] = record.topic
                    elif kind == "Message":
                        topic = channels.get(record.channel_id)
                        if topic is not None:
                            messages.append(LogMessage(topic, record.log_time, record.data))
                    elif kind == "Metadata":
                        if record.name == "session":
                            self.meta = dict(record.metadata)
                        elif record.name == "session_end":
                            self.end = dict(record.metadata)
                    elif kind == "Footer":
                        break
                    offset = f.tell()
                else:
                    self._mark_cut(offset, size, messages, "no footer")
            except (McapError, EOFError, ValueError, OSError, struct.error) as err:
                self._mark_cut(offset, size, messages, str(err) or type(err).__name__)
        self._messages = messages

    def _mark_cut(self, offset: int, size: int, messages: list[LogMessage],
                  why: str) -> None:
        self.cut = True
        last = messages[-1].log_time_ns if messages else 0
        first = messages[0].log_time_ns if messages else 0
        self.cut_detail = (f"cut at byte {offset} of {size} ({why}); readable up to "
                           f"{(last - first) / 1e9:.1f} s into the session, "
                           f"{len(messages)} messages")
        logger.warning("%s: %s", self.path, self.cut_detail)

    # ------------------------------------------------------------------ access
    def messages(self, *topics: str) -> Iterator[LogMessage]:
        """The messages of ``topics`` (all when none), in log-time order."""
        wanted = set(topics)
        for m in self._messages:
            if not wanted or m.topic in wanted:
                yield m

    def transitions(self) -> Iterator[Transition]:
        """Decoded ``/agent/transition`` messages, validated by the link codec.

        Raises:
            SessionLogError: If one does not decode (the file is corrupt).
        """
        for m in self.messages(TRANSITION):
            try:
                msg = decode([m.data])
            except MessageError as err:
                raise SessionLogError(f"{self.path}: corrupt transition at "
                                      f"{m.log_time_ns} ns: {err}") from None
            if not isinstance(msg, Transition):
                raise SessionLogError(f"{self.path}: a {type(msg).__name__} on {TRANSITION}")
            yield msg

    def arm_states(self) -> np.ndarray:
        """All ``/agent/arm_state`` records as one structured array (:data:`ARM_STATE`)."""
        return self._structs(ARM_STATE_TOPIC, ARM_STATE)

    def control_ticks(self) -> np.ndarray:
        """All ``/control/tick`` records as one structured array (:data:`CONTROL_TICK`)."""
        return self._structs(CONTROL_TICK_TOPIC, CONTROL_TICK)

    def events(self) -> list[dict]:
        """All ``/events`` records (``kind``, ``t_ns``, details), oldest first."""
        out = []
        for m in self.messages(EVENTS):
            try:
                out.append(json.loads(m.data))
            except ValueError:
                raise SessionLogError(f"{self.path}: corrupt event at {m.log_time_ns} ns") \
                    from None
        return out

    def _structs(self, topic: str, dtype: np.dtype) -> np.ndarray:
        rows = [m.data for m in self.messages(topic)]
        if any(len(r) != dtype.itemsize for r in rows):
            raise SessionLogError(f"{self.path}: a {topic} record has the wrong size")
        return np.frombuffer(b"".join(rows), dtype) if rows else np.zeros(0, dtype)

    def config_yaml(self) -> str:
        """The config the session ran with (YAML text)."""
        return self.meta.get("config", "")

    def info(self) -> SessionInfo:
        """Summary of the session (one ``madi sessions ls`` line)."""
        returns: dict[int, float] = {}
        whole: set[int] = set()
        for t in self.transitions():
            returns[t.episode_id] = returns.get(t.episode_id, 0.0) + t.reward
            if t.terminated or t.truncated:
                whole.add(t.episode_id)
        times = [m.log_time_ns for m in self._messages]
        done = [returns[e] for e in sorted(whole)]
        return SessionInfo(
            path=self.path, started=self.meta.get("started", ""),
            backend=self.meta.get("backend", ""),
            steps=sum(1 for _ in self.messages(TRANSITION)), episodes=len(returns),
            mean_return=float(np.mean(done)) if done else float("nan"),
            duration_s=(times[-1] - times[0]) / 1e9 if times else 0.0,
            size_bytes=self.path.stat().st_size, cut=self.cut, cut_detail=self.cut_detail,
            end_reason=self.end.get("stop_reason", ""), returns=done)
