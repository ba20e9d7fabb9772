"""Fast-pace env steps per second of the simulated UR5 visual reacher (160x90 obs).

Measures full ``VisualReacherEnv.step`` calls (safety check, speedJ physics for one
40 ms agent step, wrist-camera render, reward) with random actions, as the learner sees
them. Prints the median over repetitions.

    python benchmarks/bench_env.py --steps 600 --reps 5
"""

import argparse
import statistics
import time

import numpy as np

from robot.config import Config
from sim.env import VisualReacherEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--model", choices=["ur5", "ur5e"], default="ur5")
    args = parser.parse_args()
    env = VisualReacherEnv(Config(arm={"model": args.model}))
    rng = np.random.default_rng(0)
    rates = []
    try:
        for rep in range(args.reps):
            env.reset(seed=rep)
            actions = rng.uniform(-1, 1, (args.steps, 5)).astype(np.float32)
            t0 = time.perf_counter()
            for a in actions:
                _, _, terminated, truncated, _ = env.step(a)
                if terminated or truncated:
                    env.reset()
            rates.append(args.steps / (time.perf_counter() - t0))
    finally:
        env.close()
    print(f"arm model          : {args.model} (control period {env.cfg.arm.control_period} s)")
    print(f"env steps/s median : {statistics.median(rates):.0f}  (reps: "
          f"{', '.join(f'{r:.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
