"""Tests for link.messages: bit-exact round trips, validation, fuzzing, frame deltas."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from learner.replay_buffer import ReplayBuffer
from link.messages import (
    HELLO_REQUIRED,
    MESSAGE_TYPES,
    PACKED_MAGIC,
    PROTOCOL_VERSION,
    Evaluation,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    MessageError,
    Pause,
    Resume,
    Shutdown,
    Spaces,
    Step,
    Transition,
    TransitionAssembler,
    TransitionPacker,
    Weights,
    decode,
    encode,
    encode_packed,
)

K, H, W, P, A = 3, 6, 8, 4, 2
SPACES = Spaces((3 * K, H, W), P, A)


def make_transition(rng: np.random.Generator, n_frames: int = 1, **kw) -> Transition:
    fields = dict(
        episode_id=3,
        step_index=7,
        frames=rng.integers(0, 256, (n_frames, 3, H, W), dtype=np.uint8),
        proprio=rng.standard_normal(P).astype(np.float32),
        next_proprio=rng.standard_normal(P).astype(np.float32),
        action=rng.uniform(-1, 1, A).astype(np.float32),
        reward=-0.123456789012345,
        terminated=False,
        truncated=True,
        frame_time_ns=1_234_567_890_123,
        action_time_ns=1_234_567_890_456,
        policy_version=42,
    )
    fields.update(kw)
    return Transition(**fields)


def all_messages(rng: np.random.Generator) -> list[Message]:
    return [
        Hello("robot", "cafe01", "run-a", "sess-1", SPACES),
        HelloAck(True, "", "learner", "cafe01", "run-a", "sess-2"),
        HelloAck(False, HELLO_REQUIRED, "learner", "cafe01", "", "sess-2"),
        make_transition(rng, 1),
        make_transition(rng, K + 1, terminated=True, truncated=False, reward=3),
        Weights(
            5,
            {
                "actor/trunk.0.weight": rng.standard_normal((16, 7)).astype(np.float32),
                "actor/trunk.0.bias": rng.standard_normal(16).astype(np.float32),
                "encoder/empty": np.zeros((0, 3), np.float32),
                "masker/scalar": np.array(rng.standard_normal(), dtype=np.float32),
            },
            session_id="sess-2",
        ),
        Heartbeat("robot", 9, 123_456, {"sent_transitions": 10, "rejected/bad_header": 2}),
        Pause("reset"),
        Resume("reset done"),
        Shutdown("ctrl-c"),
        Evaluation(4000, "hard", 960, np.array([47.15, 143.3, -0.5]),
                   np.array([False, True, False])),
    ]


def assert_same(a: Message, b: Message) -> None:
    assert type(a) is type(b)
    for name, value in vars(a).items():
        other = getattr(b, name)
        if isinstance(value, np.ndarray):
            assert other.dtype == value.dtype and other.shape == value.shape, name
            assert np.array_equal(other, value), name
        elif isinstance(value, dict) and isinstance(a, Weights):
            assert list(other) == list(value)
            for key in value:
                assert other[key].dtype == value[key].dtype, key
                assert other[key].shape == value[key].shape, key
                assert np.array_equal(other[key], value[key]), key
        else:
            assert other == value and type(other) is type(value), name


@pytest.mark.parametrize("packed", [False, True])
def test_round_trip_every_type_bit_exact(packed):
    rng = np.random.default_rng(0)
    messages = all_messages(rng)
    assert {type(m) for m in messages} == set(MESSAGE_TYPES.values())
    for msg in messages:
        frames = [encode_packed(msg)] if packed else [bytes(f) for f in encode(msg)]
        out = decode(frames)
        assert_same(msg, out)
        for arr in [v for v in vars(out).values() if isinstance(v, np.ndarray)]:
            assert not arr.flags.writeable  # zero-copy views of the frames


def test_packed_arrays_are_aligned_and_one_frame():
    rng = np.random.default_rng(1)
    w = Weights(1, {f"m/p{i}": rng.standard_normal(i + 1).astype(np.float32) for i in range(7)})
    frame = encode_packed(w)
    assert bytes(frame[:4]) == PACKED_MAGIC
    header_len = struct.unpack_from("<I", frame, 4)[0]
    header = json.loads(bytes(frame[8 : 8 + header_len]))
    assert all(d["offset"] % 8 == 0 for d in header["arrays"])
    assert_same(w, decode([frame]))


def test_weights_state_dict_round_trip_loads_into_torch_modules():
    torch = pytest.importorskip("torch")
    from learner.networks import Actor, Masker, SpatialSoftmaxEncoder

    torch.manual_seed(0)
    modules = {
        "masker": Masker(4),
        "encoder": SpatialSoftmaxEncoder(3 * K, P, 4, [2, 1]),
        "actor": Actor(2 * 4 + P, [16, 16], A),
    }
    w = Weights.from_state_dicts(7, {k: m.state_dict() for k, m in modules.items()})
    state = decode([encode_packed(w)]).to_state_dicts(as_tensors=True)
    for name, module in modules.items():
        clone = type(module)(*_ctor_args(name))
        clone.load_state_dict(state[name])
        for key, value in module.state_dict().items():
            assert torch.equal(clone.state_dict()[key], value), (name, key)


def _ctor_args(name: str) -> tuple:
    return {"masker": (4,), "encoder": (3 * K, P, 4, [2, 1]), "actor": (2 * 4 + P, [16, 16], A)}[
        name
    ]


def test_weights_copy_is_isolated_from_later_updates():
    params = {"w": np.ones(3, np.float32)}
    w = Weights.from_state_dicts(1, {"actor": params})
    params["w"][:] = 5
    assert np.array_equal(w.tensors["actor/w"], np.ones(3, np.float32))


# ---------------------------------------------------------------------- validation
def header_of(msg: Message) -> dict:
    return json.loads(bytes(encode(msg)[0]))


def reencode(header: dict, rest: list) -> list:
    return [json.dumps(header).encode(), *rest]


def reason_of(frames) -> str:
    with pytest.raises(MessageError) as info:
        decode(frames)
    return info.value.reason


def test_rejections_name_their_reason():
    rng = np.random.default_rng(2)
    t = make_transition(rng)
    frames = [bytes(f) for f in encode(t)]
    header = header_of(t)

    def mutated(**changes):
        h = json.loads(json.dumps(header))
        for path, value in changes.items():
            node = h
            keys = path.split("__")
            for key in keys[:-1]:
                node = node[int(key)] if isinstance(node, list) else node[key]
            last = keys[-1]
            if isinstance(node, list):
                node[int(last)] = value
            elif value is KeyError:
                del node[last]
            else:
                node[last] = value
        return reencode(h, frames[1:])

    assert reason_of(mutated(protocol=PROTOCOL_VERSION + 1)) == "protocol_version"
    assert reason_of(mutated(type="pickle")) == "unknown_type"
    assert reason_of(mutated(fields__reward=KeyError)) == "missing_field"
    assert reason_of(mutated(fields__extra=1)) == "unknown_field"
    assert reason_of(mutated(fields__episode_id=1.5)) == "bad_field"
    assert reason_of(mutated(fields__episode_id=-1)) == "bad_field"
    assert reason_of(mutated(fields__episode_id=True)) == "bad_field"
    assert reason_of(mutated(fields__terminated=1)) == "bad_field"
    assert reason_of(mutated(fields__reward="1.0")) == "bad_field"
    assert reason_of(mutated(fields__episode_id=2**70)) == "bad_field"
    assert reason_of(mutated(arrays__0__dtype="object")) == "bad_dtype"
    assert reason_of(mutated(arrays__0__dtype="float32")) == "bad_array"  # size mismatch
    assert reason_of(mutated(arrays__0__shape=[1, 3, H, W + 1])) == "bad_array"
    assert reason_of(mutated(arrays__0__shape=[-1, 3, H, W])) == "bad_array"
    assert reason_of(mutated(arrays__0__shape=[2**62, 2**62, 0, 1])) == "bad_array"
    assert reason_of(mutated(arrays__0__shape=[1, 3, H * W])) == "bad_field"  # 3 dims
    assert reason_of(mutated(arrays__0__offset=4)) == "bad_array"
    assert reason_of(mutated(arrays__0__name="proprio")) == "bad_array"  # duplicate
    assert reason_of(mutated(arrays__1__dtype="float64", arrays__1__nbytes=8 * P)) == "bad_array"
    assert reason_of(frames[:-1]) == "bad_frames"
    assert reason_of([b'{"type": "pause", "protocol": NaN, "fields": {}, "arrays": []}']) == (
        "bad_header"
    )
    assert reason_of([b"[" * 100_000]) == "bad_header"
    assert reason_of([b"\xff\xfe"]) == "bad_header"
    assert reason_of([]) == "bad_frames"
    assert reason_of(b"not a list of frames") == "bad_frames"
    assert reason_of([12345]) == "bad_frames"
    with pytest.raises(MessageError) as info:
        decode(frames, max_bytes=200)
    assert info.value.reason == "too_large"


def test_non_finite_values_rejected_on_both_sides():
    rng = np.random.default_rng(3)
    with pytest.raises(MessageError, match="reward"):
        make_transition(rng, reward=float("nan"))
    bad = make_transition(rng)
    frames = [bytes(f) for f in encode(bad)]
    proprio = np.frombuffer(frames[2], np.float32).copy()
    proprio[0] = np.inf
    frames[2] = proprio.tobytes()
    assert reason_of(frames) == "bad_field"
    with pytest.raises(MessageError):
        Weights(1, {"a/w": np.array([np.nan], np.float32)})
    with pytest.raises(MessageError):
        Weights(1, {"a/w": np.array([1], np.int64)})  # only float tensors
    t = make_transition(rng)
    t.reward = float("inf")  # changed after construction: encode re-validates
    with pytest.raises(MessageError):
        encode(t)


def test_evaluation_needs_one_finite_return_and_success_per_episode():
    ok = Evaluation(10, "none", 2, np.array([1.0, 2.0]), np.array([True, False]))
    frames = [bytes(f) for f in encode(ok)]
    returns = np.frombuffer(frames[1], np.float64).copy()
    returns[1] = np.nan
    assert reason_of([frames[0], returns.tobytes(), frames[2]]) == "bad_field"
    with pytest.raises(MessageError, match="2 returns and 1 successes"):
        Evaluation(10, "none", 2, np.array([1.0, 2.0]), np.array([True]))
    with pytest.raises(MessageError, match="0 returns"):
        Evaluation(10, "none", 2, np.zeros(0), np.zeros(0, bool))
    with pytest.raises(MessageError, match="successes"):
        Evaluation(10, "none", 2, np.array([1.0]), np.array([1]))  # bool, not int
    with pytest.raises(MessageError, match="env_steps"):
        Evaluation(-1, "none", 2, np.array([1.0]), np.array([True]))


def test_spaces_and_roles_validated():
    with pytest.raises(MessageError):
        Spaces((8, H, W), P, A)  # not 3k channels
    with pytest.raises(MessageError):
        Hello("pilot", "h", "", "s", SPACES)
    h = header_of(Hello("robot", "h", "", "s", SPACES))
    h["fields"]["spaces"]["image_shape"] = [9, -6, 8]
    assert reason_of(reencode(h, [])) == "bad_field"
    h["fields"]["spaces"] = [9, 6, 8]
    assert reason_of(reencode(h, [])) == "bad_field"


# ---------------------------------------------------------------------- fuzzing
def _mutate_json(value, rng: np.random.Generator):
    """Replace one random node of a JSON value by a random hostile value."""
    hostile = [
        None,
        True,
        -1,
        2**64,
        -(2**63) - 1,
        1.5,
        float("nan"),
        float("inf"),
        "",
        "x" * 5000,
        [],
        {},
        [[[]]],
        {"a": 1},
        "uint8",
        "float64",
        [2**40, 2**40],
        [0, 2**62],
    ]
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = list(value)[rng.integers(len(value))]
        choice = rng.random()
        if choice < 0.1:
            del value[key]
        elif choice < 0.15:
            value["extra"] = 1
        else:
            value[key] = _mutate_json(value[key], rng)
        return value
    if isinstance(value, list) and value and rng.random() < 0.8:
        i = int(rng.integers(len(value)))
        if rng.random() < 0.1:
            del value[i]
        else:
            value[i] = _mutate_json(value[i], rng)
        return value
    return hostile[int(rng.integers(len(hostile)))]


def _check_only_message_error(frames) -> None:
    try:
        out = decode(frames)
    except MessageError as err:
        assert err.reason != "internal", str(err)  # every failure is an explicit check
    else:
        assert isinstance(out, Message)


def test_fuzz_decode_never_raises_anything_but_message_error():
    rng = np.random.default_rng(1234)
    messages = all_messages(rng)
    for _ in range(300):  # random bytes, one or several frames
        n = int(rng.integers(1, 4))
        frames = [rng.bytes(int(rng.integers(0, 300))) for _ in range(n)]
        if rng.random() < 0.3:
            frames[0] = PACKED_MAGIC + frames[0]
        _check_only_message_error(frames)
    for msg in messages:
        multipart = [bytes(f) for f in encode(msg)]
        packed = bytes(encode_packed(msg))
        for _ in range(60):
            # truncated or extended frames
            cut = [f[: int(rng.integers(0, len(f) + 1))] for f in multipart]
            _check_only_message_error(cut)
            _check_only_message_error([packed[: int(rng.integers(0, len(packed) + 1))]])
            _check_only_message_error(multipart + [rng.bytes(3)])
            # flipped bytes anywhere
            flipped = bytearray(packed)
            for i in rng.integers(0, len(flipped), 3):
                flipped[i] ^= int(rng.integers(1, 256))
            _check_only_message_error([bytes(flipped)])
            # structurally mutated headers (huge shapes, negatives, NaN, wrong types)
            header = json.loads(multipart[0])
            header = _mutate_json(header, rng)
            try:
                text = json.dumps(header).encode()
            except (TypeError, ValueError):
                continue
            _check_only_message_error([text, *multipart[1:]])
            prefix = struct.pack("<4sI", PACKED_MAGIC, len(text))
            pad = b"\0" * (-(len(prefix) + len(text)) % 8)
            _check_only_message_error([prefix + text + pad + packed[len(packed) // 2 :]])


# ---------------------------------------------------------------------- frame deltas
def episode_stream(rng: np.random.Generator, steps: int, episodes: int):
    """Yield (episode, step, obs, action, reward, next_obs, terminated, truncated)."""
    for ep in range(episodes):
        frames = [rng.integers(0, 256, (3, H, W), dtype=np.uint8)] * K  # repeated first
        proprio = rng.standard_normal(P).astype(np.float32)
        for step in range(steps):
            obs = {"image": np.concatenate(frames), "proprio": proprio}
            frames = [*frames[1:], rng.integers(0, 256, (3, H, W), dtype=np.uint8)]
            next_proprio = rng.standard_normal(P).astype(np.float32)
            next_obs = {"image": np.concatenate(frames), "proprio": next_proprio}
            action = rng.uniform(-1, 1, A).astype(np.float32)
            yield ep, step, obs, action, float(step), next_obs, False, step == steps - 1
            proprio = next_proprio


def test_packer_assembler_rebuild_exact_replay_arguments():
    rng = np.random.default_rng(5)
    packer = TransitionPacker(SPACES, keyframe_every=4)
    assembler = TransitionAssembler(SPACES)
    direct = ReplayBuffer(100, (3, H, W), K, P, A, seed=0)
    via_link = ReplayBuffer(100, (3, H, W), K, P, A, seed=0)
    kinds = []
    for ep, step, obs, action, reward, next_obs, term, trunc in episode_stream(rng, 9, 3):
        msg = packer.pack(Step(
            ep, step, obs, action, reward, next_obs, term, trunc,
            frame_time_ns=step, action_time_ns=step + 1, policy_version=0,
        ))  # fmt: skip
        kinds.append(msg.frames.shape[0])
        wire = decode([bytes(f) for f in encode(msg)])
        rebuilt = assembler.push(wire)
        assert rebuilt is not None
        assert np.array_equal(rebuilt["obs"]["image"], obs["image"])
        assert np.array_equal(rebuilt["next_obs"]["image"], next_obs["image"])
        assert np.array_equal(rebuilt["next_obs"]["proprio"], next_obs["proprio"])
        direct.add(obs, action, reward, next_obs, term, trunc)
        via_link.add(**rebuilt)
    # keyframe at each episode start and every 4 messages, deltas otherwise
    assert kinds[:9] == [K + 1, 1, 1, 1, K + 1, 1, 1, 1, K + 1]
    assert assembler.counters["gaps"] == 0 and assembler.counters["assembled"] == 27
    a, b = direct.state_dict(), via_link.state_dict()
    for key in a:
        assert np.array_equal(np.asarray(a[key]), np.asarray(b[key])), key


def test_out_of_bounds_transitions_are_dropped_and_counted():
    from link.messages import TransitionBounds

    rng = np.random.default_rng(7)
    packer = TransitionPacker(SPACES, keyframe_every=1)  # every message stands alone
    bounds = TransitionBounds(0.0, 4.0, np.full(P, 3.0, np.float32))
    assembler = TransitionAssembler(SPACES, bounds)
    kept = []
    for i, (ep, step, obs, action, _, next_obs, term, trunc) in enumerate(
            episode_stream(rng, 6, 1)):
        reward = [1.0, 1e6, 1.0, 1.0, -0.5, 1.0][i]  # an injected reward, a negative one
        if i == 2:
            next_obs = {**next_obs, "proprio": np.full(P, 50.0, np.float32)}
        if i == 3:
            action = np.full(A, 1.5, np.float32)
        msg = packer.pack(Step(ep, step, obs, action, reward, next_obs, term, trunc,
                          frame_time_ns=0, action_time_ns=1, policy_version=0))
        kept.append(assembler.push(decode([bytes(f) for f in encode(msg)])) is not None)
    assert kept == [True, False, False, False, False, True]
    assert assembler.counters["out_of_bounds"] == 4


def test_task_bounds_hold_what_the_sim_sends():
    from robot.config import Config
    from robot.task import transition_bounds

    cfg = Config()
    bounds = transition_bounds(cfg)
    assert (bounds.reward_low, bounds.reward_high) == (0.0, cfg.task.dense_clip)
    assert bounds.proprio_high.shape == (15,) and bounds.action_high == 1.0
    sparse = transition_bounds(Config(task={"reward": "sparse"}))
    assert (sparse.reward_low, sparse.reward_high) == (-1.0, -1.0)


def test_lost_delta_is_a_gap_until_the_next_keyframe():
    rng = np.random.default_rng(6)
    packer = TransitionPacker(SPACES, keyframe_every=0)
    assembler = TransitionAssembler(SPACES)
    results = []
    for ep, step, obs, action, reward, next_obs, term, trunc in episode_stream(rng, 8, 1):
        msg = packer.pack(Step(
            ep, step, obs, action, reward, next_obs, term, trunc,
            frame_time_ns=0, action_time_ns=0, policy_version=0,
        ))  # fmt: skip
        if step == 2:
            continue  # lost on the way, and the robot does not know
        if step == 5:
            assert not msg.keyframe
            packer.force_keyframe()  # e.g. the link saw a drop: next one is a keyframe
        results.append((step, msg.keyframe, assembler.push(msg) is not None))
    assert results == [
        (0, True, True),
        (1, False, True),
        (3, False, False),
        (4, False, False),
        (5, False, False),
        (6, True, True),
        (7, False, True),
    ]
    assert assembler.counters["gaps"] == 3


def test_packer_refuses_unshifted_next_obs_and_assembler_checks_shapes():
    rng = np.random.default_rng(7)
    packer = TransitionPacker(SPACES)
    obs = {"image": rng.integers(0, 256, (3 * K, H, W), dtype=np.uint8), "proprio": np.zeros(P)}
    with pytest.raises(ValueError, match="shifted"):
        packer.pack(Step(0, 0, obs, np.zeros(A), 0.0, obs, False, False,
                    frame_time_ns=0, action_time_ns=0, policy_version=0))  # fmt: skip
    assembler = TransitionAssembler(SPACES)
    assert assembler.push(make_transition(rng, 2)) is None  # neither 1 nor k + 1 frames
    assert assembler.counters["bad_shape"] == 1
