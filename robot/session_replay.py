"""What ``madi replay`` and ``madi sessions`` do with a session log.

- :func:`replay_backend`: the robot process's agent loop on the recorded session
  (:class:`robot.backends.recorded.ReplayRig`), recorded again, and compared with the
  original: rewards recomputed from the frames, and actions.
- :func:`reenact`: the recorded control-tick commands sent again to an arm (the sim, or
  the real arm at a speed cap), episode by episode from the home pose; the new joint
  trajectory compared with the recorded one.
- :func:`render_view`: an mp4 of the camera stream (with the Masker's mask beside it when
  a policy is given), the reward and the joint positions under it with a time cursor.
- :func:`list_sessions`: one :class:`robot.session_log.SessionInfo` per session log.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from robot.backends.base import ProtectiveStopError, Rig
from robot.backends.recorded import ReplayRig, load_episodes
from robot.config import Config
from robot.observation import frame_with_mask
from robot.recorder import SessionRecorder
from robot.safety import SafetyLimits
from robot.session_log import SessionInfo, SessionLog, SessionLogError
from robot.session_schemas import SceneFrames
from robot.timing import LoopTimer

logger = logging.getLogger(__name__)


def replay_backend(log: SessionLog, cfg: Config, out_dir: Path, policy: Any = None,
                   policy_version: int = 0) -> dict[str, Any]:
    """Run the agent loop on the recorded session and compare with the recording.

    The loop runs in lockstep on :class:`ReplayRig` with ``cfg.seed``; with no policy it
    acts at random like the recorded run before its first weights, so a session recorded
    without weights gives the same actions. Its own session log goes to
    ``out_dir/session.mcap``.

    Args:
        log: The recorded session.
        cfg: Its config (``SessionLog.config_yaml``), possibly with overrides.
        out_dir: Folder of the replay run (episodes.csv, timing.json, session.mcap).
        policy: A :class:`learner.policy.MadiPolicy` to act with (None: random actions).
        policy_version: The version to report for its actions (> 0 makes the loop use it).

    Returns:
        ``steps``, ``episodes``, ``skipped`` (episode, end), ``reward_max_abs_diff``,
        ``rewards_equal``, ``actions_equal_fraction``, ``action_max_abs_diff``.

    Raises:
        robot.backends.base.DeviceError: If the session has no whole episode.
    """
    # Imported here: the agent loop brings PyTorch (its policy), which listing, viewing
    # and reenacting sessions do without.
    from robot.runner import RobotRunner, spaces_of

    rig = ReplayRig(log, cfg)
    out_dir = Path(out_dir)
    recorder = SessionRecorder(out_dir / "session.mcap", spaces_of(cfg),
                               {"config": log.config_yaml(), "backend": "replay",
                                "replay_of": str(log.path)},
                               frames=SceneFrames.from_config(cfg))
    runner = RobotRunner(cfg, rig, out_dir, link=None, total_steps=rig.steps, realtime=False,
                         policy=policy, recorder=recorder)
    runner.policy_version = int(policy_version)
    runner.run()
    replayed = {e.episode: e for e in load_episodes(SessionLog(recorder.path))}
    rewards_a, rewards_b, actions_a, actions_b = [], [], [], []
    for i, original in enumerate(rig.episodes):
        again = replayed.get(i)
        if again is None:
            continue
        n = min(len(original.rewards), len(again.rewards))
        rewards_a.append(original.rewards[:n])
        rewards_b.append(again.rewards[:n])
        actions_a.append(original.actions[:n])
        actions_b.append(again.actions[:n])
    ra, rb = np.concatenate(rewards_a), np.concatenate(rewards_b)
    aa, ab = np.concatenate(actions_a), np.concatenate(actions_b)
    same = np.all(aa == ab, axis=1)
    return {"steps": int(len(ra)), "episodes": len(rewards_a), "skipped": rig.skipped,
            "rewards_equal": bool(np.array_equal(ra, rb)),
            "reward_max_abs_diff": float(np.max(np.abs(ra - rb))) if len(ra) else 0.0,
            "actions_equal_fraction": float(np.mean(same)) if len(same) else 0.0,
            "action_max_abs_diff": float(np.max(np.abs(aa - ab))) if len(aa) else 0.0}


def reenact(log: SessionLog, cfg: Config, rig: Rig, realtime: bool,
            speed_cap: float | None = None) -> dict[str, Any]:
    """Send the recorded commands to ``rig``'s arm again and compare the joint paths.

    Per recorded episode: move home (as the recorded reset did), then for each recorded
    control tick send its applied command (``speedj``, through the safety limits, capped
    at ``speed_cap`` rad/s) and compare the joint positions read before it with the
    recorded ones. Ticks are paced on the wall clock when ``realtime`` (a real arm).

    Args:
        log: The recorded session.
        cfg: Config of the arm that reenacts (limits, home pose, acceleration).
        rig: A connected rig (its arm is used).
        realtime: Pace the ticks at the control period (required for a real arm).
        speed_cap: Largest joint speed sent, rad/s (None: as recorded).

    Returns:
        ``episodes``, ``ticks``, ``max_error_rad`` (largest joint-position difference),
        ``max_error_per_joint_rad`` (6 values), ``capped_ticks``, ``protective_stops``
        (episodes cut short by one).

    Raises:
        SessionLogError: If the session has no control ticks.
    """
    ticks = log.control_ticks()
    if len(ticks) == 0:
        raise SessionLogError(f"{log.path} has no /control/tick records to reenact")
    arm = rig.arm
    safety = SafetyLimits.for_rig(cfg)
    timer = LoopTimer(cfg.arm.control_period, cfg.robot.control_spin) if realtime else None
    worst = np.zeros(6)
    capped = episodes = 0
    stops = 0
    for episode in np.unique(ticks["episode"]):
        rows = ticks[ticks["episode"] == episode]
        arm.move_home(np.asarray(cfg.arm.q_home), cfg.arm.reset_duration)
        episodes += 1
        if timer is not None:
            timer.restart()
        try:
            for row in rows:
                if timer is not None:
                    timer.done(timer.wait())
                state = arm.read_state()
                worst = np.maximum(worst, np.abs(state.q - row["q"]))
                command = np.array(row["applied"])
                if speed_cap is not None and np.max(np.abs(command)) > speed_cap:
                    command *= speed_cap / np.max(np.abs(command))
                    capped += 1
                arm.speedj(safety.apply(state.q, state.qd, command).qd, cfg.arm.acceleration)
        except ProtectiveStopError as err:  # as in the recording, or a divergence
            stops += 1
            logger.warning("reenact: episode %d ended by a protective stop: %s", episode, err)
        arm.speed_stop(cfg.arm.acceleration)
    return {"episodes": episodes, "ticks": int(len(ticks)), "max_error_rad": float(worst.max()),
            "max_error_per_joint_rad": worst.tolist(), "capped_ticks": capped,
            "protective_stops": stops}


def render_view(log: SessionLog, out: Path, policy: Any = None, scale: int = 4,
                fps: float | None = None) -> Path:
    """Write an mp4: camera frames (and the Masker's masks) over reward and joint plots.

    Args:
        log: The session.
        out: The ``.mp4`` to write.
        policy: A :class:`learner.policy.MadiPolicy` with a Masker: its mask of each frame
            is shown beside it (white = kept).
        scale: Upscaling of the frames (nearest neighbour), for visibility.
        fps: Video rate (default: the agent rate, real time).

    Returns:
        ``out``.

    Raises:
        SessionLogError: If the session has no transitions.
    """
    import imageio.v2 as imageio

    episodes = load_episodes(log)
    if not episodes:
        raise SessionLogError(f"{log.path} has no recorded agent steps to show")
    cfg_period = _agent_period(log)
    frames = np.concatenate([e.frames for e in episodes])
    rewards = np.concatenate([np.r_[np.nan, e.rewards] for e in episodes])
    q = np.stack([s.q for e in episodes for s in e.states])
    starts = np.cumsum([0] + [len(e.frames) for e in episodes])[:-1]
    h, w = frames.shape[1:3]
    panels = 2 if getattr(policy, "masker", None) is not None else 1
    width = w * scale * panels
    plot = _plot_strip(rewards, q, starts, width, 240)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(out, fps=fps or 1.0 / cfg_period, macro_block_size=1) as video:
        for i, frame in enumerate(frames):
            top = frame_with_mask(frame, policy, scale)
            bottom = plot.copy()
            x = round(i / max(len(frames) - 1, 1) * (width - 1))
            cv2.line(bottom, (x, 0), (x, bottom.shape[0] - 1), (0, 0, 0), 1)
            video.append_data(np.concatenate([top, bottom], axis=0))
    logger.info("wrote %s: %d frames, %s", out, len(frames),
                "frames | masks" if panels == 2 else "frames")
    return out


def _agent_period(log: SessionLog) -> float:
    import yaml

    try:
        return float(yaml.safe_load(log.config_yaml())["task"]["agent_period"])
    except (TypeError, KeyError, ValueError):
        return 0.04


def _plot_strip(rewards: np.ndarray, q: np.ndarray, starts: np.ndarray, width: int,
                height: int) -> np.ndarray:
    """Reward and joint positions against agent step, as an RGB image (width x height)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, (ax_r, ax_q) = plt.subplots(2, 1, figsize=(width / dpi, height / dpi), dpi=dpi,
                                     sharex=True)
    steps = np.arange(len(rewards))
    ax_r.plot(steps, rewards, lw=0.8, color="tab:red")
    ax_r.set_ylabel("reward", fontsize=7)
    ax_q.plot(steps, q, lw=0.8)
    ax_q.set_ylabel("q (rad)", fontsize=7)
    for ax in (ax_r, ax_q):
        ax.set_xlim(0, max(len(rewards) - 1, 1))
        ax.tick_params(labelsize=6)
        for s in starts[1:]:
            ax.axvline(s, color="0.7", lw=0.5)
    fig.subplots_adjust(left=0.07, right=0.995, top=0.98, bottom=0.1, hspace=0.15)
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(fig)
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image


def list_sessions(root: Path) -> list[SessionInfo | tuple[Path, str]]:
    """The session logs at ``root``, newest first: each one's info, or (path, error).

    Args:
        root: A session log (any file), or a folder searched for ``*.mcap``.

    Raises:
        SessionLogError: If ``root`` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise SessionLogError(f"no file or folder {root}: pass a session.mcap or a folder of "
                              "runs (default runs/)")
    paths = [root] if root.is_file() else sorted(root.rglob("*.mcap"), key=_mtime,
                                                 reverse=True)
    out: list[SessionInfo | tuple[Path, str]] = []
    for path in paths:
        try:
            out.append(SessionLog(path).info())
        except SessionLogError as err:
            out.append((path, str(err)))
    return out


def _mtime(path: Path) -> float:
    """Modification time, s; 0 for a path that cannot be stat'ed (a dangling link)."""
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def format_sessions(rows: list[SessionInfo | tuple[Path, str]]) -> str:
    """The ``madi sessions ls`` table: date, backend, steps, episodes, return, size, state."""
    lines = [f"{'started':<25} {'backend':<7} {'steps':>7} {'episodes':>8} {'mean return':>11} "
             f"{'duration':>9} {'size':>9}  state  path"]
    for row in rows:
        if isinstance(row, tuple):
            lines.append(f"{'?':<25} {'':<7} {'':>7} {'':>8} {'':>11} {'':>9} {'':>9}  "
                         f"bad    {row[0]}: {row[1]}")
            continue
        ret = "-" if math.isnan(row.mean_return) else f"{row.mean_return:.1f}"
        holes = (f" ({row.skipped} damaged chunk{'s' * (row.skipped > 1)} skipped)"
                 if row.skipped else "")
        lines.append(f"{row.started:<25} {row.backend:<7} {row.steps:>7} {row.episodes:>8} "
                     f"{ret:>11} {row.duration_s:>8.0f}s {row.size_bytes / 1e6:>7.1f}MB  "
                     f"{'cut' if row.cut else 'whole':<5}  {row.path}{holes}")
    return "\n".join(lines)
