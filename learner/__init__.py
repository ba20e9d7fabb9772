"""MaDi-SAC learner: networks, augmentation, replay buffer, update, checkpoints, policy.

Also the robot <-> learner link messages and sockets (``messages``, ``link``), which both
processes import. Imports nothing from ``robot``, ``sim`` or ``calibration``.
"""
