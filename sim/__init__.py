"""The MuJoCo UR5 mirror of the visual reacher rig: model, wrist camera, virtual monitor.

MuJoCo renders headless through EGL unless ``MUJOCO_GL`` is already set. Importing the
package registers the Gymnasium ids of :mod:`sim.gym_envs`.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from sim.gym_envs import register_envs  # noqa: E402

register_envs()
