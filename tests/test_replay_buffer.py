"""Tests for learner.replay_buffer: bit-exact frame windows, wrap-around, flags, persistence.

Every behavioural test runs with both frame codecs ("none": raw frames, "png": lossless
PNG arena); the frames are uniform random bytes, the hardest case for PNG.
"""

from __future__ import annotations

import io
import tracemalloc

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from learner.checkpoint import numpy_to_torch, torch_to_numpy
from learner.replay_buffer import (
    Batch,
    ReplayBuffer,
    default_frame_arena_bytes,
    naive_nbytes,
    png_max_nbytes,
    replay_nbytes,
)

K, H, W, P, A = 3, 6, 8, 4, 2
BIG_ARENA = 1 << 20  # holds every frame these tests write: only slots limit the buffer


@pytest.fixture(params=["none", "png"])
def codec(request) -> str:
    return request.param


def make_buffer(capacity: int, codec: str, seed: int = 0, **kwargs) -> ReplayBuffer:
    """ReplayBuffer at the test shapes; "png" gets BIG_ARENA unless an arena is given."""
    if codec == "png":
        kwargs.setdefault("frame_arena_bytes", BIG_ARENA)
    return ReplayBuffer(capacity, (3, H, W), K, P, A, seed=seed, frame_codec=codec, **kwargs)


class FrameStackEnv:
    """Synthetic frame-stacking env: random RGB frames, stacks of the last K frames.

    reset_mode "repeat": the reset stack is the first frame repeated (gym FrameStack);
    "zeros": zero frames then the first frame; "distinct": K distinct captured frames.
    """

    def __init__(self, rng: np.random.Generator, reset_mode: str = "repeat"):
        self.rng = rng
        self.reset_mode = reset_mode
        self.stack: list[np.ndarray] = []

    def _frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, (3, H, W), dtype=np.uint8)

    def _obs(self) -> dict:
        return {
            "image": np.concatenate(self.stack, axis=0),
            "proprio": self.rng.standard_normal(P).astype(np.float32),
        }

    def reset(self) -> dict:
        first = self._frame()
        if self.reset_mode == "repeat":
            self.stack = [first] * K
        elif self.reset_mode == "zeros":
            self.stack = [np.zeros_like(first)] * (K - 1) + [first]
        else:
            self.stack = [self._frame() for _ in range(K - 1)] + [first]
        return self._obs()

    def step(self) -> dict:
        self.stack = self.stack[1:] + [self._frame()]
        return self._obs()


def run_episodes(buf, lengths, ends, reset_mode="repeat", seed=0, added=None):
    """Add episodes to ``buf``; return all transitions as added (action[0] = list index)."""
    rng = np.random.default_rng(seed)
    env = FrameStackEnv(rng, reset_mode)
    added = [] if added is None else added
    for length, end in zip(lengths, ends, strict=True):
        obs = env.reset()
        for t in range(length):
            next_obs = env.step()
            last = t == length - 1
            terminated = last and end == "terminated"
            truncated = last and end == "truncated"
            tag = len(added)
            action = np.array([tag, -tag], dtype=np.float32)  # action[0] identifies it
            reward = float(rng.standard_normal())
            buf.add(obs, action, reward, next_obs, terminated, truncated)
            added.append((obs, action, reward, next_obs, terminated, truncated))
            obs = next_obs
    return added


def check_batch(buf: ReplayBuffer, batch: Batch, added: list, valid_tags: set[int]) -> set[int]:
    """Every sampled window reproduces exactly what the env produced."""
    n = batch.frames.shape[0]
    assert batch.frames.dtype == np.uint8 and batch.frames.shape == (n, K + 1, 3, H, W)
    for name in ("proprio", "next_proprio", "action", "reward", "discount_mask"):
        assert getattr(batch, name).dtype == np.float32, name
    seen = set()
    for i in range(n):
        tag = int(batch.action[i, 0])
        assert tag in valid_tags, f"sampled transition {tag} that is not sampleable"
        obs, action, reward, next_obs, terminated, _ = added[tag]
        obs_img = batch.frames[i, :K].reshape(3 * K, H, W)
        next_img = batch.frames[i, 1:].reshape(3 * K, H, W)
        np.testing.assert_array_equal(obs_img, obs["image"])
        np.testing.assert_array_equal(next_img, next_obs["image"])
        np.testing.assert_array_equal(batch.proprio[i], obs["proprio"])
        np.testing.assert_array_equal(batch.next_proprio[i], next_obs["proprio"])
        np.testing.assert_array_equal(batch.action[i], action)
        assert batch.reward[i] == np.float32(reward)
        assert batch.discount_mask[i] == (0.0 if terminated else 1.0)
        seen.add(tag)
    return seen


LENGTHS = [5, 1, 7, 2, 3, 9, 1, 4, 6]
ENDS = ["terminated", "truncated", "truncated", "terminated", "truncated"] * 2


@pytest.mark.parametrize("reset_mode", ["repeat", "zeros", "distinct"])
def test_windows_bit_exact_without_wrap(reset_mode, codec):
    buf = make_buffer(100, codec, seed=1)
    added = run_episodes(buf, LENGTHS, ENDS[: len(LENGTHS)], reset_mode)
    assert len(buf) == len(added) == sum(LENGTHS)
    seen = check_batch(buf, buf.sample(2000), added, set(range(len(added))))
    assert seen == set(range(len(added)))


@pytest.mark.parametrize("reset_mode", ["repeat", "zeros", "distinct"])
@pytest.mark.parametrize("capacity", [1, 4, 10, 13])
def test_wrap_around_never_samples_overwritten(reset_mode, capacity, codec):
    buf = make_buffer(capacity, codec, seed=2)
    rng = np.random.default_rng(capacity)
    lengths = [int(x) for x in rng.integers(1, 9, size=12)]
    ends = [("terminated", "truncated")[int(x)] for x in rng.integers(0, 2, size=12)]
    added: list = []
    for start in range(0, 12, 3):  # check after every few episodes, across wrap-arounds
        chunk = slice(start, start + 3)
        run_episodes(buf, lengths[chunk], ends[chunk], reset_mode, seed=start, added=added)
        assert 1 <= len(buf) <= capacity
        valid = set(range(len(added) - len(buf), len(added)))
        assert check_batch(buf, buf.sample(500), added, valid) == valid


def test_wrap_around_global_tags_and_frame_eviction(codec):
    # Short episodes with K distinct reset frames use more than one frame per transition,
    # so frames run out before transition slots: len() must drop below capacity and no
    # window with an overwritten frame may come back.
    capacity = 20
    buf = make_buffer(capacity, codec, seed=3)
    env = FrameStackEnv(np.random.default_rng(0), "distinct")
    added = []
    for episode in range(40):
        obs = env.reset()
        for t in range(1 + episode % 3):
            next_obs = env.step()
            last = t == episode % 3
            tag = len(added)
            action = np.array([tag, 0], dtype=np.float32)
            buf.add(obs, action, 0.5, next_obs, last and episode % 2 == 0, last and episode % 2)
            added.append((obs, action, 0.5, next_obs, last and episode % 2 == 0, False))
            obs = next_obs
            valid = set(range(len(added) - len(buf), len(added)))
            check_batch(buf, buf.sample(64), added, valid)
    assert len(buf) < capacity  # frames, not slots, limited the buffer
    seen = check_batch(buf, buf.sample(3000), added, set(range(len(added) - len(buf), len(added))))
    assert seen == set(range(len(added) - len(buf), len(added)))


def test_repeat_reset_fills_capacity_after_wrap(codec):
    buf = make_buffer(50, codec)
    added = run_episodes(buf, [30] * 6, ["truncated"] * 6)
    assert len(buf) == 50
    valid = set(range(len(added) - 50, len(added)))
    assert check_batch(buf, buf.sample(4000), added, valid) == valid


def test_discount_mask_semantics(codec):
    buf = make_buffer(20, codec)
    added = run_episodes(buf, [2, 2, 2], ["terminated", "truncated", "terminated"])
    batch = buf.sample(500)
    for i in range(500):
        tag = int(batch.action[i, 0])
        expected = 0.0 if tag in (1, 5) else 1.0  # ends of the terminated episodes
        assert batch.discount_mask[i] == expected
    assert {int(t) for t in batch.action[:, 0]} == set(range(len(added)))


def n_step_reference(lengths: list[int], ends: list[str], added: list, n: int, gamma: float):
    """Per start tag: (reward sum, next_obs, discount, steps) of its n-step sample, or None."""
    expected: dict[int, tuple | None] = {}
    tag = 0
    for length, end in zip(lengths, ends, strict=True):
        for p in range(length):
            steps = min(n, length - p)
            ends_inside = steps < n or p + n == length
            if steps < n and end != "terminated":
                expected[tag + p] = None  # cut by a time limit: never a start
                continue
            rewards = [added[tag + p + m][2] for m in range(steps)]
            discount = 0.0 if ends_inside and end == "terminated" else 1.0
            expected[tag + p] = (sum(gamma**m * r for m, r in enumerate(rewards)),
                                 added[tag + p + steps - 1][3], discount, steps)
        tag += length
    return expected


@pytest.mark.parametrize(("n", "capacity"), [(2, 60), (3, 60), (4, 60), (3, 17)])
def test_n_step_samples_chain_within_episodes(n, capacity, codec):
    gamma = 0.9
    buf = make_buffer(capacity, codec, n_step=n, gamma=gamma)
    added = run_episodes(buf, LENGTHS, ENDS[: len(LENGTHS)])
    expected = n_step_reference(LENGTHS, ENDS[: len(LENGTHS)], added, n, gamma)
    stored = set(range(len(added) - len(buf), len(added)))
    batch = buf.sample(3000)
    assert batch.frames.shape == (3000, K + n, 3, H, W)
    seen = set()
    for i in range(3000):
        tag = int(batch.action[i, 0])
        assert tag in stored and expected[tag] is not None, f"start {tag} is not valid"
        reward, next_obs, discount, steps = expected[tag]
        obs = added[tag][0]
        np.testing.assert_array_equal(batch.frames[i, :K].reshape(3 * K, H, W), obs["image"])
        np.testing.assert_array_equal(batch.proprio[i], obs["proprio"])
        np.testing.assert_array_equal(batch.next_proprio[i], next_obs["proprio"])
        assert batch.reward[i] == pytest.approx(reward, rel=1e-6, abs=1e-6)
        assert batch.discount_mask[i] == discount
        if steps == n:  # a window cut short by a termination needs no next frames
            np.testing.assert_array_equal(batch.frames[i, n:].reshape(3 * K, H, W),
                                          next_obs["image"])
        seen.add(tag)
    assert seen == {t for t in stored if expected[t] is not None}


def test_n_step_stops_at_unflagged_episode_boundaries(codec):
    # Episodes that start afresh without an end flag (a gap in the stream) do not chain.
    buf = make_buffer(30, codec, n_step=2)
    env = FrameStackEnv(np.random.default_rng(3))
    for episode in range(3):
        obs = env.reset()
        for t in range(3):
            next_obs = env.step()
            buf.add(obs, np.array([3 * episode + t, 0], np.float32), 1.0, next_obs, False, False)
            obs = next_obs
    starts = {int(t) for t in buf.sample(500).action[:, 0]}
    assert starts == {0, 1, 3, 4, 6, 7}


def test_non_episode_boundary_reset_is_a_new_episode(codec):
    # The caller resets without flagging the end: obs no longer chains, stored afresh.
    buf = make_buffer(20, codec)
    env = FrameStackEnv(np.random.default_rng(5))
    added = []
    for _ in range(3):
        obs = env.reset()
        for _ in range(3):
            next_obs = env.step()
            action = np.array([len(added), 0], dtype=np.float32)
            buf.add(obs, action, 0.0, next_obs, False, False)
            added.append((obs, action, 0.0, next_obs, False, False))
            obs = next_obs
    check_batch(buf, buf.sample(500), added, set(range(len(added))))


def test_state_dict_round_trip_through_torch_weights_only(codec):
    buf = make_buffer(15, codec, seed=7)
    added = run_episodes(buf, [6, 8, 5], ["truncated", "terminated", "truncated"])
    buf.sample(3)  # advance the rng
    state = buf.state_dict()
    for key, value in state.items():
        assert isinstance(value, (int, np.ndarray)), key
    blob = io.BytesIO()
    torch.save(numpy_to_torch(state), blob)
    blob.seek(0)
    loaded = torch_to_numpy(torch.load(blob, weights_only=True))
    restored = make_buffer(15, codec, seed=99)
    restored.load_state_dict(loaded)
    assert len(restored) == len(buf)
    a, b = buf.sample(64), restored.sample(64)
    for name in ("frames", "proprio", "next_proprio", "action", "reward", "discount_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # both go on identically, including the chaining of an open episode
    more = run_episodes(buf, [4], ["truncated"], seed=11)
    run_episodes(restored, [4], ["truncated"], seed=11)
    np.testing.assert_array_equal(buf.sample(32).frames, restored.sample(32).frames)
    assert len(more) == 4 and len(added) == 19


def test_load_state_dict_rejects_other_config(codec):
    state = make_buffer(15, codec).state_dict()
    with pytest.raises(ValueError, match="capacity"):
        make_buffer(16, codec).load_state_dict(state)


def _obs(image_shape=(3 * K, H, W), image_dtype=np.uint8, proprio_dtype=np.float32):
    return {
        "image": np.zeros(image_shape, dtype=image_dtype),
        "proprio": np.zeros(P, dtype=proprio_dtype),
    }


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"obs": _obs(image_shape=(3 * K, H, W + 1))}, r"obs\['image'\]: expected uint8"),
        ({"obs": _obs(image_dtype=np.float32)}, r"obs\['image'\]: expected uint8"),
        ({"next_obs": _obs(proprio_dtype=np.float64)}, r"next_obs\['proprio'\]: expected"),
        ({"obs": {"image": np.zeros((3 * K, H, W), np.uint8)}}, "obs: expected dict"),
        ({"action": np.zeros(A + 1, np.float32)}, r"action: expected float32\(2,\)"),
        ({"action": np.zeros(A, np.int64)}, "action: expected"),
        ({"action": np.array([np.nan, 0], np.float32)}, "action: expected finite"),
        ({"reward": float("inf")}, "reward"),
    ],
)
def test_add_validates_inputs(kwargs, field, codec):
    buf = make_buffer(10, codec)
    args = {
        "obs": _obs(),
        "action": np.zeros(A, np.float32),
        "reward": 0.0,
        "next_obs": _obs(),
        "terminated": False,
        "truncated": False,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        buf.add(**args)
    assert len(buf) == 0


def test_add_rejects_unshifted_next_obs(codec):
    buf = make_buffer(10, codec)
    env = FrameStackEnv(np.random.default_rng(0))
    obs = env.reset()
    other = FrameStackEnv(np.random.default_rng(1)).reset()  # e.g. an auto-reset obs
    with pytest.raises(ValueError, match="shifted by one frame"):
        buf.add(obs, np.zeros(A, np.float32), 0.0, other, False, True)


def test_sample_errors_and_constructor_validation(codec):
    buf = make_buffer(10, codec)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(4)
    run_episodes(buf, [2], ["truncated"])
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0)
    with pytest.raises(ValueError, match="frame_shape"):
        ReplayBuffer(10, (H, W, 3), K, P, A)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, (3, H, W), K, P, A)
    with pytest.raises(ValueError, match="n_step"):
        ReplayBuffer(10, (3, H, W), K, P, A, n_step=0)
    with pytest.raises(ValueError, match="gamma"):
        ReplayBuffer(10, (3, H, W), K, P, A, gamma=1.5)
    short = make_buffer(10, codec, n_step=3)
    run_episodes(short, [2], ["truncated"])
    with pytest.raises(ValueError, match="n_step=3 steps ahead"):
        short.sample(4)


def test_nbytes_matches_formula_and_ur5_figure():
    buf = ReplayBuffer(1000, (3, 90, 160), 3, 15, 5)
    assert buf.nbytes == replay_nbytes(1000, (3, 90, 160), 3, 15, 5)
    ur5 = replay_nbytes(100_000, (3, 90, 160), 3, 15, 5)
    assert ur5 == 4_381_302_400
    assert naive_nbytes(100_000, (3, 90, 160), 3, 15, 5) > 5 * ur5
    png = ReplayBuffer(1000, (3, 90, 160), 3, 15, 5, frame_codec="png")
    assert png.nbytes == replay_nbytes(1000, (3, 90, 160), 3, 15, 5, frame_codec="png")
    ur5_png = replay_nbytes(100_000, (3, 90, 160), 3, 15, 5, frame_codec="png")
    assert default_frame_arena_bytes(100_000, (3, 90, 160), 3) == 1_090_843_200
    assert ur5_png == 1_090_843_200 + 16 * 101_004 + 17_800_000 + 129_600 == 1_110_388_864
    small = ReplayBuffer(1000, (3, 90, 160), 3, 15, 5, frame_codec="png", frame_arena_bytes=7)
    assert small.nbytes == replay_nbytes(
        1000, (3, 90, 160), 3, 15, 5, frame_codec="png", frame_arena_bytes=7
    )


# ---------------------------------------------------------------------- png codec


def test_nbytes_bounds_traced_memory_after_filling(codec):
    # All stored data lives in the preallocated arrays: filling the buffer allocates
    # nothing persistent beyond nbytes but O(1) headers (the list of added transitions
    # that run_episodes returns is dropped at once).
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        buf = make_buffer(40, codec, frame_arena_bytes=20_000 if codec == "png" else None)
        run_episodes(buf, [15, 30, 20], ["truncated"] * 3, "distinct")
        buf.sample(64)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert buf.nbytes <= grown <= buf.nbytes + 16_384


def test_png_stores_true_rgb_and_round_trips_bit_exact():
    # Distinct channels: a swapped R/B would show in the stored PNG and in the batch.
    buf = make_buffer(10, "png")
    rng = np.random.default_rng(0)
    frame = np.zeros((3, H, W), np.uint8)
    frame[0] = 250  # red
    frame[1] = rng.integers(0, 40, (H, W))
    frame[2] = 5
    image = np.concatenate([frame] * K)
    nxt = np.concatenate([frame] * (K - 1) + [frame[::-1]])  # newest frame blue
    proprio = np.zeros(P, np.float32)
    buf.add({"image": image, "proprio": proprio}, np.zeros(A, np.float32), 0.0,
            {"image": nxt, "proprio": proprio}, False, True)
    state = buf.state_dict()
    size = int(state["frame_nbytes"][0])
    stored = np.asarray(Image.open(io.BytesIO(state["arena"][:size].tobytes())))
    np.testing.assert_array_equal(stored, frame.transpose(1, 2, 0))  # (H, W, RGB)
    batch = buf.sample(4)
    np.testing.assert_array_equal(batch.frames[0, :K].reshape(3 * K, H, W), image)
    np.testing.assert_array_equal(batch.frames[0, 1:].reshape(3 * K, H, W), nxt)


def test_png_realistic_frames_round_trip_at_ur5_shape():
    # White screen, dark bezel, red disc, exactly as flat as the sim renders them.
    h, w = 90, 160
    buf = ReplayBuffer(30, (3, h, w), 3, 2, 1, frame_codec="png", decode_threads=2)
    yy, xx = np.mgrid[:h, :w]
    proprio = np.zeros(2, np.float32)

    def frame(t: int) -> np.ndarray:
        f = np.full((3, h, w), 245, np.uint8)
        f[:, :8] = f[:, -8:] = 20
        disc = (yy - 45) ** 2 + (xx - 30 - 3 * t) ** 2 < 100
        f[0][disc], f[1][disc], f[2][disc] = 220, 30, 25
        return f

    stack = [frame(0)] * 3
    obs = {"image": np.concatenate(stack), "proprio": proprio}
    for t in range(1, 21):
        stack = stack[1:] + [frame(t)]
        nxt = {"image": np.concatenate(stack), "proprio": proprio}
        buf.add(obs, np.array([t], np.float32), 0.0, nxt, False, t == 20)
        obs = nxt
    assert buf.stored_frames == 21 and buf.stored_frame_nbytes < 21 * 2_000
    batch = buf.sample(50)
    for i in range(50):
        t = int(batch.action[i, 0])
        expected = [frame(max(0, j)) for j in range(t - 3, t + 1)]
        np.testing.assert_array_equal(batch.frames[i], np.stack(expected))


def test_png_arena_limits_len_and_never_samples_overwritten():
    # An arena of ~16 random frames (~220 bytes each) is the binding limit, not the slots.
    arena = 12 * 300
    buf = make_buffer(60, "png", seed=4, frame_arena_bytes=arena)
    rng = np.random.default_rng(1)
    added: list = []
    for chunk in range(8):
        lengths = [int(x) for x in rng.integers(1, 7, size=3)]
        mode = ("repeat", "zeros", "distinct")[chunk % 3]
        run_episodes(buf, lengths, ["truncated"] * 3, mode, seed=chunk, added=added)
        assert 1 <= len(buf) <= buf.stored_frames <= arena // 200
        assert buf.stored_frame_nbytes <= arena
        valid = set(range(len(added) - len(buf), len(added)))
        assert check_batch(buf, buf.sample(300), added, valid) == valid
    assert len(added) > 60  # wrapped the slots too


def test_png_decode_threads_give_identical_batches():
    bufs = [make_buffer(30, "png", seed=5, decode_threads=t) for t in (0, 2, 3)]
    for buf in bufs:
        run_episodes(buf, [12, 9, 14], ["truncated", "terminated", "truncated"])
    batches = [buf.sample(64) for buf in bufs]
    for batch in batches[1:]:
        np.testing.assert_array_equal(batch.frames, batches[0].frames)
    bufs[1].decode_threads = 1  # may be changed on the instance
    np.testing.assert_array_equal(bufs[1].sample(8).frames, bufs[0].sample(8).frames)


def test_png_oversized_frame_raises_and_leaves_buffer_unchanged():
    # A random 3x6x8 frame encodes to ~220 bytes; (K + 2) of them do not fit in 600.
    buf = make_buffer(10, "png", frame_arena_bytes=600)
    env = FrameStackEnv(np.random.default_rng(0))
    obs = env.reset()
    with pytest.raises(ValueError, match=r"frame_arena_bytes=600 is too small.*k \+ 2 = 5"):
        buf.add(obs, np.zeros(A, np.float32), 0.0, env.step(), False, False)
    assert len(buf) == 0 and buf.state_dict()["num_frames"] == 0
    ok = make_buffer(10, "png", frame_arena_bytes=(K + 2) * png_max_nbytes((3, H, W)))
    run_episodes(ok, [3], ["truncated"], "distinct")
    assert len(ok) == 3


def test_codec_constructor_validation():
    with pytest.raises(ValueError, match="frame_codec must be one of"):
        ReplayBuffer(10, (3, H, W), K, P, A, frame_codec="jpeg")
    with pytest.raises(ValueError, match="frame_arena_bytes applies to frame_codec='png'"):
        ReplayBuffer(10, (3, H, W), K, P, A, frame_arena_bytes=1000)
    with pytest.raises(ValueError, match="frame_arena_bytes must be an integer >= 1"):
        ReplayBuffer(10, (3, H, W), K, P, A, frame_codec="png", frame_arena_bytes=0)
    with pytest.raises(ValueError, match="decode_threads"):
        ReplayBuffer(10, (3, H, W), K, P, A, frame_codec="png", decode_threads=-1)
    with pytest.raises(ValueError, match="frame_codec must be one of"):
        replay_nbytes(10, (3, H, W), K, P, A, frame_codec="zip")


def _png_state(seed: int = 7) -> dict:
    buf = make_buffer(15, "png", seed=seed)
    run_episodes(buf, [6, 8], ["truncated", "terminated"])
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in buf.state_dict().items()}


def test_png_state_rejects_codec_and_arena_mismatch():
    state = _png_state()
    with pytest.raises(ValueError, match="frame_codec.*'none'.*'png'"):
        make_buffer(15, "none").load_state_dict(state)
    with pytest.raises(ValueError, match="frame_codec.*'png'.*'none'"):
        make_buffer(15, "png").load_state_dict(make_buffer(15, "none").state_dict())
    with pytest.raises(ValueError, match="frame_arena_bytes"):
        make_buffer(15, "png", frame_arena_bytes=BIG_ARENA // 2).load_state_dict(state)


def test_legacy_state_without_codec_key_loads_as_raw():
    buf = make_buffer(15, "none", seed=3)
    run_episodes(buf, [6, 4], ["truncated", "truncated"])
    state = buf.state_dict()
    del state["frame_codec"]
    restored = make_buffer(15, "none")
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.sample(16).frames, buf.sample(16).frames)


@pytest.mark.parametrize(
    ("corrupt", "match"),
    [
        (lambda s: s.update(arena=s["arena"][:-1]), r"state\['arena'\]: expected uint8"),
        (lambda s: s.update(arena=s["arena"].astype(np.int16)), r"state\['arena'\]"),
        (lambda s: s["frame_nbytes"].__setitem__(3, 10**6), "outside the intact arena"),
        (lambda s: s["frame_start"].__setitem__(3, -5), "outside the intact arena"),
        (lambda s: s.update(frame_start=s["frame_start"][:-1]), "frame_start"),
        (lambda s: s["arena"].__setitem__(1, ord("J")), "PNG signature"),
        (lambda s: s.update(num_frames=2), r"frame_ids.*outside the stored frames"),
        (lambda s: s.update(oldest=-1), "counters are inconsistent"),
        (lambda s: s.update(frame_codec=7), "unknown codec index 7"),
    ],
)
def test_png_load_rejects_corrupt_state(corrupt, match):
    state = _png_state()
    corrupt(state)
    buf = make_buffer(15, "png")
    with pytest.raises(ValueError, match=match):
        buf.load_state_dict(state)
    assert len(buf) == 0  # nothing was changed


def test_png_damaged_payload_raises_on_sample():
    state = _png_state()
    start, size = int(state["frame_start"][0]), int(state["frame_nbytes"][0])
    state["arena"][start + size // 2] ^= 0xFF  # inside IDAT: the CRC no longer matches
    buf = make_buffer(15, "png", seed=1)
    buf.load_state_dict(state)  # the signature is intact: detected when decoded
    with pytest.raises(ValueError, match="stored PNG of frame 0 .* is corrupt"):
        for _ in range(20):  # frame 0 is in the windows of the first episode
            buf.sample(64)


def test_png_wrong_size_payload_raises_on_sample():
    state = _png_state()
    ok, other = cv2.imencode(".png", np.zeros((H + 1, W, 3), np.uint8))
    other = other.reshape(-1)
    start = int(state["frame_start"][0])
    if other.size > int(state["frame_nbytes"][0]):
        pytest.skip("replacement PNG larger than the stored frame")
    state["arena"][start : start + other.size] = other
    state["frame_nbytes"][0] = other.size
    buf = make_buffer(15, "png")
    buf.load_state_dict(state)
    with pytest.raises(ValueError, match=rf"expected uint8\({H}, {W}, 3\), got uint8\({H + 1}"):
        for _ in range(20):
            buf.sample(64)
