"""Device backends of the robot process: one interface, real / sim / replay behind it.

:mod:`robot.backends.base` defines the interface (:class:`Arm`, :class:`Camera`,
:class:`TargetDisplay`, :class:`Rig`) and its errors; :mod:`robot.backends.sim` puts the
MuJoCo mirror behind it. :func:`make_rig` builds the rig a config names, importing its
backend lazily so that a real rig never loads MuJoCo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robot.backends.base import (
    Arm,
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
        A :class:`Rig`: the MuJoCo mirror for ``"sim"``.

    Raises:
        DeviceError: For a backend this version cannot drive.
    """
    if cfg.backend == "sim":
        from robot.backends.sim import SimRig

        return SimRig(cfg)
    raise DeviceError(f"backend {cfg.backend!r}: the real UR5 rig (ur_rtde, webcam, target "
                      "display) is not part of this version; use backend: sim")


__all__ = [
    "make_rig",
    "Arm",
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
