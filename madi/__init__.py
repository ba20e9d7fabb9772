"""The ``madi`` command, the top layer: every package may be launched from here.

It parses the arguments and launches the robot, learner, sim and calibration parts; no
other package imports it.
"""
