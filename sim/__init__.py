"""The MuJoCo UR5 mirror of the visual reacher rig: model, wrist camera, virtual monitor.

MuJoCo renders headless through EGL unless ``MUJOCO_GL`` is already set. Importing the
package registers the Gymnasium ids of :mod:`sim.gym_envs`. MuJoCo and Gymnasium come with
the ``sim`` extra; without them importing the package raises ``ModuleNotFoundError`` with
one line that names it.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

try:
    import gymnasium  # noqa: F401
    import mujoco  # noqa: F401
except ModuleNotFoundError as err:
    raise ModuleNotFoundError(f"the MuJoCo mirror needs the [sim] extra ({err.name} is not "
                              "installed): pip install 'madi-robot[sim]'", name=err.name) from None

from sim.gym_envs import register_envs  # noqa: E402

register_envs()
