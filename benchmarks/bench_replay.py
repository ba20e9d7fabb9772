"""Benchmark the replay buffer (raw or PNG frames) and augmentations at the UR5 shapes.

Prints a table: exact bytes of the frame-deduplicating buffer vs the naive obs/next_obs
layout, the frame bytes the buffer actually holds and what ``capacity`` transitions need,
mean ``add()`` time, median ``sample(batch)`` time with a full buffer (PNG: with decoding,
in the calling thread and with ``--decode-threads``), and median ``random_shift`` and
``overlay`` times for a ``(batch, k + 1, 3, H, W)`` window batch (uint8 and float32).

Frame sources (``--frames``):
    random: 257 uniform random frames in a cycle (incompressible; the original benchmark).
    sim: real frames of ``sim.env.VisualReacherEnv`` (MuJoCo UR5 mirror, default config)
        stepped with uniform random actions; the env's own resets and episode ends. Every
        frame is rendered, none is repeated or tiled.
    screen: synthetic view of the target monitor as a trained policy sees it: white
        screen, dark bezel, red disc at a random place per episode, the view drifting by
        up to 1 px per step; noise-free like the sim.
    noise: webcam-like worst case: crops of a natural image (skimage astronaut) panning
        by up to 2 px per step, plus fresh Gaussian sensor noise (``--noise-sigma``
        levels) in every frame.

Examples:
    python benchmarks/bench_replay.py --capacity 100000 --batch 128 --repeats 50
    python benchmarks/bench_replay.py --codec png --frames sim --no-augment
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from learner.augment import OverlayBank, random_shift
from learner.replay_buffer import ReplayBuffer, naive_nbytes, replay_nbytes


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


class StackSource:
    """Frame-stack env over a frame generator: first frame repeated at reset (as the sim).

    Subclasses implement ``new_episode()`` and ``frame(t)`` returning uint8 (3, H, W).
    """

    def __init__(self, k: int, episode_len: int, proprio_dim: int):
        self.k, self.episode_len = k, episode_len
        self.proprio = np.zeros(proprio_dim, np.float32)
        self.stack: list[np.ndarray] = []
        self.t = 0

    def new_episode(self) -> None:
        """Start a new scene."""

    def frame(self, t: int) -> np.ndarray:
        raise NotImplementedError

    def _obs(self) -> dict:
        return {"image": np.concatenate(self.stack), "proprio": self.proprio}

    def reset(self) -> dict:
        self.new_episode()
        self.t = 0
        self.stack = [self.frame(0)] * self.k
        return self._obs()

    def step(self) -> tuple[dict, bool, bool]:
        self.t += 1
        self.stack = self.stack[1:] + [self.frame(self.t)]
        return self._obs(), False, self.t >= self.episode_len


class RandomPoolSource(StackSource):
    """257 uniform random frames in a cycle (the original benchmark's frames)."""

    def __init__(self, k, episode_len, proprio_dim, frame_shape, rng):
        super().__init__(k, episode_len, proprio_dim)
        self.pool = rng.integers(0, 256, (257, *frame_shape), dtype=np.uint8)
        self.counter = 0

    def frame(self, t: int) -> np.ndarray:
        self.counter += 1
        return self.pool[self.counter % len(self.pool)]


class ScreenSource(StackSource):
    """White screen + dark bezel + red disc; noise-free; view drifts <= 1 px per step."""

    def __init__(self, k, episode_len, proprio_dim, frame_shape, rng):
        super().__init__(k, episode_len, proprio_dim)
        _, self.h, self.w = frame_shape
        self.rng = rng
        self.margin = 12
        hh, ww = self.h + 2 * self.margin, self.w + 2 * self.margin
        self.yy, self.xx = np.mgrid[:hh, :ww]

    def new_episode(self) -> None:
        hh, ww = self.yy.shape
        canvas = np.full((hh, ww, 3), (20, 20, 24), np.uint8)  # bezel
        canvas[10 : hh - 10, 14 : ww - 14] = (246, 246, 246)  # lit screen
        r = 0.07 * hh
        cy = self.rng.uniform(10 + r, hh - 10 - r)
        cx = self.rng.uniform(14 + r, ww - 14 - r)
        disc = (self.yy - cy) ** 2 + (self.xx - cx) ** 2 <= r * r
        canvas[disc] = (225, 25, 30)
        self.canvas = canvas
        self.pos = np.array([self.margin, self.margin])

    def frame(self, t: int) -> np.ndarray:
        if t > 0:
            self.pos = np.clip(self.pos + self.rng.integers(-1, 2, 2), 0, 2 * self.margin)
        y, x = self.pos
        view = self.canvas[y : y + self.h, x : x + self.w]
        return np.ascontiguousarray(view.transpose(2, 0, 1))


class NoiseSource(StackSource):
    """Natural-image crops panning <= 2 px per step + Gaussian sensor noise per frame."""

    def __init__(self, k, episode_len, proprio_dim, frame_shape, rng, sigma):
        import cv2
        import skimage.data

        super().__init__(k, episode_len, proprio_dim)
        _, self.h, self.w = frame_shape
        self.rng, self.sigma = rng, sigma
        size = 2 * max(self.h, self.w)  # the astronaut (512x512) at about webcam scale
        scene = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
        self.scene = scene.astype(np.float32)

    def new_episode(self) -> None:
        size = self.scene.shape[0]
        self.pos = np.array(
            [self.rng.integers(0, size - self.h), self.rng.integers(0, size - self.w)]
        )

    def frame(self, t: int) -> np.ndarray:
        size = self.scene.shape[0]
        if t > 0:
            step = self.rng.integers(-2, 3, 2)
            self.pos = np.clip(self.pos + step, 0, [size - self.h, size - self.w])
        y, x = self.pos
        noisy = self.scene[y : y + self.h, x : x + self.w] + self.rng.normal(
            0.0, self.sigma, (self.h, self.w, 3)
        ).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


class SimSource:
    """Real ``VisualReacherEnv`` frames, uniform random actions, the env's episode ends."""

    def __init__(self, frame_shape, seed):
        from robot.config import Config
        from sim.env import VisualReacherEnv

        self.env = VisualReacherEnv(Config())
        shape = self.env.observation_space["image"].shape
        if tuple(shape[1:]) != tuple(frame_shape[1:]):
            raise SystemExit(f"sim renders {shape[1:]} frames, not {frame_shape[1:]}")
        self.rng = np.random.default_rng(seed)
        self.seed = seed

    def reset(self) -> dict:
        obs, _ = self.env.reset(seed=self.seed)
        self.seed = None  # seed the target sequence once
        return obs

    def step(self) -> tuple[dict, bool, bool]:
        action = self.rng.uniform(-1.0, 1.0, self.env.action_space.shape).astype(np.float32)
        obs, _, terminated, truncated, _ = self.env.step(action)
        return obs, bool(terminated), bool(truncated)


def fill(buf: ReplayBuffer, n: int, source) -> tuple[float, float]:
    """Add ``n`` transitions from ``source``; return mean add() and source step time, us."""
    action = np.zeros(buf.action_dim, np.float32)
    add_s = src_s = 0.0
    added = 0
    while added < n:
        t0 = time.perf_counter()
        obs = source.reset()
        src_s += time.perf_counter() - t0
        done = False
        while not done and added < n:
            t0 = time.perf_counter()
            next_obs, terminated, truncated = source.step()
            t1 = time.perf_counter()
            obs_p = {"image": obs["image"], "proprio": obs["proprio"][: buf.proprio_dim]}
            nxt_p = {
                "image": next_obs["image"],
                "proprio": next_obs["proprio"][: buf.proprio_dim],
            }
            buf.add(obs_p, action, 0.0, nxt_p, terminated, truncated)
            add_s += time.perf_counter() - t1
            src_s += t1 - t0
            obs, done, added = next_obs, terminated or truncated, added + 1
    return add_s / n * 1e6, src_s / n * 1e6


PNG_SETTINGS = {  # label: (zlib level, strategy, filter) as OpenCV imwrite flags
    "level 1, default strategy, filter up (the buffer's)": (1, 0, 32),
    "level 1, default strategy, no filter": (1, 0, 8),
    "level 1, default strategy, all filters (OpenCV default)": (1, 0, 248),
    "level 3, default strategy, filter up": (3, 0, 32),
    "level 1, RLE strategy, filter up": (1, 3, 32),
    "level 1, RLE strategy, fast filters": (1, 3, 56),
    "level 6, default strategy, all filters": (6, 0, 248),
}


def png_sweep(source, n: int) -> None:
    """Print size and encode/decode time of PNG settings over ``n`` source frames."""
    import cv2

    frames = []
    obs = source.reset()
    while len(frames) < n:
        obs, terminated, truncated = source.step()
        frames.append(cv2.merge([obs["image"][-1], obs["image"][-2], obs["image"][-3]]))
        if terminated or truncated:
            source.reset()
    print(f"| PNG setting ({n} frames) | mean bytes | max bytes | encode us | decode us |")
    print("| --- | --- | --- | --- | --- |")
    for label, (level, strategy, filt) in PNG_SETTINGS.items():
        params = [
            cv2.IMWRITE_PNG_COMPRESSION, level,
            cv2.IMWRITE_PNG_STRATEGY, strategy,
            cv2.IMWRITE_PNG_FILTER, filt,
        ]
        enc_t, dec_t = [], []
        for _ in range(3):  # median of 3 passes
            start = time.perf_counter()
            encoded = [cv2.imencode(".png", f, params)[1] for f in frames]
            enc_t.append((time.perf_counter() - start) / n * 1e6)
            start = time.perf_counter()
            decoded = [cv2.imdecode(e, cv2.IMREAD_UNCHANGED) for e in encoded]
            dec_t.append((time.perf_counter() - start) / n * 1e6)
        if not all(np.array_equal(a, b) for a, b in zip(frames, decoded, strict=True)):
            raise RuntimeError(f"{label}: PNG round trip is not bit-exact")
        sizes = np.array([e.size for e in encoded])
        print(
            f"| {label} | {sizes.mean():,.0f} | {sizes.max():,} | "
            f"{statistics.median(enc_t):.0f} | {statistics.median(dec_t):.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=100_000, help="transitions")
    parser.add_argument("--height", type=int, default=90)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--frame-stack", type=int, default=3)
    parser.add_argument("--proprio-dim", type=int, default=15)
    parser.add_argument("--action-dim", type=int, default=5)
    parser.add_argument("--episode-len", type=int, default=150, help="UR5: 6 s at 25 Hz")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per figure")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    parser.add_argument("--codec", choices=("none", "png"), default="none")
    parser.add_argument(
        "--frames", choices=("random", "sim", "screen", "noise"), default="random"
    )
    parser.add_argument("--arena-bytes", type=int, default=0, help="png arena; 0 = default")
    parser.add_argument("--decode-threads", type=int, default=2, help="png sample() threads")
    parser.add_argument("--noise-sigma", type=float, default=2.5, help="noise source, levels")
    parser.add_argument("--fill-factor", type=float, default=1.1, help="adds / capacity")
    parser.add_argument("--no-augment", action="store_true", help="skip augmentation timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--png-sweep", type=int, default=0, metavar="N",
        help="only compare PNG settings on N frames of --frames, then exit",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    frame_shape = (3, args.height, args.width)
    dims = (args.capacity, frame_shape, args.frame_stack, args.proprio_dim, args.action_dim)
    codec_kw = {"frame_codec": args.codec}
    if args.codec == "png" and args.arena_bytes > 0:
        codec_kw["frame_arena_bytes"] = args.arena_bytes
    rows: list[tuple[str, str]] = []
    ours, naive = replay_nbytes(*dims, **codec_kw), naive_nbytes(*dims)
    rows.append(
        (f"bytes allocated, this buffer ({args.codec}, exact)", f"{ours:,} ({ours / 1e9:.3f} GB)")
    )
    rows.append(("bytes, naive obs+next_obs stacks", f"{naive:,} ({naive / 1e9:.3f} GB)"))

    buf = ReplayBuffer(*dims, seed=args.seed, **codec_kw)
    if buf.nbytes != ours:
        raise RuntimeError(f"allocated {buf.nbytes} bytes != formula {ours}")
    rng = np.random.default_rng(args.seed)
    source_args = (args.frame_stack, args.episode_len, args.proprio_dim, frame_shape, rng)
    if args.frames == "sim":
        source = SimSource(frame_shape, args.seed)
    elif args.frames == "screen":
        source = ScreenSource(*source_args)
    elif args.frames == "noise":
        source = NoiseSource(*source_args, sigma=args.noise_sigma)
    else:
        source = RandomPoolSource(*source_args)
    if args.png_sweep > 0:
        png_sweep(source, args.png_sweep)
        return
    n_add = int(round(args.capacity * args.fill_factor))
    add_us, src_us = fill(buf, n_add, source)

    n = len(buf)
    if args.codec == "png":
        frame_storage = buf.frame_arena_bytes
    else:
        frame_storage = buf.frame_capacity * int(np.prod(frame_shape))
    other = buf.nbytes - frame_storage  # per-transition arrays, frame slot index, last image
    per_frame = buf.stored_frame_nbytes / max(buf.stored_frames, 1)
    needed = other + buf.stored_frame_nbytes * args.capacity / n
    how = "measured" if n == args.capacity else f"extrapolated x{args.capacity / n:.2f} from len"
    rows.append((f"len(buffer) after {n_add:,} adds ({args.frames} frames)", f"{n:,}"))
    rows.append(("distinct frames held for them", f"{buf.stored_frames:,}"))
    rows.append(("frame bytes held (stored_frame_nbytes)", f"{buf.stored_frame_nbytes:,}"))
    rows.append(("mean stored bytes per frame", f"{per_frame:,.0f} (raw {np.prod(frame_shape):,})"))
    rows.append(
        (
            f"bytes for {args.capacity:,} transitions, tight frame storage",
            f"{needed:,.0f} ({needed / 1e9:.3f} GB, {how})",
        )
    )
    rows.append(("mean add() time", f"{add_us:.1f} us"))
    rows.append(("mean source step time (not in add)", f"{src_us:.1f} us"))
    threads = [0, args.decode_threads] if args.codec == "png" else [0]
    for t in threads:
        buf.decode_threads = t
        ms = median_ms(lambda: buf.sample(args.batch), args.repeats)
        label = f"median sample({args.batch})"
        if args.codec == "png":
            label += f", {t} decode threads"
        rows.append((label, f"{ms:.2f} ms"))
    ids = rng.integers(buf._oldest, buf._num_transitions, (20, args.batch))
    distinct = [len(np.unique(buf._frame_ids[i % buf.capacity])) for i in ids]
    rows.append(
        (f"distinct frames per sample({args.batch}) (of {args.batch * (args.frame_stack + 1)})",
         f"{statistics.mean(distinct):.0f}")
    )
    frames = buf.sample(args.batch).frames

    if not args.no_augment:
        windows = torch.from_numpy(frames)  # (B, k+1, 3, H, W) uint8
        windows_f = windows.float()
        bank = OverlayBank((args.height, args.width), "train")
        gen = torch.Generator().manual_seed(0)
        label = f"{args.batch}x{args.frame_stack + 1} frames"
        for name, x in (("uint8", windows), ("float32", windows_f)):
            ms = median_ms(lambda x=x: random_shift(x, 4, gen), args.repeats)
            rows.append((f"median random_shift pad 4, {label} {name}", f"{ms:.1f} ms"))
        for name, x in (("uint8", windows), ("float32", windows_f)):
            ms = median_ms(lambda x=x: bank.overlay(x, 0.5, gen), args.repeats)
            rows.append((f"median overlay alpha 0.5, {label} {name}", f"{ms:.1f} ms"))

    width = max(len(r[0]) for r in rows)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, shapes {dims}")
    print(f"| {'quantity'.ljust(width)} | value |")
    print(f"| {'-' * width} | ----- |")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
