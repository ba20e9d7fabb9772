"""Session logs: what one robot run recorded, in MCAP, and how to read it back.

A session log (``session.mcap`` in the run folder) holds every robot run, sim or real.
MCAP (https://mcap.dev) keeps multi-rate topics with nanosecond log times, indexed and
zstd-compressed per chunk. Format 2 (this version) opens in Foxglove with the camera, the
arm's frames in 3D, plots and log lines: every channel declares a schema that Foxglove
decodes.

=====================  ==========  =============  ========================================
topic                  rate        encoding       content
=====================  ==========  =============  ========================================
``/agent/transition``  25 Hz       protobuf       ``madi.Transition``: the link's
                                                  :class:`link.messages.Transition`, packed
                                                  as the link packs it (validated on
                                                  reading, no pickle): the camera frame the
                                                  agent saw, lossless (a keyframe carries
                                                  the whole frame stack), proprio, action,
                                                  reward, done flags, policy version,
                                                  frame and action times
``/agent/arm_state``   25 Hz       json           the arm state each agent step read
                                                  (:data:`ARM_STATE`'s fields)
``/control/tick``      125/500 Hz  json           every control tick: joint state read,
                                                  command applied, stale flag
                                                  (:data:`CONTROL_TICK`'s fields)
``/events``            sparse      json           resets, episode ends, safety interventions,
                                                  protective stops, arm and learner link
                                                  events
``/camera/image``      25 Hz       protobuf       ``foxglove.CompressedImage``: the newest
                                                  frame of each step, JPEG (for viewing)
``/tf``                25 Hz       protobuf       ``foxglove.FrameTransforms``: arm links,
                                                  flange, camera and monitor in ``base``
``/log``               sparse      protobuf       ``foxglove.Log``: the process's log lines
=====================  ==========  =============  ========================================

JSON channels carry a JSON Schema; protobuf channels a descriptor set of Foxglove's
schemas or of ``madi.Transition`` (:mod:`robot.session_schemas`). Metadata records:
``session`` at the start (config YAML, code version, backend, host, start time, format
version) and ``session_end`` just before the file is closed (steps, episodes, why the
run ended). Log times are ``time.monotonic_ns()`` of the robot machine; fast-pace sim
sessions stamp the same clock although their sim time runs faster.

Format 1 (sessions recorded before Foxglove channels) is read too: it has no camera, tf
or log channels, its transitions are in the link's own codec ("madi-link") and its arm
states and ticks are "madi-struct" records (one little-endian record of the numpy dtype).

Crash safety: the recorder closes a chunk at least every second, so a process killed at
any moment leaves a file readable up to its last complete chunk. :class:`SessionLog`
reads such a file without its summary and says where it was cut. Chunks are independent
and CRC-checked: a damaged chunk (a flipped bit on the disk, a bad copy) is skipped and
reported, and every other chunk is read, through the summary's chunk index when the
summary is intact and by a linear scan otherwise.
"""

from __future__ import annotations

import json
import logging
import mmap
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zstandard
from mcap.exceptions import McapError
from mcap.reader import FOOTER_SIZE, SeekingReader
from mcap.records import Channel, Chunk, DataEnd, Footer, McapRecord, Message, Metadata
from mcap.stream_reader import MAGIC_SIZE, StreamReader, breakup_chunk
from mcap.summary import Summary
from mcap.writer import MCAP0_MAGIC

from link.messages import MessageError, Transition, decode
from robot.session_schemas import records_from_json, transition_from_message

logger = logging.getLogger(__name__)

#: MCAP profile of madi session logs.
PROFILE = "madi-session"
#: Format version written, in the ``session`` metadata.
FORMAT_VERSION = "2"
#: Format majors this reader reads (it refuses others, naming the version).
READABLE_FORMATS = ("1", "2")

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


#: What the mcap library (and zstandard under it) raise on damaged bytes. A flipped size
#: field can ask for an impossible buffer: MemoryError, or OverflowError past 2**63.
_DAMAGE = (McapError, ValueError, EOFError, struct.error, zstandard.ZstdError, MemoryError,
           OverflowError)


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
        skipped: Damaged chunks left out (their messages are missing from the counts).
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
    skipped: int = 0
    returns: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class SkippedChunk:
    """A damaged chunk of a session log, left out when reading.

    Attributes:
        offset: Byte offset of the chunk record in the file.
        start_s: Log time of its first message, s after the first chunk's first message.
        end_s: Log time of its last message, s after the first chunk's first message.
        reason: What failed (a CRC mismatch, a zstd error, ...).
    """

    offset: int
    start_s: float
    end_s: float
    reason: str

    def __str__(self) -> str:
        return (f"skipped the damaged chunk at byte {self.offset} ({self.start_s:.1f}-"
                f"{self.end_s:.1f} s into the session; {self.reason}): its messages are "
                "missing, the rest of the file is read")


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


def _record_at(mm: mmap.mmap, offset: int) -> McapRecord:
    """The record at byte ``offset`` (a chunk is returned whole, not broken up).

    Raises:
        McapError, ValueError, struct.error: If no readable record starts there.
    """
    mm.seek(offset)
    return next(StreamReader(mm, skip_magic=True, emit_chunks=True,
                             record_size_limit=mm.size()).records)


def _footer(mm: mmap.mmap) -> Footer | None:
    """The footer record, or None if the file does not end with one and the magic (cut)."""
    if mm.size() < FOOTER_SIZE + 2 * MAGIC_SIZE or mm[-MAGIC_SIZE:] != MCAP0_MAGIC:
        return None
    try:
        footer = _record_at(mm, mm.size() - FOOTER_SIZE - MAGIC_SIZE)
    except _DAMAGE:
        return None
    return footer if isinstance(footer, Footer) else None


def _sound_summary(mm: mmap.mmap, footer: Footer | None) -> Summary | None:
    """The file's summary if there is one and it matches the footer's CRC, else None."""
    if footer is None or footer.summary_start == 0:
        return None
    try:
        # The summary CRC covers the summary and the footer up to the CRC field (4 bytes).
        crc = zlib.crc32(mm[footer.summary_start:mm.size() - MAGIC_SIZE - 4])
        if footer.summary_crc not in (0, crc):
            return None
        mm.seek(0)
        return SeekingReader(mm, record_size_limit=mm.size()).get_summary()
    except _DAMAGE:
        return None


def _chunk_messages(chunk: McapRecord, channels: dict[int, str]) -> list[LogMessage]:
    """The messages of one chunk, CRC-checked; channels it defines are added to ``channels``.

    Raises:
        McapError, ValueError, zstandard.ZstdError, ...: (see ``_DAMAGE``) If the chunk is
            damaged, or holds messages of a channel no readable record defines.
    """
    if not isinstance(chunk, Chunk):
        raise McapError(f"a {type(chunk).__name__} record where the index points to a chunk")
    out = []
    for record in breakup_chunk(chunk, validate_crc=True):
        if isinstance(record, Channel):
            channels[record.id] = record.topic
        elif isinstance(record, Message):
            if record.channel_id not in channels:
                raise McapError(f"messages of channel {record.channel_id}, which only a "
                                "damaged chunk defined")
            out.append(LogMessage(channels[record.channel_id], record.log_time, record.data))
    return out


class SessionLog:
    """Read a session log, whole, cut, or with damaged chunks.

    Args:
        path: The ``.mcap`` file.

    Raises:
        SessionLogError: If the file is missing or unreadable, not MCAP, not a madi
            session (or its ``session`` metadata is damaged), or of a newer format version;
            the message names the file and the problem.

    Attributes:
        meta: The ``session`` metadata (``config`` YAML text, ``code_version``,
            ``backend``, ``started``, ...).
        end: The ``session_end`` metadata ({} if the file was cut before it).
        cut: True if the readable part ends early: the file has no footer (the writer did
            not finish) or a record whose length is damaged ends the scan.
        cut_detail: Where the readable part ends (byte offset, last log time).
        skipped: The damaged chunks left out (each also logged as a warning).
        format: The file's format major (``"1"`` or ``"2"``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise SessionLogError(f"no session log at {self.path}; pass a session.mcap "
                                  "(runs/<run>/session.mcap)")
        self.meta: dict[str, str] = {}
        self.end: dict[str, str] = {}
        self.cut = False
        self.cut_detail = ""
        self.skipped: list[SkippedChunk] = []
        self._messages: list[LogMessage] = []
        self._t0_ns: int | None = None
        try:
            self._read()
        except OSError as err:
            raise SessionLogError(f"cannot read {self.path}: {err.strerror}; check that the "
                                  "file is readable by this user") from None
        if not self.meta:
            cut = f"; {self.cut_detail}" if self.cut else ""
            raise SessionLogError(f"{self.path} is an MCAP file but not a madi session (no "
                                  f"readable 'session' metadata{cut}); pass a session.mcap "
                                  "recorded by madi robot/train")
        self.format = self.meta.get("format_version", "0").split(".")[0]
        if self.format not in READABLE_FORMATS:
            raise SessionLogError(f"{self.path} has session format {self.format}; this madi "
                                  f"reads {', '.join(READABLE_FORMATS)}: use the madi "
                                  "version that wrote it")

    def _read(self) -> None:
        """Read every intact record: by the chunk index when the summary is sound."""
        with open(self.path, "rb") as f:
            magic = f.read(MAGIC_SIZE)
            if magic != MCAP0_MAGIC:
                raise SessionLogError(f"{self.path} is not an MCAP file (it starts with "
                                      f"{magic!r}); pass a session.mcap written by madi")
            # mmap: a damaged length field reads to the end of the file, never allocates it.
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                footer = _footer(mm)
                summary = _sound_summary(mm, footer)
                if footer is not None and footer.summary_start and summary is None:
                    logger.warning("%s: the summary is damaged; reading the file in order",
                                   self.path)
                if summary is None or not summary.chunk_indexes:
                    self._scan(mm, whole=footer is not None)
                else:
                    self._read_indexed(mm, summary)

    def _read_indexed(self, mm: mmap.mmap, summary: Summary) -> None:
        """Read the metadata and chunks the summary indexes, each on its own."""
        for index in summary.metadata_indexes:
            try:
                self._take_metadata(_record_at(mm, index.offset))
            except _DAMAGE as err:
                logger.warning("%s: the %r metadata at byte %d is damaged (%s)", self.path,
                               index.name, index.offset, err)
        channels = {cid: channel.topic for cid, channel in summary.channels.items()}
        chunks = sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset)
        self._t0_ns = chunks[0].message_start_time
        for c in chunks:
            try:
                chunk = _record_at(mm, c.chunk_start_offset)
                self._messages.extend(_chunk_messages(chunk, channels))
            except _DAMAGE as err:
                self._skip(c.chunk_start_offset, c.message_start_time, c.message_end_time, err)

    def _scan(self, mm: mmap.mmap, whole: bool) -> None:
        """Read the data section in file order, to its end or the first unreadable record.

        A damaged chunk whose record length is intact is skipped and the scan goes on; a
        damaged record length ends the scan there (the file counts as cut). ``whole``:
        the file ends with a footer (else it counts as cut where its data ends).
        """
        channels: dict[int, str] = {}
        offset = 0
        mm.seek(0)
        reader = StreamReader(mm, emit_chunks=True, record_size_limit=mm.size())
        try:
            for record in reader.records:
                if isinstance(record, Chunk):
                    self._take_chunk(record, offset, channels)
                elif isinstance(record, Channel):
                    channels[record.id] = record.topic
                elif isinstance(record, DataEnd):
                    if not whole:
                        self._mark_cut(mm.tell(), mm.size(), "no footer: the writer did not "
                                       "finish")
                    return
                else:
                    self._take_metadata(record)
                offset = mm.tell()
        except _DAMAGE as err:
            self._mark_cut(offset, mm.size(), str(err) or type(err).__name__)

    def _take_metadata(self, record: McapRecord) -> None:
        if isinstance(record, Metadata) and record.name == "session":
            self.meta = dict(record.metadata)
        elif isinstance(record, Metadata) and record.name == "session_end":
            self.end = dict(record.metadata)

    def _take_chunk(self, chunk: Chunk, offset: int, channels: dict[int, str]) -> None:
        """Add the messages of a chunk met in a scan, or skip it if it is damaged."""
        if self._t0_ns is None:
            self._t0_ns = chunk.message_start_time
        try:
            self._messages.extend(_chunk_messages(chunk, channels))
        except _DAMAGE as err:
            self._skip(offset, chunk.message_start_time, chunk.message_end_time, err)

    def _skip(self, offset: int, start_ns: int, end_ns: int, err: BaseException) -> None:
        """Note (and log) a damaged chunk: where it is, its time range, what failed."""
        t0 = self._t0_ns or 0
        skipped = SkippedChunk(offset, (start_ns - t0) / 1e9, (end_ns - t0) / 1e9,
                               str(err) or type(err).__name__)
        self.skipped.append(skipped)
        logger.warning("%s: %s", self.path, skipped)

    def _mark_cut(self, offset: int, size: int, why: str) -> None:
        self.cut = True
        messages = self._messages
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
                msg = decode([m.data]) if self.format == "1" else transition_from_message(m.data)
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
        if self.format != "1":
            try:
                return records_from_json(rows, dtype)
            except ValueError as err:
                raise SessionLogError(f"{self.path}: a corrupt {topic} record: {err}") \
                    from None
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
            end_reason=self.end.get("stop_reason", ""), skipped=len(self.skipped),
            returns=done)
