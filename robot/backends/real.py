"""The physical rig: the UR arm (ur_rtde), the wrist webcam (OpenCV) and the target monitor.

:class:`RealRig` builds the three real devices from one config; the robot process drives
it exactly as it drives :class:`robot.backends.sim.SimRig`.
"""

from __future__ import annotations

from types import ModuleType, SimpleNamespace

from robot.backends.base import Rig
from robot.backends.monitor import WindowDisplay
from robot.backends.ur5 import UR5Arm
from robot.backends.webcam import OpenCVCamera
from robot.config import Config


class RealRig(Rig):
    """UR arm + OpenCV webcam + full-screen target window, from ``cfg``.

    Args:
        cfg: Validated config (``arm``, ``camera``, ``monitor``, ``robot``, ``task``).
        rtde: ur_rtde's classes (a module or namespace with ``RTDEControlInterface``,
            ``RTDEReceiveInterface``, ``DashboardClient``); default: the real ur_rtde.

    Example:
        >>> with RealRig(load_config("configs/ur5_visual_reacher.yaml")) as rig:  # doctest: +SKIP
        ...     state = rig.arm.read_state()
    """

    def __init__(self, cfg: Config, rtde: ModuleType | SimpleNamespace | None = None):
        arm = UR5Arm(cfg.arm, rt_priority=cfg.robot.control_priority(), rtde=rtde)
        camera = OpenCVCamera(cfg.camera, cfg.task.agent_period, cfg.robot.camera_timeout)
        super().__init__(arm, camera, WindowDisplay(cfg.monitor),
                         stop_deceleration=cfg.arm.acceleration)
