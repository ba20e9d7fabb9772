"""Session recording: writer throughput, size per hour, and overhead on the real-time loop.

``throughput``: feeds a :class:`robot.recorder.SessionRecorder` as fast as it takes an hour
of the paper's rig in the paper's proportions (per agent step of 40 ms: one transition with
a 160x90 frame, one arm state, 5 control ticks at 125 Hz, or 20 at 500 Hz), with frames
that are either sim renders (flat colours: compress well) or webcam-like (the sim render +
Gaussian sensor noise, sigma 3 levels: the worst case for lossless compression). Reports
the sustained write rate (agent steps/s and MB/s, against the 25 steps/s needed) and the
file size per hour of session.

``overhead``: two ``madi train`` runs of ``--minutes`` each in real-time pace, one with
``robot.record=false`` and one with recording, back to back, and compares their agent-step
and control-tick timing (``timing.json``). The sim does not wait for the learner between
episodes (``robot.hold_for_learner=false``), so each run lasts its minutes plus the resets.

Usage::

    python benchmarks/bench_recording.py throughput --steps 3000
    python benchmarks/bench_recording.py overhead --minutes 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def sim_frames(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct sim camera frames (160x90) from a servo episode's renders."""
    from robot.config import load_config
    from sim.env import VisualReacherEnv

    cfg = load_config(ROOT / "configs" / "sim_ur5_visual_reacher.yaml")
    env = VisualReacherEnv(cfg)
    frames = []
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    while len(frames) < n:
        obs, _, term, trunc, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        frames.append(obs["image"][-3:].transpose(1, 2, 0).copy())
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return np.stack(frames)


def throughput(args: argparse.Namespace) -> dict:
    from link.messages import Spaces, Step
    from robot.backends.base import ArmState
    from robot.config import load_config
    from robot.recorder import SessionRecorder
    from robot.session_schemas import SceneFrames

    base = sim_frames(200)
    frames_tf = SceneFrames.from_config(load_config(ROOT / "configs" / "sim_quick.yaml"))
    rng = np.random.default_rng(1)
    results = {}
    for kind in ("sim", "webcam_like"):
        if kind == "sim":
            frames = base
        else:
            noise = rng.normal(0, 3, base.shape)
            frames = np.clip(base + noise, 0, 255).astype(np.uint8)
        spaces = Spaces((9, 90, 160), 15, 5)
        path = args.out / f"throughput_{kind}.mcap"
        rec = SessionRecorder(path, spaces, {"config": "{}", "backend": "bench"},
                              queue_size=1 << 16, frames=frames_tf)
        state = ArmState(q=np.zeros(6), qd=np.zeros(6), t_ns=0)
        applied = np.zeros(6)
        proprio = np.zeros(15, np.float32)
        action = np.zeros(5, np.float32)
        stack = np.concatenate([frames[0].transpose(2, 0, 1)] * 3)
        ticks = args.ticks_per_step
        t0 = time.perf_counter()
        for step in range(args.steps):
            new = frames[step % len(frames)].transpose(2, 0, 1)
            nxt = np.concatenate([stack[3:], new])
            ep, t = divmod(step, 150)
            rec.transition(Step(ep, t, {"image": stack, "proprio": proprio}, action, 0.1,
                           {"image": nxt, "proprio": proprio}, False, t == 149, step, step, 1))
            rec.arm_state(ep, t, state)
            for k in range(ticks):
                rec.control_tick(ep, step * ticks + k, step, state, applied, False)
            stack = nxt
            while rec._queue.qsize() > 4096:  # measure the writer, not the queue
                time.sleep(0.001)
        rec.close({"stop_reason": "bench"})
        wall = time.perf_counter() - t0
        size = path.stat().st_size
        hours = args.steps * 0.04 / 3600
        results[kind] = {
            "steps": args.steps, "dropped": rec.dropped,
            "steps_per_s": round(args.steps / wall, 1),
            "realtime_factor": round(args.steps / wall / 25.0, 1),
            "MB_per_s_written": round(size / wall / 1e6, 2),
            "GB_per_hour": round(size / hours / 1e9, 3),
            "GB_per_2h_session": round(2 * size / hours / 1e9, 2),
            "raw_GB_per_hour": round((90 * 160 * 3 + 100 + ticks * 170) * 25 * 3600 / 1e9, 2),
        }
        path.unlink()
    return results


def overhead(args: argparse.Namespace) -> dict:
    out = {}
    for record in (False, True):
        run = args.out / f"overhead_record_{str(record).lower()}"
        cmd = [sys.executable, "-m", "madi.cli", "train", "--config",
               str(ROOT / "configs" / "sim_quick.yaml"), "--pace", "realtime", "--steps",
               str(round(args.minutes * 60 / 0.04)), "--out", str(run), "--no-progress",
               "--set", f"robot.record={str(record).lower()}",
               "--set", "train.checkpoint_every=null",
               "--set", "robot.hold_for_learner=false"]  # the loop's timing, not the learner's
        subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        t = json.loads((run / "timing.json").read_text())
        a, c = t["agent_step"], t["control_tick"]
        late = sum(1 for x in a["overrun_sizes_ms"] if x > 4.0)
        size = sum(p.stat().st_size for p in run.glob("session*.mcap"))
        out[f"record={record}"] = {
            "env_steps": t["env_steps"], "agent_period_p50_ms": a["period_p50_ms"],
            "agent_period_p99_ms": a["period_p99_ms"], "agent_period_max_ms": a["period_max_ms"],
            "steps_late_over_4ms": late, "control_jitter_p99_ms": c["jitter_p99_ms"],
            "obs_to_action_p99_ms": t["obs_to_action"]["p99_ms"],
            "session_MB": round(size / 1e6, 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--steps", type=int, default=3000, help="agent steps written")
    p.add_argument("--ticks-per-step", type=int, default=5, help="5 (CB3) or 20 (e-series)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_recording")
    p = sub.add_parser("overhead")
    p.add_argument("--minutes", type=float, default=5.0, help="per run")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_recording")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = throughput(args) if args.what == "throughput" else overhead(args)
    print(json.dumps(result, indent=2))
    (args.out / f"{args.what}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
