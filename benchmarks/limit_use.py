"""Where trained policies meet the safety limits, on the fixed evaluation episodes.

For each run folder (``madi train --sync`` output with ``config.yaml`` and
``checkpoints/policy.pt``) this plays the deterministic policy on episodes
``train.eval_seed + i`` in the sim and reports, per run: the episode returns, the share
of steps on which each limit changed the command (``box``, or ``joint_limit[j, ...]`` with
the joints it held), and the mean joint positions (deg) over the steps.

Usage::

    python benchmarks/limit_use.py runs/sweep/nstep3/s0 runs/sweep/nstep3/s2 --episodes 4
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_JOINTS = re.compile(r"joints (\[[0-9, ]+\])")


def _kinds(interventions: list[str]) -> set[str]:
    """``box`` / ``joint_limit[j, ...]`` of one step's intervention messages."""
    out = set()
    for text in interventions:
        kind = text.split(":")[0]
        joints = _JOINTS.search(text)
        out.add(kind + (joints.group(1) if joints else ""))
    return out


def limit_use(run: Path, episodes: int) -> dict:
    """Returns, limit shares and mean joint positions of ``run``'s policy (see module doc)."""
    import torch

    from learner.policy import MadiPolicy
    from robot.config import load_config
    from sim.env import VisualReacherEnv

    torch.set_num_threads(1)
    cfg = load_config(run / "config.yaml", ["sim.pace=fast"])
    policy = MadiPolicy.from_checkpoint(run / "checkpoints" / "policy.pt")
    env = VisualReacherEnv(cfg)
    shares, qs, returns = Counter(), [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=cfg.train.eval_seed + i)
        policy.reset()
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy.act(obs))
            total += float(reward)
            done = terminated or truncated
            shares.update(_kinds(info["interventions"]))
            qs.append(env.mirror.q.copy())
        returns.append(round(total, 1))
    env.close()
    return {"returns": returns,
            "limit_share": {k: round(v / len(qs), 2) for k, v in shares.most_common()},
            "q_mean_deg": np.degrees(np.mean(qs, axis=0)).round(0).tolist()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--episodes", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps({str(run): limit_use(run, args.episodes) for run in args.runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
