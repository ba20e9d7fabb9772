"""How much of the agent's command the safety limits keep: `brake` vs `slide`.

    python benchmarks/bench_safety.py --episodes 20

Runs the sim env (configs/sim_quick.yaml, fast pace) with the same actions under each
``safety.on_limit`` rule and reports, per rule and action source:
- the share of agent steps on which the limits changed the command (``safety_share``, as
  `madi train` logs it per episode);
- the share of steps on which a moving command was replaced by a full stop;
- the mean share of the requested joint speed that was applied;
- the worst excursion outside the box (m) and joint limits (rad), which must stay ~0;
- episodes ended by a protective stop (self-contact).

Action sources: uniformly random actions, and "pressing": a constant saturated action
per episode (the corner-seeking behaviour of a low-entropy policy), redrawn each episode.
"""

from __future__ import annotations

import argparse

import numpy as np

from robot.config import load_config
from sim.env import VisualReacherEnv


def measure(on_limit: str, source: str, episodes: int) -> dict[str, float]:
    cfg = load_config("configs/sim_quick.yaml", [f"safety.on_limit={on_limit}", "sim.pace=fast"])
    env = VisualReacherEnv(cfg)
    rng = np.random.default_rng(0)
    changed = stopped = steps = stops = 0
    kept, worst_box, worst_joint = [], 0.0, 0.0
    try:
        for episode in range(episodes):
            env.reset(seed=episode)
            constant = rng.choice([-1.0, 1.0], 5).astype(np.float32)
            done = False
            while not done:
                action = constant if source == "pressing" else \
                    rng.uniform(-1, 1, 5).astype(np.float32)
                _, _, term, trunc, info = env.step(action)
                done = term or trunc
                requested = np.abs(action).sum() * cfg.arm.speed_max
                applied = np.abs(info["applied_qd"]).sum()
                changed += bool(info["interventions"])
                stopped += bool(info["interventions"]) and applied == 0.0
                kept.append(min(1.0, applied / requested))
                steps += 1
                worst_box = max(worst_box, np.abs(env.safety.box_violation(env.mirror.q)).max())
                worst_joint = max(worst_joint,
                                  np.abs(env.safety.joint_violation(env.mirror.q)).max())
                stops += info["protective_stop"]
    finally:
        env.close()
    return {"safety_share": changed / steps, "stopped_share": stopped / steps,
            "speed_kept": float(np.mean(kept)), "worst_box_m": worst_box,
            "worst_joint_rad": worst_joint, "protective_stops": stops, "steps": steps}


def apply_cost_ms(repeats: int = 300, clearance: float | None = None) -> dict[str, float]:
    """Mean cost of one ``SafetyLimits.apply`` (the control thread's per-tick check), ms.

    Three cases: a command well inside, one that slides along a box face, one scaled down.
    The limits are the rig's (:meth:`SafetyLimits.for_rig` on the default config), with
    ``safety.screen_clearance`` set to ``clearance`` when given (0: no screen check).
    """
    import time

    from robot.config import Config
    from robot.safety import SafetyLimits

    cfg = Config()
    if clearance is not None:
        cfg = cfg.model_copy(update={"safety": cfg.safety.model_copy(
            update={"screen_clearance": clearance})})
    lim = SafetyLimits.for_rig(cfg, horizon=0.08)  # the runner's deadline
    home, still = np.array(cfg.arm.q_home), np.zeros(6)
    near = home.copy()
    while np.all(lim.box_violation(near + np.array([0, 0.002, 0, 0, 0, 0])) == 0):
        near[1] += 0.0002
    cases = {"inside": (home, still, np.array([0.1, -0.1, 0.1, 0, 0.05, 0])),
             "sliding": (near, still, np.array([0.5, 1.0, 0, 0, 0, 0])),
             "scaled": (near, np.array([0, 0.6, 0, 0, 0, 0]), np.array([0, 2.0, 0, 0, 0, 0]))}
    out = {}
    for name, args in cases.items():
        t0 = time.perf_counter()
        for _ in range(repeats):
            lim.apply(*args)
        out[name] = (time.perf_counter() - t0) / repeats * 1e3
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--episodes", type=int, default=20)
    args = p.parse_args()
    print("| actions | rule | safety share | stopped share | speed kept | worst box (m) | "
          "worst joint (rad) | protective stops | steps |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source in ("random", "pressing"):
        for rule in ("brake", "slide"):
            r = measure(rule, source, args.episodes)
            print(f"| {source} | {rule} | {r['safety_share']:.2f} | {r['stopped_share']:.2f} | "
                  f"{r['speed_kept']:.2f} | {r['worst_box_m']:.1e} | {r['worst_joint_rad']:.1e} | "
                  f"{r['protective_stops']} | {r['steps']} |")
    for label, clearance in (("with the screen clearance", None), ("box and joints only", 0.0),
                             ("with the screen clearance", None), ("box and joints only", 0.0)):
        cost = apply_cost_ms(clearance=clearance)
        print(f"\nSafetyLimits.apply per control tick, {label} (ms): " +
              ", ".join(f"{k} {v:.2f}" for k, v in cost.items()))


if __name__ == "__main__":
    main()
