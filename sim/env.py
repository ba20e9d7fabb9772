"""The UR5 visual reacher in the MuJoCo mirror, as a Gymnasium environment.

Spaces are those of the real task (MaDi, Grooten et al. 2024; ReLoD, Wang et al. 2023):

- observation ``{"image": uint8 (3k, H, W), "proprio": float32 (15,)}``: the k = 3 newest
  RGB wrist-camera frames (160x90 by default) stacked on the channel axis, oldest first,
  and proprioception = [q (rad), qd / speed_max, previous action] of the 5 active joints;
- action: float32 (5,) in [-1, 1], joint velocities of base..wrist 2 as fractions of
  ``speed_max`` (rad/s), sent as speedJ through the shared safety limits;
- 40 ms per step, 150-step episodes (truncation), reset to the home pose with a new
  target position; dense red-pixel reward, or the minimum-time sparse variant.
"""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np

from robot.config import Config
from robot.distractions import Distractions, Plain, screen
from robot.observation import FrameStack, action_to_qd, proprio, proprio_high
from robot.safety import SafetyLimits
from robot.task import RedTargetReward, sample_target_center
from sim.mirror import Mirror
from sim.randomize import ImageEffects, sample


class VisualReacherEnv(gym.Env):
    """Simulated UR5 visual reacher (see module docstring for spaces and timing).

    Args:
        cfg: Validated config; uses the ``arm``, ``camera``, ``monitor``, ``target``,
            ``task``, ``safety`` and ``sim`` sections.
        distractions: What the monitor shows behind the target
            (:func:`robot.distractions.make_distractions`); default: the plain screen.
            Dynamic ones are redrawn every step.
        render_mode: None or ``"rgb_array"`` (:meth:`render` returns the newest frame).

    Raises:
        ValueError: If ``render_mode`` is not one of ``metadata["render_modes"]``.

    Observation bounds: joint positions within the UR5's +-2 pi rad, velocities (over
    ``speed_max``) within the UR5's 180 deg/s joint speed (UR5 technical specifications),
    previous actions within [-1, 1]. Gymnasium ids: :mod:`sim.gym_envs`.

    With ``sim.randomize.enabled`` every reset draws a perturbed rig
    (:mod:`sim.randomize`: camera, monitor, latencies, acceleration, monitor colours and
    camera effects) and rebuilds the mirror from it; :attr:`cfg` is then that episode's config
    and :attr:`base_cfg` the nominal one.

    The ``info`` dict of each step carries ``red_fraction``, ``success``,
    ``applied_qd`` (rad/s, after safety), ``interventions`` (list of str) and
    ``contacts`` (geom pairs touching; a contact ends the episode as a protective stop
    would on the real arm, with ``truncated=True`` and ``protective_stop=True``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 25}

    def __init__(self, cfg: Config, distractions: Distractions | None = None,
                 render_mode: str | None = None):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of "
                             f"{self.metadata['render_modes']}, got {render_mode!r}")
        self.render_mode = render_mode
        self.cfg = cfg
        self.base_cfg = cfg  # the nominal rig; ``cfg`` is this episode's when randomized
        self._effects: ImageEffects | None = None
        self.distractions = distractions or Plain(tuple(cfg.sim.texture_px))
        self.mirror = Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim)
        self.safety = SafetyLimits.for_rig(cfg, cfg.task.agent_period + cfg.sim.command_latency)
        self.reward_fn = RedTargetReward(cfg.task)
        self.active = np.asarray(cfg.arm.active_joints)
        self.q_home = np.asarray(cfg.arm.q_home, np.float64)
        h, w = cfg.camera.obs_size
        k, n = cfg.task.frame_stack, len(self.active)
        self.observation_space = gym.spaces.Dict({
            "image": gym.spaces.Box(0, 255, (3 * k, h, w), np.uint8),
            "proprio": gym.spaces.Box(-proprio_high(cfg.arm), proprio_high(cfg.arm),
                                      dtype=np.float32),
        })
        self.action_space = gym.spaces.Box(-1.0, 1.0, (n,), np.float32)
        self._frames = FrameStack(k)
        self._prev_action = np.zeros(n, np.float32)
        self._steps = 0
        self._deadline = 0.0
        self.target_center = np.full(2, 0.5)

    @property
    def screen_size(self) -> tuple[int, int]:
        """Virtual monitor texture size (width, height), px."""
        return tuple(self.cfg.sim.texture_px)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Move home, draw a new target, and return the first observation.

        Args:
            seed: Seeds the target sequence (Gymnasium semantics: only when given).
            options: Unused.

        Returns:
            ``(obs, info)`` with ``info["target_center"]`` (fractions of the screen).
        """
        super().reset(seed=seed)
        if self.base_cfg.sim.randomize.enabled:
            rig = sample(self.base_cfg, self.np_random)
            self.cfg, self._effects = rig.cfg, rig.effects
            self.mirror.close()
            c = rig.cfg
            self.mirror = Mirror(c.arm, c.camera, c.monitor, c.sim)
        w, h = self.screen_size
        radius = self.cfg.target.radius
        self.target_center = sample_target_center(self.np_random, radius, w / h)
        self.distractions.reset(self.np_random)
        self._show(0)
        self.mirror.reset(self.q_home)
        if self.cfg.sim.pace == "realtime":
            time.sleep(self.cfg.arm.reset_duration)
        self._frames.reset(self._render())
        self._prev_action[:] = 0.0
        self._steps = 0
        self._deadline = time.monotonic()
        return self._obs(), {"target_center": self.target_center.copy()}

    def step(self, action: np.ndarray):
        """Apply one agent step (``task.agent_period`` s of arm motion).

        Args:
            action: float (5,) joint velocities in [-1, 1] (fractions of ``speed_max``);
                values outside are clipped.

        Returns:
            ``(obs, reward, terminated, truncated, info)`` per Gymnasium.

        Raises:
            ValueError: If the action has the wrong shape or is not finite.
        """
        action = np.asarray(action, np.float32)
        if action.shape != self.action_space.shape or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be a finite float array of shape "
                             f"{self.action_space.shape}, got {action!r}")
        action = np.clip(action, -1.0, 1.0)
        qd = action_to_qd(action, self.cfg.arm)
        safe = self.safety.apply(self.mirror.q, self.mirror.qd, qd)
        if self.distractions.dynamic:
            self._show(self._steps + 1)  # what the camera sees at the end of this step
        self.mirror.command(safe.qd)
        self.mirror.advance(self.cfg.task.agent_period)
        frame = self._render()
        self._frames.push(frame)
        self._prev_action[:] = action
        self._steps += 1

        result = self.reward_fn(frame)
        contacts = self.mirror.contacts()
        terminated = self.cfg.task.reward == "sparse" and result.success
        truncated = self._steps >= self.cfg.task.episode_steps or bool(contacts)
        if contacts:
            self.mirror.command(np.zeros(6))
        if self.cfg.sim.pace == "realtime":
            self._wait_for_deadline()
        info = {
            "red_fraction": result.red_fraction,
            "success": result.success,
            "applied_qd": safe.qd,
            "interventions": [f"{i.kind}: {i.detail}" for i in safe.interventions],
            "contacts": contacts,
            "protective_stop": bool(contacts),
        }
        return self._obs(), result.reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """Return the newest wrist-camera frame, uint8 (H, W, 3) RGB."""
        return self._frames.newest.copy()

    def close(self) -> None:
        """Release the renderer."""
        self.mirror.close()

    def _render(self) -> np.ndarray:
        """The wrist camera frame, through this episode's image effects when randomized."""
        frame = self.mirror.render()
        return frame if self._effects is None else self._effects.camera(frame, self.np_random)

    def _show(self, step: int) -> None:
        """Put the target over the distraction of agent step ``step`` on the monitor."""
        image = screen(self.distractions, step, self.screen_size, self.target_center,
                       self.cfg.target)
        self.mirror.set_screen(image if self._effects is None else self._effects.screen(image))

    def _obs(self) -> dict[str, np.ndarray]:
        return {"image": self._frames.image(),
                "proprio": proprio(self.mirror.q, self.mirror.qd, self._prev_action, self.cfg.arm)}

    def _wait_for_deadline(self) -> None:
        self._deadline += self.cfg.task.agent_period
        delay = self._deadline - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            self._deadline = time.monotonic()
