"""The small device interface that every rig (real, sim, replay) implements.

Three devices make a rig: the :class:`Arm` (a UR arm streamed with speedJ), the wrist
:class:`Camera` and the :class:`TargetDisplay` (the monitor that shows the target). Each
has the same lifecycle (LeRobot style, house rule 1): ``connect()``, ``disconnect()``,
``is_connected``, usable as a context manager; ``connect`` and ``disconnect`` are
idempotent, and using a device that is not connected raises
:class:`DeviceNotConnectedError`. :class:`Rig` bundles the three and connects and
disconnects them in a safe order (the arm is connected last and stopped first).

Units: joint positions rad, joint velocities rad/s, accelerations rad/s^2, durations s,
timestamps int ns. Every sample carries the time it was captured (house rule 5): real
backends stamp with the machine's monotonic clock (``time.monotonic_ns``, the same
``CLOCK_MONOTONIC`` as ``time.perf_counter_ns`` on Linux); the sim stamps with its own
clock (see :mod:`robot.backends.sim`). Timestamps of one backend share one clock, so they
can be compared with each other, not with another backend's.

Backends implement the underscore hooks (``_connect``, ``_disconnect``, ...) and leave
the lifecycle bookkeeping to :class:`Device`. The robot process never knows which
backend it drives.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

#: Number of arm joints (UR: base, shoulder, elbow, wrist 1, wrist 2, wrist 3).
N_JOINTS = 6


class DeviceError(RuntimeError):
    """A device failed or reported a fault (lost link, driver error, controller halted)."""


class ArmLinkLostError(DeviceError):
    """The link to the arm controller is lost: no fresh joint state, or commands fail.

    The robot process stops the episode, tries to reconnect (``arm.reconnect_attempts``)
    and resets; the controller-side watchdog halts the arm meanwhile.
    """


class DeviceNotConnectedError(ConnectionError):
    """A device was used before ``connect()`` or after ``disconnect()``."""


class ProtectiveStopError(DeviceError):
    """The arm is protective-stopped (or emergency-stopped) and refuses motion.

    The controller halted the arm (a collision, a safety-plane or joint-limit violation,
    or, on the real arm, a starved command stream). Motion resumes only after the stop
    is cleared, which :meth:`Arm.move_home` does.
    """


def as_joint_vector(value: np.ndarray, name: str) -> np.ndarray:
    """Validate a joint-space vector.

    Args:
        value: Anything array-like holding 6 numbers (rad or rad/s).
        name: What it is, for the error message.

    Returns:
        float64 (6,) copy.

    Raises:
        ValueError: If it does not hold exactly 6 finite numbers.
    """
    arr = np.array(value, dtype=np.float64)
    if arr.shape != (N_JOINTS,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be {N_JOINTS} finite values, got {value!r}")
    return arr


def check_positive(value: float, name: str, unit: str) -> float:
    """Return ``value`` as a float, or raise ValueError if it is not finite and > 0."""
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite value > 0 {unit}, got {value}")
    return value


@dataclass(frozen=True)
class ArmState:
    """One reading of the arm.

    Attributes:
        q: float64 (6,) actual joint positions, rad.
        qd: float64 (6,) actual joint velocities, rad/s.
        t_ns: Capture time of the reading, ns, on the backend's clock (monotonic).
        protective_stopped: The controller holds the arm in a protective stop; motion
            commands raise :class:`ProtectiveStopError` until :meth:`Arm.move_home`.
        emergency_stopped: The emergency stop is pressed (real arm only; needs a person).
    """

    q: np.ndarray
    qd: np.ndarray
    t_ns: int
    protective_stopped: bool = False
    emergency_stopped: bool = False


@dataclass(frozen=True)
class Frame:
    """One camera frame.

    Attributes:
        image: uint8 (H, W, 3) RGB, row 0 at the top, at the observation size
            (``camera.obs_size``).
        t_ns: Capture time (exposure) of the image, ns, on the backend's clock.
        seq: Frame number from the device, counting from 0; two reads that return the
            same capture return the same ``seq``.
    """

    image: np.ndarray
    t_ns: int
    seq: int


class Device(abc.ABC):
    """Lifecycle shared by every device: connect, disconnect, is_connected, ``with``.

    ``connect()`` on a connected device and ``disconnect()`` on a disconnected one do
    nothing. Subclasses implement :meth:`_connect` and :meth:`_disconnect` and call
    :meth:`_require_connected` at the top of every other public method.

    Attributes:
        name: Short label for logs and errors, e.g. ``"sim arm"``.
    """

    name: str = "device"

    def __init__(self) -> None:
        self._connected = False

    @property
    def is_connected(self) -> bool:
        """Whether the device is connected and usable."""
        return self._connected

    def connect(self) -> None:
        """Open the device (sockets, drivers, windows). Idempotent.

        Raises:
            DeviceError: If the device cannot be opened; it stays disconnected.
        """
        if self._connected:
            logger.debug("%s already connected", self.name)
            return
        self._connect()
        self._connected = True
        logger.info("%s connected", self.name)

    def disconnect(self) -> None:
        """Close the device and free its resources. Idempotent; never leaves it half open.

        An arm is not stopped here (the device cannot know whether it should be):
        :meth:`Rig.disconnect` stops motion first.
        """
        if not self._connected:
            return
        self._connected = False
        try:
            self._disconnect()
        finally:
            logger.info("%s disconnected", self.name)

    def __enter__(self) -> Device:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()

    def _require_connected(self) -> None:
        if not self._connected:
            raise DeviceNotConnectedError(f"{self.name} is not connected; call connect() first")

    @abc.abstractmethod
    def _connect(self) -> None:
        """Open the device; raise :class:`DeviceError` on failure."""

    @abc.abstractmethod
    def _disconnect(self) -> None:
        """Free the device's resources (called once per successful connect)."""


class Arm(Device):
    """A 6-joint UR arm driven by joint-velocity streaming (UR Script ``speedj``).

    The caller owns the timing: :meth:`speedj` sends one command and returns without
    waiting for the controller tick (like ur_rtde's ``speedJ``; the caller's loop, e.g.
    :class:`robot.control.ControlLoop`, does the ``initPeriod``/``waitPeriod`` part).
    Send one command per :attr:`control_period`. A real arm keeps tracking the last
    command when the stream stops, so a streaming client must send a stop when its
    commands go stale, and should arm the controller-side watchdog
    (:meth:`set_watchdog`) for when the client itself dies.
    """

    name = "arm"

    @property
    @abc.abstractmethod
    def control_period(self) -> float:
        """Controller tick, s (0.008 on a CB3 UR5 at 125 Hz, 0.002 on an e-series)."""

    def read_state(self) -> ArmState:
        """Read the newest joint state.

        Returns:
            The newest :class:`ArmState` (q rad, qd rad/s, capture time ns, stop flags).

        Raises:
            DeviceNotConnectedError: If the arm is not connected.
            DeviceError: If the link to the controller is lost.
        """
        self._require_connected()
        return self._read_state()

    def speedj(self, qd: np.ndarray, acceleration: float) -> None:
        """Stream one joint-velocity target (UR Script ``speedj``); returns at once.

        The controller moves the actual velocity towards ``qd`` in a straight line in
        joint-velocity space, the leading axis at ``acceleration``. Safety limits are the
        caller's job (:class:`robot.safety.SafetyLimits`); send what it returns.

        Args:
            qd: float (6,) target joint velocities, rad/s.
            acceleration: Acceleration bound of the leading axis, rad/s^2, > 0.

        Raises:
            ValueError: If ``qd`` is not 6 finite values or ``acceleration`` <= 0.
            DeviceNotConnectedError: If the arm is not connected.
            ProtectiveStopError: If the arm is protective- or emergency-stopped.
            DeviceError: If the controller refused the command or the link is lost.
        """
        self._require_connected()
        self._speedj(as_joint_vector(qd, "qd"), check_positive(acceleration, "acceleration",
                                                                "rad/s^2"))

    def speed_stop(self, deceleration: float) -> None:
        """Decelerate to rest (UR Script ``stopj``), the leading axis at ``deceleration``.

        Always allowed, also when the arm is protective-stopped (then it does nothing).
        After it returns no motion continues without a new command: the backend either
        waits for rest or hands the ramp to the controller, which finishes it alone.

        Args:
            deceleration: Deceleration bound of the leading axis, rad/s^2, > 0.

        Raises:
            ValueError: If ``deceleration`` <= 0.
            DeviceNotConnectedError: If the arm is not connected.
            DeviceError: If the stop could not be sent (the link is lost).
        """
        self._require_connected()
        self._speed_stop(check_positive(deceleration, "deceleration", "rad/s^2"))

    def move_home(self, q: np.ndarray, duration: float) -> None:
        """Move to ``q`` and come to rest there; blocks until done (episode resets).

        Clears a protective stop first. Must not be called while a control loop streams
        to the arm.

        Args:
            q: float (6,) joint positions to reach, rad.
            duration: Time the move takes, s, >= 0.

        Raises:
            ValueError: If ``q`` is not 6 finite values or ``duration`` < 0.
            DeviceNotConnectedError: If the arm is not connected.
            ProtectiveStopError: If the stop cannot be cleared (e.g. emergency stop).
            DeviceError: If the move failed.
        """
        self._require_connected()
        duration = float(duration)
        if not np.isfinite(duration) or duration < 0:
            raise ValueError(f"duration must be a finite time >= 0 s, got {duration}")
        self._move_home(as_joint_vector(q, "q"), duration)

    def set_watchdog(self, min_frequency: float) -> None:
        """Arm the controller-side watchdog (ur_rtde ``setWatchdog``).

        Once armed, the controller halts the arm if no command reaches it at least
        ``min_frequency`` times per second (every :meth:`speedj` counts; a backend keeps
        a parked arm's watchdog fed itself): the last line of defence when the client
        process dies with the arm moving.

        Args:
            min_frequency: Lowest kick rate tolerated, Hz, > 0.

        Raises:
            ValueError: If ``min_frequency`` <= 0.
            DeviceNotConnectedError: If the arm is not connected.
        """
        self._require_connected()
        self._set_watchdog(check_positive(min_frequency, "min_frequency", "Hz"))

    @abc.abstractmethod
    def _read_state(self) -> ArmState: ...

    @abc.abstractmethod
    def _speedj(self, qd: np.ndarray, acceleration: float) -> None: ...

    @abc.abstractmethod
    def _speed_stop(self, deceleration: float) -> None: ...

    @abc.abstractmethod
    def _move_home(self, q: np.ndarray, duration: float) -> None: ...

    @abc.abstractmethod
    def _set_watchdog(self, min_frequency: float) -> None: ...



class Camera(Device):
    """The wrist camera, delivering frames at the observation size with capture times."""

    name = "camera"

    @property
    @abc.abstractmethod
    def obs_size(self) -> tuple[int, int]:
        """Size (H, W) of the frames :meth:`read` returns, px (``camera.obs_size``)."""

    def read(self, timeout: float = 1.0) -> Frame:
        """Return the newest frame.

        Real cameras return the newest capture of their capture thread, and may return the
        same frame (same ``seq``) again if no newer one exists yet; they wait at most
        ``timeout`` for the first frame.

        Args:
            timeout: Longest wait for a frame, s, > 0.

        Returns:
            A :class:`Frame`: uint8 (H, W, 3) RGB image, capture time ns, sequence number.

        Raises:
            DeviceNotConnectedError: If the camera is not connected.
            TimeoutError: If no frame arrived within ``timeout``.
            DeviceError: If the camera failed.
        """
        self._require_connected()
        return self._read(check_positive(timeout, "timeout", "s"))

    def age_ns(self, frame: Frame) -> int:
        """How long ago ``frame`` became available to this process, ns.

        A capture thread's frame waits until it is read (a real camera overrides this);
        a camera that renders or loads the frame inside :meth:`read` (the sim, a replay)
        hands it over new, so the default is 0.

        Args:
            frame: A frame this camera returned.
        """
        return 0

    def frame_wait(self) -> float:
        """Longest a frame waits for its reader before :meth:`read` returns it, s.

        A capture thread's newest frame can be up to one frame interval old when an agent
        step that is not phase-locked to the camera reads it (a real camera overrides
        this); a camera that renders or loads the frame inside :meth:`read` returns 0.
        The control loop's stale-command deadline adds this wait
        (:meth:`robot.config.RobotLoopConfig.deadline`).
        """
        return 0.0

    def stats(self) -> dict:
        """Device counters for the run's timing report (e.g. stale frames); default none."""
        return {}

    @abc.abstractmethod
    def _read(self, timeout: float) -> Frame: ...


class TargetDisplay(Device):
    """The monitor in front of the arm that shows the target image full-screen."""

    name = "display"

    @property
    @abc.abstractmethod
    def size_px(self) -> tuple[int, int]:
        """Size (width, height) of the displayed image, px; others are resized to it."""

    def show(self, image: np.ndarray) -> None:
        """Show ``image`` full-screen from the next camera frame on (best effort on real).

        Args:
            image: uint8 (h, w, 3) RGB, row 0 at the top; resized to :attr:`size_px`.

        Raises:
            ValueError: If ``image`` is not a uint8 (h, w, 3) array.
            DeviceNotConnectedError: If the display is not connected.
            DeviceError: If the display failed.
        """
        self._require_connected()
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"display image must be uint8 (h, w, 3) RGB, got "
                             f"{image.dtype} {image.shape}")
        self._show(image)

    @abc.abstractmethod
    def _show(self, image: np.ndarray) -> None: ...


class Rig:
    """The three devices of one rig, connected and disconnected in a safe order.

    ``connect()`` opens the display, then the camera, then the arm (a failure never
    leaves an arm connected that nothing watches; whatever opened is closed again).
    ``disconnect()`` stops the arm first (:meth:`Arm.speed_stop`), then closes the arm,
    the camera and the display, each even if an earlier step failed.

    Args:
        arm: The arm backend.
        camera: The wrist camera backend.
        display: The target display backend.
        stop_deceleration: Deceleration of the stop on disconnect, rad/s^2, > 0.
    """

    #: Whether the rig can run in lockstep with the agent loop (``sim.pace: fast``): only
    #: rigs whose clock stops between commands (the sim, a replayed session).
    lockstep = False

    def __init__(self, arm: Arm, camera: Camera, display: TargetDisplay,
                 stop_deceleration: float):
        self.arm = arm
        self.camera = camera
        self.display = display
        self.stop_deceleration = check_positive(stop_deceleration, "stop_deceleration",
                                                "rad/s^2")

    @property
    def is_connected(self) -> bool:
        """Whether all three devices are connected."""
        return self.arm.is_connected and self.camera.is_connected and self.display.is_connected

    def connect(self) -> None:
        """Connect display, camera, arm (idempotent); on failure close what was opened.

        Raises:
            DeviceError: If a device cannot be opened (the rig is left disconnected).
        """
        try:
            for device in (self.display, self.camera, self.arm):
                device.connect()
        except BaseException:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        """Stop the arm, then disconnect arm, camera and display (idempotent).

        Every step runs even if an earlier one failed; the first error is raised at the
        end.

        Raises:
            Exception: The first error met, after every device was closed.
        """
        errors: list[BaseException] = []
        try:
            if self.arm.is_connected:
                self.arm.speed_stop(self.stop_deceleration)
        except Exception as err:  # keep going: the devices must still be closed
            logger.error("stopping the arm on disconnect failed: %s", err)
            errors.append(err)
        finally:
            for device in (self.arm, self.camera, self.display):
                try:
                    device.disconnect()
                except Exception as err:
                    logger.error("disconnecting %s failed: %s", device.name, err)
                    errors.append(err)
        if errors:
            raise errors[0]

    def __enter__(self) -> Rig:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
