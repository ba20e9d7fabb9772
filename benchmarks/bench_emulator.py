"""The emulated UR controller (sim/ur_controller.py) as the installed ur_rtde sees it.

For each controller model it starts an emulator in its own process on a random loopback
address, then with the unmodified ur_rtde clients measures:

1. the RTDE output period: a Python loop polls ``RTDEReceiveInterface.getTimestamp()``
   (ur_rtde's receive thread fills it) every ~0.1 ms for ``--seconds`` and records the wall
   time at which each new controller timestamp shows; the periods between them are the
   output period the client gets (8 ms at 125 Hz on a CB3, 2 ms at 500 Hz on an
   e-series), give or take the polling resolution;
2. the command latency: from the moment ``RTDEControlInterface.speedJ`` returns to the
   first state the client reads in which joint 0 moves (``getActualQd``), over
   ``--trials`` commands from rest (speedStop and a pause between them). This is the
   path of one command on the rig: RTDE input registers, the control script's next tick,
   the controller's motion, the next RTDE output package.

``--rehearse N`` then runs the documented rehearsal (docs/real-robot.md, section 6) for N
env steps: ``madi train`` with ``configs/ur5_visual_reacher.yaml`` against a CB3 emulator,
its camera stream and its virtual monitor, with the real config's timing settings
(watchdog, camera timeout) unchanged, one torch thread for the learner, and summarises
the run's ``timing.json``, episode ends and session log.

Usage::

    python benchmarks/bench_emulator.py                 # both models, 10 s and 40 trials each
    python benchmarks/bench_emulator.py --models ur5 --seconds 5 --trials 20
    python benchmarks/bench_emulator.py --models --rehearse 600
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _loopback() -> str:
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def _ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 3),
            "p99_ms": round(float(np.percentile(a, 99)), 3),
            "max_ms": round(float(a.max()), 3), "samples": int(a.size)}


def output_period(receive, seconds: float) -> dict[str, float]:
    """Wall-clock periods between new controller timestamps seen by the client."""
    arrivals, last = [], receive.getTimestamp()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        ts = receive.getTimestamp()
        if ts != last:
            arrivals.append(time.perf_counter())
            last = ts
        time.sleep(50e-6)  # leave the cores to the emulator
    return _ms(list(np.diff(arrivals)))


def command_latency(receive, control, trials: int) -> dict[str, float]:
    """speedJ returned -> first client state with joint 0 moving, per trial from rest."""
    latencies = []
    for _ in range(trials):
        control.speedStop(10.0)
        while abs(receive.getActualQd()[0]) > 1e-9:
            time.sleep(0.001)
        time.sleep(0.05)
        control.speedJ([0.05, 0, 0, 0, 0, 0], 10.0, 0.1)
        sent = time.perf_counter()
        while abs(receive.getActualQd()[0]) <= 1e-9:
            time.sleep(50e-6)
        latencies.append(time.perf_counter() - sent)
    control.speedStop(10.0)
    return _ms(latencies)


def measure(model: str, seconds: float, trials: int) -> dict:
    import rtde_control
    import rtde_receive

    from sim.ur_controller import ControllerProcess

    controller = ControllerProcess(_loopback(), model).start()
    try:
        receive = rtde_receive.RTDEReceiveInterface(controller.host)
        control = rtde_control.RTDEControlInterface(controller.host)
        try:
            return {"period": output_period(receive, seconds),
                    "speedj_to_motion": command_latency(receive, control, trials)}
        finally:
            control.stopScript()
            control.disconnect()
            receive.disconnect()
    finally:
        controller.close()


def rehearse(steps: int, out: Path) -> dict:
    """``madi train`` on the real config against an emulated CB3; its timing and ends."""
    from sim.ur_controller import ControllerProcess

    controller = ControllerProcess(_loopback(), "ur5", http_port=0).start()
    try:
        cmd = [sys.executable, "-m", "madi.cli", "train", "--config",
               str(ROOT / "configs" / "ur5_visual_reacher.yaml"), "--steps", str(steps),
               "--out", str(out), "--no-progress", "--set", f"arm.host={controller.host}",
               "--set", f"camera.device={controller.url('/camera.mjpg')}",
               "--set", "monitor.output=offscreen",
               "--set", f"monitor.url={controller.url('/screen')}",
               "--set", "agent.cpu_threads=1",
               # a protective stop is cleared through the dashboard (counted in the
               # episode ends) instead of waiting for a person at the pendant
               "--set", "arm.protective_stop_recovery=dashboard"]
        t0 = time.perf_counter()
        code = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL).returncode
        wall = time.perf_counter() - t0
        events = [text for _, text in controller.status()["events"]]
    finally:
        controller.close()
    timing = json.loads((out / "timing.json").read_text())
    with open(out / "episodes.csv") as f:
        episodes = list(csv.DictReader(f))
    a, c = timing["agent_step"], timing["control_tick"]
    return {"exit_code": code, "wall_s": round(wall, 1), "env_steps": timing["env_steps"],
            "episode_ends": dict(Counter(row["end"] for row in episodes)),
            "stale_stops": sum(int(row["stale_stops"]) for row in episodes),
            "controller_events": dict(Counter(e.split(":")[0] for e in events)),
            "worst_excursion": _worst_excursion(out),
            "agent_period_p50_p99_max_ms": [a["period_p50_ms"], a["period_p99_ms"],
                                            a["period_max_ms"]],
            "steps_late_over_4ms": sum(1 for x in a["overrun_sizes_ms"] if x > 4.0),
            "control_period_p99_max_ms": [c["period_p99_ms"], c["period_max_ms"]],
            "obs_to_action_p50_p99_ms": [timing["obs_to_action"]["p50_ms"],
                                         timing["obs_to_action"]["p99_ms"]],
            "session_MB": round(sum(p.stat().st_size for p in out.glob("session*.mcap")) / 1e6,
                                1)}


def _worst_excursion(run: Path) -> dict[str, float]:
    """Largest excursion past the joint limits (deg), the box and the screen clearance (m).

    Read from every control tick of the session log (the arm's joint positions).
    """
    from mcap.reader import make_reader

    from robot.config import load_config
    from robot.safety import SafetyLimits

    limits = SafetyLimits.for_rig(load_config(run / "config.yaml"))
    joints = box = screen = 0.0
    with open(run / "session.mcap", "rb") as f:
        for _, _, message in make_reader(f).iter_messages(topics=["/control/tick"]):
            q = np.asarray(json.loads(message.data)["q"])
            joints = max(joints, float(np.abs(limits.joint_violation(q)).max()))
            box = max(box, float(np.abs(limits.box_violation(q)).max()))
            screen = max(screen, -limits.screen_violation(q))
    return {"joint_deg": round(float(np.rad2deg(joints)), 2), "box_m": round(box, 4),
            "screen_m": round(screen, 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=["ur5", "ur5e"])
    parser.add_argument("--seconds", type=float, default=10.0, help="period sampling, s")
    parser.add_argument("--trials", type=int, default=40, help="speedJ latency trials")
    parser.add_argument("--rehearse", type=int, default=0, metavar="STEPS",
                        help="also run the rehearsal for this many env steps")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_emulator")
    args = parser.parse_args()
    results = {model: measure(model, args.seconds, args.trials) for model in args.models}
    if args.rehearse:
        results["rehearsal"] = rehearse(args.rehearse, args.out / "rehearse")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
