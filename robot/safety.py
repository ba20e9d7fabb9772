"""Safety limits applied to every joint-velocity command, in the sim and on the real arm.

One module for both rigs: the MuJoCo mirror and the ur_rtde backend pass each command
through :meth:`SafetyLimits.apply` and send what it returns. The limits are the MaDi UR5
setup's (flange box in the base frame, joint position limits; see
``../shared/reference/madi.md``): a command predicted to take the flange out of the box is
replaced by a drive back toward the home pose (or a stop), and a joint predicted to
leave its range is reversed. Every intervention is reported so that the caller can log
and record it; what the caller sends is what :meth:`apply` returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot.config import ArmConfig, SafetyConfig
from robot.kinematics import flange_pose


@dataclass(frozen=True)
class Intervention:
    """One safety intervention.

    Attributes:
        kind: ``"box"`` (flange would leave the box), ``"joint_limit"`` (a joint would
            leave its range) or ``"inactive_joint"`` (a fixed joint was commanded).
        detail: Human-readable specifics: which joint or axis, predicted value, limit.
    """

    kind: str
    detail: str


@dataclass
class SafetyResult:
    """A command after the safety check.

    Attributes:
        qd: float64 (6,) joint velocities to send, rad/s.
        interventions: What was changed and why (empty when the command passed as is).
    """

    qd: np.ndarray
    interventions: list[Intervention] = field(default_factory=list)


class SafetyLimits:
    """Checks joint-velocity commands against the box, joint limits and speed limit.

    Args:
        safety: Box (m, base frame), joint limits (deg) and the reaction to a box exit.
        arm: Arm model (for kinematics), home pose, ``speed_max`` (rad/s) and the joints
            the agent may move.
        horizon: How far ahead to predict, s. One agent period is the natural choice: a
            command runs at most that long before the next check.
    """

    def __init__(self, safety: SafetyConfig, arm: ArmConfig, horizon: float):
        if horizon <= 0:
            raise ValueError(f"safety horizon must be > 0 s, got {horizon}")
        self.safety = safety
        self.arm = arm
        self.horizon = horizon
        self.box_low = np.asarray(safety.box_low, np.float64)
        self.box_high = np.asarray(safety.box_high, np.float64)
        self.q_low = np.deg2rad(safety.joint_low_deg)
        self.q_high = np.deg2rad(safety.joint_high_deg)
        self.q_home = np.asarray(arm.q_home, np.float64)
        self.active = np.zeros(6, bool)
        self.active[arm.active_joints] = True

    def box_violation(self, q: np.ndarray) -> np.ndarray:
        """Signed distance of the flange outside the box per axis (0 inside), m.

        Args:
            q: float (6,) joint positions, rad.

        Returns:
            float64 (3,): negative below ``box_low``, positive above ``box_high``.
        """
        p = flange_pose(q, self.arm.model)[:3, 3]
        return np.minimum(p - self.box_low, 0.0) + np.maximum(p - self.box_high, 0.0)

    def apply(self, q: np.ndarray, qd: np.ndarray) -> SafetyResult:
        """Make a joint-velocity command safe to send.

        Order: zero inactive joints, clip to ``speed_max``, reverse joints predicted to
        leave their range while moving outward, then replace the whole command if the
        flange is predicted outside the box and the command does not bring it back.

        Args:
            q: float (6,) current joint positions, rad.
            qd: float (6,) requested joint velocities, rad/s.

        Returns:
            The command to send (rad/s) and the interventions made.

        Raises:
            ValueError: If ``q`` or ``qd`` is not a finite (6,) vector.
        """
        q = np.asarray(q, np.float64)
        qd = np.array(qd, np.float64)
        for name, v in (("q", q), ("qd", qd)):
            if v.shape != (6,) or not np.all(np.isfinite(v)):
                raise ValueError(f"safety check needs a finite (6,) {name}, got {v}")
        out: list[Intervention] = []
        if np.any(qd[~self.active] != 0.0):
            moved = np.flatnonzero(~self.active & (qd != 0)).tolist()
            out.append(Intervention("inactive_joint", f"zeroed joints {moved}"))
            qd[~self.active] = 0.0
        np.clip(qd, -self.arm.speed_max, self.arm.speed_max, out=qd)

        q_next = q + qd * self.horizon
        outward = ((q_next < self.q_low) & (qd < 0)) | ((q_next > self.q_high) & (qd > 0))
        for j in np.flatnonzero(outward):
            out.append(Intervention(
                "joint_limit",
                f"joint {j} predicted {np.rad2deg(q_next[j]):.1f} deg outside "
                f"[{np.rad2deg(self.q_low[j]):.1f}, {np.rad2deg(self.q_high[j]):.1f}]; reversed",
            ))
            qd[j] = -qd[j]

        now = self.box_violation(q)
        then = self.box_violation(q + qd * self.horizon)
        if np.any(then != 0.0) and np.linalg.norm(then) >= np.linalg.norm(now):
            if self.safety.on_box_exit == "stop":
                qd = np.zeros(6)
                action = "stopped"
            else:
                qd = self._toward_home(q)
                action = "returning home"
            out.append(Intervention(
                "box", f"flange predicted {np.round(then, 4).tolist()} m outside the box; "
                f"{action}",
            ))
        return SafetyResult(qd, out)

    def _toward_home(self, q: np.ndarray) -> np.ndarray:
        qd = self.safety.return_gain * (self.q_home - q)
        qd[~self.active] = 0.0
        peak = np.max(np.abs(qd))
        limit = 0.5 * self.arm.speed_max
        return qd * (limit / peak) if peak > limit else qd
