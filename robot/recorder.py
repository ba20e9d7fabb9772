"""The session recorder: writes a run's session log (MCAP) from its own thread.

The real-time threads never touch the file. :meth:`SessionRecorder.transition`,
:meth:`~SessionRecorder.arm_state`, :meth:`~SessionRecorder.control_tick` and
:meth:`~SessionRecorder.event` put a small tuple on a bounded queue and return (a few
microseconds; when the queue is full the item is dropped and counted, never waited for).
The writer thread encodes the items (protobuf for transitions, as the link packs them;
JSON for states, ticks and events; Foxglove's protobuf schemas for the camera image, the
arm's frames and log lines), hands them to the MCAP writer, and closes a chunk at least every
``flush_every`` seconds, so a crash loses at most that much. :meth:`~SessionRecorder.
log_handler` puts the process's log lines on the same queue.
Format: :mod:`robot.session_log`.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.FrameTransforms_pb2 import FrameTransforms
from foxglove_schemas_protobuf.Log_pb2 import Log
from mcap.writer import CompressionType, Writer

from link.messages import Spaces, Step, TransitionPacker
from robot.backends.base import ArmState
from robot.session_log import (
    ARM_STATE,
    ARM_STATE_TOPIC,
    CONTROL_TICK,
    CONTROL_TICK_TOPIC,
    EVENTS,
    FORMAT_VERSION,
    PROFILE,
    TRANSITION,
)
from robot.session_schemas import (
    CAMERA_TOPIC,
    EVENT_SCHEMA,
    LOG_TOPIC,
    TF_TOPIC,
    SceneFrames,
    TransitionProto,
    compressed_image,
    json_record,
    json_schema,
    log_line,
    protobuf_schema,
    transition_message,
)

logger = logging.getLogger(__name__)


def code_version() -> str:
    """The package version plus the git commit of the source tree when there is one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("madi-robot")
    except PackageNotFoundError:
        ver = "unknown"
    head = Path(__file__).resolve().parent.parent / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref = (head.parent / ref[5:]).read_text().strip()
        return f"{ver}+git.{ref[:12]}"
    except OSError:
        return ver


def session_path(run_dir: Path) -> Path:
    """A new session log name in ``run_dir``: ``session.mcap``, then ``session-1.mcap``, ..."""
    path, n = run_dir / "session.mcap", 0
    while path.exists():
        n += 1
        path = run_dir / f"session-{n}.mcap"
    return path


class SessionRecorder:
    """Records one session to ``path`` (see module docstring).

    Args:
        path: Output ``.mcap`` file (its folder is created).
        spaces: Observation/action spaces (for the transition codec).
        meta: The ``session`` metadata: at least ``config`` (YAML) and ``backend``; the
            start time, code version, host and format version are added.
        queue_size: Items buffered before new ones are dropped.
        flush_every: Longest time between chunk closes, s (bounds the loss on a crash).
        keyframe_every: A full frame stack at least every this many transitions.
        frames: The rig's fixed frames, for the ``/tf`` channel (none without them).

    Raises:
        OSError: If the file cannot be created.
    """

    def __init__(self, path: str | Path, spaces: Spaces, meta: dict[str, str],
                 queue_size: int = 8192, flush_every: float = 1.0, keyframe_every: int = 250,
                 frames: SceneFrames | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb")
        self._writer = Writer(self._file, chunk_size=4 << 20,
                              compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library="madi-robot")
        meta = {**{k: str(v) for k, v in meta.items()},
                "format_version": FORMAT_VERSION, "code_version": code_version(),
                "host": platform.node(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._writer.add_metadata("session", meta)
        self._frames = frames
        self._channels = {
            TRANSITION: self._protobuf_channel(TRANSITION, TransitionProto),
            ARM_STATE_TOPIC: self._json_channel(ARM_STATE_TOPIC,
                                                json_schema("madi.ArmState", ARM_STATE)),
            CONTROL_TICK_TOPIC: self._json_channel(CONTROL_TICK_TOPIC,
                                                   json_schema("madi.ControlTick", CONTROL_TICK)),
            EVENTS: self._json_channel(EVENTS, EVENT_SCHEMA),
            CAMERA_TOPIC: self._protobuf_channel(CAMERA_TOPIC, CompressedImage),
            LOG_TOPIC: self._protobuf_channel(LOG_TOPIC, Log),
        }
        if frames is not None:
            self._channels[TF_TOPIC] = self._protobuf_channel(TF_TOPIC, FrameTransforms)
        self._packer = TransitionPacker(spaces, keyframe_every)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._flush_every = float(flush_every)
        self._seq = 0
        self.dropped = 0  #: Items dropped because the queue was full.
        self.written = 0  #: Messages written.
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    def _channel(self, topic: str, encoding: str, schema_encoding: str, schema: str,
                 schema_data: bytes) -> int:
        schema_id = self._writer.register_schema(schema, schema_encoding, schema_data)
        return self._writer.register_channel(topic, encoding, schema_id)

    def _json_channel(self, topic: str, schema: dict) -> int:
        return self._channel(topic, "json", "jsonschema", schema["title"],
                             json.dumps(schema).encode())

    def _protobuf_channel(self, topic: str, message: type) -> int:
        return self._channel(topic, "protobuf", "protobuf", *protobuf_schema(message))

    # ------------------------------------------------------------------ producers
    def _put(self, item: tuple) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1

    def transition(self, step: Step) -> None:
        """Record one agent step (packed as the link packs it: :meth:`TransitionPacker.pack`)."""
        self._put(("transition", time.monotonic_ns(), step))

    def arm_state(self, episode: int, step: int, state: ArmState) -> None:
        """Record the arm state an agent step read."""
        self._put(("arm_state", time.monotonic_ns(), (episode, step, state)))

    def control_tick(self, episode: int, tick: int, t_ns: int, state: ArmState,
                     applied: np.ndarray, stale: bool) -> None:
        """Record one control tick: the state it read and the command it sent (rad/s)."""
        self._put(("tick", time.monotonic_ns(), (episode, tick, t_ns, state.q, state.qd,
                                                 applied.copy(), stale)))

    def event(self, kind: str, **details: Any) -> None:
        """Record an event (reset, episode end, safety, protective stop, link, ...)."""
        self._put(("event", time.monotonic_ns(), {"kind": kind, **details}))

    def log_handler(self, level: int = logging.INFO) -> logging.Handler:
        """A logging handler that records the log lines it gets on ``/log``.

        Add it to a logger (``logging.getLogger().addHandler(...)``) while the recorder is
        open and remove it before :meth:`close`. Like every producer it never blocks.
        """
        recorder = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                line = logging.makeLogRecord({**record.__dict__, "msg": record.getMessage(),
                                              "args": None})  # formatted now, not later
                recorder._put(("log", time.monotonic_ns(), line))

        return _Handler(level)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued and close the chunk in progress, then return.

        Afterwards a reader of the file sees every item recorded before the call (a
        restarted learner refilling its replay buffer from the session log).

        Args:
            timeout: Longest wait for the writer thread, s.

        Returns:
            True when done; False if the recorder is closed or the writer thread did not
            get there within ``timeout``.
        """
        if self._closed:
            return False
        done = threading.Event()
        try:
            self._queue.put(("flush", 0, done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        last_flush = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=0.05)
            except queue.Empty:
                item = None
            if item is not None and item[0] == "close":
                break
            if item is not None and item[0] == "flush":
                self._writer.flush()
                last_flush = time.monotonic()
                item[2].set()
            elif item is not None:
                try:
                    self._write(*item)
                except Exception as err:  # keep recording the rest; report at close
                    self.error = self.error or err
                    logger.error("recorder: dropping a %s: %s", item[0], err)
            if time.monotonic() - last_flush >= self._flush_every:
                self._writer.flush()
                last_flush = time.monotonic()

    def _write(self, kind: str, t_ns: int, payload: Any) -> None:
        if kind == "transition":
            self._add(TRANSITION, t_ns, transition_message(self._packer.pack(payload)))
            newest = payload.next_obs["image"][-3:].transpose(1, 2, 0)  # (3k, H, W) -> HWC
            self._add(CAMERA_TOPIC, t_ns, compressed_image(newest, payload.frame_time_ns))
        elif kind == "arm_state":
            episode, step, s = payload
            self._add(ARM_STATE_TOPIC, t_ns, json_record(
                ARM_STATE, episode=episode, step=step, t_ns=s.t_ns, q=s.q, qd=s.qd,
                protective_stopped=s.protective_stopped, emergency_stopped=s.emergency_stopped))
            if self._frames is not None:
                self._add(TF_TOPIC, t_ns, self._frames.transforms(s.q, t_ns))
        elif kind == "tick":
            episode, tick, tick_ns, q, qd, applied, stale = payload
            self._add(CONTROL_TICK_TOPIC, t_ns, json_record(
                CONTROL_TICK, episode=episode, tick=tick, t_ns=tick_ns, q=q, qd=qd,
                applied=applied, stale=stale))
        elif kind == "log":
            self._add(LOG_TOPIC, t_ns, log_line(payload, t_ns))
        else:
            self._add(EVENTS, t_ns, json.dumps(payload, default=_json_default).encode())

    def _add(self, topic: str, t_ns: int, data: bytes) -> None:
        self._writer.add_message(self._channels[topic], log_time=t_ns, data=data,
                                 publish_time=t_ns, sequence=self._seq)
        self._seq += 1
        self.written += 1

    def close(self, end: dict[str, Any] | None = None, timeout: float = 30.0) -> None:
        """Write what is queued, the ``session_end`` metadata and the summary; close.

        Args:
            end: ``session_end`` metadata (e.g. ``stop_reason``, ``env_steps``).
            timeout: Longest wait for the queue to drain, s.
        """
        if self._closed:
            return
        self._closed = True
        self._queue.put(("close", 0, None))
        self._thread.join(timeout)
        info = {k: str(v) for k, v in (end or {}).items()}
        info.update(dropped=str(self.dropped), written=str(self.written))
        self._writer.add_metadata("session_end", info)
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        if self.dropped:
            logger.warning("recorder: %d items dropped (queue full)", self.dropped)
        logger.info("session log %s: %d messages, %.1f MB", self.path, self.written,
                    self.path.stat().st_size / 1e6)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__} in an event")
