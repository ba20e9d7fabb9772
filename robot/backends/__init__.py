"""Device backends of the robot process: one interface, real / sim / replay behind it.

:mod:`robot.backends.base` defines the interface (:class:`Arm`, :class:`Camera`,
:class:`TargetDisplay`, :class:`Rig`) and its errors; :mod:`robot.backends.sim` puts the
MuJoCo mirror behind it. The sim module is imported lazily (``from robot.backends.sim
import SimRig``) so that a real rig never loads MuJoCo.
"""

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

__all__ = [
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
