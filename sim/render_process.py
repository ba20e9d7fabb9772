"""The mirror's wrist camera in a process of its own.

MuJoCo's OpenGL calls (``mjr_render``, ``mjr_readPixels``) hold Python's GIL for the
whole render: several ms at 160x90 on a CPU, tens of ms when the learner loads the
machine. In the robot process that would stall the control thread's speedJ ticks, which
need the GIL too. :class:`RenderProcess` keeps a second copy of the mirror's model in a
child process that only renders: the parent sends joint positions (and, on resets, the
screen image) and waits on a pipe, which releases the GIL, for the frame.

The child is ``python -m sim.render_process`` (a fresh interpreter: nothing of the
parent's ``__main__`` is re-imported, unlike multiprocessing's spawn). Wire format on its
stdin/stdout: messages of a little-endian uint32 length and a body (:mod:`link.pipe`); no
pickle. The first message is the config as JSON, answered by ``b"ready"``. Then one command
byte and a raw payload: ``R`` + 6 float64 joint positions -> the RGB frame bytes
(H x W x 3); ``S`` + uint32 height, width + the RGB image -> ``b"ok"``; ``C`` + a config as
JSON -> the mirror is rebuilt from it (a randomized episode's rig), ``b"ok"``; ``Q`` -> the
child exits.
Errors come back as ``b"E"`` + a UTF-8 message.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading

import numpy as np

from link import pipe
from robot.config import Config

logger = logging.getLogger(__name__)

_N_JOINTS = 6


def serve(fd_in: int, out) -> None:  # pragma: no cover - runs in the child
    """The child's loop: read commands from ``fd_in``, write replies to ``out``."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    from sim.mirror import Mirror

    def build(body: bytes) -> Mirror:
        cfg = Config.model_validate_json(body)
        return Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim)

    try:
        mirror = build(pipe.recv(fd_in))
    except Exception as err:
        pipe.send(out, b"E" + f"cannot build the mirror: {err}".encode())
        return
    pipe.send(out, b"ready")
    q = np.zeros(_N_JOINTS)
    screen = None  # re-shown on a rebuilt mirror
    try:
        while True:
            try:
                msg = pipe.recv(fd_in)
            except (EOFError, OSError):
                return  # the parent is gone
            cmd, payload = msg[:1], memoryview(msg)[1:]
            try:
                if cmd == b"R":
                    q[:] = np.frombuffer(payload, np.float64, _N_JOINTS)
                    pipe.send(out, mirror.render(q=q).tobytes())
                elif cmd == b"S":
                    h, w = struct.unpack("<II", payload[:8])
                    screen = np.frombuffer(payload[8:], np.uint8).reshape(h, w, 3).copy()
                    mirror.set_screen(screen)
                    pipe.send(out, b"ok")
                elif cmd == b"C":
                    new = build(bytes(payload))
                    mirror.close()
                    mirror = new
                    if screen is not None:
                        mirror.set_screen(screen)
                    pipe.send(out, b"ok")
                elif cmd == b"Q":
                    return
                else:
                    pipe.send(out, b"E" + f"unknown command {bytes(cmd)!r}".encode())
            except Exception as err:  # reported to the parent, the child keeps serving
                pipe.send(out, b"E" + f"{type(err).__name__}: {err}".encode())
    finally:
        mirror.close()


class RenderProcess:
    """A child process that renders the mirror's wrist camera (see module docstring).

    Thread-safe: calls are serialised by a lock.

    Args:
        cfg: Validated config (arm, camera, monitor, sim).
        start_timeout: Longest wait for the child to build its mirror, s.

    Raises:
        RuntimeError: If the child does not start in time or cannot build the mirror.
    """

    def __init__(self, cfg: Config, start_timeout: float = 60.0):
        self.obs_size = tuple(cfg.camera.obs_size)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sim.render_process"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env={**os.environ, "MUJOCO_GL": "egl"})
        self._fd = self._proc.stdout.fileno()
        self._lock = threading.Lock()
        try:
            with self._lock:
                self._send(cfg.model_dump_json().encode())
                reply = self._reply(start_timeout, "start")
        except BaseException:
            self.close()
            raise
        if reply != b"ready":
            self.close()
            raise RuntimeError(f"sim render process: unexpected start reply {reply[:80]!r}")

    def set_priority(self, priority: int | None) -> str | None:
        """Run the child under ``SCHED_FIFO`` at ``priority`` (its threads inherit it).

        On a real rig the camera is hardware; in the mirror it is this process, so under
        load it must not wait behind the learner.

        Args:
            priority: 1..99, or None to leave it at normal scheduling.

        Returns:
            None when applied (or not asked for), else why not.
        """
        if priority is None:
            return None
        try:
            os.sched_setscheduler(self._proc.pid, os.SCHED_FIFO, os.sched_param(priority))
        except (OSError, AttributeError) as err:
            return f"render process: SCHED_FIFO {priority} not permitted ({err})"
        return None

    def _send(self, body: bytes) -> None:
        try:
            pipe.send(self._proc.stdin, body)
        except (BrokenPipeError, OSError, ValueError) as err:
            raise RuntimeError(f"sim render process died (exit code {self._proc.poll()})"
                               ) from err

    def _reply(self, timeout: float, what: str) -> bytes:
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"sim render process did not answer {what} within {timeout} s "
                               f"(exit code {self._proc.poll()})")
        try:
            reply = pipe.recv(self._fd)
        except (EOFError, OSError) as err:
            raise RuntimeError(f"sim render process died (exit code {self._proc.poll()})"
                               ) from err
        if reply[:1] == b"E":
            raise RuntimeError(f"sim render process: {reply[1:].decode(errors='replace')}")
        return reply

    def render(self, q: np.ndarray, timeout: float = 5.0) -> np.ndarray:
        """Render the wrist camera at joint positions ``q``.

        Args:
            q: float (6,) joint positions, rad.
            timeout: Longest wait for the frame, s.

        Returns:
            uint8 (H, W, 3) RGB frame at the observation size.

        Raises:
            TimeoutError: If no frame came in time.
            RuntimeError: If the child died or failed.
        """
        q = np.ascontiguousarray(q, np.float64).reshape(_N_JOINTS)
        h, w = self.obs_size
        with self._lock:
            self._send(b"R" + q.tobytes())
            data = self._reply(timeout, "a render")
        if len(data) != h * w * 3:
            raise RuntimeError(f"sim render process sent {len(data)} bytes, expected {h * w * 3}")
        return np.frombuffer(data, np.uint8).reshape(h, w, 3).copy()

    def set_screen(self, image: np.ndarray, timeout: float = 5.0) -> None:
        """Show ``image`` (uint8 (h, w, 3) RGB) on the child's virtual monitor.

        Raises:
            TimeoutError: If the child did not confirm in time.
            RuntimeError: If the child died or rejected the image.
        """
        image = np.ascontiguousarray(image, np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"screen image must be uint8 (h, w, 3), got {image.shape}")
        header = b"S" + struct.pack("<II", image.shape[0], image.shape[1])
        with self._lock:
            self._send(header + image.tobytes())
            self._reply(timeout, "a screen update")

    def rebuild(self, cfg: Config, timeout: float = 30.0) -> None:
        """Rebuild the child's mirror from ``cfg`` (a randomized episode's rig).

        The screen shown stays; the observation size must not change.

        Raises:
            ValueError: If ``cfg`` gives another observation size.
            TimeoutError: If the child did not confirm in time.
            RuntimeError: If the child died or could not build the mirror.
        """
        if tuple(cfg.camera.obs_size) != self.obs_size:
            raise ValueError(f"a rebuilt mirror must keep the observation size {self.obs_size}, "
                             f"got {tuple(cfg.camera.obs_size)}")
        with self._lock:
            self._send(b"C" + cfg.model_dump_json().encode())
            self._reply(timeout, "a rebuild")

    def close(self, timeout: float = 5.0) -> None:
        """Stop the child (politely, then kill) and close the pipes."""
        with self._lock:
            if self._proc.poll() is None:
                try:
                    pipe.send(self._proc.stdin, b"Q")
                except (OSError, ValueError):
                    pass
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout)
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except OSError:
                    pass


if __name__ == "__main__":  # pragma: no cover - the child
    # The parent ends this process (Q, or EOF when it dies); a Ctrl-C meant for the
    # process group must not take the camera away while the parent stops the arm.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Replies go to the original stdout; anything a library prints goes to stderr.
    reply_fd = os.dup(1)
    os.dup2(2, 1)
    serve(sys.stdin.fileno(), os.fdopen(reply_fd, "wb"))
