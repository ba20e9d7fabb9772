"""Distractions behind the target: what the monitor shows around the red dot at test time.

MaDi's claim (Grooten et al., AAMAS 2024) is that an agent trained on a plain white screen
still reaches the red dot when images or videos play behind it. A
:class:`Distractions` source gives the background of the target screen at each agent step;
:func:`robot.task.draw_target` draws the red circle on top, so the dot is always visible
and always the same colour. The same sources feed the sim's virtual monitor and the real
full-screen window.

Sources:

- :class:`Plain`: the task's screen colour (``none``).
- :class:`StillImages`: one natural image per episode, held still.
- :class:`MovingImages`: pans and zooms over a natural image, changing every step.
- :class:`MovingShapes`: procedural coloured discs and bars drifting over a coloured
  background.
- :class:`Decoys`: discs that look like the dot in all but hue, on the plain screen.
- :class:`VideoFolder`: frames of the videos (or images) in a user folder, e.g. DAVIS.
- :class:`Mixed`: one of several sources, picked per episode.

Named sets (:func:`make_distractions`), built only from scikit-image's held-out test
images (:data:`learner.augment.SKIMAGE_TEST_IMAGES`, disjoint from the overlay
augmentation's training images):

- ``easy``: still images at half contrast (blended 50 % with the white screen): one
  static pattern per episode, low contrast.
- ``hard``: full-contrast images that pan and zoom every step, or moving shapes: the
  background changes at every step (nothing to get used to within an episode), and at
  full contrast the colour statistics are far from the white training screen.
- ``decoys``: the plain training screen with discs of the dot's size, brightness and
  anti-aliased edge in other hues, some fixed on the screen (so they move in the image
  exactly as the dot does when the camera moves), some drifting. Only the colour tells
  them from the dot: an agent that learned "a dark disc" rather than "the red disc" is
  led astray, one that attends to the dot is not.

No source ever paints target red: colours inside the task's red thresholds
(``task.red_low_bgr`` .. ``red_high_bgr``) are shifted out of them, so the reward still
measures only the dot.
"""

from __future__ import annotations

import abc
from pathlib import Path

import cv2
import numpy as np

from robot.config import TargetConfig, TaskConfig
from robot.task import draw_target

#: Names of the built-in sets.
NAMED_SETS = ("none", "easy", "hard", "decoys")
#: Video and image suffixes read from a user folder.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class DistractionError(ValueError):
    """A distraction set cannot be built (unknown name, empty or unreadable folder)."""


class Distractions(abc.ABC):
    """A source of backgrounds for the target screen.

    Args:
        size_wh: (width, height) of the screen image, px.
    """

    #: True if the background changes within an episode (redraw every step).
    dynamic = False

    def __init__(self, size_wh: tuple[int, int]):
        self.size_wh = (int(size_wh[0]), int(size_wh[1]))
        self._rng = np.random.default_rng(0)

    def reset(self, rng: np.random.Generator) -> None:
        """Start an episode: pick what to show from ``rng`` (reproducible per seed)."""
        self._rng = rng
        self._reset()

    def frame(self, step: int) -> np.ndarray | None:
        """The background at agent step ``step`` of the episode.

        Returns:
            uint8 (h, w, 3) RGB at :attr:`size_wh`, or None for the plain screen.
        """
        return self._frame(step)

    @abc.abstractmethod
    def _reset(self) -> None: ...

    @abc.abstractmethod
    def _frame(self, step: int) -> np.ndarray | None: ...


class Plain(Distractions):
    """No distraction: the task's plain screen."""

    def _reset(self) -> None:
        return None

    def _frame(self, step: int) -> None:
        return None


def _fit(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Resize and centre-crop ``image`` to fill ``size_wh`` (RGB uint8)."""
    w, h = size_wh
    ih, iw = image.shape[:2]
    scale = max(w / iw, h / ih)
    resized = cv2.resize(image, (max(w, round(iw * scale)), max(h, round(ih * scale))),
                         interpolation=cv2.INTER_AREA)
    y0 = (resized.shape[0] - h) // 2
    x0 = (resized.shape[1] - w) // 2
    return np.ascontiguousarray(resized[y0:y0 + h, x0:x0 + w])


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-9))).astype(
            np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


class StillImages(Distractions):
    """One image per episode, held still, blended with white by ``1 - contrast``."""

    def __init__(self, size_wh: tuple[int, int], images: list[np.ndarray],
                 contrast: float = 1.0):
        super().__init__(size_wh)
        if not images:
            raise DistractionError("no images for the still-image distractions")
        self.images = [_fit(_rgb(im), self.size_wh) for im in images]
        self.contrast = float(contrast)
        self._current = self.images[0]

    def _reset(self) -> None:
        image = self.images[self._rng.integers(len(self.images))].astype(np.float32)
        self._current = (255 - self.contrast * (255 - image)).astype(np.uint8)

    def _frame(self, step: int) -> np.ndarray:
        return self._current


class MovingImages(Distractions):
    """Pans and zooms over a natural image (new image, path and speed per episode)."""

    dynamic = True

    def __init__(self, size_wh: tuple[int, int], images: list[np.ndarray],
                 speed: float = 0.02):
        super().__init__(size_wh)
        if not images:
            raise DistractionError("no images for the moving-image distractions")
        w, h = self.size_wh
        self.images = [_fit(_rgb(im), (2 * w, 2 * h)) for im in images]
        self.speed = float(speed)
        self._image = self.images[0]
        self._start = np.zeros(2)
        self._velocity = np.zeros(2)
        self._zoom = (1.0, 0.0)

    def _reset(self) -> None:
        self._image = self.images[self._rng.integers(len(self.images))]
        self._start = self._rng.uniform(0, 1, 2)
        angle = self._rng.uniform(0, 2 * np.pi)
        self._velocity = self.speed * np.array([np.cos(angle), np.sin(angle)])
        self._zoom = (self._rng.uniform(1.0, 1.6), self._rng.uniform(-0.004, 0.004))

    def _frame(self, step: int) -> np.ndarray:
        w, h = self.size_wh
        zoom = float(np.clip(self._zoom[0] + self._zoom[1] * step, 1.0, 2.0))
        cw, ch = round(2 * w / zoom), round(2 * h / zoom)
        pos = (self._start + self._velocity * step) % 2.0
        pos = np.where(pos > 1.0, 2.0 - pos, pos)  # bounce between the edges
        x0 = round(pos[0] * (2 * w - cw))
        y0 = round(pos[1] * (2 * h - ch))
        crop = self._image[y0:y0 + ch, x0:x0 + cw]
        return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA)


class MovingShapes(Distractions):
    """Procedural discs and bars in random colours drifting over a coloured background."""

    dynamic = True

    def __init__(self, size_wh: tuple[int, int], n_shapes: int = 8, speed: float = 0.02):
        super().__init__(size_wh)
        self.n = int(n_shapes)
        self.speed = float(speed)
        self._shapes: list[tuple] = []
        self._background = np.zeros(3)

    def _reset(self) -> None:
        rng = self._rng
        self._background = rng.integers(0, 256, 3)
        self._shapes = [(rng.integers(2), rng.uniform(0, 1, 2),
                         self.speed * rng.uniform(-1, 1, 2), rng.uniform(0.05, 0.2),
                         tuple(int(c) for c in rng.integers(0, 256, 3)))
                        for _ in range(self.n)]

    def _frame(self, step: int) -> np.ndarray:
        w, h = self.size_wh
        image = np.empty((h, w, 3), np.uint8)
        image[:] = self._background
        for kind, start, velocity, size, colour in self._shapes:
            x, y = (start + velocity * step) % 1.0
            cx, cy, r = int(x * w), int(y * h), max(2, int(size * h))
            if kind == 0:
                cv2.circle(image, (cx, cy), r, colour, -1, cv2.LINE_AA)
            else:
                cv2.rectangle(image, (cx - 2 * r, cy - r // 3), (cx + 2 * r, cy + r // 3),
                              colour, -1, cv2.LINE_AA)
        return image


class Decoys(Distractions):
    """Discs like the target dot in size, brightness and edge, in any hue but red.

    Each episode draws ``n_decoys`` discs with radii of 0.05-0.09 of the screen height
    (the default dot: 0.07), a hue at least 60 degrees from red, and the colour's luma
    (ITU-R BT.601: 0.299 R + 0.587 G + 0.114 B) set to ``luma`` (pure red's: 76). Half of
    them stay put on the screen; the others drift by up to ``speed`` screen heights per
    step. The background is ``background_rgb`` (the training screen).

    Args:
        size_wh: Screen image size (width, height), px.
        n_decoys: Discs per episode.
        luma: Target luma of every disc colour, 0-255.
        speed: Largest drift per agent step, fraction of the screen height.
        background_rgb: Screen colour behind the discs.
    """

    dynamic = True

    def __init__(self, size_wh: tuple[int, int], n_decoys: int = 4, luma: float = 76.0,
                 speed: float = 0.01, background_rgb: tuple[int, int, int] = (255, 255, 255)):
        super().__init__(size_wh)
        self.n = int(n_decoys)
        self.luma = float(luma)
        self.speed = float(speed)
        self.background = tuple(int(c) for c in background_rgb)
        self._discs: list[tuple] = []

    def colour(self, hue_deg: float) -> tuple[int, int, int]:
        """The fully saturated colour of ``hue_deg`` moved to :attr:`luma` (RGB, 0-255)."""
        hsv = np.array([[[hue_deg / 2.0, 255, 255]]], np.uint8)  # OpenCV hue: 0-179
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float64)
        weights = np.array([0.299, 0.587, 0.114])
        luma = float(rgb @ weights)
        if luma > self.luma:  # darken toward black
            rgb *= self.luma / luma
        else:  # lighten toward white
            rgb += (255.0 - rgb) * (self.luma - luma) / (255.0 - luma)
        return tuple(int(round(c)) for c in rgb)

    def _reset(self) -> None:
        rng = self._rng
        aspect = self.size_wh[0] / self.size_wh[1]
        self._discs = []
        for i in range(self.n):
            velocity = np.zeros(2) if i % 2 == 0 else \
                self.speed * rng.uniform(-1, 1, 2) * np.array([1.0 / aspect, 1.0])
            hue = rng.uniform(60.0, 300.0)
            self._discs.append((rng.uniform(0.1, 0.9, 2), velocity,
                                rng.uniform(0.05, 0.09), self.colour(hue)))

    def _frame(self, step: int) -> np.ndarray:
        w, h = self.size_wh
        image = np.empty((h, w, 3), np.uint8)
        image[:] = self.background
        shift = 4  # sub-pixel centres and radii, as the dot is drawn (robot.task.draw_target)
        one = 1 << shift
        for start, velocity, radius, colour in self._discs:
            x, y = 1.0 - np.abs(1.0 - (start + velocity * step) % 2.0)  # bounce at the edges
            cv2.circle(image, (round(x * w * one), round(y * h * one)), round(radius * h * one),
                       colour, -1, cv2.LINE_AA, shift)
        return image


class VideoFolder(Distractions):
    """Frames of the videos (or images) in a folder, one clip per episode, looped.

    Clips are read once, downscaled to the screen size, and kept in memory (at most
    ``max_frames`` frames per clip).

    Raises:
        DistractionError: If the folder does not exist, holds no video or image, or none
            of them can be read.
    """

    dynamic = True

    def __init__(self, size_wh: tuple[int, int], folder: str | Path, max_frames: int = 300):
        super().__init__(size_wh)
        folder = Path(folder)
        if not folder.is_dir():
            raise DistractionError(f"distraction folder {folder} does not exist; pass a "
                                   "folder of videos (e.g. DAVIS .mp4) or images, or one of "
                                   f"{NAMED_SETS}")
        files = sorted(p for p in folder.rglob("*")
                       if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
        if not files:
            raise DistractionError(f"distraction folder {folder} holds no video "
                                   f"({', '.join(VIDEO_SUFFIXES)}) or image "
                                   f"({', '.join(IMAGE_SUFFIXES)})")
        self.clips: list[list[np.ndarray]] = []
        bad = []
        for path in files:
            clip = self._read(path, max_frames)
            (self.clips.append(clip) if clip else bad.append(path.name))
        if not self.clips:
            raise DistractionError(f"none of the {len(files)} files in {folder} could be "
                                   f"read ({', '.join(bad[:5])}...): are they valid videos?")
        self._clip = self.clips[0]
        self._offset = 0

    def _read(self, path: Path, max_frames: int) -> list[np.ndarray]:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            image = cv2.imread(str(path))
            return [] if image is None else [_fit(image[:, :, ::-1], self.size_wh)]
        cap = cv2.VideoCapture(str(path))
        frames = []
        while len(frames) < max_frames:
            ok, image = cap.read()
            if not ok:
                break
            frames.append(_fit(image[:, :, ::-1], self.size_wh))
        cap.release()
        return frames

    def _reset(self) -> None:
        self._clip = self.clips[self._rng.integers(len(self.clips))]
        self._offset = int(self._rng.integers(len(self._clip)))

    def _frame(self, step: int) -> np.ndarray:
        return self._clip[(self._offset + step) % len(self._clip)]


class Mixed(Distractions):
    """Picks one of ``sources`` per episode."""

    def __init__(self, sources: list[Distractions]):
        super().__init__(sources[0].size_wh)
        self.sources = sources
        self.dynamic = any(s.dynamic for s in sources)
        self._current = sources[0]

    def _reset(self) -> None:
        self._current = self.sources[self._rng.integers(len(self.sources))]
        self._current.reset(self._rng)

    def _frame(self, step: int) -> np.ndarray | None:
        return self._current.frame(step)


class NoRed(Distractions):
    """Wraps a source and moves its target-red pixels out of the red thresholds."""

    def __init__(self, source: Distractions, task: TaskConfig):
        super().__init__(source.size_wh)
        self.source = source
        self.dynamic = source.dynamic
        self._low = np.array(task.red_low_bgr[::-1], np.uint8)  # RGB order
        self._high = np.array(task.red_high_bgr[::-1], np.uint8)

    def _reset(self) -> None:
        self.source.reset(self._rng)

    def _frame(self, step: int) -> np.ndarray | None:
        image = self.source.frame(step)
        if image is None:
            return None
        red = cv2.inRange(image, self._low, self._high) > 0
        if np.any(red):
            image = image.copy()
            # Raise green above the threshold band: the pixel turns orange/yellow.
            image[red, 1] = min(255, int(self._high[1]) + 40)
        return image


def held_out_images() -> list[np.ndarray]:
    """scikit-image's held-out test images (never used by the overlay augmentation)."""
    import skimage.data
    from skimage import io as skio

    from learner.augment import SKIMAGE_TEST_IMAGES

    root = Path(skimage.data.__file__).parent
    return [_rgb(skio.imread(root / name)) for name in SKIMAGE_TEST_IMAGES]


def make_distractions(spec: str, size_wh: tuple[int, int], task: TaskConfig) -> Distractions:
    """Build a distraction set by name or folder.

    Args:
        spec: ``none``, ``easy``, ``hard``, ``decoys`` (see module docstring) or a folder
            of videos or images.
        size_wh: Screen image size (width, height), px.
        task: The task (its red thresholds are kept free of distractions).

    Raises:
        DistractionError: For an unknown name that is not a folder, or a bad folder.
    """
    if spec == "none":
        return Plain(size_wh)
    if spec == "easy":
        source: Distractions = StillImages(size_wh, held_out_images(), contrast=0.5)
    elif spec == "hard":
        source = Mixed([MovingImages(size_wh, held_out_images()), MovingShapes(size_wh)])
    elif spec == "decoys":
        source = Decoys(size_wh)
    elif Path(spec).exists() or "/" in spec or "\\" in spec:  # meant as a folder
        source = VideoFolder(size_wh, spec)
    else:
        raise DistractionError(f"unknown distraction set {spec!r}: use one of "
                               f"{', '.join(NAMED_SETS)} or a folder of videos or images")
    return NoRed(source, task)


def screen(distractions: Distractions, step: int, size_wh: tuple[int, int],
           center: np.ndarray, target: TargetConfig) -> np.ndarray:
    """The full target screen at ``step``: the background with the red dot on top."""
    return draw_target(size_wh, center, target, background=distractions.frame(step))
