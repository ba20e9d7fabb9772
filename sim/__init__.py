"""The MuJoCo UR5 mirror of the visual reacher rig: model, wrist camera, virtual monitor.

MuJoCo renders headless through EGL unless ``MUJOCO_GL`` is already set.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
