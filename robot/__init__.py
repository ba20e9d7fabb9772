"""The robot side of madi-robot: config, kinematics, task (target and reward), safety.

The hard-real-time robot process (agent loop, control thread, session recording) and its
backends (real UR5 via ur_rtde, camera, target display; the sim mirror; a recorded
session). ``learner`` never imports from here; this package may import ``learner`` for
local policy inference and ``link`` to talk to the learner.
"""
