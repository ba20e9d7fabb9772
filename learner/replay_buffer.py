"""Frame-deduplicating replay buffer for pixel-based SAC (MaDi / SVEA on the UR5 reacher).

A frame-stacking environment returns observations whose image is the last ``k`` RGB
frames, so consecutive observations share ``k - 1`` frames and ``obs`` / ``next_obs`` of
one transition share ``k - 1`` frames too. Storing both stacks per transition stores each
frame ``2k`` times. This buffer stores every distinct RGB frame once in a preallocated
uint8 ring and keeps, per transition, the absolute ids of the ``k + 1`` frames of its
window (``obs = window[:k]``, ``next_obs = window[1:]``). Sampling can chain ``n``
consecutive transitions into an n-step one (``n_step``).

Exactness: the buffer reproduces bit-exactly the stacks that were passed to :meth:`add`.
At an episode start the ``k`` frames of ``obs`` are written, consecutive identical frames
once (a frame-stack env that repeats the first frame costs one stored frame; an env that
pads with zeros or captures ``k`` real frames costs up to ``k``). Within an episode, the
``obs`` of a transition must equal the previous ``next_obs`` (otherwise a new episode is
assumed) and ``next_obs`` must be ``obs`` shifted by one frame (otherwise ``add`` raises,
because no ``k + 1`` window could represent it); only the newest frame is written.

Wrap-around: transitions live in a ring of ``capacity`` slots and frames in a ring of
``frame_capacity`` slots (``capacity`` plus a small margin for episode starts). A
transition can be sampled only while its own slot and all frames of its window are still
present; since window ids grow monotonically with insertion order, the sampleable
transitions are always the newest contiguous run, tracked with one pointer.

Frame codec: with ``frame_codec="png"`` every new frame is PNG-encoded once in :meth:`add`
(OpenCV, lossless, :data:`PNG_ENCODE_PARAMS`) into a preallocated byte ring (the *arena*,
``frame_arena_bytes`` bytes, one uint8 array) with an int64 start and length per frame
slot, and :meth:`ReplayBuffer.sample` decodes only the distinct frames a batch needs. The
arena is a second eviction limit: a frame whose bytes were overwritten evicts the
transitions that use it, exactly as an overwritten frame slot does, so ``len`` can stay
below ``capacity`` when frames compress worse than the arena was sized for. The stored
PNGs are true RGB images (viewable as is) and decode bit-exactly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

__all__ = [
    "FRAME_CODECS",
    "PNG_ENCODE_PARAMS",
    "Batch",
    "ReplayBuffer",
    "default_frame_arena_bytes",
    "frame_capacity_for",
    "naive_nbytes",
    "png_max_nbytes",
    "replay_nbytes",
    "sample_mixed",
]

_FLOAT_KINDS = ("f",)

FRAME_CODECS = ("none", "png")
"""Accepted ``frame_codec`` values; the index is the code saved in ``state_dict``."""

# cv2.IMWRITE_PNG_COMPRESSION = 16, cv2.IMWRITE_PNG_FILTER = 19, cv2.IMWRITE_PNG_FILTER_UP
# = 32 (numeric so that importing this module does not import OpenCV).
PNG_ENCODE_PARAMS = (16, 1, 19, 32)
"""OpenCV ``imencode`` flags: zlib level 1, PNG "up" filter on every row (default strategy).

Chosen by the sweep in BENCHMARKS.md: on sim frames it encodes about 3x faster than
OpenCV's default (adaptive filter per row) at a similar size (~0.8 KB per frame, +5 %) and
decodes within ~30 %; on noisy webcam-like frames it is 7 % larger than the smallest
setting tried and decodes faster than OpenCV's default. Without a filter sim frames decode
~20 % faster, but noisy frames hardly compress (39 KB instead of 33 KB).
"""

_PNG_SIGNATURE = np.frombuffer(b"\x89PNG\r\n\x1a\n", dtype=np.uint8)


def _import_cv2() -> Any:
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - opencv-python is a dependency
        raise ImportError(
            "frame_codec='png' needs OpenCV: pip install opencv-python-headless"
        ) from err
    return cv2


@dataclass
class Batch:
    """A batch of transitions sampled from :class:`ReplayBuffer` (all numpy arrays).

    Attributes:
        frames: uint8 ``(B, k + n, 3, H, W)``, pixel values 0..255, for ``n``-step
            samples (``ReplayBuffer.n_step``, 1 by default). The window of unique RGB
            frames: the observation stack is ``frames[:, :k]`` and the next observation
            stack (``n`` steps later) is ``frames[:, n:]`` (reshape to ``(B, 3k, H, W)``).
        proprio: float32 ``(B, P)``, proprioception of ``obs``.
        next_proprio: float32 ``(B, P)``, proprioception of ``next_obs``.
        action: float32 ``(B, A)``, the action actually applied (normalised to [-1, 1]).
        reward: float32 ``(B,)``, the reward received for the transition (for ``n`` > 1
            the discounted sum over the ``n`` steps).
        discount_mask: float32 ``(B,)``, 0.0 where the episode terminated at or before
            ``next_obs`` (no bootstrap), else 1.0; a truncated (time-limit) end still
            bootstraps.
    """

    frames: np.ndarray
    proprio: np.ndarray
    next_proprio: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount_mask: np.ndarray

    @staticmethod
    def concatenate(batches: list[Batch]) -> Batch:
        """One batch of the transitions of ``batches``, in order (e.g. prior + new data)."""
        return Batch(**{f.name: np.concatenate([getattr(b, f.name) for b in batches])
                        for f in fields(Batch)})


class TooFewSteps(ValueError):
    """No stored start has ``n_step`` steps ahead in its episode yet (see ``sample``)."""


def sample_mixed(replay: Any, prior: Any | None, share: float, batch_size: int) -> Batch:
    """A batch with ``share`` of it from ``prior`` and the rest from ``replay``.

    Sim -> real fine-tuning (``--init-replay-mix``): ``prior`` is the init-from run's
    replay buffer, ``replay`` the new run's. While ``replay`` is empty (or, with n-step
    windows, holds no start with n steps ahead yet) the whole batch comes from ``prior``;
    without a prior (None or empty) from ``replay`` alone.

    Args:
        replay: The new run's buffer (``sample(n) -> Batch``, ``len``).
        prior: The prior run's buffer, or None.
        share: Fraction of each batch from ``prior``, in [0, 1).
        batch_size: Transitions per batch.
    """
    if prior is None or len(prior) == 0:
        return replay.sample(batch_size)
    n_prior = round(batch_size * share)
    try:
        new = replay.sample(batch_size - n_prior) if len(replay) else None
    except TooFewSteps:  # n-step windows: the new run's first episode is still short
        new = None
    if new is None:
        return prior.sample(batch_size)
    return Batch.concatenate([prior.sample(n_prior), new])


def frame_capacity_for(capacity: int, frame_stack: int) -> int:
    """Number of frame slots allocated for a buffer of ``capacity`` transitions.

    One frame per transition plus a 1 % margin (an episode start stores one extra frame
    when the env repeats the first frame; 150-step UR5 episodes need 0.67 %) plus one
    window. With shorter episodes the oldest transitions are evicted a little early, and
    ``len`` reports the true number that can be sampled.

    Args:
        capacity: Transition capacity (>= 1).
        frame_stack: Frames per observation stack ``k`` (>= 1).

    Returns:
        Frame ring size in frames.
    """
    return capacity + capacity // 100 + frame_stack + 1


def png_max_nbytes(frame_shape: tuple[int, int, int]) -> int:
    """Generous upper bound of the PNG size of one incompressible ``(3, H, W)`` frame.

    Raw pixels + one filter byte per row + zlib's worst-case expansion (about 0.1 %) +
    256 bytes for the PNG signature, IHDR, IDAT, IEND chunks and the zlib wrapper.

    Args:
        frame_shape: One RGB frame ``(3, H, W)``.

    Returns:
        Bytes.
    """
    _, h, w = (int(s) for s in frame_shape)
    raw = 3 * h * w + h
    return raw + raw // 1000 + 256


def default_frame_arena_bytes(
    capacity: int, frame_shape: tuple[int, int, int], frame_stack: int
) -> int:
    """Default PNG arena size: a quarter of the raw frame ring, at least ``k + 2`` frames.

    A quarter holds ``capacity`` transitions when frames compress at least 4x. Measured
    (BENCHMARKS.md): real sim frames 49x (888 bytes per frame), noisy webcam-like
    frames 1.34x (32 KB), so with those it holds only about 34k of 100k transitions. Pass
    ``frame_arena_bytes`` to size it to the data, e.g. 256e6 for 100k sim transitions
    (they use 89e6).

    Args:
        capacity: Transition capacity.
        frame_shape: One RGB frame ``(3, H, W)``.
        frame_stack: Frames per observation stack ``k``.

    Returns:
        Bytes (1,090,843,200 for the UR5 setting).
    """
    raw = frame_capacity_for(capacity, frame_stack) * int(np.prod(frame_shape))
    return max(raw // 4, (frame_stack + 2) * png_max_nbytes(frame_shape))


def replay_nbytes(
    capacity: int,
    frame_shape: tuple[int, int, int],
    frame_stack: int,
    proprio_dim: int,
    action_dim: int,
    *,
    frame_codec: str = "none",
    frame_arena_bytes: int | None = None,
) -> int:
    """Exact bytes of the arrays a :class:`ReplayBuffer` preallocates (without allocating).

    Args:
        capacity: Transition capacity.
        frame_shape: One RGB frame ``(3, H, W)``.
        frame_stack: Frames per observation stack ``k``.
        proprio_dim: Proprioception size ``P``.
        action_dim: Action size ``A``.
        frame_codec: ``"none"`` or ``"png"``, as for :class:`ReplayBuffer`.
        frame_arena_bytes: PNG arena size; None for :func:`default_frame_arena_bytes`.

    Returns:
        Bytes: frame storage (``"none"``: uint8 frame ring; ``"png"``: uint8 arena + int64
        start and length per frame slot) + per-transition frame ids (int64, ``k + 1``
        each) + proprio and next_proprio (float32) + action (float32) + reward (float32)
        + terminated and truncated flags (bool) + the last ``next_obs`` image (uint8) used
        for the continuity check.
    """
    frame_bytes = int(np.prod(frame_shape))
    n_frames = frame_capacity_for(capacity, frame_stack)
    per_transition = 8 * (frame_stack + 1) + 4 * (2 * proprio_dim + action_dim + 1) + 2
    if frame_codec == "png":
        if frame_arena_bytes is None:
            frame_arena_bytes = default_frame_arena_bytes(capacity, frame_shape, frame_stack)
        frame_storage = int(frame_arena_bytes) + 16 * n_frames
    elif frame_codec == "none":
        frame_storage = n_frames * frame_bytes
    else:
        raise ValueError(f"frame_codec must be one of {FRAME_CODECS}, got {frame_codec!r}")
    return frame_storage + capacity * per_transition + frame_stack * frame_bytes


def naive_nbytes(
    capacity: int,
    frame_shape: tuple[int, int, int],
    frame_stack: int,
    proprio_dim: int,
    action_dim: int,
) -> int:
    """Bytes of the naive layout that stores full ``obs`` and ``next_obs`` stacks.

    Args:
        capacity: Transition capacity.
        frame_shape: One RGB frame ``(3, H, W)``.
        frame_stack: Frames per observation stack ``k``.
        proprio_dim: Proprioception size ``P``.
        action_dim: Action size ``A``.

    Returns:
        Bytes: 2 uint8 stacks of ``k`` frames + float32 proprio, next_proprio, action,
        reward + 2 bool flags per transition.
    """
    frame_bytes = int(np.prod(frame_shape))
    per_transition = 2 * frame_stack * frame_bytes + 4 * (2 * proprio_dim + action_dim + 1) + 2
    return capacity * per_transition


class ReplayBuffer:
    """Uniform replay buffer storing each RGB frame once (DrQ/SVEA-style pixel SAC).

    Memory for the UR5 setting (100k transitions, k = 3, 3x90x160 frames, P = 15, A = 5)
    is :func:`replay_nbytes` = 4,381,302,400 bytes instead of 25.9e9 for stored obs/next_obs
    stacks (:func:`naive_nbytes`); the frame ring dominates (43,200 bytes per frame). With
    ``frame_codec="png"`` the frame ring is replaced by a byte arena of
    ``frame_arena_bytes`` (default :func:`default_frame_arena_bytes`, 1.09e9) plus 16 bytes
    per frame slot, i.e. 1,110,388,864 bytes by default.

    Args:
        capacity: Maximum number of stored transitions (>= 1).
        frame_shape: Shape of one RGB frame ``(3, H, W)``.
        frame_stack: Number of stacked frames ``k`` in an observation (>= 1).
        proprio_dim: Proprioception size ``P`` (>= 0).
        action_dim: Action size ``A`` (>= 1).
        seed: Seed of the sampling generator (numpy PCG64).
        frame_codec: ``"none"`` stores raw uint8 frames; ``"png"`` stores each frame
            losslessly PNG-encoded (OpenCV) in a byte arena and decodes in :meth:`sample`.
        frame_arena_bytes: Arena size in bytes for ``"png"`` (None: the default above); it
            must hold ``k + 2`` encoded frames, else :meth:`add` raises. Must be None for
            ``"none"``.
        decode_threads: Threads decoding PNG frames in :meth:`sample` (0: the calling
            thread; ``cv2.imdecode`` releases the GIL). May be changed on the instance.
        n_step: Steps ``n`` of each sampled return (>= 1): :meth:`sample` returns the
            discounted sum of ``n`` rewards and the observation ``n`` steps later
            (Sutton & Barto, "Reinforcement Learning", 2nd ed., sec. 7.1; DrQ-v2 uses 3).
        gamma: Discount of that sum, in [0, 1] (the agent's ``gamma``).

    Raises:
        ValueError: If a size is out of range, ``frame_shape`` is not ``(3, H, W)`` or the
            codec options are invalid.
        ImportError: If ``frame_codec="png"`` and OpenCV is missing.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int, int],
        frame_stack: int,
        proprio_dim: int,
        action_dim: int,
        seed: int = 0,
        *,
        frame_codec: str = "none",
        frame_arena_bytes: int | None = None,
        decode_threads: int = 0,
        n_step: int = 1,
        gamma: float = 0.99,
    ):
        frame_shape = tuple(int(s) for s in frame_shape)
        if len(frame_shape) != 3 or frame_shape[0] != 3 or min(frame_shape) < 1:
            raise ValueError(f"frame_shape must be (3, H, W) with H, W >= 1, got {frame_shape}")
        for name, value, low in (
            ("capacity", capacity, 1),
            ("frame_stack", frame_stack, 1),
            ("proprio_dim", proprio_dim, 0),
            ("action_dim", action_dim, 1),
            ("decode_threads", decode_threads, 0),
            ("n_step", n_step, 1),
        ):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
        if frame_codec not in FRAME_CODECS:
            raise ValueError(f"frame_codec must be one of {FRAME_CODECS}, got {frame_codec!r}")
        if frame_codec == "none" and frame_arena_bytes is not None:
            raise ValueError("frame_arena_bytes applies to frame_codec='png' only; pass None")
        self.capacity = int(capacity)
        self.frame_shape: tuple[int, int, int] = frame_shape  # type: ignore[assignment]
        self.frame_stack = int(frame_stack)
        self.proprio_dim = int(proprio_dim)
        self.action_dim = int(action_dim)
        self.frame_codec = frame_codec
        self.decode_threads = int(decode_threads)
        self.n_step = int(n_step)
        self.gamma = float(gamma)
        self.frame_capacity = frame_capacity_for(self.capacity, self.frame_stack)
        k, c = self.frame_stack, self.capacity
        self._image_shape = (3 * k, *frame_shape[1:])

        if frame_codec == "png":
            self._cv2 = _import_cv2()
            if frame_arena_bytes is None:
                frame_arena_bytes = default_frame_arena_bytes(c, frame_shape, k)
            if int(frame_arena_bytes) != frame_arena_bytes or frame_arena_bytes < 1:
                raise ValueError(
                    f"frame_arena_bytes must be an integer >= 1, got {frame_arena_bytes!r}"
                )
            self.frame_arena_bytes: int | None = int(frame_arena_bytes)
            self._frames = np.zeros((0, *frame_shape), dtype=np.uint8)  # unused
            # Byte ring; pages are committed by the OS only when first written.
            self._arena = np.zeros(self.frame_arena_bytes, dtype=np.uint8)
            # Per frame slot: virtual start (bytes written to the ring before it, counting
            # skipped tail gaps; physical offset = start % frame_arena_bytes) and length.
            self._frame_start = np.zeros(self.frame_capacity, dtype=np.int64)
            self._frame_nbytes = np.zeros(self.frame_capacity, dtype=np.int64)
        else:
            self.frame_arena_bytes = None
            self._frames = np.zeros((self.frame_capacity, *frame_shape), dtype=np.uint8)
            self._arena = np.zeros(0, dtype=np.uint8)
            self._frame_start = np.zeros(0, dtype=np.int64)
            self._frame_nbytes = np.zeros(0, dtype=np.int64)
        self._arena_end = 0  # virtual end of the newest encoded frame
        self._executor: ThreadPoolExecutor | None = None
        self._executor_threads = 0

        self._frame_ids = np.zeros((c, k + 1), dtype=np.int64)  # absolute frame ids
        self._proprio = np.zeros((c, self.proprio_dim), dtype=np.float32)
        self._next_proprio = np.zeros((c, self.proprio_dim), dtype=np.float32)
        self._action = np.zeros((c, self.action_dim), dtype=np.float32)
        self._reward = np.zeros((c,), dtype=np.float32)
        self._terminated = np.zeros((c,), dtype=np.bool_)
        self._truncated = np.zeros((c,), dtype=np.bool_)
        self._last_next_image = np.zeros(self._image_shape, dtype=np.uint8)

        self._num_transitions = 0  # absolute count of transitions ever added
        self._num_frames = 0  # absolute count of frames ever written
        self._oldest = 0  # absolute id of the oldest sampleable transition
        self._episode_open = False  # True when the next obs may chain to the last next_obs
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        """Number of transitions that can be sampled (<= capacity)."""
        return self._num_transitions - self._oldest

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return (
            self._frames,
            self._arena,
            self._frame_start,
            self._frame_nbytes,
            self._frame_ids,
            self._proprio,
            self._next_proprio,
            self._action,
            self._reward,
            self._terminated,
            self._truncated,
            self._last_next_image,
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays (equals :func:`replay_nbytes`).

        Exact for all data the buffer keeps: every stored frame, encoded or not, lives in
        these fixed-size numpy arrays (no per-frame Python objects), so the size does not
        grow with use. Not counted: constant per-instance overhead (numpy array headers,
        the instance dict, the decode thread pool: a few KB) and the transient
        ``sample`` output and decode scratch. For ``"png"`` the arena counts in full even
        before the OS has committed its pages.
        """
        return int(sum(a.nbytes for a in self._arrays()))

    @property
    def stored_frame_nbytes(self) -> int:
        """Bytes of frame data that the sampleable transitions use.

        Returns:
            Bytes from the oldest frame of the oldest sampleable window to the newest
            frame: encoded bytes (``"png"``, including any skipped arena tail gap in
            between) or ``43,200`` per frame for raw 3x90x160 frames (``"none"``). This is
            the smallest frame storage that holds the current contents.
        """
        if len(self) == 0:
            return 0
        first = int(self._frame_ids[self._oldest % self.capacity, 0])
        if self.frame_codec == "png":
            return self._arena_end - int(self._frame_start[first % self.frame_capacity])
        return (self._num_frames - first) * int(np.prod(self.frame_shape))

    @property
    def stored_frames(self) -> int:
        """Number of distinct frames from the oldest sampleable window to the newest."""
        if len(self) == 0:
            return 0
        return self._num_frames - int(self._frame_ids[self._oldest % self.capacity, 0])

    # ------------------------------------------------------------------ writing
    def _check_array(self, field: str, value: Any, shape: tuple[int, ...], dtype: Any) -> None:
        if not isinstance(value, np.ndarray):
            raise ValueError(
                f"{field}: expected np.ndarray {np.dtype(dtype).name}{shape}, "
                f"got {type(value).__name__}"
            )
        if value.shape != shape or value.dtype != dtype:
            raise ValueError(
                f"{field}: expected {np.dtype(dtype).name}{shape}, "
                f"got {value.dtype.name}{value.shape}"
            )

    def _check_obs(self, field: str, obs: Any) -> None:
        if not isinstance(obs, dict) or "image" not in obs or "proprio" not in obs:
            got = sorted(obs) if isinstance(obs, dict) else type(obs).__name__
            raise ValueError(f"{field}: expected dict with keys 'image', 'proprio', got {got}")
        self._check_array(f"{field}['image']", obs["image"], self._image_shape, np.uint8)
        proprio = obs["proprio"]
        self._check_array(f"{field}['proprio']", proprio, (self.proprio_dim,), np.float32)
        if not np.all(np.isfinite(proprio)):
            raise ValueError(f"{field}['proprio']: expected finite values, got {proprio}")

    def _encode(self, frame: np.ndarray) -> np.ndarray:
        """PNG-encode one uint8 ``(3, H, W)`` RGB frame; returns uint8 ``(n_bytes,)``."""
        # OpenCV takes BGR (H, W, 3) and writes RGB PNGs: flip the channels so the PNG
        # holds the true colours (and decodes back to the same order, see _decode_into).
        # cv2.merge interleaves the planes ~20x faster than a numpy transposed copy.
        hwc_bgr = self._cv2.merge([frame[2], frame[1], frame[0]])
        ok, encoded = self._cv2.imencode(".png", hwc_bgr, list(PNG_ENCODE_PARAMS))
        if not ok:
            raise RuntimeError("cv2.imencode('.png') failed for a uint8 (H, W, 3) frame")
        encoded = encoded.reshape(-1)
        limit = self.frame_arena_bytes // (self.frame_stack + 2)
        if encoded.size > limit:
            raise ValueError(
                f"frame_arena_bytes={self.frame_arena_bytes} is too small: a frame encoded "
                f"to {encoded.size} bytes, but the arena must hold k + 2 = "
                f"{self.frame_stack + 2} encoded frames (need >= "
                f"{(self.frame_stack + 2) * encoded.size} bytes; "
                f"{(self.frame_stack + 2) * png_max_nbytes(self.frame_shape)} covers any frame)"
            )
        return encoded

    def _write_frame(self, frame: np.ndarray, encoded: np.ndarray | None) -> int:
        frame_id = self._num_frames
        slot = frame_id % self.frame_capacity
        if encoded is None:
            self._frames[slot] = frame
        else:
            size, arena = encoded.size, self.frame_arena_bytes
            start = self._arena_end
            if start % arena + size > arena:  # no room before the end: skip the tail gap
                start += arena - start % arena
            offset = start % arena
            self._arena[offset : offset + size] = encoded
            self._frame_start[slot] = start
            self._frame_nbytes[slot] = size
            self._arena_end = start + size
        self._num_frames += 1
        return frame_id

    def _frame_evicted(self, frame_id: int) -> bool:
        """True if frame ``frame_id`` (absolute) was overwritten (slot or arena bytes)."""
        if frame_id < self._num_frames - self.frame_capacity:
            return True
        if self.frame_codec == "png":
            # Bytes at virtual position v survive while v >= arena_end - arena_bytes.
            start = int(self._frame_start[frame_id % self.frame_capacity])
            return start < self._arena_end - self.frame_arena_bytes
        return False

    def add(
        self,
        obs: dict,
        action: np.ndarray,
        reward: float,
        next_obs: dict,
        terminated: bool,
        truncated: bool,
    ) -> None:
        """Append one transition, writing (and, for ``"png"``, encoding) only new frames.

        Args:
            obs: ``{"image": uint8 (3k, H, W), "proprio": float32 (P,)}``, the observation
                the action was taken in (frames oldest first, RGB channels per frame).
            action: float ``(A,)`` (float32 or float64, stored as float32), the applied
                action.
            reward: Scalar reward (finite).
            next_obs: Observation after the action, same layout as ``obs``; its image must
                be ``obs["image"]`` shifted by one frame (a frame-stack env). At a time-limit
                end pass the final observation, not the reset one.
            terminated: True if ``next_obs`` is terminal (no bootstrapping).
            truncated: True if the episode was cut by a time limit at ``next_obs``.

        Raises:
            ValueError: On a shape/dtype mismatch (naming the field, expected vs got), a
                non-finite value, a ``next_obs`` image that is not ``obs`` shifted, or (for
                ``"png"``) an encoded frame larger than ``frame_arena_bytes / (k + 2)``.
                The buffer is unchanged when ``add`` raises.
        """
        reward_f = self._check_step(obs, action, reward, next_obs)
        obs_ids, new_frames = self._new_frames(obs["image"], next_obs["image"])
        # Encode every new frame before writing any: nothing changes if encoding raises.
        if self.frame_codec == "png":
            encoded: list[np.ndarray | None] = [self._encode(f) for f in new_frames]
        else:
            encoded = [None] * len(new_frames)
        for frame, enc in zip(new_frames, encoded, strict=True):
            new_id = self._write_frame(frame, enc)

        n = self._num_transitions
        slot = n % self.capacity
        self._frame_ids[slot, :self.frame_stack] = obs_ids
        self._frame_ids[slot, self.frame_stack] = new_id
        self._proprio[slot] = obs["proprio"]
        self._next_proprio[slot] = next_obs["proprio"]
        self._action[slot] = action
        self._reward[slot] = reward_f
        self._terminated[slot] = bool(terminated)
        self._truncated[slot] = bool(truncated)
        self._num_transitions = n + 1
        self._episode_open = not (terminated or truncated)
        self._last_next_image[...] = next_obs["image"]
        self._drop_overwritten()

    def _check_step(self, obs: dict, action: np.ndarray, reward: float, next_obs: dict) -> float:
        """Validate one transition's arguments (see :meth:`add`); the reward as a float."""
        self._check_obs("obs", obs)
        self._check_obs("next_obs", next_obs)
        if not isinstance(action, np.ndarray):
            raise ValueError(
                f"action: expected np.ndarray float32({self.action_dim},), "
                f"got {type(action).__name__}"
            )
        if action.shape != (self.action_dim,) or action.dtype.kind not in _FLOAT_KINDS:
            raise ValueError(
                f"action: expected float32({self.action_dim},), "
                f"got {action.dtype.name}{action.shape}"
            )
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action: expected finite values, got {action}")
        try:
            reward_f = float(reward)
        except (TypeError, ValueError) as err:
            raise ValueError(f"reward: expected a float, got {type(reward).__name__}") from err
        if not np.isfinite(reward_f):
            raise ValueError(f"reward: expected a finite float, got {reward_f}")
        return reward_f

    def _new_frames(self, image: np.ndarray,
                    next_image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Frame ids of ``image`` and the frames to write (the newest of ``next_image`` last).

        The obs frames chain to the previous ``next_obs`` while the episode goes on; else
        they are written (consecutive identical frames once).

        Raises:
            ValueError: If ``next_image`` is not ``image`` shifted by one frame.
        """
        k = self.frame_stack
        frames = image.reshape(k, *self.frame_shape)
        next_frames = next_image.reshape(k, *self.frame_shape)
        if not np.array_equal(next_frames[:-1], frames[1:]):
            raise ValueError(
                "next_obs['image']: expected obs['image'] shifted by one frame "
                "(frames 0..k-2 of next_obs == frames 1..k-1 of obs), got a different stack; "
                "pass the final observation of the episode, not the reset one"
            )
        new_frames: list[np.ndarray] = []
        if self._episode_open and np.array_equal(image, self._last_next_image):
            obs_ids = self._frame_ids[(self._num_transitions - 1) % self.capacity, 1:].copy()
        else:
            obs_ids = np.empty(k, dtype=np.int64)
            for i in range(k):
                if i > 0 and np.array_equal(frames[i], frames[i - 1]):
                    obs_ids[i] = obs_ids[i - 1]
                else:
                    obs_ids[i] = self._num_frames + len(new_frames)
                    new_frames.append(frames[i])
        return obs_ids, [*new_frames, next_frames[-1]]

    def _drop_overwritten(self) -> None:
        """Forget transitions whose slot or frames were overwritten.

        Window ids are sorted, so column 0 is a transition's oldest frame; it grows
        monotonically with insertion order, and so do the frames' arena positions.
        """
        first_slot_kept = self._num_transitions - self.capacity
        while self._oldest < self._num_transitions and (
            self._oldest < first_slot_kept
            or self._frame_evicted(int(self._frame_ids[self._oldest % self.capacity, 0]))
        ):
            self._oldest += 1

    # ------------------------------------------------------------------ reading
    def _decode_into(self, frame_ids: np.ndarray, out: np.ndarray, rows: np.ndarray) -> None:
        """Decode frames ``frame_ids`` (absolute) into ``out[rows]`` (uint8 (3, H, W))."""
        cv2, arena = self._cv2, self.frame_arena_bytes
        hwc = (self.frame_shape[1], self.frame_shape[2], 3)
        for frame_id, row in zip(frame_ids.tolist(), rows.tolist(), strict=True):
            slot = frame_id % self.frame_capacity
            offset = int(self._frame_start[slot]) % arena
            size = int(self._frame_nbytes[slot])
            try:
                img = cv2.imdecode(self._arena[offset : offset + size], cv2.IMREAD_UNCHANGED)
            except cv2.error as err:
                raise ValueError(
                    f"stored PNG of frame {frame_id} ({size} bytes at arena offset {offset}) "
                    f"is corrupt: {err}"
                ) from err
            if img is None or img.shape != hwc or img.dtype != np.uint8:
                got = "undecodable data" if img is None else f"{img.dtype.name}{img.shape}"
                raise ValueError(
                    f"stored PNG of frame {frame_id} ({size} bytes at arena offset {offset}) "
                    f"is corrupt: expected uint8{hwc}, got {got}"
                )
            blue, green, red = cv2.split(img)  # BGR (H, W, 3) -> RGB (3, H, W)
            out[row, 0], out[row, 1], out[row, 2] = red, green, blue

    def _decode_frames(self, frame_ids: np.ndarray) -> np.ndarray:
        """Decode absolute frame ids ``(B, k + 1)`` to uint8 ``(B, k + 1, 3, H, W)``."""
        flat = frame_ids.reshape(-1)
        unique, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
        out = np.empty((flat.size, *self.frame_shape), dtype=np.uint8)
        threads = min(self.decode_threads, unique.size)
        if threads <= 1:
            self._decode_into(unique, out, first)
        else:
            if self._executor is None or self._executor_threads != self.decode_threads:
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                self._executor = ThreadPoolExecutor(
                    self.decode_threads, thread_name_prefix="replay-decode"
                )
                self._executor_threads = self.decode_threads
            chunks = np.array_split(np.arange(unique.size), threads)
            futures = [
                self._executor.submit(self._decode_into, unique[c], out, first[c]) for c in chunks
            ]
            for future in futures:
                future.result()  # re-raises a decoding error
        inverse = inverse.reshape(-1)
        dup = np.flatnonzero(first[inverse] != np.arange(flat.size))
        if dup.size:  # frames shared by neighbouring windows: copy the decoded one
            out[dup] = out[first[inverse[dup]]]
        return out.reshape(*frame_ids.shape, *self.frame_shape)

    def sample(self, batch_size: int) -> Batch:
        """Sample transitions uniformly with replacement (vectorised fancy indexing).

        With ``n_step`` = n > 1 each sample is an n-step transition: the reward is
        ``sum_m gamma^m r_(t+m)`` over the ``n`` steps, ``next_proprio`` and the next frames
        are those ``n`` steps later, and ``discount_mask`` is 0 if the episode terminated
        within them (the sum then stops at the terminal step). A start whose ``n`` steps are
        cut by a time limit, a gap in the stream or the newest data is drawn again, so the
        last ``n - 1`` steps of a truncated episode only enter the sums of earlier starts
        (at 150-step episodes and n = 3, 1.3 % of the transitions). With ``"png"`` each
        distinct frame of the batch is decoded once.

        Args:
            batch_size: Number of transitions ``B`` (>= 1).

        Returns:
            A :class:`Batch` of freshly allocated arrays (frames uint8
            ``(B, k + n, 3, H, W)``).

        Raises:
            ValueError: If ``batch_size`` < 1, the buffer is empty, no stored start has
                ``n`` steps ahead in its episode, or a stored PNG is corrupt (e.g. a
                damaged loaded state).
        """
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if len(self) == 0:
            raise ValueError("cannot sample from an empty ReplayBuffer; add transitions first")
        rows, reward, alive = self._sample_windows(int(batch_size))
        c, k = self.capacity, self.frame_stack
        window = np.concatenate([self._frame_ids[rows[:, 0] % c, :k],
                                 self._frame_ids[rows % c, k]], axis=1)
        if self.frame_codec == "png":
            frames = self._decode_frames(window)
        else:
            frames = self._frames[window % self.frame_capacity]
        return Batch(
            frames=frames,
            proprio=self._proprio[rows[:, 0] % c],
            next_proprio=self._next_proprio[rows[:, -1] % c],
            action=self._action[rows[:, 0] % c],
            reward=reward,
            discount_mask=alive.astype(np.float32),
        )

    def _sample_windows(self, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw ``batch_size`` starts with ``n_step`` steps ahead (see :meth:`sample`).

        Returns absolute transition ids ``(B, n)`` (repeating the terminal one after an
        in-window termination), the float32 discounted reward sums ``(B,)`` and the bool
        ``(B,)`` "no termination within the window".
        """
        n, c, k = self.n_step, self.capacity, self.frame_stack
        rows = np.empty((batch_size, n), dtype=np.int64)
        reward = np.empty(batch_size, dtype=np.float32)
        alive = np.empty(batch_size, dtype=bool)
        todo = np.arange(batch_size)
        for _ in range(64):
            ids = self._rng.integers(self._oldest, self._num_transitions, size=todo.size)
            r = np.empty((todo.size, n), dtype=np.int64)
            r[:, 0] = ids
            ret = self._reward[ids % c].astype(np.float64)
            live = ~self._terminated[ids % c]
            ok = np.ones(todo.size, dtype=bool)
            for m in range(1, n):
                nxt = r[:, m - 1] + 1
                exists = nxt < self._num_transitions
                chained = exists.copy()
                chained[exists] = np.all(
                    self._frame_ids[nxt[exists] % c, :k]
                    == self._frame_ids[(nxt[exists] - 1) % c, 1:], axis=1)
                step = live & chained
                ok &= ~live | chained
                r[:, m] = np.where(step, nxt, r[:, m - 1])
                ret += np.where(step, self.gamma**m * self._reward[nxt % c], 0.0)
                live = step & ~self._terminated[nxt % c]
            rows[todo[ok]], reward[todo[ok]], alive[todo[ok]] = r[ok], ret[ok], live[ok]
            todo = todo[~ok]
            if todo.size == 0:
                return rows, reward, alive
        raise TooFewSteps(
            f"no stored transition has n_step={n} steps ahead in its episode "
            f"({len(self)} stored); add longer episodes or lower agent.n_step"
        )

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, np.ndarray | int]:
        """Return the full buffer state as numpy arrays and ints.

        The large arrays are views into the live buffer (no GB-sized copy): save them
        before adding more transitions. Only frames (``"none"``) or arena bytes
        (``"png"``) written so far are included. Loading with
        ``torch.load(weights_only=True)`` reads it after
        :func:`learner.checkpoint.numpy_to_torch`.

        Returns:
            Dict of configuration ints (``frame_codec`` as its index in
            :data:`FRAME_CODECS`), the storage arrays (``"none"``: ``frames`` uint8
            ``(n, 3, H, W)``; ``"png"``: ``arena`` uint8 ``(n_bytes,)``, ``frame_start``
            and ``frame_nbytes`` int64 ``(frame_capacity,)``, ``arena_end``), counters
            and the sampling generator state (uint64 array).
        """
        bit_gen = self._rng.bit_generator.state
        mask = (1 << 64) - 1
        rng_state = np.array(
            [
                bit_gen["state"]["state"] >> 64,
                bit_gen["state"]["state"] & mask,
                bit_gen["state"]["inc"] >> 64,
                bit_gen["state"]["inc"] & mask,
                bit_gen["has_uint32"],
                bit_gen["uinteger"],
            ],
            dtype=np.uint64,
        )
        state: dict[str, np.ndarray | int] = {
            **self._config(),
            "frame_codec": FRAME_CODECS.index(self.frame_codec),
            "num_transitions": self._num_transitions,
            "num_frames": self._num_frames,
            "oldest": self._oldest,
            "episode_open": int(self._episode_open),
        }
        if self.frame_codec == "png":
            state["frame_arena_bytes"] = self.frame_arena_bytes
            state["arena_end"] = self._arena_end
            state["arena"] = self._arena[: min(self._arena_end, self.frame_arena_bytes)]
            state["frame_start"] = self._frame_start
            state["frame_nbytes"] = self._frame_nbytes
        else:
            state["frames"] = self._frames[: min(self._num_frames, self.frame_capacity)]
        state.update(
            self._state_arrays(),
            rng_state=rng_state,
        )
        return state

    def _check_png_state(self, state: dict, live_ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Validate the arena of a ``"png"`` state; returns (arena, arena_end)."""
        if int(state["frame_arena_bytes"]) != self.frame_arena_bytes:
            raise ValueError(
                f"state['frame_arena_bytes']: buffer has {self.frame_arena_bytes}, "
                f"state has {int(state['frame_arena_bytes'])}"
            )
        arena_end = int(state["arena_end"])
        if arena_end < 0:
            raise ValueError(f"state['arena_end']: expected >= 0, got {arena_end}")
        n_bytes = min(arena_end, self.frame_arena_bytes)
        arena = np.asarray(state["arena"])
        if arena.shape != (n_bytes,) or arena.dtype != np.uint8:
            raise ValueError(
                f"state['arena']: expected uint8({n_bytes},), got {arena.dtype.name}{arena.shape}"
            )
        for key in ("frame_start", "frame_nbytes"):
            value = np.asarray(state[key])
            if value.shape != (self.frame_capacity,) or value.dtype != np.int64:
                raise ValueError(
                    f"state['{key}']: expected int64({self.frame_capacity},), "
                    f"got {value.dtype.name}{value.shape}"
                )
        if live_ids.size == 0:
            return arena, arena_end
        slots = live_ids % self.frame_capacity
        start = np.asarray(state["frame_start"])[slots]
        size = np.asarray(state["frame_nbytes"])[slots]
        offset = start % self.frame_arena_bytes
        bad = (
            (size < _PNG_SIGNATURE.size)
            | (start < arena_end - self.frame_arena_bytes)
            | (start + size > arena_end)
            | (offset + size > n_bytes)
        )
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"state['frame_start'/'frame_nbytes']: frame {int(live_ids[i])} spans virtual "
                f"bytes [{int(start[i])}, {int(start[i] + size[i])}), outside the intact arena "
                f"[{max(0, arena_end - self.frame_arena_bytes)}, {arena_end}); corrupt state"
            )
        heads = arena[offset[:, None] + np.arange(_PNG_SIGNATURE.size)]
        bad_sig = np.flatnonzero(np.any(heads != _PNG_SIGNATURE, axis=1))
        if bad_sig.size:
            raise ValueError(
                f"state['arena']: frame {int(live_ids[bad_sig[0]])} does not start with the "
                f"PNG signature; corrupt state"
            )
        return arena, arena_end

    def load_state_dict(self, state: dict) -> None:
        """Restore a state produced by :meth:`state_dict` (arrays are copied in place).

        Everything is validated before anything changes: configuration, codec, array
        shapes and dtypes, counters, the frame ids of the sampleable transitions and (for
        ``"png"``) that each of their frames lies in the intact arena and starts with the
        PNG signature. Damage inside a PNG's data is detected when :meth:`sample` decodes
        it (zlib/PNG checksums) and raises there.

        Args:
            state: The dict returned by :meth:`state_dict` of a buffer with the same
                configuration (a state without ``frame_codec`` is a ``"none"`` state).

        Raises:
            KeyError: If a key is missing.
            ValueError: If the saved configuration, codec or arena size differ from this
                buffer's, an array has the wrong shape/dtype, or the counters or frame
                references are inconsistent (corrupt state).
        """
        self._check_config(state)
        num_frames, num_transitions, oldest = self._checked_counters(state)
        arrays = self._state_arrays()
        for key, target in arrays.items():
            value = np.asarray(state[key])
            if value.shape != target.shape:
                raise ValueError(
                    f"state['{key}']: expected shape {target.shape}, got {value.shape}"
                )
        live_slots = np.arange(oldest, num_transitions) % self.capacity
        live_ids = np.unique(np.asarray(state["frame_ids"])[live_slots])
        if live_ids.size and (
            live_ids[0] < max(0, num_frames - self.frame_capacity) or live_ids[-1] >= num_frames
        ):
            raise ValueError(
                f"state['frame_ids']: sampleable transitions reference frames "
                f"{int(live_ids[0])}..{int(live_ids[-1])}, outside the stored frames "
                f"{max(0, num_frames - self.frame_capacity)}..{num_frames - 1}; corrupt state"
            )
        if self.frame_codec == "png":
            arena, arena_end = self._check_png_state(state, live_ids)
        else:
            frames = self._checked_frames(state, num_frames)
        rng_words = [int(w) for w in np.asarray(state["rng_state"], dtype=np.uint64)]
        if len(rng_words) != 6:
            raise ValueError(f"state['rng_state']: expected 6 uint64 words, got {len(rng_words)}")

        # Everything is valid: copy it in.
        if self.frame_codec == "png":
            self._arena[: arena.size] = arena
            self._frame_start[...] = np.asarray(state["frame_start"])
            self._frame_nbytes[...] = np.asarray(state["frame_nbytes"])
            self._arena_end = arena_end
        else:
            self._frames[: frames.shape[0]] = frames
        for key, target in arrays.items():
            target[...] = np.asarray(state[key])
        self._num_transitions = num_transitions
        self._num_frames = num_frames
        self._oldest = oldest
        self._episode_open = bool(int(state["episode_open"]))
        self._set_rng_words(rng_words)

    def _check_config(self, state: dict) -> None:
        """The saved sizes and codec must be this buffer's (ValueError naming the key)."""
        for key, value in self._config().items():
            if int(state[key]) != value:
                raise ValueError(f"state['{key}']: buffer has {value}, state has {int(state[key])}")
        codec_index = int(state.get("frame_codec", 0))
        if not 0 <= codec_index < len(FRAME_CODECS):
            raise ValueError(f"state['frame_codec']: unknown codec index {codec_index}")
        if FRAME_CODECS[codec_index] != self.frame_codec:
            raise ValueError(
                f"state['frame_codec']: buffer uses {self.frame_codec!r}, state holds "
                f"{FRAME_CODECS[codec_index]!r} frames; build the buffer with "
                f"frame_codec={FRAME_CODECS[codec_index]!r}"
            )

    def _config(self) -> dict[str, int]:
        """The sizes a state must share with the buffer that loads it."""
        return {
            "capacity": self.capacity,
            "frame_capacity": self.frame_capacity,
            "frame_stack": self.frame_stack,
            "frame_height": self.frame_shape[1],
            "frame_width": self.frame_shape[2],
            "proprio_dim": self.proprio_dim,
            "action_dim": self.action_dim,
        }

    def _checked_counters(self, state: dict) -> tuple[int, int, int]:
        """``(num_frames, num_transitions, oldest)`` of ``state``, if consistent."""
        num_frames = int(state["num_frames"])
        num_transitions = int(state["num_transitions"])
        oldest = int(state["oldest"])
        if num_frames < 0 or not 0 <= num_transitions - oldest <= self.capacity or oldest < 0:
            raise ValueError(
                f"state counters are inconsistent: num_frames={num_frames}, "
                f"num_transitions={num_transitions}, oldest={oldest}, capacity={self.capacity}"
            )
        return num_frames, num_transitions, oldest

    def _state_arrays(self) -> dict[str, np.ndarray]:
        """The per-transition arrays a state holds, by key."""
        return {
            "frame_ids": self._frame_ids,
            "proprio": self._proprio,
            "next_proprio": self._next_proprio,
            "action": self._action,
            "reward": self._reward,
            "terminated": self._terminated,
            "truncated": self._truncated,
            "last_next_image": self._last_next_image,
        }

    def _checked_frames(self, state: dict, num_frames: int) -> np.ndarray:
        """The raw frames of a ``"none"``-codec state, if their shape and dtype fit."""
        frames = np.asarray(state["frames"])
        n_saved = min(num_frames, self.frame_capacity)
        if frames.shape != (n_saved, *self.frame_shape) or frames.dtype != np.uint8:
            raise ValueError(
                f"state['frames']: expected uint8{(n_saved, *self.frame_shape)}, "
                f"got {frames.dtype.name}{frames.shape}"
            )
        return frames

    def _set_rng_words(self, words: list[int]) -> None:
        """Restore the sampling RNG (PCG64) from the 6 words of :meth:`state_dict`."""
        bit_gen = self._rng.bit_generator.state
        bit_gen["state"] = {"state": (words[0] << 64) | words[1],
                            "inc": (words[2] << 64) | words[3]}
        bit_gen["has_uint32"] = words[4]
        bit_gen["uinteger"] = words[5]
        self._rng.bit_generator.state = bit_gen
