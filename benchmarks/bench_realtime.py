"""Real-time timing of the robot process while the learner saturates the CPU.

Runs ``madi train`` (robot process + learner process over ZeroMQ) on the sim mirror in
real-time pace for ``--minutes`` and reads the run's ``timing.json``: agent-step period
p50/p99/max, overruns (agent steps late by more than 4 ms = 10 % of the 40 ms cycle),
control-tick jitter p99, obs -> action latency p50/p99, link drops.

The learner is kept busy all the time: ``agent.updates_per_step`` is raised so that it
always has update credit, and it publishes weights after every update, so the robot
process loads new weights as often as they come and runs the policy every step. The
default config is the paper's (160x90 frames, full-size networks): what a robot PC runs.

Usage::

    python benchmarks/bench_realtime.py --minutes 10 --out runs/bench_realtime
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the benchmark and print the figures (also saved as ``result.json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="wall time of env steps")
    parser.add_argument("--config", type=Path,
                        default=ROOT / "configs" / "sim_ur5_visual_reacher.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_realtime")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    cfg_steps = round(args.minutes * 60 / 0.04)
    cmd = [sys.executable, "-m", "robot.cli", "train", "--config", str(args.config),
           "--pace", "realtime", "--steps", str(cfg_steps), "--out", str(args.out),
           "--no-progress",
           "--set", "agent.updates_per_step=16",  # always credit: the learner never idles
           "--set", "agent.init_random_steps=100",
           "--set", "train.publish_every=1",
           "--set", "train.checkpoint_every=null"]
    for o in args.overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    timing = json.loads((args.out / "timing.json").read_text())
    a, c, lat = timing["agent_step"], timing["control_tick"], timing["obs_to_action"]
    late_4ms = sum(1 for x in a["overrun_sizes_ms"] if x > 4.0)
    result = {
        "command": " ".join(cmd[1:]),
        "wall_s": round(wall, 1),
        "env_steps": timing["env_steps"],
        "agent_step_period_ms": [a["period_p50_ms"], a["period_p99_ms"], a["period_max_ms"]],
        "agent_step_late_ms": [a["late_p50_ms"], a["late_p99_ms"], a["late_max_ms"]],
        "agent_steps_late_over_4ms": late_4ms,
        "agent_step_busy_ms": [a["busy_p50_ms"], a["busy_p99_ms"], a["busy_max_ms"]],
        "control_tick_jitter_ms": [c["jitter_p50_ms"], c["jitter_p99_ms"], c["jitter_max_ms"]],
        "control_tick_overruns": c["overruns"],
        "control_ticks": c["cycles"],
        "obs_to_action_ms": [lat["p50_ms"], lat["p99_ms"], lat["max_ms"]],
        "link": {k: v for k, v in timing.get("link", {}).items() if k != "rejected_by_reason"},
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
