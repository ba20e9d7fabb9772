"""The emulated controller's rig I/O over HTTP: wrist camera, target screen, faults.

:class:`EmulatorIO` serves, on the emulator's address (``http://HOST:8080`` by default,
``madi sim controller``), what the real rig has beside the arm, so that the unmodified real
backend (:class:`robot.backends.real.RealRig`) runs against the emulator on one machine:

``GET /camera.mjpg``
    The mirror's wrist camera as an MJPEG stream, as IP cameras serve it: one HTTP response
    of type ``multipart/x-mixed-replace; boundary=madiframe`` whose parts are JPEG images
    (``Content-Type: image/jpeg``, ``Content-Length``), each part preceded by
    ``--madiframe``. OpenCV opens it with ``cv2.VideoCapture(url)`` (FFmpeg's ``mpjpeg``
    demuxer); ``camera.device: http://HOST:8080/camera.mjpg`` makes the real camera
    backend (:mod:`robot.backends.webcam`) read it. Frames are rendered at the capture
    size (``camera.width`` x ``camera.height``, uint8 RGB, JPEG quality 90) from the
    controller's actual joint positions of its last tick, at most ``camera.fps`` per
    second, only while someone watches. Rendering runs in its own process
    (:class:`sim.render_process.RenderProcess`, the sim rig's renderer, ``MUJOCO_GL=egl``)
    and JPEG encoding outside the GIL, so neither stalls the controller's tick loop. A
    frame is therefore one render + encode (plus the network) behind the arm; there is no
    other camera latency.
``GET /camera.jpg``
    One frame (JPEG) rendered now.
``PUT /screen`` (or ``POST``)
    An image (PNG, or any format ``cv2.imdecode`` reads; body with ``Content-Length``,
    at most 32 MiB) shown full-screen on the mirror's virtual monitor, resized to
    ``sim.texture_px`` (area interpolation, as :meth:`sim.mirror.Mirror.set_screen`); answers
    204. The real target display backend sends each target image here with
    ``monitor.url: http://HOST:8080/screen`` (:mod:`robot.backends.monitor`).
    ``GET /screen.png`` returns the last PNG received, as received.
``POST /fault/<name>``, ``DELETE /fault/<name>``
    Inject (POST) or clear (DELETE) a fault of :class:`sim.ur_controller.URController`:
    ``cable_pull`` (DELETE: plug back in), ``connection_reset``, ``protective_stop``
    (cleared with the dashboard's unlock, as on a real controller), ``emergency_stop``
    (DELETE: release it), ``script_kill``, ``remote_control_off`` (DELETE: back to
    remote), ``slow?factor=F`` (DELETE: factor 1). Answers 200 with the faults in force
    as JSON (:meth:`URController.faults`); 404 for an unknown fault, 400 for a bad
    argument.
``GET /status``
    The controller's state (:meth:`URController.status`) as JSON.

There is no authentication: the server listens on the emulator's own address (a loopback
address by default), never expose it on a network.

Sources: the MJPEG-over-HTTP convention of IP cameras (RFC 2046 multipart bodies with the
``multipart/x-mixed-replace`` type of Netscape's server push; FFmpeg's ``mpjpeg`` format),
Python's :mod:`http.server`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from robot.config import Config, config_from_dict

if TYPE_CHECKING:
    from sim.ur_controller import URController

log = logging.getLogger(__name__)

BOUNDARY = "madiframe"
#: Largest screen image accepted, bytes.
MAX_SCREEN_BYTES = 32 << 20
JPEG_QUALITY = 90
#: How long the camera keeps rendering after the last viewer left, s.
_IDLE_AFTER = 1.0
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_FAULT_PATH = re.compile(r"^/fault/([a-z_]+)$")


def render_config(model: str, rig: Config | None = None) -> Config:
    """The config the emulator's camera renders with: ``rig``'s camera at full capture size.

    Args:
        model: ``ur5`` or ``ur5e`` (the arm's kinematics).
        rig: The rig's config (camera intrinsics and mount, monitor pose, screen texture);
            None: the defaults.

    Returns:
        A sim config with ``camera.subsample = 1`` (the observation is the capture) and no
        camera latency.
    """
    base = {"backend": "sim", "arm": {"model": model}}
    if rig is not None:
        base["camera"] = rig.camera.model_dump(mode="json")
        base["monitor"] = rig.monitor.model_dump(mode="json")
        base["sim"] = rig.sim.model_dump(mode="json")
        base["target"] = rig.target.model_dump(mode="json")
    base.setdefault("camera", {})["subsample"] = 1
    base.setdefault("sim", {})["camera_latency"] = 0.0
    return config_from_dict(base)


class EmulatorIO:
    """The HTTP server of an emulated controller (camera, screen, faults; module docstring).

    Args:
        controller: The running controller (its joint positions and fault methods).
        rig: Config of the rendered camera, monitor and screen texture (None: defaults).
        port: TCP port on the controller's host; 0: any free port (see :attr:`port`).
        jpeg_quality: JPEG quality of the stream, 1-100.

    Attributes:
        frames_rendered: Frames the camera thread rendered so far.
    """

    def __init__(self, controller: URController, rig: Config | None = None, port: int = 8080,
                 jpeg_quality: int = JPEG_QUALITY):
        self.controller = controller
        self.config = render_config(controller.model, rig)
        self.jpeg_quality = int(jpeg_quality)
        self._requested_port = int(port)
        self._server: ThreadingHTTPServer | None = None
        self._renderer = None
        self._render_error: str | None = None
        self._cond = threading.Condition()
        self._frame: tuple[int, bytes] | None = None  # (seq, JPEG)
        self._viewers = 0
        self._last_viewer = 0.0
        self._screen_png: bytes | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.frames_rendered = 0

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        """``http://host:port`` + ``path``."""
        return f"http://{self.controller.host}:{self.port}{path}"

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> EmulatorIO:
        """Bind the port, start the renderer process and the camera thread.

        A renderer that cannot start (no OpenGL) is logged; the camera endpoints then
        answer 503 and the rest keeps working.

        Raises:
            OSError: the port cannot be bound.
        """
        server = ThreadingHTTPServer((self.controller.host, self._requested_port), _Handler)
        server.daemon_threads = True
        server.io = self  # type: ignore[attr-defined]
        self._server = server
        try:
            from sim.render_process import RenderProcess

            self._renderer = RenderProcess(self.config)
        except Exception as err:  # no EGL, no mujoco: serve the rest
            self._render_error = f"the emulator's camera renderer did not start: {err}"
            log.error("%s", self._render_error)
        self._spawn(server.serve_forever, "emulator-http")
        if self._renderer is not None:
            self._spawn(self._camera_loop, "emulator-camera")
        cam = self.config.camera
        log.info("emulator I/O on %s: camera %s (%dx%d at %g fps), screen %s, faults %s",
                 self.url(), self.url("/camera.mjpg"), cam.width, cam.height, cam.fps,
                 self.url("/screen"), self.url("/fault/<name>"))
        return self

    def close(self) -> None:
        """Stop serving, end the stream responses and the renderer process."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5.0)
        if self._renderer is not None:
            self._renderer.close()

    def _spawn(self, target, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------------ camera
    def render_now(self) -> np.ndarray:
        """The wrist camera at the controller's current joint positions.

        Returns:
            uint8 (camera.height, camera.width, 3) RGB.

        Raises:
            RuntimeError: no renderer (see :meth:`start`) or it failed.
            TimeoutError: the renderer did not answer within 5 s.
        """
        if self._renderer is None:
            raise RuntimeError(self._render_error or "no renderer")
        return self._renderer.render(self.controller.camera_q())

    def encode(self, rgb: np.ndarray) -> bytes:
        """JPEG of a uint8 (H, W, 3) RGB image at :attr:`jpeg_quality`."""
        ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]),
                                [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        return jpeg.tobytes()

    def _camera_loop(self) -> None:
        """Render at most camera.fps frames a second while someone watches."""
        period = 1.0 / float(self.config.camera.fps)
        seq = 0
        next_t = time.monotonic()
        while not self._stop.is_set():
            with self._cond:
                while (not self._stop.is_set() and self._viewers == 0
                       and time.monotonic() - self._last_viewer > _IDLE_AFTER):
                    self._cond.wait(0.5)
                    next_t = time.monotonic()
            if self._stop.is_set():
                return
            delay = next_t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_t = max(next_t + period, time.monotonic() - period)  # no catch-up bursts
            try:
                jpeg = self.encode(self.render_now())
            except Exception as err:
                log.error("emulator camera: %s", err)
                if self._stop.wait(0.5):
                    return
                continue
            seq += 1
            with self._cond:
                self._frame = (seq, jpeg)
                self.frames_rendered += 1
                self._cond.notify_all()

    def next_frame(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first frame with a sequence number above ``after`` (None on timeout/close)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._stop.is_set():
                if self._frame is not None and self._frame[0] > after:
                    return self._frame
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
        return None

    def watch(self, delta: int) -> None:
        """A stream viewer comes (+1) or goes (-1)."""
        with self._cond:
            self._viewers += delta
            self._last_viewer = time.monotonic()
            self._cond.notify_all()

    # ------------------------------------------------------------------ screen
    def show(self, encoded: bytes) -> tuple[int, int]:
        """Show an encoded image (PNG, JPEG, ...) on the virtual monitor.

        Returns:
            The image's (width, height), px.

        Raises:
            ValueError: not an image OpenCV can decode.
            RuntimeError: no renderer.
        """
        bgr = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("the body is not an image OpenCV can decode (send a PNG)")
        if self._renderer is None:
            raise RuntimeError(self._render_error or "no renderer")
        h, w = bgr.shape[:2]
        tw, th = (int(v) for v in self.config.sim.texture_px)
        if (w, h) != (tw, th):  # as Mirror.set_screen resizes, before the pipe
            bgr = cv2.resize(bgr, (tw, th), interpolation=cv2.INTER_AREA)
        self._renderer.set_screen(np.ascontiguousarray(bgr[..., ::-1]))
        self._screen_png = encoded if encoded[:8] == _PNG_MAGIC else None
        return w, h

    # ------------------------------------------------------------------ faults
    def fault(self, name: str, clear: bool, query: dict[str, list[str]]) -> dict[str, Any]:
        """Inject (``clear`` False) or clear a fault by its endpoint name (module docstring).

        Raises:
            KeyError: an unknown fault, or one that cannot be cleared this way.
            ValueError: a bad argument (e.g. ``factor``).
        """
        c = self.controller
        if clear:
            actions = {"cable_pull": c.plug_cable, "emergency_stop": c.release_emergency_stop,
                       "remote_control_off": lambda: c.set_remote_control(True),
                       "slow": lambda: c.slow_down(1.0)}
        else:
            def slow() -> None:
                c.slow_down(float(query.get("factor", ["4"])[0]))

            actions = {"cable_pull": c.pull_cable, "connection_reset": c.reset_connections,
                       "protective_stop": lambda: c.protective_stop("requested over HTTP"),
                       "emergency_stop": c.press_emergency_stop, "script_kill": c.kill_script,
                       "remote_control_off": lambda: c.set_remote_control(False),
                       "slow": slow}
        if name not in actions:
            raise KeyError(name)
        actions[name]()
        return c.faults()


class _Handler(BaseHTTPRequestHandler):
    """One HTTP request to :class:`EmulatorIO` (``self.server.io``)."""

    server_version = "madi-emulator/1"
    protocol_version = "HTTP/1.1"

    @property
    def io(self) -> EmulatorIO:
        return self.server.io  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib name)
        log.debug("http %s: " + format, self.client_address[0], *args)

    def _reply(self, status: int, body: bytes = b"", content_type: str = "text/plain") -> None:
        self.send_response(status)
        if status != HTTPStatus.NO_CONTENT:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = HTTPStatus.OK) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json")

    def _error(self, status: int, text: str) -> None:
        self._reply(status, (text + "\n").encode())

    # ------------------------------------------------------------------ GET
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = urlsplit(self.path).path
        io = self.io
        if path == "/camera.mjpg":
            self._stream()
        elif path == "/camera.jpg":
            try:
                self._reply(HTTPStatus.OK, io.encode(io.render_now()), "image/jpeg")
            except (RuntimeError, TimeoutError) as err:
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
        elif path == "/screen.png":
            if io._screen_png is None:
                self._error(HTTPStatus.NOT_FOUND, "no PNG screen image received yet")
            else:
                self._reply(HTTPStatus.OK, io._screen_png, "image/png")
        elif path == "/status":
            status = io.controller.status()
            status["faults"] = io.controller.faults()
            self._json(status)
        elif path == "/":
            self._reply(HTTPStatus.OK, (
                b"madi emulated UR controller\n"
                b"GET /camera.mjpg  wrist camera, MJPEG stream\n"
                b"GET /camera.jpg   one camera frame\n"
                b"PUT /screen       show a PNG on the virtual monitor\n"
                b"GET /screen.png   what the virtual monitor shows\n"
                b"POST|DELETE /fault/<name>  cable_pull, connection_reset, protective_stop, "
                b"emergency_stop, script_kill, remote_control_off, slow?factor=F\n"
                b"GET /status       controller state (JSON)\n"))
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {path}")

    def _stream(self) -> None:
        io = self.io
        if io._renderer is None:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, io._render_error or "no renderer")
            return
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-cache, no-store")
        self.send_header("Pragma", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        io.watch(+1)
        seq = 0
        try:
            while True:
                frame = io.next_frame(seq, timeout=1.0)
                if io._stop.is_set():
                    return
                if frame is None:
                    continue  # nothing new (a slow renderer): keep the response open
                seq, jpeg = frame
                self.wfile.write(
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                self.wfile.flush()
        except OSError:  # the viewer went away
            return
        finally:
            io.watch(-1)

    # ------------------------------------------------------------------ PUT / POST / DELETE
    def _body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return None
        if not 0 <= length <= MAX_SCREEN_BYTES:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"at most {MAX_SCREEN_BYTES} bytes")
            return None
        return self.rfile.read(length)

    def do_PUT(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        if parts.path != "/screen":
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {parts.path}")
            return
        body = self._body()
        if body is None:
            return
        try:
            w, h = self.io.show(body)
        except ValueError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
            return
        except (RuntimeError, TimeoutError) as err:
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(err))
            return
        log.debug("screen image %dx%d shown", w, h)
        self._reply(HTTPStatus.NO_CONTENT)

    def do_POST(self) -> None:  # noqa: N802
        if urlsplit(self.path).path == "/screen":
            self.do_PUT()
        else:
            self._fault(clear=False)

    def do_DELETE(self) -> None:  # noqa: N802
        self._fault(clear=True)

    def _fault(self, clear: bool) -> None:
        parts = urlsplit(self.path)
        match = _FAULT_PATH.match(parts.path)
        length = self.headers.get("Content-Length", "")
        if length.isdigit():
            self.rfile.read(min(int(length), 65536))  # a body is allowed, and ignored
        if match is None:
            self._error(HTTPStatus.NOT_FOUND, f"no such resource {parts.path}")
            return
        try:
            faults = self.io.fault(match.group(1), clear, parse_qs(parts.query))
        except KeyError:
            self._error(HTTPStatus.NOT_FOUND, f"no fault {match.group(1)!r} to "
                        f"{'clear' if clear else 'inject'} (see GET /)")
            return
        except ValueError as err:
            self._error(HTTPStatus.BAD_REQUEST, str(err))
            return
        self._json(faults)
