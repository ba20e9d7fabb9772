"""Single-observation action latency of MadiPolicy, with and without the mask cache.

Usage (UR5 shapes, paper network sizes, 2 threads by default)::

    python benchmarks/bench_inference.py
    python benchmarks/bench_inference.py --steps 500 --threads 1

A synthetic episode (a stack of k frames shifting by one new frame per step, as from
the camera) is fed step by step; ``act`` is timed end to end (numpy in, numpy out).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from learner.agent import MadiSacAgent
from learner.config import AgentConfig
from learner.policy import MadiPolicy


def time_policy(policy: MadiPolicy, frames: np.ndarray, k: int, proprio: int, warmup: int):
    """Latencies (s) of ``act`` over an episode of frames ``(T, 3, H, W)``."""
    policy.reset()
    times = []
    prop = np.zeros(proprio, np.float32)
    for t in range(k - 1, len(frames)):
        obs = {
            "image": frames[t - k + 1 : t + 1].reshape(3 * k, *frames.shape[2:]),
            "proprio": prop,
        }
        t0 = time.perf_counter()
        policy.act(obs, deterministic=True)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def main() -> None:
    """Parse arguments, time the policies, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--height", type=int, default=90)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--frame-stack", type=int, default=3)
    parser.add_argument("--proprio", type=int, default=15)
    parser.add_argument("--action", type=int, default=5)
    parser.add_argument("--masker-filters", type=int, default=32)
    parser.add_argument("--mlp-hidden", type=int, nargs="+", default=[1024, 1024])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    k = args.frame_stack
    rng = np.random.default_rng(0)
    frames = rng.integers(
        0, 256, (args.steps + args.warmup + k, 3, args.height, args.width), dtype=np.uint8
    )
    rows = []
    for variant in ("madi", "sac_crop"):
        cfg = AgentConfig(
            variant=variant,
            masker_filters=args.masker_filters,
            mlp_hidden=args.mlp_hidden,
            device="cpu",
        )
        agent = MadiSacAgent(cfg, (3 * k, args.height, args.width), args.proprio, args.action)
        settings = [("cache", True)] if variant == "madi" else []
        settings.append(("no cache" if variant == "madi" else "no Masker", False))
        for label, use_cache in settings:
            policy = MadiPolicy(
                agent.masker,
                agent.encoder,
                agent.actor,
                (3 * k, args.height, args.width),
                args.proprio,
                args.action,
                use_cache=use_cache,
            )
            times = time_policy(policy, frames, k, args.proprio, args.warmup)
            q = np.quantile(times, [0.5, 0.99])
            rows.append(
                (
                    f"{variant} ({label})",
                    statistics.median(times) * 1e3,
                    q[1] * 1e3,
                    policy.masker_frames / max(1, len(times) + args.warmup),
                )
            )
    print(
        f"# single observation {3 * k}x{args.height}x{args.width}, P={args.proprio}, "
        f"A={args.action}, Masker {args.masker_filters} filters, MLP {args.mlp_hidden}, "
        f"{args.threads} threads, {args.steps} timed steps"
    )
    print("| policy | median ms | p99 ms | Masker frames/step |")
    print("|---|---:|---:|---:|")
    for name, med, p99, per_step in rows:
        print(f"| {name} | {med:.2f} | {p99:.2f} | {per_step:.2f} |")


if __name__ == "__main__":
    main()
