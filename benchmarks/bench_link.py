"""Benchmark the robot <-> learner link (link.endpoints, link.messages) on this machine.

Two processes, as in a run: the parent holds the learner end (binds), a spawned child the
robot end (connects). Over ipc:// and tcp://127.0.0.1 it measures:

1. transitions/s and MB/s at the UR5 sizes (frames 3x90x160, k = 3, proprio 15, action
   5): delta messages (the one new frame a 25 Hz step sends, 43.6 KB) and keyframes
   (the k + 1 frame window, 173 KB). The robot sends as fast as it can through
   ``RobotLink.send_transition`` (encode + NOBLOCK send; on a full queue it retries after
   50 us), the learner receives with ``LearnerLink.recv_transitions`` (decode + validate).
2. round-trip latency of a ~200-byte control message (a Heartbeat with counters), encoded, sent,
   decoded, validated and echoed back by a raw ROUTER in the child: p50 / p99 / max;
   and the same with raw bytes and no codec, for reference.
3. weights for the paper's UR5 policy (Masker 32 filters, encoder 4 convs x 32 with
   spatial softmax, actor MLP 1024x1024; sizes from learner.networks): encode_packed time,
   publish -> decoded on the robot time, and to_state_dicts + load_state_dict time.
4. the robot-side cost of one ``RobotLink.send_step`` call (what the 40 ms loop pays).

``--curve`` adds the transport ``curve``: tcp://127.0.0.1 with ZeroMQ CURVE (encryption
and, on the link, the ZAP allow-list; keys made in the temp dir by link.keys), measured
in the same run as plain tcp for a like-for-like comparison. The raw round trip (2.) sets
CURVE on both raw sockets without a ZAP handler: the per-message cost is the same.

Examples:
    python benchmarks/bench_link.py
    python benchmarks/bench_link.py --transports ipc --messages 2000 --rtt 2000
    python benchmarks/bench_link.py --transports tcp --curve --messages 1000 --rtt 1000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import tempfile
import time

import numpy as np
import zmq

from link.endpoints import LearnerLink, LinkAddresses, RobotLink
from link.keys import allow_robot, load_keys, new_keys
from link.messages import (
    Heartbeat,
    Spaces,
    Step,
    Transition,
    Weights,
    decode,
    encode,
    encode_packed,
)

K, H, W, P, A = 3, 90, 160, 15, 5
SPACES = Spaces((3 * K, H, W), P, A)
HASH = "bench"


def control_message(size: int) -> Heartbeat:
    """A heartbeat with counters, padded to ``size`` encoded bytes."""
    counters = {"sent_transitions": 123456, "dropped_full": 0, "weights_version": 7}
    msg = Heartbeat("robot", 1, time.monotonic_ns(), counters)
    pad = size - wire_bytes(msg) - len(',"":0')
    if pad > 0:
        counters["p" * pad] = 0
        msg = Heartbeat("robot", 1, msg.time_ns, counters)
    return msg


def make_transition(n_frames: int, step: int) -> Transition:
    rng = np.random.default_rng(step)
    return Transition(
        episode_id=0,
        step_index=step,
        frames=rng.integers(0, 256, (n_frames, 3, H, W), dtype=np.uint8),
        proprio=rng.standard_normal(P).astype(np.float32),
        next_proprio=rng.standard_normal(P).astype(np.float32),
        action=rng.uniform(-1, 1, A).astype(np.float32),
        reward=0.5,
        terminated=False,
        truncated=False,
        frame_time_ns=time.monotonic_ns(),
        action_time_ns=time.monotonic_ns(),
        policy_version=1,
    )


def wire_bytes(msg) -> int:
    return sum(len(memoryview(f).cast("B")) for f in encode(msg))


def addresses_for(transport: str, tmp: str, port: int) -> LinkAddresses:
    if transport == "ipc":
        return LinkAddresses.from_base(f"ipc://{tmp}/{port}")
    return LinkAddresses.from_base(f"tcp://127.0.0.1:{port}")


def make_keys(tmp: str) -> str:
    """One keys dir holding both roles: the learner's pair, the robot's pair, allowed."""
    keys_dir = f"{tmp}/keys"
    new_keys(keys_dir, "learner")
    new_keys(keys_dir, "robot")
    allow_robot(keys_dir, f"{keys_dir}/robot.key")
    return keys_dir


def keys_for(keys_dir: str | None, role: str):
    """CURVE keys of ``role`` for the curve transport (``keys_dir`` set), else None."""
    return load_keys(keys_dir, role) if keys_dir else None


def curve_socket(sock: zmq.Socket, keys_dir: str | None, server: bool) -> None:
    """CURVE options on a raw socket: server with the learner's keys, client pinning it."""
    if keys_dir is None:
        return
    if server:
        keys = load_keys(keys_dir, "learner")
        sock.curve_server = True
    else:
        keys = load_keys(keys_dir, "robot")
        sock.curve_serverkey = keys.server_public
    sock.curve_secretkey, sock.curve_publickey = keys.secret, keys.public


def pump_handshake(robot: RobotLink | None, learner: LearnerLink | None, cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("handshake timed out")
        if robot is not None:
            robot.service()
        if learner is not None:
            learner.service()
        time.sleep(0.001)


# ---------------------------------------------------------------------- child processes
def robot_sender(addrs: LinkAddresses, n_frames: int, count: int, out: mp.Queue,
                 keys_dir: str | None) -> None:
    messages = [make_transition(n_frames, i) for i in range(8)]
    keys = keys_for(keys_dir, "robot")
    with RobotLink(addrs, HASH, SPACES, peer_timeout_s=5.0, sndhwm=16, keys=keys) as robot:
        pump_handshake(robot, None, lambda: robot.accepted)
        retries = 0
        start = time.monotonic_ns()
        for i in range(count):
            while not robot.send_transition(messages[i % len(messages)]):
                retries += 1
                robot.service()
                time.sleep(50e-6)
            if i % 100 == 0:
                robot.service()
        out.put((start, retries))
        pump_handshake(robot, None, lambda: robot.shutdown_reason is not None, timeout=30)


def echo_server(address: str, codec: bool, ready: mp.Queue, keys_dir: str | None) -> None:
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    curve_socket(router, keys_dir, server=True)
    router.bind(address)
    ready.put(True)
    while True:
        identity, *frames = router.recv_multipart(copy=False)
        if frames and frames[0].bytes == b"stop":
            break
        if codec:
            frames = encode(decode(frames))
        router.send_multipart([identity, *frames], copy=False)
    router.close(0)
    ctx.term()


def weights_receiver(addrs: LinkAddresses, out: mp.Queue, count: int,
                     keys_dir: str | None) -> None:
    import torch

    from learner.networks import Actor, Masker, SpatialSoftmaxEncoder

    torch.set_num_threads(1)
    modules = paper_modules(Masker, SpatialSoftmaxEncoder, Actor)
    keys = keys_for(keys_dir, "robot")
    with RobotLink(addrs, HASH, SPACES, peer_timeout_s=5.0, keys=keys) as robot:
        pump_handshake(robot, None, lambda: robot.accepted)
        out.put(("ready", 0, 0))
        received, deadline = 0, time.monotonic() + 120
        while received < count and time.monotonic() < deadline:
            robot.service()
            w = robot.poll_weights()
            if w is None:
                time.sleep(20e-6)
                continue
            t_decoded = time.monotonic_ns()
            state = w.to_state_dicts(as_tensors=True)
            for name, module in modules.items():
                module.load_state_dict(state[name])
            t_loaded = time.monotonic_ns()
            out.put((w.version, t_decoded, t_loaded - t_decoded))
            received += 1


def paper_modules(masker_cls, encoder_cls, actor_cls) -> dict:
    """Masker 32 filters, encoder 4x32 convs strides 2,2,2,1, actor 1024x1024 (the paper)."""
    encoder = encoder_cls(3 * K, P, 32, [2, 2, 2, 1])
    return {
        "masker": masker_cls(32),
        "encoder": encoder,
        "actor": actor_cls(encoder.feature_dim, [1024, 1024], A),
    }


# ---------------------------------------------------------------------- measurements
def bench_transitions(ctx, transport: str, tmp: str, port: int, n_frames: int, count: int,
                      keys_dir: str | None):
    addrs = addresses_for(transport, tmp, port)
    nbytes = wire_bytes(make_transition(n_frames, 0))
    keys = keys_for(keys_dir, "learner")
    with LearnerLink(addrs, HASH, SPACES, peer_timeout_s=5.0, rcvhwm=64, keys=keys) as learner:
        out = ctx.Queue()
        child = ctx.Process(target=robot_sender, args=(addrs, n_frames, count, out, keys_dir),
                            daemon=True)
        child.start()
        pump_handshake(None, learner, lambda: learner.robot_alive())
        received, last_service = 0, time.monotonic()
        while received < count:
            received += len(learner.recv_transitions(max_n=256, timeout_ms=100))
            if time.monotonic() - last_service > 0.05:
                learner.service()
                last_service = time.monotonic()
        end = time.monotonic_ns()
        start, retries = out.get(timeout=30)
        learner.shutdown("done")
        learner.service()
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
    seconds = (end - start) / 1e9
    rejected = learner.counters()["rejected"]
    return count / seconds, count * nbytes / seconds / 1e6, nbytes, retries, rejected


def bench_rtt(ctx, transport: str, tmp: str, port: int, n: int, codec: bool,
              keys_dir: str | None):
    address = f"ipc://{tmp}/rtt{port}" if transport == "ipc" else f"tcp://127.0.0.1:{port}"
    ready = ctx.Queue()
    child = ctx.Process(target=echo_server, args=(address, codec, ready, keys_dir), daemon=True)
    child.start()
    ready.get(timeout=30)
    zctx = zmq.Context()
    dealer = zctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    curve_socket(dealer, keys_dir, server=False)
    dealer.connect(address)
    msg = control_message(200)
    raw = [bytes(f) for f in encode(msg)]
    size = sum(len(f) for f in raw)
    samples = []
    for i in range(n + 50):
        t0 = time.perf_counter_ns()
        dealer.send_multipart(encode(msg) if codec else raw, copy=False)
        if not dealer.poll(5000):
            raise TimeoutError("echo server did not answer")
        frames = dealer.recv_multipart(copy=False)
        if codec:
            decode(frames)
        if i >= 50:  # warm-up
            samples.append((time.perf_counter_ns() - t0) / 1e3)
    dealer.send(b"stop")
    child.join(timeout=10)
    dealer.close(0)
    zctx.term()
    samples.sort()
    return size, samples[len(samples) // 2], samples[int(0.99 * len(samples))], samples[-1]


def bench_weights(ctx, transport: str, tmp: str, port: int, count: int, keys_dir: str | None):
    import torch

    from learner.networks import Actor, Masker, SpatialSoftmaxEncoder

    torch.manual_seed(0)
    modules = paper_modules(Masker, SpatialSoftmaxEncoder, Actor)
    n_params = sum(p.numel() for m in modules.values() for p in m.state_dict().values())
    addrs = addresses_for(transport, tmp, port)
    encode_ms, deliver_ms, load_ms = [], [], []
    keys = keys_for(keys_dir, "learner")
    with LearnerLink(addrs, HASH, SPACES, peer_timeout_s=5.0, keys=keys) as learner:
        out = ctx.Queue()
        child = ctx.Process(target=weights_receiver, args=(addrs, out, count, keys_dir),
                            daemon=True)
        child.start()
        deadline = time.monotonic() + 60
        while out.empty():
            learner.service()
            time.sleep(0.001)
            if time.monotonic() > deadline:
                raise TimeoutError("weights receiver did not start")
        out.get()
        for version in range(1, count + 1):
            w = Weights.from_state_dicts(version, {k: m.state_dict() for k, m in modules.items()})
            t_pub = time.monotonic_ns()
            learner.publish_weights(w)
            encode_ms.append((time.monotonic_ns() - t_pub) / 1e6)
            deadline = time.monotonic() + 10
            while out.empty():
                learner.service()
                time.sleep(20e-6)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"weights v{version} did not arrive")
            got_version, t_decoded, load_ns = out.get()
            if got_version != version:
                raise RuntimeError(f"expected weights v{version}, got v{got_version}")
            deliver_ms.append((t_decoded - t_pub) / 1e6)
            load_ms.append(load_ns / 1e6)
            time.sleep(0.02)
        child.join(timeout=10)
        if child.is_alive():
            child.terminate()
    nbytes = len(encode_packed(w))
    return n_params, nbytes, encode_ms, deliver_ms, load_ms


def bench_send_step(tmp: str, n: int) -> list[float]:
    """Robot-side cost of ``RobotLink.send_step`` (pack delta/keyframe + encode + send), us.

    Robot and learner ends in this process; a step every ~2 ms, 20x the 25 Hz rate.
    """
    addrs = addresses_for("ipc", tmp, 0)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (3, H, W), dtype=np.uint8) for _ in range(K)]
    pool = [rng.integers(0, 256, (3, H, W), dtype=np.uint8) for _ in range(16)]
    samples = []
    with LearnerLink(addrs, HASH, SPACES) as learner, RobotLink(addrs, HASH, SPACES) as robot:
        pump_handshake(robot, learner, lambda: robot.accepted)
        for step in range(n):
            obs = {"image": np.concatenate(frames), "proprio": np.zeros(P, np.float32)}
            frames = [*frames[1:], pool[step % len(pool)]]
            next_obs = {"image": np.concatenate(frames), "proprio": np.ones(P, np.float32)}
            action = np.zeros(A, np.float32)
            t0 = time.perf_counter_ns()
            ok = robot.send_step(Step(
                0, step, obs, action, 0.0, next_obs, False, False,
                frame_time_ns=0, action_time_ns=0, policy_version=0,
            ))  # fmt: skip
            samples.append((time.perf_counter_ns() - t0) / 1e3)
            if not ok:
                raise RuntimeError(f"send_step dropped step {step}: {robot.counters()}")
            robot.service()
            learner.service()
            # 2 ms per step (20x the 25 Hz rate); the learner drains meanwhile
            learner.recv_transitions(max_n=16, timeout_ms=2)
    return sorted(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transports", nargs="+", default=["ipc", "tcp"], choices=["ipc", "tcp"])
    parser.add_argument("--messages", type=int, default=3000, help="transitions per run")
    parser.add_argument("--rtt", type=int, default=2000, help="round trips per run")
    parser.add_argument("--weights", type=int, default=20, help="weights publishes per run")
    parser.add_argument("--port", type=int, default=27600, help="first tcp port used")
    parser.add_argument("--curve", action="store_true",
                        help="also measure tcp with CURVE (transport 'curve') in the same run")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    port = args.port
    transports = args.transports + (["curve"] if args.curve else [])
    with tempfile.TemporaryDirectory(prefix="madi-bench-") as tmp:
        keys_dir = make_keys(tmp) if args.curve else None

        def keys_of(transport: str) -> str | None:
            return keys_dir if transport == "curve" else None

        print("## transitions (robot PUSH -> learner PULL, 2 processes)")
        print(f"{'transport':<9} {'message':<22} {'bytes':>8} {'msgs/s':>8} {'MB/s':>8} "
              f"{'x 25 Hz':>8} {'full-queue retries':>18} {'rejected':>8}")  # fmt: skip
        for transport in transports:
            for label, n_frames in (("delta (1 frame)", 1), (f"keyframe ({K + 1} frames)", K + 1)):
                rate, mbps, nbytes, retries, rejected = bench_transitions(
                    ctx, transport, tmp, port, n_frames, args.messages, keys_of(transport)
                )
                port += 3
                print(f"{transport:<9} {label:<22} {nbytes:>8,} {rate:>8.0f} {mbps:>8.1f} "
                      f"{rate / 25:>8.0f} {retries:>18} {rejected:>8}")  # fmt: skip

        samples = bench_send_step(tmp, args.messages)
        p50, p99 = samples[len(samples) // 2], samples[int(0.99 * len(samples))]
        print(f"\nrobot-side RobotLink.send_step (pack + encode + NOBLOCK send, UR5 obs, ipc): "
              f"p50 {p50:.0f} us, p99 {p99:.0f} us, max {samples[-1]:.0f} us")  # fmt: skip

        print("\n## control round trip (DEALER -> ROUTER echo, 2 processes), microseconds")
        print(f"{'transport':<9} {'path':<28} {'bytes':>6} {'p50':>7} {'p99':>7} {'max':>8}")
        for transport in transports:
            for codec in (False, True):
                size, p50, p99, worst = bench_rtt(
                    ctx, transport, tmp, port, args.rtt, codec, keys_of(transport)
                )
                port += 1
                path = "encode+decode+validate" if codec else "raw bytes"
                print(f"{transport:<9} {path:<28} {size:>6} {p50:>7.0f} {p99:>7.0f} {worst:>8.0f}")

        print("\n## weights of the paper's UR5 policy (learner PUB -> robot SUB, conflated)")
        print(f"{'transport':<9} {'params':>10} {'bytes':>11} {'encode p50':>11} "
              f"{'publish->decoded p50/p99/max':>30} {'load p50':>9}  (ms)")  # fmt: skip
        for transport in transports:
            n_params, nbytes, enc, deliver, load = bench_weights(
                ctx, transport, tmp, port, args.weights, keys_of(transport)
            )
            port += 3
            deliver.sort()
            d = (
                f"{statistics.median(deliver):.1f} / {deliver[int(0.99 * len(deliver))]:.1f}"
                f" / {deliver[-1]:.1f}"
            )
            print(f"{transport:<9} {n_params:>10,} {nbytes:>11,} {statistics.median(enc):>11.1f} "
                  f"{d:>30} {statistics.median(load):>9.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
