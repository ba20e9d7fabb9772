"""The real wrist webcam through OpenCV (``cv2.VideoCapture``): :class:`OpenCVCamera`.

Threading: ``connect()`` opens the device and starts one daemon capture thread that owns
the ``cv2.VideoCapture`` (it alone calls ``grab``/``retrieve`` and finally ``release``).
The thread loops on the driver: ``grab()`` blocks until the camera delivers the next
frame, the arrival time is taken at once, then ``retrieve()`` decodes it; the frame is
converted BGR -> RGB, subsampled to the observation size and swapped in as the newest
frame under a lock. :meth:`OpenCVCamera.read` only takes that reference (plus a few
counters) under the same lock, so a reader never waits on the driver or on decoding: at
most for a lock swap. A reader that asks faster than the camera delivers gets the same
frame (same ``seq``) again. No queue: older frames are simply replaced, so the agent
always sees the newest one.

Timestamps: :attr:`robot.backends.base.Frame.t_ns` is ``time.monotonic_ns()`` taken right
after ``grab()`` returns, i.e. the time the frame *arrived* in this process. The exposure
happened earlier by the driver and USB latency (sensor readout, MJPG encoding in the
camera, transfer; typically tens of ms for a USB webcam). That latency is not observable
here; it is measured by the latency calibration and modelled as ``sim.camera_latency``.
The clock is the same ``CLOCK_MONOTONIC`` as the arm's timestamps, so frame and joint
times compare directly.

Failure: when ``grab()`` fails (camera unplugged, driver error, end of a video file) the
thread keeps retrying for ``timeout`` seconds after the last good frame, then marks the
camera failed with the reason and exits (releasing the device). A camera that stalls
inside the driver is caught on the read side: :meth:`OpenCVCamera.read` raises
:class:`DeviceError` when the newest frame is older than ``timeout``. On Linux the V4L2
backend waits up to ``OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT`` s (OpenCV default 10) inside one
``grab()`` of a stalled camera; this module sets it to 1 s unless the environment already
sets it (OpenCV reads it once per process, at the first V4L2 frame), so that a stalled
capture thread can be stopped promptly.

Video files: a regular file as ``camera.device`` is played back in real time at
``camera.fps`` (whatever rate the file declares), frames stamped like a live camera. The
end of the file behaves like an unplugged camera. For dry runs and tests.

Network streams: a URL as ``camera.device`` (``http://``, ``https://`` or ``rtsp://``, e.g.
an IP camera's MJPEG stream or the emulated controller's ``http://127.0.0.2:8080/camera.mjpg``,
:mod:`sim.emulator_io`) is opened with OpenCV's FFmpeg backend and read like a live camera,
stamped on arrival. A stream is configured at its source, so no format, exposure or white
balance is requested; its size must still be the configured one. FFmpeg's open and read
waits are bounded (``CAP_PROP_OPEN_TIMEOUT_MSEC`` :data:`STREAM_OPEN_TIMEOUT`,
``CAP_PROP_READ_TIMEOUT_MSEC`` the camera timeout, at least 1 s), so a stalled stream fails
like an unplugged camera. A password in the URL (``http://user:pw@host/...``) is not
written to logs or errors.

Settings (V4L2): fourcc, width, height and fps are requested in that order (the driver
picks the nearest mode it offers); exposure ``None`` selects auto exposure
(``CAP_PROP_AUTO_EXPOSURE`` 3 = aperture priority), a number manual exposure (1 = manual,
then ``CAP_PROP_EXPOSURE`` in the driver's units, 100 us steps on UVC); white balance
``None`` selects auto (``CAP_PROP_AUTO_WB`` 1), a number manual (``CAP_PROP_AUTO_WB`` 0,
then ``CAP_PROP_WB_TEMPERATURE`` in K). What the driver actually set is read back
(:attr:`OpenCVCamera.settings`); a capture size other than the configured one is an error
(the intrinsics are for the configured size), other differences are logged as warnings.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import threading
import time
from typing import TYPE_CHECKING

if sys.platform.startswith("linux"):
    # Before any V4L2 capture: bound one grab() of a stalled camera (see module docstring).
    os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from robot.backends.base import Camera, DeviceError, Frame, check_positive  # noqa: E402
from robot.timing import SampleRing, latency_percentiles_ms  # noqa: E402

if TYPE_CHECKING:
    from robot.config import CameraConfig

logger = logging.getLogger(__name__)

#: Longest wait for the first frame after opening, s (at least the camera timeout): UVC
#: webcams take a few hundred ms to start streaming, more with auto exposure settling.
START_TIMEOUT = 2.0

#: Longest wait for a network stream to open (connect, first frames probed), s.
STREAM_OPEN_TIMEOUT = 10.0

#: URL schemes read as network streams (OpenCV's FFmpeg backend).
STREAM_SCHEMES = ("http", "https", "rtsp")

#: Pause between retries of a failed grab, s.
_RETRY_PERIOD = 0.005

#: Longest wait for the capture thread to end on disconnect, s (it may sit in the driver
#: for up to OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT).
_JOIN_TIMEOUT = 3.0

#: Read-side frame ages kept for :meth:`OpenCVCamera.frame_age_ms`.
_AGE_SAMPLES = 4096

# V4L2 values of CAP_PROP_AUTO_EXPOSURE (V4L2_EXPOSURE_MANUAL / _APERTURE_PRIORITY).
_V4L2_EXPOSURE_MANUAL = 1
_V4L2_EXPOSURE_AUTO = 3


def list_video_devices() -> list[str]:
    """The video devices of this machine, for error messages and the preflight check.

    Globs ``/dev/video*`` (Linux V4L2). Each entry is the device path, followed in
    parentheses by its name from ``/sys/class/video4linux/videoN/name`` and its stable
    ``/dev/v4l/by-id`` link when present, e.g.
    ``"/dev/video0 (HD Pro Webcam C920; /dev/v4l/by-id/usb-046d_C920-video-index0)"``.
    A USB webcam usually shows two nodes; the first (``index0``) delivers the frames.

    Returns:
        One description per device, sorted by device number; empty when there are none
        (or on a system without ``/dev/video*``).
    """
    by_id: dict[str, str] = {}
    for link in sorted(glob.glob("/dev/v4l/by-id/*")):
        try:
            by_id.setdefault(os.path.realpath(link), link)
        except OSError:
            continue

    def number(path: str) -> tuple[int, str]:
        match = re.search(r"(\d+)$", path)
        return (int(match.group(1)) if match else sys.maxsize, path)

    devices = []
    for path in sorted(glob.glob("/dev/video*"), key=number):
        extras = []
        try:
            with open(f"/sys/class/video4linux/{os.path.basename(path)}/name") as f:
                name = f.read().strip()
            if name:
                extras.append(name)
        except OSError:
            pass
        link = by_id.get(os.path.realpath(path))
        if link:
            extras.append(link)
        devices.append(f"{path} ({'; '.join(extras)})" if extras else path)
    return devices


def stream_url(device: int | str) -> str | None:
    """``device`` if it is a network stream URL (:data:`STREAM_SCHEMES`), else None."""
    if not isinstance(device, str):
        return None
    scheme, sep, _ = device.strip().partition("://")
    return device.strip() if sep and scheme.lower() in STREAM_SCHEMES else None


def redact_url(url: str) -> str:
    """``url`` with the password of its user part replaced by ``***`` (for logs)."""
    return re.sub(r"^(\w+://[^/:@]*):[^/@]*@", r"\1:***@", url)


def _devices_hint() -> str:
    devices = list_video_devices()
    found = ", ".join(devices) if devices else "none found"
    return (f"video devices found: {found}. Set camera.device to a device index (0), a "
            "/dev/video path (or a stable /dev/v4l/by-id link), a video file or a stream "
            "URL (http://host:port/camera.mjpg)")


def _fourcc_str(value: float) -> str:
    code = int(value)
    if code <= 0:
        return "?"
    chars = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return chars if chars.isprintable() else f"0x{code:08x}"


class OpenCVCamera(Camera):
    """The wrist webcam (a video file, a network stream) behind :class:`robot.backends.base.Camera`.

    See the module docstring for the capture thread, the timestamps and the settings.
    Frames are uint8 (H, W, 3) RGB at ``camera.obs_size``: the capture with every
    ``camera.subsample``-th pixel kept (``img[::s, ::s]``, so observation pixel j is
    capture pixel s*j, as the sim renders with ``CameraConfig.intrinsics``). The image of
    one ``seq`` is shared between reads: do not modify it in place.

    Args:
        camera: The camera section of the config (``camera.device`` and the capture
            format; see :class:`robot.config.CameraConfig`).
        agent_period: Agent step, s, > 0 (``task.agent_period``); a frame older than
            this when read counts as stale (:attr:`stale_frames`).
        timeout: Longest time without a new frame before the camera counts as failed,
            s, > 0 (``robot.camera_timeout``).

    Attributes:
        frames_captured: Frames the capture thread delivered since the last connect.
        stale_frames: Reads since the last connect that returned a frame older than
            ``agent_period`` (returned all the same).
        settings: What the driver reports after setup (``width``, ``height`` px,
            ``fps`` frames/s, ``fourcc``, ``auto_exposure``, ``exposure``, ``auto_wb``,
            ``wb_temperature``, ``backend``); for a video file, its own size and rate.

    Raises:
        ValueError: If ``agent_period`` or ``timeout`` is not > 0.
    """

    name = "camera"

    def __init__(self, camera: CameraConfig, agent_period: float, timeout: float):
        super().__init__()
        self.camera = camera
        self.agent_period = check_positive(agent_period, "agent_period", "s")
        self.timeout = check_positive(timeout, "timeout", "s")
        self._obs_size = tuple(int(v) for v in camera.obs_size)
        self._agent_period_ns = round(self.agent_period * 1e9)
        self._timeout_ns = round(self.timeout * 1e9)
        self._cond = threading.Condition(threading.Lock())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: Frame | None = None
        self._failure: str | None = None
        self._ages = SampleRing(_AGE_SAMPLES)
        self.frames_captured = 0
        self.stale_frames = 0
        self.settings: dict[str, float | str] = {}
        self._stream = stream_url(camera.device) is not None

    # ------------------------------------------------------------------ properties
    @property
    def obs_size(self) -> tuple[int, int]:
        """Size (H, W) of the frames, px (``camera.obs_size``, 90x160 by default)."""
        return self._obs_size

    @property
    def failure(self) -> str | None:
        """Why the capture thread gave up (None while it runs or before connect)."""
        with self._cond:
            return self._failure

    def frame_age_ms(self) -> dict[str, float]:
        """Age of the frames :meth:`read` returned (read time - ``t_ns``), over the newest reads.

        Returns:
            ``{"p50_ms", "p99_ms", "max_ms", "samples"}`` (ms; zeros before any read), see
            :func:`robot.timing.latency_percentiles_ms`. The age counts from the frame's
            arrival, not its exposure (module docstring).
        """
        with self._cond:
            ages = self._ages.values()
        return latency_percentiles_ms(ages)

    def age_ns(self, frame: Frame) -> int:
        """Time since ``frame`` arrived from the driver, ns (``time.monotonic_ns`` clock)."""
        return time.monotonic_ns() - frame.t_ns

    def frame_wait(self) -> float:
        """One frame interval, ``1 / camera.fps`` s: the newest frame's age when read, at most."""
        return 1.0 / self.camera.fps

    def stats(self) -> dict:
        """Counters for the timing report: frames captured, stale frames, frame age (ms)."""
        return {"frames_captured": self.frames_captured, "stale_frames": self.stale_frames,
                "frame_age": self.frame_age_ms()}

    # ------------------------------------------------------------------ lifecycle
    def _describe(self) -> str:
        url = stream_url(self.camera.device)
        return f"camera.device={redact_url(url) if url else self.camera.device!r}"

    def _open_stream(self, url: str) -> cv2.VideoCapture:
        """Open a network stream with FFmpeg, its open and read waits bounded."""
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, round(STREAM_OPEN_TIMEOUT * 1000),
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, round(max(self.timeout, 1.0) * 1000)]
        try:
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)
        except cv2.error as err:
            raise DeviceError(f"cannot open {self._describe()}: {err}") from err
        if not cap.isOpened():
            cap.release()
            raise DeviceError(
                f"cannot open {self._describe()}: no video stream there within "
                f"{STREAM_OPEN_TIMEOUT:g} s (is the server up, the URL right and the "
                "stream MJPEG, H.264 or another format FFmpeg reads?)")
        return cap

    def _open(self) -> tuple[cv2.VideoCapture, bool]:
        """Open ``camera.device``; returns the capture and whether it is a video file."""
        device = self.camera.device
        url = stream_url(device)
        if url is not None:  # self._stream, set from the same device at construction
            return self._open_stream(url), False
        linux = sys.platform.startswith("linux")
        api = cv2.CAP_V4L2 if linux else cv2.CAP_ANY
        is_file = False
        if isinstance(device, str) and device.strip().isdigit():
            device = int(device)
        if isinstance(device, int):
            target: int | str = device
        else:
            target = os.path.expanduser(device)
            if os.path.isfile(target):
                is_file, api = True, cv2.CAP_ANY
            elif not os.path.exists(target):
                raise DeviceError(f"cannot open {self._describe()}: no such device or file; "
                                  f"{_devices_hint()}")
            elif not target.startswith("/dev/"):
                api = cv2.CAP_ANY
        try:
            cap = cv2.VideoCapture(target, api)
        except cv2.error as err:
            raise DeviceError(f"cannot open {self._describe()}: {err}; "
                              f"{_devices_hint()}") from err
        if not cap.isOpened():
            cap.release()
            why = ("not a video file OpenCV can decode" if is_file
                   else "the driver refused it (wrong index, busy in another program, or "
                   "no permission: is the user in the 'video' group?)")
            raise DeviceError(f"cannot open {self._describe()}: {why}; {_devices_hint()}")
        return cap, is_file

    def _configure(self, cap: cv2.VideoCapture, is_file: bool) -> None:
        """Apply the capture format and image controls, read them back, check the size."""
        cam = self.camera
        live = not is_file and not self._stream  # a local device we may configure
        if live:
            requests: list[tuple[str, int, float]] = []
            if cam.fourcc:
                requests.append(("fourcc", cv2.CAP_PROP_FOURCC,
                                 cv2.VideoWriter_fourcc(*cam.fourcc)))
            requests += [("width", cv2.CAP_PROP_FRAME_WIDTH, cam.width),
                         ("height", cv2.CAP_PROP_FRAME_HEIGHT, cam.height),
                         ("fps", cv2.CAP_PROP_FPS, cam.fps)]
            if cam.exposure is None:
                requests.append(("auto_exposure", cv2.CAP_PROP_AUTO_EXPOSURE,
                                 _V4L2_EXPOSURE_AUTO))
            else:
                requests += [("auto_exposure", cv2.CAP_PROP_AUTO_EXPOSURE,
                              _V4L2_EXPOSURE_MANUAL),
                             ("exposure", cv2.CAP_PROP_EXPOSURE, cam.exposure)]
            if cam.white_balance is None:
                requests.append(("auto_wb", cv2.CAP_PROP_AUTO_WB, 1))
            else:
                requests += [("auto_wb", cv2.CAP_PROP_AUTO_WB, 0),
                             ("wb_temperature", cv2.CAP_PROP_WB_TEMPERATURE,
                              cam.white_balance)]
            for key, prop, value in requests:
                if not cap.set(prop, float(value)):
                    logger.warning("%s: the driver refused %s=%s", self._describe(), key, value)
        got = {
            "backend": cap.getBackendName(),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)),
            "fourcc": _fourcc_str(cap.get(cv2.CAP_PROP_FOURCC)),
        }
        if live:
            got.update(auto_exposure=float(cap.get(cv2.CAP_PROP_AUTO_EXPOSURE)),
                       exposure=float(cap.get(cv2.CAP_PROP_EXPOSURE)),
                       auto_wb=float(cap.get(cv2.CAP_PROP_AUTO_WB)),
                       wb_temperature=float(cap.get(cv2.CAP_PROP_WB_TEMPERATURE)))
        self.settings = got
        logger.info("%s opened (%s): %s", self._describe(), "video file" if is_file
                    else "network stream" if self._stream else "live",
                    ", ".join(f"{k}={v}" for k, v in got.items()))
        if (got["width"], got["height"]) != (cam.width, cam.height):
            fix = ("record the file at that size or set camera.width/camera.height to "
                   "the file's size" if is_file else
                   "set the stream's size at its source (the emulator renders the size of "
                   "its --config) or camera.width/camera.height to the stream's size"
                   if self._stream else
                   "set camera.width/camera.height to a size the camera offers (v4l2-ctl "
                   "--list-formats-ext) and recalibrate the intrinsics for it")
            raise DeviceError(
                f"{self._describe()} captures {got['width']}x{got['height']} px, but the "
                f"config asks for camera.width x camera.height = {cam.width}x{cam.height} "
                f"px; the intrinsics (fx, fy, cx, cy) are for the configured size: {fix}")
        if is_file:
            if got["fps"] > 0 and abs(got["fps"] - cam.fps) > 1e-3:
                logger.info("%s: the file declares %.3g fps; playing it at camera.fps=%.3g",
                            self._describe(), got["fps"], cam.fps)
            return
        if self._stream:  # encoded at the source; FFmpeg guesses a rate (often 25)
            return
        if cam.fourcc and got["fourcc"] != cam.fourcc:
            logger.warning("%s: asked for fourcc %s, the driver uses %s", self._describe(),
                           cam.fourcc, got["fourcc"])
        if got["fps"] > 0 and abs(got["fps"] - cam.fps) > 0.5:
            logger.warning("%s: asked for %.3g fps, the driver reports %.3g fps (the agent "
                           "may see stale frames)", self._describe(), cam.fps, got["fps"])

    def _connect(self) -> None:
        """Open and configure the camera, start the capture thread, wait for a frame.

        Raises:
            DeviceError: If the device is missing or cannot be opened (the message lists
                the video devices found), the capture size differs from the configured
                one, or no first frame arrives within ``max(timeout, START_TIMEOUT)``.
        """
        cap, is_file = self._open()
        try:
            self._configure(cap, is_file)
        except BaseException:
            cap.release()
            raise
        with self._cond:
            self._latest = None
            self._failure = None
            self._ages = SampleRing(_AGE_SAMPLES)
            self.frames_captured = 0
            self.stale_frames = 0
        self._stop.clear()
        start_timeout = max(self.timeout, START_TIMEOUT)
        thread = threading.Thread(target=self._capture_loop, args=(cap, is_file, start_timeout),
                                  name="webcam-capture", daemon=True)
        self._thread = thread
        thread.start()  # the thread owns ``cap`` from here on and releases it
        deadline = time.monotonic() + start_timeout
        with self._cond:
            while self._latest is None and self._failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            failure = self._failure
            ok = self._latest is not None and failure is None
        if not ok:
            self._stop_thread()
            reason = failure or f"no first frame within {start_timeout:.3g} s"
            raise DeviceError(f"{self._describe()} opened but delivers no frames: {reason}")

    def _disconnect(self) -> None:
        """Stop the capture thread; it releases the device. Safe after a failure."""
        self._stop_thread()

    def _stop_thread(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(_JOIN_TIMEOUT)
        if thread.is_alive():
            logger.warning("%s: the capture thread is still blocked in the driver after "
                           "%.3g s; it releases the device when the driver returns",
                           self._describe(), _JOIN_TIMEOUT)

    # ------------------------------------------------------------------ capture thread
    def _capture_loop(self, cap: cv2.VideoCapture, is_file: bool, start_timeout: float) -> None:
        """Grab, stamp, convert and publish frames until stopped or failed (owns ``cap``)."""
        s = int(self.camera.subsample)
        h, w = int(self.camera.height), int(self.camera.width)
        period_ns = round(1e9 / float(self.camera.fps))
        stop = self._stop
        seq = 0
        last_ns = time.monotonic_ns()  # last good frame (or the start)
        allowed_ns = round(start_timeout * 1e9)  # without a frame before failing
        due_ns: int | None = None  # video file: arrival time of the next frame
        try:
            while not stop.is_set():
                ok = cap.grab()
                if ok and is_file:
                    now = time.monotonic_ns()
                    if due_ns is None or now - due_ns > period_ns:
                        due_ns = now  # first frame, or fell a frame behind: no burst
                    elif due_ns > now and stop.wait((due_ns - now) / 1e9):
                        break
                t_ns = time.monotonic_ns()  # arrival: right after the grab returned
                if ok:
                    ok, bgr = cap.retrieve()
                if not ok or bgr is None:
                    if t_ns - last_ns > allowed_ns:
                        self._fail(f"no frame from {self._describe()} for "
                                   f"{(t_ns - last_ns) / 1e9:.2f} s: unplugged or stalled?"
                                   + (" (end of the video file?)" if is_file else ""))
                        return
                    stop.wait(_RETRY_PERIOD)
                    continue
                if bgr.ndim != 3 or bgr.shape[:2] != (h, w) or bgr.shape[2] != 3:
                    self._fail(f"{self._describe()} delivered a {bgr.shape} frame, expected "
                               f"({h}, {w}, 3) BGR")
                    return
                rgb = np.ascontiguousarray(bgr[::s, ::s, ::-1])  # BGR -> RGB, subsample
                frame = Frame(image=rgb, t_ns=t_ns, seq=seq)
                with self._cond:
                    self._latest = frame
                    self.frames_captured += 1
                    self._cond.notify_all()
                seq += 1
                last_ns = t_ns
                allowed_ns = self._timeout_ns
                if due_ns is not None:
                    due_ns += period_ns
        except Exception as err:  # a driver error must not die silently
            self._fail(f"capture thread of {self._describe()} failed: {err!r}")
        finally:
            cap.release()

    def _fail(self, reason: str) -> None:
        logger.error("%s", reason)
        with self._cond:
            if self._failure is None:
                self._failure = reason
            self._cond.notify_all()

    # ------------------------------------------------------------------ read
    def _read(self, timeout: float) -> Frame:
        """The newest frame (see :meth:`robot.backends.base.Camera.read`).

        Raises:
            TimeoutError: If no frame arrived within ``timeout`` s.
            DeviceError: If the capture thread failed, or the newest frame is older than
                the camera timeout (the camera stalled).
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None and self._failure is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no frame from {self._describe()} within "
                                       f"{timeout:.3g} s")
                self._cond.wait(remaining)
            if self._failure is not None:
                raise DeviceError(self._failure)
            frame = self._latest
            age = time.monotonic_ns() - frame.t_ns
            if age > self._timeout_ns:
                raise DeviceError(f"no frame from {self._describe()} for {age / 1e9:.2f} s "
                                  f"(robot.camera_timeout={self.timeout:g} s): unplugged or "
                                  "stalled?")
            self._ages.push(age)
            if age > self._agent_period_ns:
                self.stale_frames += 1
        return frame
