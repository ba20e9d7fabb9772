"""Small offscreen renderer of one fixed MuJoCo camera, over MuJoCo's public render API.

One OpenGL context (EGL by default: ``MUJOCO_GL=egl`` unless the caller chose another
backend before MuJoCo was imported), one ``MjvScene`` and ``MjrContext`` per instance.
Shadows, reflections, skybox, fog and haze are off, so a 160x90 frame of the simple rig
costs a few milliseconds on a CPU (Mesa llvmpipe). Readback buffers are allocated once per
image size.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco  # noqa: E402  (after choosing the GL backend)
import numpy as np  # noqa: E402

logger = logging.getLogger(__name__)


def load_triton_before_gl() -> None:
    """Load triton's bundled LLVM, when triton is installed, before an OpenGL context.

    The default (CUDA) torch wheel brings triton, which ``torch._dynamo`` imports when the
    first optimizer is made. Triton's LLVM loaded *after* Mesa's (llvmpipe, which an EGL
    context loads on machines without an NVIDIA driver) crashes the process (SIGSEGV,
    seen with triton 3.8 and Mesa's EGL); loaded before it, both work. So every process
    loads triton's LLVM, if there is one, before its first GL context.
    """
    if importlib.util.find_spec("triton") is None:
        return
    try:
        importlib.import_module("triton._C.libtriton")
    except Exception as err:  # a broken triton install must not stop rendering
        logger.debug("triton present but its library did not load (%s)", err)


class RenderError(RuntimeError):
    """The OpenGL context could not be created or a render failed."""


class CameraRenderer:
    """Render RGB images of one fixed camera of a model.

    Args:
        model: The compiled model; its ``vis.global_.offwidth/offheight`` bound the size.
        camera: Name of the fixed camera to render.

    Raises:
        ValueError: If the camera does not exist.
        RenderError: If no OpenGL context can be created (e.g. no EGL on the machine).
    """

    def __init__(self, model: mujoco.MjModel, camera: str):
        self._model = model
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise ValueError(f"model has no camera named {camera!r}")
        self.max_width = int(model.vis.global_.offwidth)
        self.max_height = int(model.vis.global_.offheight)
        load_triton_before_gl()
        try:
            self._gl = mujoco.GLContext(self.max_width, self.max_height)
            self._gl.make_current()
        except Exception as err:  # the GL backends raise assorted error types
            raise RenderError(
                f"cannot create an OpenGL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): "
                f"{err}; headless machines need MUJOCO_GL=egl (Mesa) or osmesa"
            ) from err
        self._scene = mujoco.MjvScene(model, maxgeom=max(100, 4 * model.ngeom))
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                     mujoco.mjtRndFlag.mjRND_SKYBOX, mujoco.mjtRndFlag.mjRND_FOG,
                     mujoco.mjtRndFlag.mjRND_HAZE):
            self._scene.flags[flag] = 0
        self._option = mujoco.MjvOption()
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = cam_id
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_50)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._buffers: dict[tuple[int, int], tuple[mujoco.MjrRect, np.ndarray]] = {}
        self._closed = False

    def upload_texture(self, texture_id: int) -> None:
        """Copy ``model.tex_data`` of one texture to the GPU; the next render shows it.

        Args:
            texture_id: Texture index in the model.

        Raises:
            RenderError: If the renderer is closed.
        """
        self._make_current()
        mujoco.mjr_uploadTexture(self._model, self._context, texture_id)

    def render(self, data: mujoco.MjData, width: int, height: int,
               out: np.ndarray | None = None) -> np.ndarray:
        """Render the camera for the poses in ``data``.

        ``data`` needs up-to-date kinematics (``mj_kinematics`` + ``mj_camlight``). The
        projection comes from the model's camera intrinsics, which should describe a
        ``width`` x ``height`` image.

        Args:
            data: Source of body, geom and camera poses.
            width: Image width, px, <= ``max_width``.
            height: Image height, px, <= ``max_height``.
            out: Optional uint8 (height, width, 3) array to write into.

        Returns:
            uint8 (height, width, 3) RGB image, row 0 at the top (``out`` if given).

        Raises:
            ValueError: If the size exceeds the offscreen buffer or ``out`` does not fit.
            RenderError: If the renderer is closed.
        """
        if not (0 < width <= self.max_width and 0 < height <= self.max_height):
            raise ValueError(f"render size {width}x{height} outside the offscreen buffer "
                             f"{self.max_width}x{self.max_height}")
        if out is None:
            out = np.empty((height, width, 3), np.uint8)
        elif out.shape != (height, width, 3) or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 ({height}, {width}, 3), got "
                             f"{out.dtype} {out.shape}")
        key = (width, height)
        if key not in self._buffers:
            self._buffers[key] = (mujoco.MjrRect(0, 0, width, height),
                                  np.empty((height, width, 3), np.uint8))
        rect, bottom_up = self._buffers[key]
        self._make_current()
        mujoco.mjv_updateScene(self._model, data, self._option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL, self._scene)
        mujoco.mjr_render(rect, self._scene, self._context)
        mujoco.mjr_readPixels(bottom_up, None, rect, self._context)
        np.copyto(out, bottom_up[::-1])  # OpenGL rows run bottom-up
        return out

    def _make_current(self) -> None:
        if self._closed:
            raise RenderError("renderer is closed")
        self._gl.make_current()

    def close(self) -> None:
        """Free the GL resources; further renders raise :class:`RenderError`."""
        if self._closed:
            return
        self._closed = True
        try:
            self._gl.make_current()
            self._context.free()
        finally:
            self._gl.free()
            logger.debug("camera renderer closed")
