"""``madi eval``: a policy's return and success under a distraction set, in the sim mirror.

Each episode runs the deterministic policy (``tanh(mean)``) from the home pose in the
sim env (:class:`sim.env.VisualReacherEnv`, fast pace) with the distraction set on its
virtual monitor (:mod:`robot.distractions`). Episode ``i`` is reset with seed
``seed + i``, so targets and distractions are the same for every policy evaluated with
the same seed, and a second run gives the same numbers. Success is the sparse criterion
(the red share of the frame reached ``task.success_red_fraction``) at any step.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot.config import Config
from robot.distractions import make_distractions
from robot.observation import frame_with_mask
from sim.env import VisualReacherEnv

logger = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """Returns and successes of one evaluation.

    Attributes:
        distractions: The set (``none``, ``easy``, ``hard`` or a folder).
        seed: Seed of episode 0 (episode i uses ``seed + i``).
        returns: Return of each episode.
        successes: Whether each episode reached the target.
        mean_return / std_return: Over the episodes.
        success_rate: Share of successful episodes.
    """

    distractions: str
    seed: int
    returns: list[float] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    mean_return: float = float("nan")
    std_return: float = float("nan")
    success_rate: float = float("nan")

    def finish(self) -> EvalResult:
        """Fill the summary fields from the episodes."""
        r = np.asarray(self.returns, dtype=np.float64)
        self.mean_return = float(r.mean()) if len(r) else float("nan")
        self.std_return = float(r.std()) if len(r) else float("nan")
        self.success_rate = float(np.mean(self.successes)) if self.successes else float("nan")
        return self


class RandomPolicy:
    """Uniform random actions in [-1, 1]: the floor a learned policy is compared with.

    Has the :class:`learner.policy.MadiPolicy` interface :func:`evaluate` uses.

    Args:
        action_dim: Action size (5 for the UR5 reacher).
        seed: Seed of the action sequence.
    """

    masker = None

    def __init__(self, action_dim: int = 5, seed: int = 0):
        self.action_dim = int(action_dim)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Nothing to reset (episodes continue the sequence)."""

    def act(self, obs: dict, deterministic: bool = True) -> np.ndarray:
        """A float32 (action_dim,) uniform in [-1, 1]; ``obs`` is ignored."""
        return self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)


def evaluate(cfg: Config, policy: Any, distractions: str, episodes: int, seed: int = 0,
             video: Path | None = None, scale: int = 4) -> EvalResult:
    """Run ``episodes`` deterministic episodes under ``distractions``.

    Args:
        cfg: The task config (run in fast pace whatever it says).
        policy: A :class:`learner.policy.MadiPolicy`.
        distractions: ``none``, ``easy``, ``hard`` or a folder of videos/images.
        episodes: Episodes, >= 1.
        seed: Seed of the first episode.
        video: If given, an mp4 of the camera frames, with the Masker's mask beside them
            when the policy has one.
        scale: Upscaling of the video frames.

    Returns:
        The :class:`EvalResult`.

    Raises:
        robot.distractions.DistractionError: For a bad distraction set.
        ValueError: If ``episodes`` < 1.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    cfg = cfg.model_copy(update={"sim": cfg.sim.model_copy(update={"pace": "fast"})})
    source = make_distractions(distractions, tuple(cfg.sim.texture_px), cfg.task)
    env = VisualReacherEnv(cfg, source)
    result = EvalResult(distractions, seed)
    writer = None
    if video is not None:
        import imageio.v2 as imageio

        Path(video).parent.mkdir(parents=True, exist_ok=True)
        writer = imageio.get_writer(video, fps=1.0 / cfg.task.agent_period,
                                    macro_block_size=1)
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            policy.reset()
            total, success, done = 0.0, False, False
            while not done:
                if writer is not None:
                    writer.append_data(frame_with_mask(env.render(), policy, scale))
                obs, reward, terminated, truncated, info = env.step(
                    policy.act(obs, deterministic=True))
                total += float(reward)
                success |= bool(info["success"])
                done = terminated or truncated
            result.returns.append(total)
            result.successes.append(success)
            logger.debug("eval %s episode %d: return %.1f, success %s", distractions, i,
                         total, success)
    finally:
        env.close()
        if writer is not None:
            writer.close()
    return result.finish()


def write_results(results: list[EvalResult], out: Path, meta: dict[str, Any]) -> Path:
    """Write the results (and ``meta``: checkpoint, config, ...) as JSON."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "results": [asdict(r) for r in results]}, indent=2))
    return out


def format_table(results: list[EvalResult]) -> str:
    """One line per distraction set: mean ± std return, success rate, episodes."""
    lines = [f"{'distractions':<14} {'return':>16} {'success':>8} {'episodes':>8}"]
    for r in results:
        lines.append(f"{r.distractions:<14} {r.mean_return:>8.1f} ± {r.std_return:<6.1f} "
                     f"{100 * r.success_rate:>7.0f}% {len(r.returns):>8}")
    return "\n".join(lines)
