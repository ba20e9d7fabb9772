"""Real-time timing of the robot process while the learner saturates the CPU.

Runs ``madi train`` (robot process + learner process over ZeroMQ) on the sim mirror in
real-time pace for ``--minutes`` and reads the run's ``timing.json``: agent-step period
p50/p99/max, overruns (agent steps late by more than 4 ms = 10 % of the 40 ms cycle),
control-tick jitter p99, obs -> action latency p50/p99, link drops.

The learner is kept busy all the time: ``agent.updates_per_step`` is raised so that it
always has update credit, and it publishes weights after every update, so the robot
process loads new weights as often as they come and runs the policy every step. The
default config is the paper's (160x90 frames, full-size networks): what a robot PC runs.

With ``--cyclictest`` (rt-tests' ``cyclictest``, Debian package ``rt-tests``), the
machine's own wake-up latency is measured alongside: a SCHED_FIFO 99 thread waking every
1 ms for the same duration. Its worst case is the floor no user-space loop can beat on
this machine (on a VM: the hypervisor's scheduling of the vCPUs).

Usage::

    python benchmarks/bench_realtime.py --minutes 10 --out runs/bench_realtime --cyclictest
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
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
    parser.add_argument("--cyclictest", action="store_true",
                        help="measure the machine's wake-up latency alongside (rt-tests)")
    args = parser.parse_args()

    cfg_steps = round(args.minutes * 60 / 0.04)
    cmd = [sys.executable, "-m", "madi.cli", "train", "--config", str(args.config),
           "--pace", "realtime", "--steps", str(cfg_steps), "--out", str(args.out),
           "--no-progress",
           "--set", "agent.updates_per_step=16",  # always credit: the learner never idles
           "--set", "agent.init_random_steps=100",
           "--set", "train.publish_every=1",
           "--set", "train.checkpoint_every=null"]
    for o in args.overrides:
        cmd += ["--set", o]
    cyclic = None
    if args.cyclictest:
        if shutil.which("cyclictest") is None:
            parser.error("cyclictest not found: apt-get install rt-tests")
        seconds = round(args.minutes * 60 * 1.3)  # the resets add ~30 % of wall time
        cyclic = subprocess.Popen(
            ["cyclictest", "-m", "-p", "99", "-i", "1000", "-h", "100000", "-q",
             "-D", str(seconds)], stdout=subprocess.PIPE, text=True)
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
    if cyclic is not None:
        cyclic.terminate()
        result["cyclictest"] = _cyclictest_summary(cyclic.communicate()[0])
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def _cyclictest_summary(text: str) -> dict[str, float]:
    """Max latency and the wake-ups later than 1 / 4 ms from cyclictest's histogram (us)."""
    counts: dict[int, int] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(\d+)\s+(\d+)", line.strip())
        if m:
            counts[int(m.group(1))] = int(m.group(2))
    overflow = re.search(r"# Histogram Overflows: (\d+)", text)
    max_us = re.search(r"# Max Latencies: (\d+)", text)
    total = sum(counts.values()) + (int(overflow.group(1)) if overflow else 0)
    return {
        "wakeups": total,
        "max_ms": int(max_us.group(1)) / 1000 if max_us else float("nan"),
        "over_1ms": sum(c for us, c in counts.items() if us > 1000),
        "over_4ms": sum(c for us, c in counts.items() if us > 4000)
        + (int(overflow.group(1)) if overflow else 0),
        "p99_ms": _hist_quantile(counts, total, 0.99) / 1000,
    }


def _hist_quantile(counts: dict[int, int], total: int, q: float) -> float:
    seen = 0
    for us in sorted(counts):
        seen += counts[us]
        if seen >= q * total:
            return float(us)
    return float("nan")


if __name__ == "__main__":
    sys.exit(main())
