"""Calibration of the rig: camera intrinsics, hand-eye, monitor pose, colour, latency.

``madi calibrate STEP`` (:mod:`calibration.drive`) runs :mod:`calibration.measure` on the
rig a config names (real or sim) and writes one section of the calibration file
(:mod:`robot.calibration_file`), which the config then applies. See docs/calibration.md.
"""
