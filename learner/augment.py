"""Image augmentations for pixel-based SAC: random shift (weak) and overlay (strong).

- :func:`random_shift`: replicate-pad by ``pad`` pixels and crop back at a random offset,
  one integer shift per sample shared by all its stacked frames (DrQ, Kostrikov et al.
  2020; the weak augmentation of SVEA, Hansen et al. 2021, and MaDi, Grooten et al. 2024).
- :class:`OverlayBank`: blend frames with natural images, one image per sample shared by
  its stacked frames (the "overlay" strong augmentation of SVEA, Hansen et al. 2021, used
  by MaDi). Images come from scikit-image's bundled sample images (shipped in the wheel,
  never downloaded) or from a user folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "SKIMAGE_TEST_IMAGES",
    "SKIMAGE_TRAIN_IMAGES",
    "OverlayBank",
    "random_shift",
]

#: scikit-image sample files (in ``skimage/data``) used for training overlays.
SKIMAGE_TRAIN_IMAGES: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "color.png",
    "chessboard_RGB.png",
    "brick.png",
    "grass.png",
    "camera.png",
    "coins.png",
    "page.png",
)
#: scikit-image sample files held out as test-time distractions (disjoint from train).
SKIMAGE_TEST_IMAGES: tuple[str, ...] = (
    "rocket.jpg",
    "ihc.png",
    "phantom.png",
    "logo.png",
    "horse.png",
    "gravel.png",
    "moon.png",
    "clock_motion.png",
    "cell.png",
    "text.png",
)
#: File suffixes read from a user folder (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
_SPLITS = ("train", "test")
_CPU_BLOCK_ELEMENTS = 1 << 20


def random_shift(
    frames: torch.Tensor, pad: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Random shift: replicate-pad by ``pad`` and crop back to ``(H, W)`` at a random offset.

    DrQ, Kostrikov et al. 2020 (also the weak augmentation of SVEA, Hansen et al. 2021, and
    MaDi, Grooten et al. 2024; pad 4). Each sample draws one integer offset
    ``(dy, dx)`` in ``[-pad, pad]^2``, shared by all of its frames and channels, independent
    across samples. Replicate padding followed by a crop equals reading pixel
    ``(clamp(y + dy), clamp(x + dx))``, which is what is computed: one vectorised
    ``torch.gather`` on the input's device, no padded copy, no loop over the batch.

    Args:
        frames: ``(N, ..., C, H, W)`` uint8 or floating tensor (e.g. ``(B, 9, H, W)`` stacks
            or ``(B, F, 3, H, W)`` frame windows); dim 0 is the sample.
        pad: Maximum shift in pixels (>= 0); 0 returns an unshifted copy.
        generator: Optional ``torch.Generator`` for the offsets (CPU or ``frames``'s
            device); the global generator when None.

    Returns:
        Tensor with the same shape, dtype and device as ``frames`` (a new tensor).

    Raises:
        ValueError: If ``frames`` has fewer than 3 dims or ``pad`` is negative.
    """
    if frames.dim() < 3:
        raise ValueError(
            f"frames: expected (N, ..., H, W) with >= 3 dims, got {tuple(frames.shape)}"
        )
    if int(pad) != pad or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    if pad == 0 or frames.numel() == 0:
        return frames.clone()
    n, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
    gen_device = generator.device if generator is not None else frames.device
    offsets = torch.randint(-pad, pad + 1, (n, 2), generator=generator, device=gen_device).to(
        frames.device
    )
    rows = (torch.arange(h, device=frames.device) + offsets[:, :1]).clamp_(0, h - 1)  # (N, H)
    cols = (torch.arange(w, device=frames.device) + offsets[:, 1:]).clamp_(0, w - 1)  # (N, W)
    flat_index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, 1, h * w)
    flat = frames.reshape(n, -1, h * w)
    shifted = torch.gather(flat, 2, flat_index.expand(n, flat.shape[1], h * w))
    return shifted.reshape(frames.shape)


def _to_rgb_uint8(image: np.ndarray, source: str) -> np.ndarray:
    """Convert a decoded image to ``(h, w, 3)`` uint8 (gray replicated, alpha over white)."""
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8:
        if np.issubdtype(image.dtype, np.floating) and float(np.nanmax(image)) <= 1.0:
            image = image * 255.0
        image = np.clip(np.nan_to_num(image), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3:].astype(np.float32) / 255.0
        image = np.round(image[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{source}: expected a 2-D gray or RGB(A) image, got shape {image.shape}")
    return image


def _resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Center-crop ``(h, w, 3)`` uint8 to the aspect of ``size_hw`` and resize to it."""
    from skimage.transform import resize

    out_h, out_w = size_hw
    h, w = image.shape[:2]
    if h * out_w > w * out_h:  # too tall: crop rows
        crop_h = max(1, round(w * out_h / out_w))
        top = (h - crop_h) // 2
        image = image[top : top + crop_h]
    else:  # too wide: crop columns
        crop_w = max(1, round(h * out_w / out_h))
        left = (w - crop_w) // 2
        image = image[:, left : left + crop_w]
    resized = resize(image, (out_h, out_w), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(np.round(resized), 0, 255).astype(np.uint8)


def _list_folder_images(folder: Path, split: str) -> list[Path]:
    """Image files of ``split`` in a user folder (``train/`` + ``test/`` or a flat folder)."""
    fix = (
        "pass a folder holding image files (" + ", ".join(IMAGE_SUFFIXES) + "), either with "
        "'train/' and 'test/' subfolders or flat (every 5th file by name goes to 'test'), "
        "or folder=None for scikit-image's bundled sample images"
    )
    if not folder.exists():
        raise FileNotFoundError(f"overlay image folder '{folder}' does not exist; {fix}")
    if not folder.is_dir():
        raise NotADirectoryError(f"overlay image folder '{folder}' is not a directory; {fix}")

    def images_in(directory: Path) -> list[Path]:
        try:
            entries = sorted(directory.iterdir())
        except OSError as err:
            raise PermissionError(
                f"overlay image folder '{directory}' cannot be read ({err}); "
                f"check its permissions; {fix}"
            ) from err
        return [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]

    if (folder / "train").is_dir() and (folder / "test").is_dir():
        files = images_in(folder / split)
        if not files:
            raise ValueError(f"overlay image folder '{folder / split}' holds no images; {fix}")
        return files
    files = images_in(folder)
    if len(files) < 2:
        raise ValueError(
            f"overlay image folder '{folder}' holds {len(files)} image(s), need >= 2 to make "
            f"disjoint train/test splits; {fix}"
        )
    test = files[::5]
    return test if split == "test" else [p for p in files if p not in test]


class OverlayBank:
    """Bank of natural images for the SVEA/MaDi "overlay" strong augmentation.

    Overlay: ``(1 - alpha) * frames + alpha * image`` with one random image per sample and
    the same image across its stacked frames (SVEA, Hansen et al. 2021; MaDi, Grooten et
    al. 2024 use alpha 0.5). The ``"train"`` and ``"test"`` splits are disjoint, the test
    split standing for unseen test-time distractions.

    Sources: with ``folder=None``, scikit-image's sample images bundled in its wheel
    (``skimage/data``, read from disk, no download; 14 train / 10 test, see
    :data:`SKIMAGE_TRAIN_IMAGES`, :data:`SKIMAGE_TEST_IMAGES`). With a folder: its
    ``train/`` and ``test/`` subfolders if both exist, else the flat folder's images
    sorted by name with every 5th (starting with the first) in ``"test"``.

    Every image is converted to RGB (gray replicated, alpha composited over white),
    center-cropped to the aspect of ``size_hw`` and resized (bilinear, anti-aliased).

    Args:
        size_hw: Output ``(H, W)`` in pixels, e.g. ``(90, 160)`` for the UR5 camera.
        split: ``"train"`` or ``"test"``.
        folder: Optional folder of images (see above); None for the bundled images.
        seed: Seed of the bank's own ``torch.Generator`` (CPU), used when ``overlay`` gets
            no generator.

    Attributes:
        images: uint8 ``(N, 3, H, W)`` tensor of the bank's images.
        names: File names of the images, in the order of ``images``.

    Raises:
        ValueError: For a bad ``split``/``size_hw``, an empty folder or an undecodable file.
        FileNotFoundError: If ``folder`` does not exist (or a bundled image is missing).
        NotADirectoryError: If ``folder`` is a file.
        PermissionError: If ``folder`` cannot be listed.
    """

    def __init__(
        self,
        size_hw: tuple[int, int],
        split: str = "train",
        folder: str | None = None,
        seed: int = 0,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
        if len(size_hw) != 2 or min(int(s) for s in size_hw) < 1:
            raise ValueError(f"size_hw must be (H, W) with H, W >= 1, got {size_hw!r}")
        from skimage import io as skio

        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.split = split
        if folder is None:
            import skimage.data

            root = Path(skimage.data.__file__).parent
            names = SKIMAGE_TRAIN_IMAGES if split == "train" else SKIMAGE_TEST_IMAGES
            paths = [root / name for name in names]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"scikit-image sample images missing: {missing}; reinstall scikit-image "
                    f"(>= 0.22) or pass folder= with your own images"
                )
        else:
            paths = _list_folder_images(Path(folder), split)

        images = []
        for path in paths:
            try:
                decoded = np.asarray(skio.imread(path))
            except Exception as err:  # decoders raise many exception types
                raise ValueError(
                    f"overlay image '{path}' in folder '{path.parent}' cannot be decoded "
                    f"({type(err).__name__}: {err}); remove it or replace it with a valid "
                    f"image file"
                ) from err
            rgb = _resize_rgb(_to_rgb_uint8(decoded, str(path)), self.size_hw)
            images.append(rgb.transpose(2, 0, 1))
        self.names: list[str] = [p.name for p in paths]
        self.images: torch.Tensor = torch.from_numpy(np.stack(images)).contiguous()
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        """Number of images in the bank."""
        return int(self.images.shape[0])

    @property
    def device(self) -> torch.device:
        """Device holding :attr:`images`."""
        return self.images.device

    def to(self, device: torch.device | str) -> OverlayBank:
        """Move the image tensor to ``device`` (in place) and return ``self``.

        Args:
            device: Target device, e.g. ``"cuda"``.

        Returns:
            This bank.
        """
        self.images = self.images.to(device)
        return self

    def overlay(
        self,
        frames: torch.Tensor,
        alpha: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Blend each sample's frames with one random bank image (SVEA overlay).

        ``out = (1 - alpha) * frames + alpha * image`` in pixel units (0..255), computed in
        float32 (or the floating dtype of ``frames``); uint8 input is rounded to nearest
        (ties to even) and returned as uint8, so alpha 0 and 1 give the frames and the
        image exactly.

        Args:
            frames: ``(B, F, 3, H, W)`` frame windows, or ``(B, 3F, H, W)`` stacks, uint8 or
                floating in 0..255, with ``(H, W) == size_hw``; on any device.
            alpha: Image weight in [0, 1] (0.5 in SVEA and MaDi).
            generator: Optional ``torch.Generator`` choosing the images (on the CPU or on
                this bank's device); the bank's own seeded generator when None.

        Returns:
            Tensor of the same shape, dtype and device as ``frames``.

        Raises:
            ValueError: If ``alpha`` is outside [0, 1] or ``frames`` has a wrong shape.
        """
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        shape = tuple(frames.shape)
        h, w = self.size_hw
        if frames.dim() == 4 and shape[1] % 3 == 0 and shape[2:] == (h, w):
            windows = frames.reshape(shape[0], shape[1] // 3, 3, h, w)
        elif frames.dim() == 5 and shape[2:] == (3, h, w):
            windows = frames
        else:
            raise ValueError(
                f"frames: expected (B, F, 3, {h}, {w}) or (B, 3F, {h}, {w}), got {shape}"
            )
        if shape[0] == 0:
            return frames.clone()
        gen = self.generator if generator is None else generator
        index = torch.randint(len(self), (shape[0],), generator=gen, device=gen.device)
        images = self.images[index.to(self.images.device)].to(frames.device)  # (B, 3, H, W)
        compute = frames.dtype if frames.is_floating_point() else torch.float32
        # On the CPU, blend in blocks of ~1M elements: huge float temporaries are page-faulted
        # in on every call and cost ~10x the arithmetic; on accelerators, one block.
        per_sample = max(1, windows[0].numel())
        step = (
            max(1, _CPU_BLOCK_ELEMENTS // per_sample)
            if frames.device.type == "cpu"
            else max(1, len(windows))
        )
        out = torch.empty_like(windows)
        for start in range(0, shape[0], step):
            stop = start + step
            weighted_image = images[start:stop, None].to(compute) * alpha
            if frames.is_floating_point():
                block = torch.mul(windows[start:stop], 1.0 - alpha, out=out[start:stop])
                block.add_(weighted_image)
            else:
                block = windows[start:stop].to(compute).mul_(1.0 - alpha).add_(weighted_image)
                info = torch.iinfo(frames.dtype)
                out[start:stop].copy_(block.round_().clamp_(info.min, info.max))
        return out.reshape(shape)
