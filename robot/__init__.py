"""The robot side of madi-robot: config, kinematics, task (target and reward), safety, CLI.

Later: the hard-real-time robot process and its backends (real UR5 via ur_rtde, camera,
target display). ``learner`` never imports from here; this package may import
``learner`` for local policy inference.
"""
