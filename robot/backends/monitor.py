"""The target monitor of the real rig: a full-screen OpenCV window.

:class:`WindowDisplay` shows the images the robot process draws (:func:`robot.task.draw_target`,
the same generator the sim's virtual monitor uses) full-screen on the monitor in front of
the arm, at ``monitor.resolution_px``.

OpenCV's window system (GTK or Qt) must be driven from one thread, and the window must
keep processing events or the desktop marks it "not responding". So the window lives on
its own thread: :meth:`WindowDisplay.show` hands the image over and waits (up to
:attr:`WindowDisplay.timeout`) until that thread has drawn it; in between the thread pumps
events every 20 ms. ``monitor.output: offscreen`` composes the same full-screen image
without a window (dry runs without a monitor, tests): :attr:`WindowDisplay.screen` holds
what the monitor would show in either mode.

``monitor.url`` (an ``http://`` URL) sends each image besides (with ``output: offscreen``:
instead of) the window: one HTTP ``PUT`` of the image as it was drawn (PNG,
``Content-Type: image/png``), synchronously, like the window's draw, within
:attr:`WindowDisplay.timeout`; any 2xx answer counts as shown. The emulated UR controller
takes it on ``http://HOST:8080/screen`` and shows it on the mirror's virtual monitor
(:mod:`sim.emulator_io`), so the real rig's code path runs on one machine
(docs/real-robot.md, "Rehearse on the emulator"). :meth:`WindowDisplay.connect` sends a
blank white screen first, so an unreachable URL fails at connect.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import urllib.error
import urllib.request

import cv2
import numpy as np

from robot.backends.base import DeviceError, TargetDisplay
from robot.config import MonitorConfig

logger = logging.getLogger(__name__)

#: Window title (also how a user finds it on the desktop).
WINDOW = "madi target"


def compose_screen(image: np.ndarray, resolution_wh: tuple[int, int]) -> np.ndarray:
    """The full-screen picture of ``image``: resized to the monitor, RGB.

    Args:
        image: uint8 (h, w, 3) RGB.
        resolution_wh: Monitor (width, height), px.

    Returns:
        uint8 (height, width, 3) RGB; area interpolation when shrinking, linear when
        enlarging (the same image at the same size is returned as a copy).
    """
    w, h = int(resolution_wh[0]), int(resolution_wh[1])
    if image.shape[:2] == (h, w):
        return image.copy()
    shrink = image.shape[1] > w or image.shape[0] > h
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink
                      else cv2.INTER_LINEAR)


class WindowDisplay(TargetDisplay):
    """The target monitor as a full-screen OpenCV window (or off-screen; module docstring).

    Args:
        monitor: ``resolution_px`` (the image size), ``window_xy`` (where the monitor
            sits on the desktop, px) and ``output`` (``fullscreen`` or ``offscreen``).

    Raises:
        DeviceError: On connect, if no display server is reachable (``DISPLAY`` /
            ``WAYLAND_DISPLAY`` unset) or the window cannot be opened, or ``monitor.url``
            does not take a blank screen; on show, if the window thread died or did not
            draw within :attr:`timeout`, or ``monitor.url`` did not take the image.
    """

    name = "target display"

    #: Longest wait for the window thread to draw an image, s.
    timeout = 2.0

    def __init__(self, monitor: MonitorConfig):
        super().__init__()
        self._cfg = monitor
        self._lock = threading.Lock()
        self._screen: np.ndarray | None = None
        self._inbox: queue.Queue = queue.Queue(maxsize=1)
        self._drawn = threading.Event()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.shown = 0  # images shown since connect

    @property
    def size_px(self) -> tuple[int, int]:
        """Monitor resolution (width, height), px (``monitor.resolution_px``)."""
        w, h = self._cfg.resolution_px
        return int(w), int(h)

    @property
    def screen(self) -> np.ndarray | None:
        """uint8 (height, width, 3) RGB: what the monitor shows now (None before a show)."""
        with self._lock:
            return None if self._screen is None else self._screen.copy()

    def _send(self, image: np.ndarray) -> None:
        """PUT ``image`` (uint8 (h, w, 3) RGB) to ``monitor.url`` as a PNG.

        Raises:
            DeviceError: No 2xx answer within :attr:`timeout` (refused, unreachable, an
                HTTP error).
        """
        url = self._cfg.url
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise DeviceError("cannot encode the target image as PNG")
        request = urllib.request.Request(url, data=png.tobytes(), method="PUT",
                                         headers={"Content-Type": "image/png"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as reply:
                reply.read()
        except urllib.error.HTTPError as err:
            raise DeviceError(f"monitor.url={url} refused the target image: HTTP "
                              f"{err.code} {err.reason}") from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise DeviceError(f"monitor.url={url} did not take the target image within "
                              f"{self.timeout} s: {reason} (is the emulated controller "
                              "running, with its HTTP port?)") from err

    def _connect(self) -> None:
        self._screen = None
        self.shown = 0
        if self._cfg.url is not None:
            w, h = self.size_px
            self._send(np.full((h, w, 3), 255, np.uint8))  # as the window starts: white
        if self._cfg.output == "offscreen":
            return
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise DeviceError("no display server for the target window (DISPLAY is unset): "
                              "run on the robot PC's desktop session, or set "
                              "monitor.output: offscreen for a dry run")
        self._stop.clear()
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._window_loop, name="target window",
                                        daemon=True)
        self._thread.start()
        self._ready.wait(self.timeout)
        if self._error is not None or not self._ready.is_set():
            self._stop.set()
            raise DeviceError(f"cannot open the target window: {self._error or 'timed out'}")

    def _disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout)
            self._thread = None

    def _show(self, image: np.ndarray) -> None:
        screen = compose_screen(image, self.size_px)
        if self._cfg.url is not None:
            self._send(image)
        if self._cfg.output == "fullscreen":
            if self._thread is None or not self._thread.is_alive():
                raise DeviceError(f"the target window is gone ({self._error or 'closed'})")
            self._drawn.clear()
            try:
                self._inbox.get_nowait()  # an undrawn older image is replaced
            except queue.Empty:
                pass
            self._inbox.put_nowait(screen)
            if not self._drawn.wait(self.timeout):
                raise DeviceError(f"the target window did not draw within {self.timeout} s")
        with self._lock:
            self._screen = screen
        self.shown += 1

    def _window_loop(self) -> None:
        x, y = self._cfg.window_xy
        try:
            cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
            cv2.moveWindow(WINDOW, int(x), int(y))
            cv2.setWindowProperty(WINDOW, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
            w, h = self.size_px
            cv2.imshow(WINDOW, np.full((h, w, 3), 255, np.uint8))
            cv2.waitKey(1)
        except cv2.error as err:
            self._error = err
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                try:
                    screen = self._inbox.get_nowait()
                except queue.Empty:
                    screen = None
                if screen is not None:
                    cv2.imshow(WINDOW, cv2.cvtColor(screen, cv2.COLOR_RGB2BGR))
                cv2.waitKey(20)  # draws and pumps window events
                if screen is not None:
                    self._drawn.set()
        except cv2.error as err:
            self._error = err
            logger.error("target window failed: %s", err)
        finally:
            try:
                cv2.destroyWindow(WINDOW)
                cv2.waitKey(1)
            except cv2.error:
                pass
