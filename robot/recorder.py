"""The session recorder: the robot process's side of its session log (MCAP).

The real-time threads never touch the file, and nothing of the recording holds their GIL
for long. :meth:`SessionRecorder.transition`, :meth:`~SessionRecorder.arm_state`,
:meth:`~SessionRecorder.control_tick` and :meth:`~SessionRecorder.event` put a small tuple
on a bounded queue and return (a few microseconds; when the queue is full the item is
dropped and counted, never waited for); :meth:`~SessionRecorder.log_handler` puts the
process's log lines on the same queue. The ``recorder`` thread copies each item into a
fixed binary record and writes it to a pipe; a child process
(:mod:`robot.session_writer`) encodes the channels (protobuf transitions, a JPEG per step,
the arm's frames, JSON records) and writes the file, closing a chunk at least every
``flush_every`` seconds. Format: :mod:`robot.session_log`.
"""

from __future__ import annotations

import json
import logging
import platform
import queue
import select
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from link import pipe
from link.messages import Spaces, Step
from robot.backends.base import ArmState
from robot.session_log import ARM_STATE, CONTROL_TICK, FORMAT_VERSION
from robot.session_schemas import SceneFrames
from robot.session_writer import item, pack_record, step_dtype, step_record

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


def _session_name(n: int) -> str:
    return "session.mcap" if n == 0 else f"session-{n}.mcap"


def session_path(run_dir: Path) -> Path:
    """A new session log name in ``run_dir``: ``session.mcap``, then ``session-1.mcap``, ..."""
    return run_dir / _session_name(len(session_paths(run_dir)))


def session_paths(run_dir: Path) -> list[Path]:
    """The session logs of ``run_dir``, in recording order.

    ``session.mcap``, ``session-1.mcap``, ... up to the first name that does not exist.
    """
    paths: list[Path] = []
    while (run_dir / _session_name(len(paths))).exists():
        paths.append(run_dir / _session_name(len(paths)))
    return paths


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
        start_timeout: Longest wait for the writer process to open the file, s.

    Raises:
        OSError: If the file cannot be created or the writer process does not start.
    """

    def __init__(self, path: str | Path, spaces: Spaces, meta: dict[str, str],
                 queue_size: int = 8192, flush_every: float = 1.0, keyframe_every: int = 250,
                 frames: SceneFrames | None = None, start_timeout: float = 60.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**{k: str(v) for k, v in meta.items()},
                "format_version": FORMAT_VERSION, "code_version": code_version(),
                "host": platform.node(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        frames_json = None if frames is None else {
            "model": frames.model, "camera_mount": frames.camera_mount.tolist(),
            "monitor_pose": frames.monitor_pose.tolist()}
        setup = {"path": str(self.path), "spaces": spaces.to_json(), "meta": meta,
                 "keyframe_every": keyframe_every, "flush_every": flush_every,
                 "frames": frames_json}
        self._proc = subprocess.Popen([sys.executable, "-m", "robot.session_writer"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._replies = self._proc.stdout.fileno()
        try:
            pipe.send(self._proc.stdin, json.dumps(setup).encode())
            reply = self._reply(start_timeout, "its start")
        except BaseException:
            self._proc.kill()
            self._proc.wait()
            raise
        if reply != b"ready":
            self._proc.wait()
            raise OSError(f"cannot record the session to {self.path}: "
                          f"{reply[1:].decode(errors='replace')}")
        self._step_dtype = step_dtype(spaces)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self.dropped = 0  #: Items dropped because the queue was full or the writer died.
        self.written = 0  #: Messages written (known after :meth:`close`).
        self.error: str | None = None  #: The first failure of the recording, if any.
        self._writer_failed = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producers
    def _put(self, entry: tuple) -> None:
        if self._closed:
            return
        try:
            self._queue.put_nowait(entry)
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
                line = {"levelno": record.levelno, "msg": record.getMessage(),
                        "name": record.name, "pathname": record.pathname,
                        "lineno": record.lineno}  # formatted now, not later
                recorder._put(("log", time.monotonic_ns(), line))

        return _Handler(level)

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is queued and close the chunk in progress, then return.

        Afterwards a reader of the file sees every item recorded before the call (a
        restarted learner refilling its replay buffer from the session log).

        Args:
            timeout: Longest wait for the writer, s.

        Returns:
            True when done; False if the recorder is closed, the writer failed, or it did
            not get there within ``timeout``.
        """
        if self._closed:
            return False
        done = threading.Event()
        try:
            self._queue.put(("flush", timeout, done), timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout) and not self._writer_failed

    # ------------------------------------------------------------------ recorder thread
    def _reply(self, timeout: float, what: str) -> bytes:
        if not select.select([self._replies], [], [], timeout)[0]:
            raise OSError(f"the session writer process did not answer {what} within "
                          f"{timeout:g} s")
        try:
            return pipe.recv(self._replies)
        except EOFError:
            raise OSError(f"the session writer process died (exit code {self._proc.poll()})"
                          ) from None

    def _run(self) -> None:
        while True:
            kind, t_ns, payload = self._queue.get()
            if kind == "close":
                self._to_writer(self._finish, payload)
                return
            if kind == "flush":
                self._to_writer(self._flush, t_ns)
                payload.set()
                continue
            try:
                message = self._encode(kind, t_ns, payload)
            except (ValueError, TypeError) as err:  # a malformed item: record the rest
                self.error = self.error or f"a {kind} item could not be recorded: {err}"
                logger.error("recorder: dropping a %s: %s", kind, err)
                continue
            if not self._to_writer(pipe.send, self._proc.stdin, message):
                self.dropped += 1

    def _to_writer(self, call: Any, *args: Any) -> bool:
        """``call(*args)`` unless the writer process has failed; False if it has (now)."""
        if self._writer_failed:
            return False
        try:
            call(*args)
            return True
        except OSError as err:
            self._writer_failed = True
            self.error = f"the session writer process stopped: {err}"
            logger.error("recorder: %s; the rest of the session is not recorded", self.error)
            return False

    def _flush(self, timeout: float) -> None:
        pipe.send(self._proc.stdin, b"F")
        self._reply(timeout, "a flush")

    def _encode(self, kind: str, t_ns: int, payload: Any) -> bytes:
        if kind == "transition":
            return item(b"T", t_ns, step_record(payload, self._step_dtype))
        if kind == "arm_state":
            episode, step, s = payload
            return item(b"A", t_ns, pack_record(
                ARM_STATE, episode=episode, step=step, t_ns=s.t_ns, q=s.q, qd=s.qd,
                protective_stopped=s.protective_stopped, emergency_stopped=s.emergency_stopped))
        if kind == "tick":
            episode, tick, tick_ns, q, qd, applied, stale = payload
            return item(b"K", t_ns, pack_record(CONTROL_TICK, episode=episode, tick=tick,
                                            t_ns=tick_ns, q=q, qd=qd, applied=applied,
                                            stale=stale))
        if kind == "log":
            return item(b"L", t_ns, json.dumps(payload).encode())
        return item(b"E", t_ns, json.dumps(payload, default=_json_default).encode())

    def _finish(self, end: dict[str, str]) -> None:
        end = {**end, "dropped": str(self.dropped)}
        pipe.send(self._proc.stdin, b"C" + json.dumps(end).encode())
        result = json.loads(self._reply(60.0, "the close"))
        self.written = int(result["written"])
        self.error = self.error or result["error"]

    def close(self, end: dict[str, Any] | None = None, timeout: float = 30.0) -> None:
        """Write what is queued, the ``session_end`` metadata and the summary; close.

        Args:
            end: ``session_end`` metadata (e.g. ``stop_reason``, ``env_steps``).
            timeout: Longest wait for the queue to drain and the file to close, s.
        """
        if self._closed:
            return
        self._closed = True
        info = {k: str(v) for k, v in (end or {}).items()}
        self._queue.put(("close", 0, info))
        self._thread.join(timeout)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.error("recorder: the session writer did not finish %s in %g s; stopped",
                         self.path, timeout)
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:
                pass  # a dead writer's pipe: nothing left to deliver
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
