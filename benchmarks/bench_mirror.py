"""Throughput of the MuJoCo mirror: renders/s and agent steps/s (median of repetitions).

    python benchmarks/bench_mirror.py [--model ur5|ur5e] [--reps 5] [--steps 300]

An agent step is what the sim backend does per 40 ms action: ``command`` + ``advance(0.04)``
+ ``render()``; "+screen" also uploads a new screen image (a distraction video frame).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from robot.config import ArmConfig, CameraConfig, MonitorConfig, SimConfig  # noqa: E402
from sim.mirror import Mirror  # noqa: E402

logger = logging.getLogger("bench_mirror")


def rate(fn, n: int, reps: int) -> tuple[float, float, float]:
    """Median, min and max calls/s of ``fn`` over ``reps`` runs of ``n`` calls."""
    rates = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), min(rates), max(rates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ur5", choices=["ur5", "ur5e"])
    p.add_argument("--reps", type=int, default=5, help="repetitions (median reported)")
    p.add_argument("--steps", type=int, default=300, help="calls per repetition")
    p.add_argument("--substeps", type=int, default=SimConfig().physics_substeps)
    p.add_argument("--agent-period", type=float, default=0.04, help="s")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    camera = CameraConfig()
    mirror = Mirror(ArmConfig(model=args.model), camera, MonitorConfig(),
                    SimConfig(physics_substeps=args.substeps))
    rng = np.random.default_rng(0)
    actions = rng.uniform(-0.3, 0.3, (args.steps, 6))
    tw, th = SimConfig().texture_px
    frames = rng.integers(0, 256, (8, th, tw, 3), dtype=np.uint8)
    home = np.asarray(ArmConfig().q_home)
    out = np.empty((*camera.obs_size, 3), np.uint8)

    def step(i: int) -> None:
        mirror.command(actions[i] * (1 if (i // 25) % 2 == 0 else -1))  # stays near home
        mirror.advance(args.agent_period)
        mirror.render(out=out)

    def step_screen(i: int) -> None:
        mirror.set_screen(frames[i % len(frames)])
        step(i)

    def physics(i: int) -> None:
        mirror.command(actions[i] * (1 if (i // 25) % 2 == 0 else -1))
        mirror.advance(args.agent_period)

    h, w = camera.obs_size
    rows = []
    try:
        for name, fn in [(f"render {w}x{h}", lambda i: mirror.render(out=out)),
                         (f"render {camera.width}x{camera.height}",
                          lambda i: mirror.render(subsample=1)),
                         (f"advance({args.agent_period}) only", physics),
                         ("agent step", step),
                         ("agent step +screen", step_screen)]:
            mirror.reset(home)
            fn(0)  # warm up
            rows.append((name, *rate(fn, args.steps, args.reps)))
    finally:
        mirror.close()
    ticks = round(args.agent_period / mirror.control_period)
    logger.info("mirror %s, %d ticks x %d substeps per agent step, %d reps x %d calls",
                args.model, ticks, args.substeps, args.reps, args.steps)
    logger.info("%-28s %10s %10s %10s", "what", "median/s", "min/s", "max/s")
    for name, med, lo, hi in rows:
        logger.info("%-28s %10.1f %10.1f %10.1f", name, med, lo, hi)


if __name__ == "__main__":
    main()
