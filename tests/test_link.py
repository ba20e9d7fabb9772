"""Tests for link.endpoints over real ZeroMQ sockets (ipc in tmp_path, tcp on 127.0.0.1)."""

from __future__ import annotations

import logging
import os
import socket
import stat
import time
from types import SimpleNamespace

import numpy as np
import pytest
import zmq

from link.endpoints import LearnerLink, LinkAddresses, LinkError, RobotLink
from link.keys import KeyFileError, allow_robot, load_keys, new_keys, pin_learner
from link.messages import (
    HELLO_REQUIRED,
    Evaluation,
    Heartbeat,
    Hello,
    HelloAck,
    Pause,
    Resume,
    Shutdown,
    Spaces,
    Step,
    Transition,
    TransitionAssembler,
    Weights,
    decode,
    encode,
    encode_packed,
)

K, H, W, P, A = 3, 12, 16, 15, 5
SPACES = Spaces((3 * K, H, W), P, A)
HASH = "cfg-0123"
FAST = dict(heartbeat_interval_s=0.05, peer_timeout_s=0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["ipc", "tcp"])
def addresses(request, tmp_path) -> LinkAddresses:
    if request.param == "ipc":
        return LinkAddresses.from_base(f"ipc://{tmp_path}/link")
    return LinkAddresses(*(f"tcp://127.0.0.1:{free_port()}" for _ in range(3)))


@pytest.fixture
def ipc_addresses(tmp_path) -> LinkAddresses:
    (tmp_path / "link").mkdir()  # a LearnerLink creates it; raw test sockets do not
    return LinkAddresses.from_base(f"ipc://{tmp_path}/link")


def pump(robot: RobotLink | None, learner: LearnerLink | None, until, timeout_s: float = 3.0):
    """Service both ends until ``until()`` is true; returns the control messages seen."""
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if robot is not None:
            seen += robot.service()
        if learner is not None:
            seen += learner.service()
        if until():
            return seen
        time.sleep(0.002)
    raise AssertionError("condition not reached in time")


def connected(addrs: LinkAddresses, **robot_kw) -> tuple[RobotLink, LearnerLink]:
    learner = LearnerLink(addrs, HASH, SPACES, run_id="t", **FAST)
    robot = RobotLink(addrs, HASH, SPACES, run_id="t", **{**FAST, **robot_kw})
    pump(robot, learner, lambda: robot.accepted and learner.robot_alive())
    return robot, learner


def steps(rng: np.random.Generator, n: int, episode: int = 0):
    frames = [rng.integers(0, 256, (3, H, W), dtype=np.uint8) for _ in range(K)]
    for step in range(n):
        obs = {"image": np.concatenate(frames), "proprio": rng.standard_normal(P)}
        frames = [*frames[1:], rng.integers(0, 256, (3, H, W), dtype=np.uint8)]
        next_obs = {"image": np.concatenate(frames), "proprio": rng.standard_normal(P)}
        action = rng.uniform(-1, 1, A).astype(np.float32)
        yield episode, step, obs, action, 0.5 * step, next_obs, False, step == n - 1


def keyframe(rng: np.random.Generator, h: int, w: int) -> Transition:
    frames = rng.integers(0, 256, (K + 1, 3, h, w), dtype=np.uint8)
    z = np.zeros(P, np.float32)
    return Transition(0, 0, frames, z, z, np.zeros(A), 0.0, False, False, 0, 0, 0)


def send_steps(robot: RobotLink, stream) -> list[tuple]:
    sent = []
    for ep, step, obs, action, reward, next_obs, term, trunc in stream:
        ok = robot.send_step(Step(
            ep, step, obs, action, reward, next_obs, term, trunc,
            frame_time_ns=time.monotonic_ns(), action_time_ns=time.monotonic_ns(),
            policy_version=3,
        ))  # fmt: skip
        assert ok
        sent.append((obs, action, reward, next_obs, term, trunc))
    return sent


def recv_n(learner: LearnerLink, n: int, timeout_s: float = 3.0) -> list[Transition]:
    out: list[Transition] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        out += learner.recv_transitions(max_n=n - len(out), timeout_ms=50)
    return out


def poll_weights_until(robot: RobotLink, learner: LearnerLink | None, timeout_s: float = 3.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        robot.service()
        if learner is not None:
            learner.service()
        w = robot.poll_weights()
        if w is not None:
            return w
        time.sleep(0.002)
    raise AssertionError("no weights arrived")


# ---------------------------------------------------------------------- round trips
def test_every_message_crosses_the_link_bit_exact(addresses):
    rng = np.random.default_rng(0)
    robot, learner = connected(addresses)
    with robot, learner:
        # transitions: keyframe + deltas rebuild the exact replay arguments
        sent = send_steps(robot, steps(rng, 6))
        received = recv_n(learner, 6)
        assert [t.keyframe for t in received] == [True] + [False] * 5
        assert received[0].frames.dtype == np.uint8 and received[0].proprio.dtype == np.float32
        assembler = TransitionAssembler(SPACES)
        for (obs, action, reward, next_obs, term, trunc), t in zip(sent, received, strict=True):
            out = assembler.push(t)
            assert np.array_equal(out["obs"]["image"], obs["image"])
            assert np.array_equal(out["next_obs"]["image"], next_obs["image"])
            assert np.array_equal(out["obs"]["proprio"], obs["proprio"].astype(np.float32))
            assert np.array_equal(out["action"], action)
            assert (out["reward"], out["terminated"], out["truncated"]) == (reward, term, trunc)
            assert t.policy_version == 3
        # weights, one packed frame, bit-exact
        tensors = {
            "actor/w": rng.standard_normal((64, 33)).astype(np.float32),
            "encoder/b": rng.standard_normal(7).astype(np.float32),
        }
        assert learner.publish_weights(Weights(11, tensors))
        w = poll_weights_until(robot, learner)
        assert w.version == 11 and w.session_id == learner.session_id
        for name, value in tensors.items():
            assert w.tensors[name].dtype == np.float32 and np.array_equal(w.tensors[name], value)
        # control both ways; an evaluation's results reach the learner's metrics loop
        evaluation = Evaluation(600, "hard", 11, np.array([12.5, 301.0]), np.array([False, True]))
        assert robot.pause("reset") and robot.resume("done")
        assert robot.send_control(evaluation) and robot.shutdown("bye")
        got = pump(None, learner, lambda: learner.shutdown_reason == "bye")
        assert [type(m) for m in got] == [Pause, Resume, Evaluation, Shutdown]
        assert got[0].reason == "reset" and not learner.robot_paused
        assert (got[2].env_steps, got[2].distractions, got[2].policy_version) == (600, "hard", 11)
        assert got[2].returns.tolist() == [12.5, 301.0]
        assert got[2].successes.tolist() == [False, True]
        assert learner.send_control(Pause("learner busy")) and learner.shutdown("done")
        got = pump(robot, None, lambda: robot.shutdown_reason == "done")
        assert [(type(m), m.reason) for m in got] == [(Pause, "learner busy"), (Shutdown, "done")]
        # heartbeats carry each side's counters
        pump(robot, learner, lambda: learner.peer_counters.get("weights_version") == 11)
        assert learner.peer_counters["sent_transitions"] == 6
        c = robot.counters()
        assert c["sent_transitions"] == 6 and c["keyframes"] == 1 and c["rejected"] == 0


def test_conflated_weights_robot_sees_only_the_newest(ipc_addresses):
    robot, learner = connected(ipc_addresses)
    with robot, learner:
        for version in range(1, 6):
            learner.publish_weights(
                Weights(version, {"actor/w": np.full(1000, version, np.float32)})
            )
        time.sleep(0.2)  # all five delivered (or conflated away) by now
        w = robot.poll_weights()
        assert w is not None and w.version == 5
        assert np.all(w.tensors["actor/w"] == 5)
        assert robot.poll_weights() is None
        assert robot.counters()["received_weights"] == 1
        # a republished copy of the same version is not handed out twice
        learner.publish_weights(Weights(5, {"actor/w": np.full(1000, 5, np.float32)}))
        pump(robot, None, lambda: robot.poll_weights() is None and robot.counters().get(
            "duplicate_weights") == 1)  # fmt: skip


# ---------------------------------------------------------------------- never blocks
def test_send_with_no_learner_returns_false_at_once(ipc_addresses):
    rng = np.random.default_rng(1)
    t = keyframe(rng, H, W)
    with RobotLink(ipc_addresses, HASH, SPACES, require_handshake=False) as robot:
        durations = []
        for _ in range(50):
            start = time.perf_counter()
            assert robot.send_transition(t) is False
            durations.append(time.perf_counter() - start)
        assert robot.counters()["dropped_full"] == 50
        # returns at once; the bounds leave room for scheduler stalls on a loaded machine
        assert np.percentile(durations, 90) < 0.005 and max(durations) < 0.1
    with RobotLink(ipc_addresses, HASH, SPACES) as robot:  # default: needs an accepted hello
        assert robot.send_transition(t) is False
        assert robot.counters()["dropped_no_peer"] == 1


def test_full_queue_of_a_stalled_learner_drops_and_counts(ipc_addresses):
    rng = np.random.default_rng(2)
    robot, learner = connected(ipc_addresses, sndhwm=4)
    with robot, learner:
        t = keyframe(rng, 90, 160)  # UR5-sized frames fill the buffers quickly
        durations, results = [], []
        for _ in range(2000):  # the learner never calls recv_transitions
            start = time.perf_counter()
            results.append(robot.send_transition(t))
            durations.append(time.perf_counter() - start)
            if results[-20:] == [False] * 20:
                break
        assert results[-1] is False and robot.counters()["dropped_full"] >= 20
        # never waits for the learner (a send is ~0.1 ms; max allows a scheduler stall)
        assert np.percentile(durations, 90) < 0.005 and max(durations) < 0.1
        assert robot.packer._force  # the next message after a drop is a keyframe


# ---------------------------------------------------------------------- hostile input
def test_garbage_and_wrong_hash_to_the_learner_are_rejected(addresses):
    ctx = zmq.Context.instance()
    with LearnerLink(addresses, HASH, SPACES, **FAST) as learner:
        push = ctx.socket(zmq.PUSH)
        dealer = ctx.socket(zmq.DEALER)
        try:
            push.connect(addresses.transitions)
            dealer.connect(addresses.control)
            push.send(b"\x00garbage")
            push.send_multipart([b'{"type":"transition"}', b"xx"])
            push.send_multipart(encode(Pause("wrong channel")))
            assert recv_n(learner, 1, timeout_s=0.5) == []
            dealer.send(b"\xff\xfe\xfd")
            dealer.send_multipart(encode(Hello("robot", "other-hash", "", "x", SPACES)))
            bad_spaces = Spaces((3 * K, H + 1, W), P, A)
            dealer.send_multipart(encode(Hello("robot", HASH, "", "y", bad_spaces)))
            pump(None, learner, lambda: learner.counters()["rejected"] >= 6)
            reasons = learner.counters()["rejected_by_reason"]
            assert reasons["config_hash"] == 1 and reasons["spaces"] == 1
            assert reasons["bad_header"] >= 2 and reasons["unexpected_type"] == 1
            # the raw peer is told which field mismatched, but not the learner's value
            assert dealer.poll(1000)
            reply = dealer.recv_multipart()
            ack = decode(reply)
            assert isinstance(ack, HelloAck) and not ack.accepted
            assert ack.reason == "config_hash mismatch"
            assert HASH.encode() not in b"".join(reply)
            assert learner.session_id.encode() not in b"".join(reply)
            assert not learner.robot_alive()
        finally:
            push.close(0)
            dealer.close(0)
        # a real robot still gets through
        with RobotLink(addresses, HASH, SPACES, **FAST) as robot:
            pump(robot, learner, lambda: robot.accepted)
            send_steps(robot, steps(np.random.default_rng(3), 2))
            assert len(recv_n(learner, 2)) == 2


def test_garbage_and_wrong_hash_to_the_robot_are_rejected(ipc_addresses):
    """A raw ROUTER and PUB stand in for the learner."""
    ctx = zmq.Context.instance()
    router, pub = ctx.socket(zmq.ROUTER), ctx.socket(zmq.PUB)
    router.bind(ipc_addresses.control)
    pub.bind(ipc_addresses.weights)
    try:
        with RobotLink(ipc_addresses, HASH, SPACES, **FAST) as robot:
            deadline = time.monotonic() + 3
            while not router.poll(10) and time.monotonic() < deadline:
                robot.service()
            identity, *frames = router.recv_multipart()
            assert isinstance(decode(frames), Hello)

            def ack(accepted, config_hash=HASH, session="L1", reason=""):
                msg = HelloAck(accepted, reason, "learner", config_hash, "", session)
                router.send_multipart([identity, *encode(msg)])

            router.send_multipart([identity, b"not json"])
            ack(True, config_hash="other")
            ack(True, session="L1")  # the good one, after the garbage
            pump(robot, None, lambda: robot.accepted)
            reasons = robot.counters()["rejected_by_reason"]
            assert reasons == {"bad_header": 1, "config_hash": 1}
            # evaluations go robot -> learner only
            evaluation = Evaluation(1, "none", 0, np.array([1.0]), np.array([True]))
            router.send_multipart([identity, *encode(evaluation)])
            pump(robot, None, lambda: "unexpected_type" in robot.counters()["rejected_by_reason"])
            # weights channel: garbage, a multipart message, weights of another session
            time.sleep(0.1)  # let the SUB connect to the raw PUB
            for frame in (b"garbage", encode_packed(Weights(1, {}, session_id="L0"))):
                pub.send(frame)
                time.sleep(0.02)
                assert robot.poll_weights() is None
            pub.send(encode_packed(Weights(2, {"actor/w": np.ones(3, np.float32)}, "L1")))
            w = poll_weights_until(robot, None)
            assert w.version == 2
            reasons = robot.counters()["rejected_by_reason"]
            assert reasons["bad_header"] == 2 and reasons["session"] == 1
            # a learner that forgot us asks for a new hello; the robot says it at once
            ack(False, reason=HELLO_REQUIRED)
            pump(robot, None, lambda: not robot.accepted)
            robot.service()
            types = []
            while router.poll(100):  # heartbeats sent before, then the new hello
                types.append(type(decode(router.recv_multipart()[1:])))
            assert types[-1] is Hello and set(types[:-1]) <= {Heartbeat}
    finally:
        router.close(0)
        pub.close(0)


# ---------------------------------------------------------------------- restarts
def test_learner_restart_robot_reconnects_and_gets_new_weights(addresses):
    rng = np.random.default_rng(4)
    robot, learner = connected(addresses)
    with robot:
        learner.publish_weights(Weights(5, {"actor/w": np.zeros(4, np.float32)}))
        assert poll_weights_until(robot, learner).version == 5
        send_steps(robot, steps(rng, 3))
        old_session = learner.session_id
        learner.close()  # the learner dies
        with LearnerLink(addresses, HASH, SPACES, **FAST) as learner2:
            learner2.publish_weights(Weights(1, {"actor/w": np.ones(4, np.float32)}))
            pump(robot, learner2, lambda: robot.accepted and robot.peer_session_id != old_session)
            w = poll_weights_until(robot, learner2)  # republished after the new handshake
            assert w.version == 1 and w.session_id == learner2.session_id
            # transitions flow again, starting with a keyframe the new learner can use
            send_steps(robot, steps(rng, 3, episode=1))
            received = recv_n(learner2, 3)
            assert [t.keyframe for t in received] == [True, False, False]
            assert robot.counters()["handshakes"] >= 2


def test_robot_restart_is_accepted_as_a_new_session(ipc_addresses):
    robot, learner = connected(ipc_addresses)
    with learner:
        first = learner.peer_session_id
        robot.close()
        with RobotLink(ipc_addresses, HASH, SPACES, **FAST) as robot2:
            pump(robot2, learner, lambda: robot2.accepted)
            assert learner.peer_session_id == robot2.session_id != first
            send_steps(robot2, steps(np.random.default_rng(5), 2))
            assert len(recv_n(learner, 2)) == 2


# ---------------------------------------------------------------------- liveness
def test_heartbeat_staleness_detection(ipc_addresses):
    robot, learner = connected(ipc_addresses)
    with robot, learner:
        now = time.monotonic_ns()
        pump(robot, learner, lambda: robot.learner_alive() and learner.robot_alive())
        timeout = robot.peer_timeout_ns
        assert robot.learner_alive(now) and learner.robot_alive(now)
        later = time.monotonic_ns() + timeout + 1
        assert not robot.learner_alive(later) and not learner.robot_alive(later)
        # a silent learner: the robot notices within the timeout and says hello again
        start = time.monotonic()
        # (wait on what service() decided, not on the clock passing: no race between them)
        pump(robot, None, lambda: not robot.accepted, timeout_s=2.0)
        assert time.monotonic() - start < 0.5 + 1.0  # peer_timeout_s + scheduling slack
        assert not robot.learner_alive()
        # the learner answers again: alive again, no restart needed
        pump(robot, learner, lambda: robot.learner_alive())


def test_addresses_from_base():
    a = LinkAddresses.from_base("tcp://10.0.0.2:6000")
    assert a == LinkAddresses("tcp://10.0.0.2:6000", "tcp://10.0.0.2:6001", "tcp://10.0.0.2:6002")
    assert LinkAddresses.from_base("tcp://localhost").control == "tcp://localhost:5557"
    assert LinkAddresses.from_base("ipc:///tmp/x/").weights == "ipc:///tmp/x/weights"
    assert LinkAddresses.default("run1").transitions.endswith("/madi-run1/transitions")
    for bad in ("udp://h:1", "tcp://h:65535", "ipc://", "ipc:///" + "d" * 120, "tcp://h:x"):
        with pytest.raises(LinkError):
            LinkAddresses.from_base(bad)
    with pytest.raises(LinkError):
        LinkAddresses.default("../escape")


def test_bind_conflict_is_a_link_error(ipc_addresses):
    port = free_port()
    addrs = LinkAddresses(*(f"tcp://127.0.0.1:{port + i}" for i in range(3)))
    try:
        first = LearnerLink(addrs, HASH, SPACES)
    except LinkError:
        pytest.skip("ports taken by another process")
    with first, pytest.raises(LinkError, match="cannot bind"):
        LearnerLink(addrs, HASH, SPACES)


# ---------------------------------------------------------------------- CURVE and keys
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> SimpleNamespace:
    """A learner allowing robots ``robot`` and ``other``; ``stranger`` is not allowed and
    ``impostor`` is a learner nobody pinned. Every robot pins the real learner's key."""
    root = tmp_path_factory.mktemp("keys")
    dirs = {name: root / name for name in ("learner", "impostor", "robot", "other", "stranger")}
    for name, directory in dirs.items():
        new_keys(directory, "learner" if name in ("learner", "impostor") else "robot")
    for name in ("robot", "other"):
        allow_robot(dirs["learner"], dirs[name] / "robot.key", name)
        allow_robot(dirs["impostor"], dirs[name] / "robot.key", name)
    for name in ("robot", "other", "stranger"):
        pin_learner(dirs[name], dirs["learner"] / "learner.key")
    loaded = {name: load_keys(d, "learner" if name in ("learner", "impostor") else "robot")
              for name, d in dirs.items()}
    return SimpleNamespace(dirs=SimpleNamespace(**dirs), **loaded)


@pytest.fixture
def tcp_addresses() -> LinkAddresses:
    return LinkAddresses(*(f"tcp://127.0.0.1:{free_port()}" for _ in range(3)))


def raw_client(ctx: zmq.Context, kind: int, address: str, curve=None) -> zmq.Socket:
    """A raw socket, optionally a CURVE client with ``curve`` robot keys."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_secretkey, sock.curve_publickey = curve.secret, curve.public
        sock.curve_serverkey = curve.server_public
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(address)
    return sock


def test_curve_pair_exchanges_hello_transitions_weights_and_control(keys, tcp_addresses):
    rng = np.random.default_rng(10)
    learner = LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.learner, **FAST)
    robot = RobotLink(tcp_addresses, HASH, SPACES, keys=keys.robot, **FAST)
    with robot, learner:
        pump(robot, learner, lambda: robot.accepted and learner.robot_alive())
        assert learner._peer_key == keys.robot.public.decode()
        sent = send_steps(robot, steps(rng, 4))
        received = recv_n(learner, 4)
        assembler = TransitionAssembler(SPACES)
        for (obs, action, *_), t in zip(sent, received, strict=True):
            out = assembler.push(t)
            assert np.array_equal(out["obs"]["image"], obs["image"])
            assert np.array_equal(out["action"], action)
        tensors = {"actor/w": rng.standard_normal((8, 3)).astype(np.float32)}
        learner.publish_weights(Weights(2, tensors))
        w = poll_weights_until(robot, learner)
        assert w.version == 2 and np.array_equal(w.tensors["actor/w"], tensors["actor/w"])
        assert robot.pause("reset") and robot.shutdown("bye")
        got = pump(None, learner, lambda: learner.shutdown_reason == "bye")
        assert [type(m) for m in got] == [Pause, Shutdown]
        assert learner.counters()["auth_denied"] == 0 and learner.counters()["rejected"] == 0


def test_clients_without_an_allowed_key_get_nothing_in_or_out(keys, tcp_addresses):
    """The probe of issue 17, plain and with a valid CURVE key that is not allowed."""
    ctx = zmq.Context()
    with LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.learner, **FAST) as learner:
        learner.publish_weights(Weights(1, {"actor/w": np.ones(3, np.float32)}))
        before = learner.counters()
        z = np.zeros(P, np.float32)
        frames = np.zeros((K + 1, 3, H, W), np.uint8)
        injected = Transition(0, 0, frames, z, z, np.zeros(A), 1e6, False, False, 0, 0, 0)
        clients = []
        for curve in (None, keys.stranger):
            push = raw_client(ctx, zmq.PUSH, tcp_addresses.transitions, curve)
            dealer = raw_client(ctx, zmq.DEALER, tcp_addresses.control, curve)
            sub = raw_client(ctx, zmq.SUB, tcp_addresses.weights, curve)
            clients += [push, dealer, sub]
            for msg in (Hello("robot", HASH, "", "probe", SPACES), Pause("x"), Shutdown("x")):
                dealer.send_multipart(encode(msg), flags=zmq.NOBLOCK)
            push.send_multipart(encode(injected), flags=zmq.NOBLOCK)
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert learner.recv_transitions(timeout_ms=10) == []
                assert learner.service() == []
                learner.publish_weights(Weights(1, {"actor/w": np.ones(3, np.float32)}))
            for sock in clients:
                assert sock.poll(50) == 0  # no ack, no config hash, no weights
            after = learner.counters()
            assert after["auth_denied"] >= 3  # the stranger's three sockets
            del after["auth_denied"], before["auth_denied"]
            assert after == {**before, "published_weights": after["published_weights"]}
            assert not learner.robot_alive() and learner.shutdown_reason is None
            assert not learner.robot_paused
        finally:
            for sock in clients:
                sock.close(0)
            ctx.term()


def test_robot_key_not_on_the_allow_list_is_refused_and_told(keys, tcp_addresses, caplog):
    with LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.learner, **FAST) as learner, \
            RobotLink(tcp_addresses, HASH, SPACES, keys=keys.stranger, **FAST) as robot:
        pump(robot, learner, lambda: robot.counters().get("handshake_refused", 0) >= 1)
        assert not robot.accepted and learner.counters().get("handshakes", 0) == 0
        assert learner.counters()["auth_denied"] >= 1
    assert "madi keys allow --learner" in caplog.text


def test_robot_refuses_a_learner_whose_key_it_did_not_pin(keys, tcp_addresses):
    with LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.impostor, **FAST) as impostor, \
            RobotLink(tcp_addresses, HASH, SPACES, keys=keys.robot, **FAST) as robot:
        pump(robot, impostor, lambda: robot.counters().get("handshake_failed", 0) >= 1)
        assert not robot.accepted and impostor.counters().get("handshakes", 0) == 0


def test_a_second_key_cannot_take_a_live_robots_slot(keys, tcp_addresses):
    rng = np.random.default_rng(11)
    learner = LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.learner, **FAST)
    robot = RobotLink(tcp_addresses, HASH, SPACES, keys=keys.robot, **FAST)
    other = RobotLink(tcp_addresses, HASH, SPACES, keys=keys.other, require_handshake=False,
                      **FAST)
    with learner, other:
        pump(robot, learner, lambda: robot.accepted)
        deadline = time.monotonic() + 1.0  # two peer timeouts of hellos from the other key
        while time.monotonic() < deadline:
            robot.service(), other.service(), learner.service()
            time.sleep(0.005)
        assert robot.accepted and not other.accepted
        assert learner.peer_session_id == robot.session_id
        assert learner.counters()["rejected_by_reason"]["slot_taken"] >= 2
        # the other key's transitions are refused, the holder's still arrive
        assert other.send_transition(keyframe(rng, H, W))
        send_steps(robot, steps(rng, 2))
        assert len(recv_n(learner, 3, timeout_s=1.0)) == 2
        assert learner.counters()["rejected_by_reason"]["peer_key"] == 1
        # a slot whose robot has gone silent may be taken by another allowed robot
        robot.close()
        pump(other, learner, lambda: other.accepted)
        assert learner.peer_session_id == other.session_id


def test_without_keys_a_second_hello_cannot_evict_a_live_robot(ipc_addresses):
    robot, learner = connected(ipc_addresses)
    ctx = zmq.Context()
    dealer = raw_client(ctx, zmq.DEALER, ipc_addresses.control)
    try:
        with robot, learner:
            dealer.send_multipart(encode(Hello("robot", HASH, "", "intruder", SPACES)))
            for msg in (Pause("x"), Shutdown("x")):
                dealer.send_multipart(encode(msg))
            replies = []
            deadline = time.monotonic() + 1.0  # two peer timeouts
            while time.monotonic() < deadline:
                robot.service(), learner.service()
                if dealer.poll(5):
                    replies.append(dealer.recv_multipart())
            assert robot.accepted and learner.peer_session_id == robot.session_id
            assert learner.shutdown_reason is None and not learner.robot_paused
            acks = [decode(r) for r in replies]
            assert acks and not any(a.accepted for a in acks)
            assert acks[0].reason == "another robot holds the learner"
            assert not any(HASH.encode() in b"".join(r) for r in replies)
            assert learner.counters()["rejected_by_reason"]["slot_taken"] == 1
    finally:
        dealer.close(0)
        ctx.term()


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_private_and_checked(tmp_path):
    learner_dir, robot_dir = tmp_path / "learner", tmp_path / "robot"
    public = new_keys(learner_dir, "learner")
    new_keys(robot_dir, "robot")
    assert mode(learner_dir / "learner.key_secret") == 0o600 == mode(robot_dir / "robot.key_secret")
    assert mode(public) == 0o644
    assert mode(learner_dir) == mode(learner_dir / "robots") == mode(robot_dir) == 0o700
    with pytest.raises(KeyFileError, match="exists"):
        new_keys(learner_dir, "learner")  # never overwrites a key pair
    with pytest.raises(KeyFileError, match="madi keys allow --learner"):
        load_keys(learner_dir, "learner")  # empty allow-list
    with pytest.raises(KeyFileError, match="madi keys pin --robot"):
        load_keys(robot_dir, "robot")  # no pinned learner key
    with pytest.raises(KeyFileError, match="never a \\*.key_secret"):
        allow_robot(learner_dir, robot_dir / "robot.key_secret")
    bad = tmp_path / "bad.key"
    bad.write_text('curve\n    public-key = "' + "~" * 40 + '"\n')
    with pytest.raises(KeyFileError, match="not 40 characters of z85"):
        allow_robot(learner_dir, bad)
    allow_robot(learner_dir, robot_dir / "robot.key", "lab-pc")
    pin_learner(robot_dir, public)
    loaded = load_keys(robot_dir, "robot")
    assert loaded.secret.decode() not in repr(loaded)
    os.chmod(robot_dir / "robot.key_secret", 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_keys(robot_dir, "robot")
    os.chmod(learner_dir / "robots", 0o777)
    with pytest.raises(KeyFileError, match="chmod go-w"):
        load_keys(learner_dir, "learner")


def test_madi_keys_command(tmp_path, capsys):
    from madi.cli import main

    learner_dir, robot_dir = tmp_path / "L", tmp_path / "R"
    assert main(["keys", "new", "--learner", str(learner_dir)]) == 0
    assert main(["keys", "new", "--robot", str(robot_dir)]) == 0
    assert main(["keys", "allow", "--learner", str(learner_dir), str(robot_dir / "robot.key"),
                 "--name", "lab-pc"]) == 0
    assert main(["keys", "pin", "--robot", str(robot_dir), str(learner_dir / "learner.key")]) == 0
    assert (learner_dir / "robots" / "lab-pc.key").exists()
    out = capsys.readouterr().out
    assert "fingerprint" in out and "key_secret" in out
    secret = load_keys(robot_dir, "robot").secret.decode()
    assert secret not in out
    assert main(["keys", "allow", "--learner", str(learner_dir),
                 str(robot_dir / "robot.key_secret")]) == 2
    assert main(["keys", "new", "--robot", str(robot_dir)]) == 2


def test_tcp_beyond_loopback_needs_keys(keys, tcp_addresses, caplog):
    port = free_port()
    with pytest.raises(LinkError, match="madi keys new --learner DIR. and pass --keys DIR") as err:
        LearnerLink(f"tcp://0.0.0.0:{port}", HASH, SPACES)
    assert "\n" not in str(err.value)
    with pytest.raises(LinkError, match="madi keys new --robot DIR. and pass --keys DIR"):
        RobotLink("tcp://192.0.2.7:5555", HASH, SPACES)
    with pytest.raises(LinkError, match="got robot keys"):
        LearnerLink(tcp_addresses, HASH, SPACES, keys=keys.robot)
    with caplog.at_level(logging.WARNING, logger="link.endpoints"):
        LearnerLink(tcp_addresses, HASH, SPACES).close()  # loopback: allowed, with a warning
    assert "without keys" in caplog.text


def test_ipc_directory_open_to_other_users_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # e.g. a directory another user made in /tmp
    with pytest.raises(LinkError, match="open to other users"):
        LearnerLink(f"ipc://{shared}", HASH, SPACES)
