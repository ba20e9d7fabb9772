"""Regenerate the sim pictures in docs/ (run from the repository root).

    python docs/figures.py

Writes docs/sim_camera_view.png (the wrist camera at the home pose, full 640x360 capture),
docs/sim_obs_view.png (the 160x90 observation, shown 4x) and docs/servo_episode.png (a
strip of one scripted visual-servo episode).
"""

from pathlib import Path

import cv2

from robot.config import load_config
from sim.env import VisualReacherEnv
from sim.rollout import make_policy, run_episode, save_episode

DOCS = Path(__file__).resolve().parent


def main() -> None:
    """Render the pictures and print the servo episode summary."""
    cfg = load_config(DOCS.parent / "configs" / "sim_ur5_visual_reacher.yaml", ["sim.pace=fast"])
    env = VisualReacherEnv(cfg)
    try:
        env.reset(seed=7)
        full = env.mirror.render(subsample=1)
        obs = env.render().repeat(4, axis=0).repeat(4, axis=1)
        cv2.imwrite(str(DOCS / "sim_camera_view.png"), cv2.cvtColor(full, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(DOCS / "sim_obs_view.png"), cv2.cvtColor(obs, cv2.COLOR_RGB2BGR))
        result = run_episode(env, make_policy("servo", cfg, env), seed=7, keep_frames=True)
        save_episode(result.frames[:100], DOCS, "servo_episode", fps=25, scale=2)
        (DOCS / "servo_episode.mp4").unlink()
        print(f"servo episode: return {result.episode_return:.1f}, "
              f"success at step {result.success_step}, max red {result.max_red_fraction:.3f}")
    finally:
        env.close()


if __name__ == "__main__":
    main()
