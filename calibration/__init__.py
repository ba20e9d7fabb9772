"""Calibration of the rig (camera intrinsics, hand-eye, monitor pose, colour, latency).

Planned in the issue tracker; the config's camera and monitor sections hold the values
that calibration will measure.
"""
