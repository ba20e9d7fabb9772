"""Synchronous single-process MaDi-SAC training loop over a gymnasium env.

Act, step, store, update, in one thread: the simple baseline next to the asynchronous
robot/learner split of the design (ReLoD pattern). Works with any env whose observation
is ``{"image": uint8 (3k, H, W), "proprio": float32 (P,)}`` and whose action space is a
``Box`` in [-1, 1]. The lead wires it to the sim env and the CLI (``madi train --sync``).

Outputs in ``run_dir``: ``metrics.csv`` (one row per log event, namespaced keys; the same
rows in ``tb/`` and ``wandb/`` with ``sinks``), ``checkpoints/learner.pt`` (full state,
atomic) and ``checkpoints/policy.pt``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from learner.agent import MadiSacAgent
from learner.checkpoint import load_checkpoint, save_run_checkpoints, start_from
from learner.config import AgentConfig
from learner.metrics import MetricsWriter, SinkConfig, evaluation_row
from learner.replay_buffer import ReplayBuffer, sample_mixed

__all__ = ["policy_returns", "train_sync"]

logger = logging.getLogger(__name__)

#: Intervention kinds (``info["interventions"]`` prefixes) that count toward the safety share.
SAFETY_KINDS = ("box", "joint_limit", "screen")

def _obs(obs: Any) -> dict[str, np.ndarray]:
    if not isinstance(obs, dict) or "image" not in obs or "proprio" not in obs:
        raise ValueError("env observation must be a dict with keys 'image' and 'proprio'")
    return {
        "image": np.asarray(obs["image"], dtype=np.uint8),
        "proprio": np.asarray(obs["proprio"], dtype=np.float32),
    }


def policy_returns(env: Any, policy: Any, episodes: int, seed: int = 0) -> list[float]:
    """Run deterministic episodes and return their undiscounted returns.

    Episode ``i`` is reset with seed ``seed + i`` (the convention of ``madi eval``), so every
    evaluation with the same seed shows the same targets: the returns compare policies,
    not draws.

    Args:
        env: A gymnasium env (dict observation, Box action in [-1, 1]).
        policy: Object with ``reset()`` and ``act(obs, deterministic=True) -> (A,)``.
        episodes: Number of episodes.
        seed: Seed of episode 0.

    Returns:
        One return per episode.
    """
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        policy.reset()
        total, done = 0.0, False
        while not done:
            action = policy.act(_obs(obs), deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = bool(terminated or truncated)
        returns.append(total)
    return returns


def train_sync(
    env: Any,
    agent_cfg: AgentConfig,
    run_dir: str | Path,
    total_steps: int,
    eval_every: int,
    eval_episodes: int = 5,
    eval_env: Any | None = None,
    checkpoint_every: int | None = None,
    log_every: int = 1000,
    save_replay: bool = False,
    progress: bool = True,
    agent: MadiSacAgent | None = None,
    init_from: str | Path | None = None,
    prior_mix: float = 0.0,
    skip_random: bool = False,
    eval_seed: int = 0,
    final_eval_episodes: int = 0,
    resume: bool = False,
    sinks: SinkConfig | None = None,
) -> dict[str, Any]:
    """Train MaDi-SAC synchronously on ``env``.

    Loop per env step: act (uniformly random for ``init_random_steps`` unless
    ``skip_random``, then a sample from the policy), step the env, store the transition,
    then run updates while the update credit (``updates_per_step`` per step after the
    random phase) allows. Evaluation (deterministic policy, ``eval_episodes`` fixed
    episodes from ``eval_seed``, :func:`policy_returns`) happens after every ``eval_every`` steps
    at the next episode boundary, on ``eval_env`` when given, else on ``env`` itself (whose
    next training episode is then reseeded from the step, so training targets do not
    repeat the evaluation's). Each episode's row holds ``charts/safety_share``, the share
    of its steps on which the safety limits changed the command (``info["interventions"]``
    of kind box or joint). After the last step, ``final_eval_episodes`` fixed episodes
    give ``charts/final_eval_return`` and ``final_eval.json`` (one return per episode).

    Args:
        env: Gymnasium env with observation ``{"image": uint8 (3k, H, W), "proprio":
            float32 (P,)}`` and a ``Box`` action space in [-1, 1].
        agent_cfg: Learner hyperparameters.
        run_dir: Output folder (metrics.csv, checkpoints/).
        total_steps: Env steps to run (>= 1).
        eval_every: Env steps between evaluations (>= 1).
        eval_episodes: Episodes per evaluation (0 disables evaluation).
        eval_env: Optional separate env for evaluation (e.g. with distractions).
        checkpoint_every: Env steps between checkpoints (None: only at the end).
        log_every: Env steps between loss/throughput rows in metrics.csv.
        save_replay: Include the replay buffer in the full checkpoint.
        progress: Show a tqdm progress bar (log lines are printed above it meanwhile).
        agent: Optional pre-built agent (e.g. restored from a checkpoint).
        init_from: Another run (directory or ``learner.pt``) to start from: its networks
            and temperature (:func:`learner.checkpoint.start_from`), e.g. a sim run
            fine-tuned on a second rig.
        prior_mix: With ``init_from``: share of each batch from that run's replay buffer
            (when its checkpoint holds one), in [0, 1); 0: an empty buffer.
        skip_random: No uniformly random phase: act with the policy and update from the
            first step (with ``init_from``, the loaded policy).
        eval_seed: Seed of evaluation episode 0 (episode i: ``eval_seed + i``).
        final_eval_episodes: Fixed episodes evaluated after the last step (0: none).
        resume: Continue the run in ``run_dir`` from ``checkpoints/learner.pt`` (networks,
            optimizers, counters, and the replay buffer when the checkpoint holds one):
            env steps go on from the checkpoint's, metrics are appended.
        sinks: Where the metrics rows also go (TensorBoard, W&B); None: metrics.csv only.

    Returns:
        Summary dict: ``agent``, ``env_steps``, ``updates``, ``episodes``,
        ``episode_returns`` (training), ``eval_returns`` (list of (step, mean return)),
        ``final_eval_returns`` (one per final episode), ``wall_s``.

    Raises:
        ValueError: If the spaces are not as described or a count is out of range.
        learner.checkpoint_file.CheckpointError: If ``init_from`` cannot initialise this agent,
            or ``resume`` finds no usable checkpoint in ``run_dir``.
        learner.metrics.MetricsSinkError: If a sink in ``sinks`` cannot be opened.
    """
    if total_steps < 1 or eval_every < 1 or eval_episodes < 0 or log_every < 1:
        raise ValueError(
            "total_steps, eval_every and log_every must be >= 1 and eval_episodes >= 0, got "
            f"{total_steps}, {eval_every}, {log_every}, {eval_episodes}"
        )
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = run_dir / "checkpoints"
    start = _start(env, agent_cfg, agent, ckpt_dir, resume, init_from, prior_mix)
    agent, replay, prior, first_step, episodes = (start.agent, start.replay, start.prior,
                                                  start.first_step, start.episodes)
    cfg = agent.cfg
    policy = agent.make_policy()
    random_steps = 0 if skip_random else cfg.init_random_steps
    env.action_space.seed(cfg.seed)
    metrics = MetricsWriter(run_dir / "metrics.csv", sinks)
    logger.info("train_sync: variant=%s spaces=%s device=%s steps=%d run_dir=%s",
                cfg.variant, _spaces(env), agent.device, total_steps, run_dir)

    t_start = time.perf_counter()
    window = _Window(t_start)
    credit = 0.0
    episode = _Episode()
    episode_returns: list[float] = []
    evals = _Evaluations(eval_env or env, eval_episodes, eval_seed, eval_every, metrics,
                         t_start, next_at=(first_step - 1) // eval_every * eval_every + eval_every)

    obs = _reset(env, policy, _train_seed(cfg.seed, first_step - 1))
    shown = ExitStack()  # the bar, and log lines above it while it is shown
    bar = shown.enter_context(tqdm(total=total_steps, initial=first_step - 1,
                                   disable=not progress, desc="train", unit="step"))
    if progress:
        shown.enter_context(logging_redirect_tqdm())
    try:
        for step in range(first_step, total_steps + 1):
            # act, step the env, store the transition
            random_phase = step <= random_steps
            obs, done = _env_step(env, policy, replay, obs, random_phase, episode, window)
            # update while the credit allows (updates_per_step per env step)
            if not random_phase and len(replay) >= 1:
                credit = _update(agent, replay, prior, prior_mix, credit, window)
                policy.invalidate()
            evals.tick(step)
            # episode end: its row, the evaluation when due, the next episode
            if done:
                episodes += 1
                episode_returns.append(episode.ret)
                metrics.write(episode.row(step, time.perf_counter() - t_start))
                bar.set_postfix(ret=f"{episode.ret:.2f}", upd=agent.num_updates)
                reseed = evals.run_if_due(step, agent) and eval_env is None
                obs = _reset(env, policy, _train_seed(cfg.seed, step) if reseed else None)
                episode = _Episode()
            if step % log_every == 0 or step == total_steps:
                metrics.write(window.row(step, t_start, log_every, agent.num_updates))
                window = _Window(time.perf_counter())
            if checkpoint_every and step % checkpoint_every == 0:
                _save(ckpt_dir, agent, step, episodes, replay if save_replay else None)
            bar.update(1)
        if first_step <= total_steps:
            _save(ckpt_dir, agent, total_steps, episodes, replay if save_replay else None)
        final = _final_eval(eval_env or env, agent, final_eval_episodes, eval_seed, run_dir,
                            metrics, total_steps, time.perf_counter() - t_start)
    finally:
        shown.close()
        metrics.close()
    wall = time.perf_counter() - t_start
    logger.info(
        "train_sync done: %d steps, %d updates, %d episodes in %.1f s",
        total_steps, agent.num_updates, episodes, wall,
    )  # fmt: skip
    return {
        "agent": agent,
        "env_steps": total_steps,
        "updates": agent.num_updates,
        "episodes": episodes,
        "episode_returns": episode_returns,
        "eval_returns": evals.returns,
        "final_eval_returns": final,
        "wall_s": wall,
    }


@dataclass
class _Start:
    """Where a run starts: its agent, replay buffers and counters."""

    agent: MadiSacAgent
    replay: ReplayBuffer
    prior: ReplayBuffer | None  #: ``init_from``'s replay buffer, mixed into batches
    first_step: int
    episodes: int


def _start(env: Any, agent_cfg: AgentConfig, agent: MadiSacAgent | None, ckpt_dir: Path,
           resume: bool, init_from: str | Path | None, prior_mix: float) -> _Start:
    """A new run, a resumed one (``ckpt_dir``'s checkpoint) or one started from another run's."""
    image_shape, proprio_dim, action_dim = _spaces(env)
    if agent is None:
        agent = MadiSacAgent(agent_cfg, image_shape, proprio_dim, action_dim)
    cfg = agent.cfg

    def new_replay(seed: int) -> ReplayBuffer:
        return ReplayBuffer(cfg.replay_capacity, (3, *image_shape[1:]), image_shape[0] // 3,
                            proprio_dim, action_dim, seed=seed,
                            frame_codec=cfg.replay_frame_codec, n_step=cfg.n_step,
                            gamma=cfg.gamma)

    start = _Start(agent, new_replay(cfg.seed), None, 1, 0)
    if resume:
        counters = load_checkpoint(ckpt_dir / "learner.pt", agent, start.replay,
                                   require_replay=False)
        start.first_step = int(counters.get("env_steps", 0)) + 1
        start.episodes = int(counters.get("episodes", 0))
        logger.info("train_sync: resumed at env step %d, update %d, replay %d transitions",
                    start.first_step - 1, agent.num_updates, len(start.replay))
    elif init_from is not None:
        start.prior = start_from(init_from, agent, prior_mix, lambda: new_replay(cfg.seed + 1))
    return start


@dataclass
class _Evaluations:
    """Evaluations on fixed episodes (:func:`_evaluate`) and their schedule.

    One is due every ``every`` env steps and runs at the next episode end; ``returns``
    holds ``(step, mean return)`` of each.
    """

    env: Any
    episodes: int
    seed: int
    every: int
    metrics: MetricsWriter
    t_start: float
    next_at: int
    due: bool = False
    returns: list[tuple[int, float]] = field(default_factory=list)

    def tick(self, step: int) -> None:
        """Count env step ``step``."""
        if step >= self.next_at:
            self.due = True
            self.next_at += self.every

    def run_if_due(self, step: int, agent: MadiSacAgent) -> bool:
        """At an episode end: evaluate if due; True if it did."""
        if not (self.due and self.episodes > 0):
            return False
        self.due = False
        self.returns.append((step, _evaluate(self.env, agent, self.episodes, self.seed,
                                             self.metrics, step,
                                             time.perf_counter() - self.t_start)))
        return True


def _spaces(env: Any) -> tuple[tuple[int, ...], int, int]:
    """(image shape (3k, H, W), proprio size P, action size A) of ``env``.

    Raises:
        ValueError: If the action space is not a Box in [-1, 1].
    """
    action_space = env.action_space
    if not np.allclose(action_space.low, -1.0) or not np.allclose(action_space.high, 1.0):
        raise ValueError(
            f"action space must be Box in [-1, 1], got low {action_space.low}, "
            f"high {action_space.high}"
        )
    return (tuple(env.observation_space["image"].shape),
            int(env.observation_space["proprio"].shape[0]), int(action_space.shape[0]))


@dataclass
class _Episode:
    """The training episode under way: return, length, steps changed by the safety limits."""

    ret: float = 0.0
    length: int = 0
    safety_steps: int = 0

    def row(self, step: int, elapsed: float) -> dict[str, float]:
        """Its metrics row at its end."""
        return {"global_step": step, "time_s": round(elapsed, 3),
                "charts/episode_return": self.ret, "charts/episode_length": self.length,
                "charts/safety_share": self.safety_steps / self.length}


@dataclass
class _Window:
    """Losses, timings (s) and updates since the last log row, which began at ``start``."""

    start: float
    timers: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    loss_sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    updates: int = 0

    def row(self, step: int, t_start: float, log_every: int, num_updates: int) -> dict:
        """The log row, also logged as one line.

        It holds the update and env-step rates, the mean losses and the summed timings.
        """
        now = time.perf_counter()
        row: dict[str, float] = {
            "global_step": step,
            "time_s": round(now - t_start, 3),
            "charts/updates": num_updates,
            "charts/updates_per_s": self.updates / max(now - self.start, 1e-9),
            "charts/env_steps_per_s": log_every / max(now - self.start, 1e-9),
        }
        if self.updates:
            row.update({key: v / self.updates for key, v in self.loss_sums.items()})
        row.update(self.timers)
        logger.info(
            "step %d: updates %d (%.2f/s), critic loss %s",
            step, num_updates, row["charts/updates_per_s"],
            f"{row['losses/critic']:.4f}" if self.updates else "-",
        )  # fmt: skip
        return row


def _reset(env: Any, policy: Any, seed: int | None) -> dict[str, np.ndarray]:
    """Start an episode (reseeded unless ``seed`` is None); its first observation."""
    obs, _ = env.reset(seed=seed)
    policy.reset()
    return _obs(obs)


def _env_step(env: Any, policy: Any, replay: ReplayBuffer, obs: dict, random_phase: bool,
              episode: _Episode, window: _Window) -> tuple[dict[str, np.ndarray], bool]:
    """Act on ``obs`` (uniformly in the random phase), step ``env``, store the transition.

    Returns:
        The next observation and whether the episode ended.
    """
    t0 = time.perf_counter()
    if random_phase:
        action = np.asarray(env.action_space.sample(), dtype=np.float32)
    else:
        action = policy.act(obs, deterministic=False)
    t1 = time.perf_counter()
    next_obs, reward, terminated, truncated, info = env.step(action)
    next_obs = _obs(next_obs)
    t2 = time.perf_counter()
    replay.add(obs, action, float(reward), next_obs, bool(terminated), bool(truncated))
    window.timers["timing/act_s"] += t1 - t0
    window.timers["timing/env_step_s"] += t2 - t1
    window.timers["timing/replay_s"] += time.perf_counter() - t2
    episode.ret += float(reward)
    episode.length += 1
    episode.safety_steps += any(i.startswith(SAFETY_KINDS) for i in info.get("interventions", ()))
    return next_obs, bool(terminated or truncated)


def _update(agent: MadiSacAgent, replay: ReplayBuffer, prior: ReplayBuffer | None,
            prior_mix: float, credit: float, window: _Window) -> float:
    """Run the updates one env step earns (``updates_per_step``, fractions carried over).

    Returns:
        The credit left, in [0, 1).
    """
    cfg = agent.cfg
    credit = min(credit + cfg.updates_per_step, math.ceil(cfg.updates_per_step))
    while credit >= 1.0:
        credit -= 1.0
        t_u = time.perf_counter()
        out = agent.update(sample_mixed(replay, prior, prior_mix, cfg.batch_size))
        window.timers["timing/update_s"] += time.perf_counter() - t_u
        for key, value in out.items():
            window.loss_sums[key] += value
        window.updates += 1
    return credit


def _evaluate(env: Any, agent: MadiSacAgent, episodes: int, seed: int,
              metrics: MetricsWriter, step: int, elapsed: float) -> float:
    """An evaluation on the fixed episodes: its metrics row; returns the mean return."""
    rets = policy_returns(env, agent.make_policy(), episodes, seed)
    metrics.write(evaluation_row(step, rets, elapsed))
    logger.info("step %d: eval return %.3f +- %.3f over %d episodes",
                step, np.mean(rets), np.std(rets), episodes)
    return float(np.mean(rets))


def _train_seed(seed: int, step: int) -> int:
    """Seed of the training episode that starts after ``step`` env steps.

    A fresh draw sequence after a resume or an evaluation on the training env.
    """
    return seed if step == 0 else int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def _final_eval(env: Any, agent: MadiSacAgent, episodes: int, seed: int, run_dir: Path,
                metrics: MetricsWriter, step: int, elapsed: float) -> list[float]:
    """The fixed final evaluation: a metrics row and ``final_eval.json`` (or nothing)."""
    if episodes <= 0:
        return []
    returns = policy_returns(env, agent.make_policy(), episodes, seed)
    metrics.write(evaluation_row(step, returns, elapsed, final=True))
    write_final_eval(run_dir, step, seed, returns)
    return returns


def write_final_eval(run_dir: Path, env_steps: int, seed: int, returns: list[float]) -> None:
    """Write ``final_eval.json`` (what ``benchmarks/sweep.py`` reads) and log its mean.

    Args:
        run_dir: The run directory.
        env_steps: Env steps the evaluated policy was trained for.
        seed: Seed of evaluation episode 0 (episode i: ``seed + i``, :func:`policy_returns`).
        returns: One undiscounted return per fixed episode.
    """
    (run_dir / "final_eval.json").write_text(json.dumps(
        {"env_steps": env_steps, "seed": seed, "episodes": len(returns), "returns": returns,
         "mean": float(np.mean(returns))}, indent=1))
    logger.info("final eval: %.1f +- %.1f over %d fixed episodes (seed %d)",
                np.mean(returns), np.std(returns), len(returns), seed)


def _save(ckpt_dir: Path, agent: MadiSacAgent, step: int, episodes: int, replay: Any) -> None:
    save_run_checkpoints(ckpt_dir, agent, {"env_steps": step, "episodes": episodes}, replay)
