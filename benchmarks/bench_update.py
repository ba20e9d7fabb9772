"""Seconds per MaDi-SAC update: fast path vs the plain reference, with each optimisation.

Usage (UR5 shapes and the paper's network sizes by default)::

    python benchmarks/bench_update.py                       # full ladder, table
    python benchmarks/bench_update.py --configs fast plain  # a subset
    python benchmarks/bench_update.py --list

Each configuration runs in its own subprocess (the allocator setting is process-wide),
with ``torch.set_num_threads(--threads)``, ``--warmup`` untimed updates, then
``--repeats`` timed updates; the table reports the median and min. The plain reference
(``plain_update`` in tests/test_learner_reference.py) computes the same maths as the
package's fast path (tests check the losses agree).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> (description, implementation, options). Ladder rows are cumulative.
CONFIGS: dict[str, tuple[str, str, dict]] = {
    "plain": ("plain reference: separate Masker calls, graphs everywhere, NCHW", "plain", {}),
    "+next_no_grad": ("+ next_obs masked/encoded under no_grad", "plain", {"next_no_grad": True}),
    "+unique_frames": (
        "+ mask k+1 unique frames once (newest next frame only)",
        "plain",
        {"next_no_grad": True, "unique_frames": True},
    ),
    "+one_masker_call": (
        "+ clean and overlaid frames in one Masker call",
        "plain",
        {"next_no_grad": True, "unique_frames": True, "one_masker_call": True},
    ),
    "+reuse_actor": (
        "+ actor reuses the critic step's features",
        "plain",
        {
            "next_no_grad": True,
            "unique_frames": True,
            "one_masker_call": True,
            "reuse_actor_features": True,
        },
    ),
    "+channels_last": (
        "+ channels_last convs",
        "plain",
        {
            "next_no_grad": True,
            "unique_frames": True,
            "one_masker_call": True,
            "reuse_actor_features": True,
            "channels_last": True,
        },
    ),
    "+malloc": (
        "+ glibc malloc thresholds (no page faults per update)",
        "plain",
        {
            "next_no_grad": True,
            "unique_frames": True,
            "one_masker_call": True,
            "reuse_actor_features": True,
            "channels_last": True,
            "malloc": True,
        },
    ),
    "fast": (
        "package fast path (MadiSacAgent.update, all on)",
        "fast",
        {"channels_last": True, "malloc": True},
    ),
    "fast-no_channels_last": (
        "package fast path without channels_last",
        "fast",
        {"channels_last": False, "malloc": True},
    ),
    "fast-no_malloc": (
        "package fast path without the malloc tuning",
        "fast",
        {"channels_last": True, "malloc": False},
    ),
    "sac_crop-fast": (
        "no Masker, no overlay (SAC + shift), fast path",
        "fast",
        {"channels_last": True, "malloc": True, "variant": "sac_crop"},
    ),
}


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Time one configuration in this process and return its result dict."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from test_learner_reference import make_batch, plain_update

    from learner.agent import MadiSacAgent
    from learner.config import AgentConfig

    torch.set_num_threads(args.threads)
    _, impl, opts = CONFIGS[name]
    cfg = AgentConfig(
        variant=opts.get("variant", args.variant),
        batch_size=args.batch,
        masker_filters=args.masker_filters,
        mlp_hidden=args.mlp_hidden,
        channels_last=opts.get("channels_last", False),
        cpu_allocator_tuning=opts.get("malloc", False),
        device="cpu",
    )
    k, hw = args.frame_stack, (args.height, args.width)
    agent = MadiSacAgent(cfg, (3 * k, *hw), args.proprio, args.action)
    flags = {
        key: opts.get(key, False)
        for key in ("next_no_grad", "unique_frames", "one_masker_call", "reuse_actor_features")
    }
    times, cpu_times, losses = [], [], []
    for i in range(args.warmup + args.repeats):
        ab = agent.prepare(make_batch(args.batch, k, hw, args.proprio, args.action, seed=i))
        torch.manual_seed(i)
        t0, c0 = time.perf_counter(), time.process_time()
        if impl == "plain":
            out = plain_update(agent, ab, **flags)
        else:
            out = agent.update_from(ab)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if i >= args.warmup:
            times.append(dt)
            cpu_times.append(dc)
            losses.append(out["losses/critic"])
    return {
        "name": name,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "cpu_median_s": statistics.median(cpu_times),
        "critic_losses": losses,
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def main() -> None:
    """Parse arguments, run the configurations in subprocesses, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--list", action="store_true", help="list configurations and exit")
    parser.add_argument("--one", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="madi", choices=["madi", "svea_overlay", "sac_crop"])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--height", type=int, default=90)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--frame-stack", type=int, default=3)
    parser.add_argument("--proprio", type=int, default=15)
    parser.add_argument("--action", type=int, default=5)
    parser.add_argument("--masker-filters", type=int, default=32)
    parser.add_argument("--mlp-hidden", type=int, nargs="+", default=[1024, 1024])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()

    if args.list:
        for name, (desc, _, _) in CONFIGS.items():
            print(f"{name:24s} {desc}")
        return
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args)))
        return

    passthrough = [a for a in sys.argv[1:] if a not in args.configs and a != "--configs"]
    results = []
    print(
        f"# batch {args.batch}, image {3 * args.frame_stack}x{args.height}x{args.width}, "
        f"P={args.proprio}, A={args.action}, masker {args.masker_filters} filters, "
        f"MLP {args.mlp_hidden}, {args.threads} threads, {args.repeats} timed updates each",
        flush=True,
    )
    for name in args.configs:
        cmd = [sys.executable, __file__, "--one", name, *passthrough]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", flush=True)
            continue
        res = json.loads(line[0][len("RESULT ") :])
        results.append(res)
        print(f"  done {name}: median {res['median_s']:.2f} s", flush=True)

    base = next((r["median_s"] for r in results if r["name"] == "plain"), None)
    print()
    print("| config | what | median s/update | min s | CPU s/update | speed-up vs plain |")
    print("|---|---|---:|---:|---:|---:|")
    for r in results:
        speed = f"{base / r['median_s']:.1f}x" if base else "-"
        print(
            f"| {r['name']} | {CONFIGS[r['name']][0]} | {r['median_s']:.2f} | "
            f"{r['min_s']:.2f} | {r.get('cpu_median_s', float('nan')):.2f} | {speed} |"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
