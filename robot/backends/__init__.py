"""Device backends of the robot process: one interface, real / sim / replay behind it.

:mod:`robot.backends.base` defines the interface (:class:`Arm`, :class:`Camera`,
:class:`TargetDisplay`, :class:`Rig`) and its errors; :mod:`robot.backends.sim` puts the
MuJoCo mirror behind it, :mod:`robot.backends.real` the physical UR5 rig (ur_rtde, OpenCV
webcam, full-screen target window). :func:`make_rig` builds the rig a config names, importing its
backend lazily so that a real rig never loads MuJoCo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robot.backends.base import (
    Arm,
    ArmLinkLostError,
    ArmState,
    Camera,
    Device,
    DeviceError,
    DeviceNotConnectedError,
    Frame,
    ProtectiveStopError,
    Rig,
    TargetDisplay,
)

if TYPE_CHECKING:
    from robot.config import Config


def make_rig(cfg: Config) -> Rig:
    """The rig of ``cfg.backend`` (not connected yet).

    Args:
        cfg: Validated config.

    Returns:
        A :class:`Rig`: the MuJoCo mirror for ``"sim"``, the UR arm + webcam + target
        window for ``"ur5"``.

    Raises:
        DeviceError: For a backend this version cannot drive.
    """
    if cfg.backend == "sim":
        from robot.backends.sim import SimRig

        return SimRig(cfg)
    if cfg.backend == "ur5":
        from robot.backends.real import RealRig

        return RealRig(cfg)
    raise DeviceError(f"unknown backend {cfg.backend!r}; use sim or ur5")


__all__ = [
    "make_rig",
    "Arm",
    "ArmLinkLostError",
    "ArmState",
    "Camera",
    "Device",
    "DeviceError",
    "DeviceNotConnectedError",
    "Frame",
    "ProtectiveStopError",
    "Rig",
    "TargetDisplay",
]
