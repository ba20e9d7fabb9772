"""The session log's writer process: encodes and writes what the robot process records.

Encoding a session's channels holds Python's GIL for about a millisecond per agent step
(forward kinematics and protobuf for ``/tf``, JPEG for ``/camera/image``, JSON for every
control tick, protobuf for the transition). Done on a thread of the robot process, that
time is taken from the agent step and the control thread, which need the same GIL
(BENCHMARKS.md, "Session recording"). So :class:`robot.recorder.SessionRecorder` only
copies each item into a fixed binary record and writes it to this child's stdin; the
child, ``python -m robot.session_writer`` at a lower CPU priority, encodes and writes the
MCAP file (format: :mod:`robot.session_log`).

Wire format on the child's stdin (messages of :mod:`link.pipe`; no pickle):

- first, JSON ``{"path", "spaces", "meta", "keyframe_every", "flush_every", "frames"}``,
  answered on stdout by ``b"ready"`` or ``b"E"`` + the reason;
- then items: one kind byte, the int64 record time (monotonic ns), and a payload:
  ``T`` a :func:`step_dtype` record (one agent step), ``A`` an :data:`ARM_STATE` record,
  ``K`` a :data:`CONTROL_TICK` record, ``E`` an event as JSON, ``L`` a log record as
  JSON (``levelno``, ``msg``, ``name``, ``pathname``, ``lineno``);
- ``F``: close the chunk in progress, answered by ``b"flushed"``;
- ``C`` + the ``session_end`` metadata as JSON: finish the file, answered by JSON
  ``{"written", "error"}``; the child exits.

End of input without ``C`` means the robot process died: the child finishes the file
with ``stop_reason`` saying so. Chunks close at least every ``flush_every`` seconds, so
if both processes are killed at most that much is lost.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import struct
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.FrameTransforms_pb2 import FrameTransforms
from foxglove_schemas_protobuf.Log_pb2 import Log
from mcap.writer import CompressionType, Writer

from link import pipe
from link.messages import Spaces, Step, TransitionPacker
from robot.session_log import (
    ARM_STATE,
    ARM_STATE_TOPIC,
    CONTROL_TICK,
    CONTROL_TICK_TOPIC,
    EVENTS,
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

_TIME = struct.Struct("<q")
#: ``stop_reason`` of a file whose robot process ended without closing it.
ORPHANED = "the robot process ended without closing its session log"


def step_dtype(spaces: Spaces) -> np.dtype:
    """The fixed binary record of one :class:`link.messages.Step` of ``spaces``."""
    image, proprio, action = spaces.image_shape, (spaces.proprio_dim,), (spaces.action_dim,)
    return np.dtype([
        ("episode_id", "<i8"), ("step_index", "<i8"),
        ("image", "u1", image), ("proprio", "<f4", proprio), ("action", "<f4", action),
        ("reward", "<f8"), ("next_image", "u1", image), ("next_proprio", "<f4", proprio),
        ("terminated", "u1"), ("truncated", "u1"), ("frame_time_ns", "<i8"),
        ("action_time_ns", "<i8"), ("policy_version", "<i8")])


def pack_record(dtype: np.dtype, **fields: Any) -> bytes:
    """One record of the structured ``dtype``, the fields given set and the rest zero.

    Raises:
        ValueError: A value does not fit its field's shape.
    """
    record = np.zeros((), dtype)
    for name, value in fields.items():
        record[name] = value
    return record.tobytes()


def step_record(step: Step, dtype: np.dtype) -> bytes:
    """``step`` as one :func:`step_dtype` record (raises ValueError on a wrong shape)."""
    names = ("episode_id", "step_index", "action", "reward", "terminated", "truncated",
             "frame_time_ns", "action_time_ns", "policy_version")
    return pack_record(dtype, **{name: getattr(step, name) for name in names},
                       image=step.obs["image"], proprio=step.obs["proprio"],
                       next_image=step.next_obs["image"], next_proprio=step.next_obs["proprio"])


def _step(payload: memoryview, dtype: np.dtype) -> Step:
    r = np.frombuffer(payload, dtype, 1)[0]
    return Step(int(r["episode_id"]), int(r["step_index"]),
                {"image": r["image"], "proprio": r["proprio"]}, r["action"], float(r["reward"]),
                {"image": r["next_image"], "proprio": r["next_proprio"]}, bool(r["terminated"]),
                bool(r["truncated"]), int(r["frame_time_ns"]), int(r["action_time_ns"]),
                int(r["policy_version"]))


def item(kind: bytes, t_ns: int, payload: bytes) -> bytes:
    """One item message: ``kind`` (one byte), the record time (ns), the payload."""
    return kind + _TIME.pack(t_ns) + payload


class SessionFile:
    """The MCAP file of one session: its channels, and the encoding of every item.

    Args:
        path: Output ``.mcap`` file.
        spaces: Observation/action spaces (for the transition codec).
        meta: The ``session`` metadata, complete.
        keyframe_every: A full frame stack at least every this many transitions.
        frames: The rig's fixed frames, for ``/tf`` (no ``/tf`` channel without them).

    Raises:
        OSError: If the file cannot be created.
    """

    def __init__(self, path: Path, spaces: Spaces, meta: dict[str, str], keyframe_every: int,
                 frames: SceneFrames | None):
        self._file = open(path, "wb")
        self._writer = Writer(self._file, chunk_size=4 << 20, compression=CompressionType.ZSTD)
        self._writer.start(profile=PROFILE, library="madi-robot")
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
        self._step_dtype = step_dtype(spaces)
        self._seq = 0
        self.written = 0  #: Messages written.

    def _channel(self, topic: str, encoding: str, schema_encoding: str, schema: str,
                 schema_data: bytes) -> int:
        schema_id = self._writer.register_schema(schema, schema_encoding, schema_data)
        return self._writer.register_channel(topic, encoding, schema_id)

    def _json_channel(self, topic: str, schema: dict) -> int:
        return self._channel(topic, "json", "jsonschema", schema["title"],
                             json.dumps(schema).encode())

    def _protobuf_channel(self, topic: str, message: type) -> int:
        return self._channel(topic, "protobuf", "protobuf", *protobuf_schema(message))

    def write(self, kind: bytes, t_ns: int, payload: memoryview) -> None:
        """Encode one item (see the module docstring) and add its messages.

        Raises:
            ValueError: If the payload does not fit its kind.
        """
        if kind == b"T":
            step = _step(payload, self._step_dtype)
            self._add(TRANSITION, t_ns, transition_message(self._packer.pack(step)))
            newest = step.next_obs["image"][-3:].transpose(1, 2, 0)  # (3k, H, W) -> HWC
            self._add(CAMERA_TOPIC, t_ns, compressed_image(newest, step.frame_time_ns))
        elif kind == b"A":
            s = np.frombuffer(payload, ARM_STATE, 1)[0]
            self._add(ARM_STATE_TOPIC, t_ns, json_record(
                ARM_STATE, **{name: s[name] for name in ARM_STATE.names}))
            if self._frames is not None:
                self._add(TF_TOPIC, t_ns, self._frames.transforms(s["q"], t_ns))
        elif kind == b"K":
            s = np.frombuffer(payload, CONTROL_TICK, 1)[0]
            self._add(CONTROL_TICK_TOPIC, t_ns, json_record(
                CONTROL_TICK, **{name: s[name] for name in CONTROL_TICK.names}))
        elif kind == b"L":
            record = logging.makeLogRecord({**json.loads(bytes(payload)), "args": None})
            self._add(LOG_TOPIC, t_ns, log_line(record, t_ns))
        elif kind == b"E":
            self._add(EVENTS, t_ns, bytes(payload))
        else:
            raise ValueError(f"unknown item kind {kind!r}")

    def _add(self, topic: str, t_ns: int, data: bytes) -> None:
        self._writer.add_message(self._channels[topic], log_time=t_ns, data=data,
                                 publish_time=t_ns, sequence=self._seq)
        self._seq += 1
        self.written += 1

    def flush(self) -> None:
        """Close the chunk in progress: a reader now sees every message added."""
        self._writer.flush()

    def finish(self, end: dict[str, str]) -> None:
        """Write the ``session_end`` metadata and the summary, fsync and close the file."""
        self._writer.add_metadata("session_end", end)
        self._writer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def _open(body: bytes) -> tuple[SessionFile, float]:
    setup = json.loads(body)
    frames = setup["frames"]
    if frames is not None:
        frames = SceneFrames(frames["model"], np.array(frames["camera_mount"]),
                             np.array(frames["monitor_pose"]))
    file = SessionFile(Path(setup["path"]), Spaces.from_json(setup["spaces"]), setup["meta"],
                       int(setup["keyframe_every"]), frames)
    return file, float(setup["flush_every"])


def serve(fd_in: int, out: BinaryIO) -> None:  # pragma: no cover - runs in the child
    """The child's loop: read items from ``fd_in`` until ``C`` or end of input."""
    try:
        file, flush_every = _open(pipe.recv(fd_in))
    except Exception as err:
        pipe.send(out, b"E" + f"{type(err).__name__}: {err}".encode())
        return
    pipe.send(out, b"ready")
    error: str | None = None
    end: dict[str, str] = {"stop_reason": ORPHANED}
    last_flush, unflushed = time.monotonic(), False
    while True:
        # Wait for the next item; with messages not yet flushed, no longer than flush_every.
        wait = max(0.0, flush_every - (time.monotonic() - last_flush)) if unflushed else None
        if select.select([fd_in], [], [], wait)[0]:
            try:
                body = memoryview(pipe.recv(fd_in))
            except (EOFError, OSError):
                break  # the robot process is gone: finish what it sent
            kind = bytes(body[:1])
            if kind == b"C":
                end = json.loads(bytes(body[1:]))
                break
            if kind == b"F":
                file.flush()
                last_flush, unflushed = time.monotonic(), False
                pipe.send(out, b"flushed")
                continue
            try:
                file.write(kind, _TIME.unpack(body[1:9])[0], body[9:])
                unflushed = True
            except Exception as err:  # keep recording the rest; report at close
                error = error or f"{type(err).__name__}: {err}"
                print(f"session writer: dropping a {kind!r} item: {err}", file=sys.stderr)
        if unflushed and time.monotonic() - last_flush >= flush_every:
            file.flush()
            last_flush, unflushed = time.monotonic(), False
    file.finish({**end, "written": str(file.written)})
    try:
        pipe.send(out, json.dumps({"written": file.written, "error": error}).encode())
    except OSError:
        pass  # nobody is listening any more


if __name__ == "__main__":  # pragma: no cover - the child
    # A Ctrl-C or SIGTERM meant for the process group must not cut the file: the robot
    # process closes it (``C``), or the child finishes it when the robot process's pipe
    # ends, whatever ended the robot process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.nice(5)  # the loop's threads come first; the writer has a queue to catch up
    except OSError:
        pass
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the replies
    serve(sys.stdin.fileno(), os.fdopen(reply_fd, "wb"))
