"""MaDi-SAC learner: networks, augmentation, replay buffer, update, checkpoints, policy.

Imports nothing from ``robot``, ``sim`` or ``calibration``; talks to the robot through
``link``.
"""
