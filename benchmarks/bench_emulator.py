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

Usage::

    python benchmarks/bench_emulator.py                 # both models, 10 s and 40 trials each
    python benchmarks/bench_emulator.py --models ur5 --seconds 5 --trials 20
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["ur5", "ur5e"])
    parser.add_argument("--seconds", type=float, default=10.0, help="period sampling, s")
    parser.add_argument("--trials", type=int, default=40, help="speedJ latency trials")
    args = parser.parse_args()
    results = {model: measure(model, args.seconds, args.trials) for model in args.models}
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
