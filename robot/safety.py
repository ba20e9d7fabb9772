"""Safety limits applied to every joint-velocity command, in the sim and on the real arm.

One module for both rigs: the MuJoCo mirror and the ur_rtde backend pass each command
through :meth:`SafetyLimits.apply` and send what it returns. The limits are the MaDi UR5
setup's (flange box in the base frame, joint position limits; Grooten et al., AAMAS
2024, and the UR5 scripts of github.com/bramgrooten/relod).

speedJ tracks a commanded velocity with a bounded acceleration, so an arm moving at
2 rad/s with 1.4 rad/s^2 needs 1.4 rad to stop: a check of "where does this command take
the arm in the next 40 ms" is not enough. :meth:`SafetyLimits.predicted_path` predicts
the arm's path if it followed the command for one horizon and then braked (the UR
leading-axis profile: the velocity vector ramps linearly, its largest component at the
acceleration bound), up to where it comes to rest. A command whose path stays inside the
joint limits and the flange box (checked at points along it: the flange's path is
curved) passes unchanged.

A command whose path would leave them is changed as little as the limits need,
so the arm slides along a boundary instead of freezing against it (a learning agent
pressed against a limit must still be able to centre the target):

1. each joint that would pass its limit keeps no velocity toward that limit (it may still
   move away from it);
2. for each box face the flange would cross, the component of the command that moves the
   flange outward through that face is removed (the minimum-norm joint-space change,
   through the flange Jacobian), leaving a small inward speed (``slide_inward_speed``) so
   that the path's curvature does not carry the flange out;
3. if the path of that command still leaves them (the arm is still braking from
   an earlier, faster command), the command is scaled down (bisection) to the largest
   fraction that passes, and to a full brake (zero velocity on every joint) if none does.

``on_limit: brake`` skips steps 1-3 and brakes at once (the earlier rule, kept to compare
with). The command sent always passes the path check, or is a full brake. Because the
previous command passed it, braking from the current state stays inside, up to model
error. An arm that is outside nonetheless by more than a model error (start-up,
latency; :data:`RETURN_BEYOND_M`, :data:`RETURN_BEYOND_RAD`) is driven back toward the
home pose (``on_box_exit: return``) or held (``stop``). The MaDi code
reversed offending joints; with a bounded acceleration a reversal is a brake that
overshoots, so we brake or slide.
Every intervention is reported so that the caller can log and record it.

The box is the flange's; the wrist camera sticks out of it. Given the camera mount and
the monitor pose, the lens is also kept ``safety.screen_clearance`` from the screen plane
(a half-space, checked along the same path and slid along like a box face): without it, a
reacher trained to make the target big drove the webcam, or the wrist-1 housing beside
it, into the monitor's bezel in 3 of 12 episodes, each a protective stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from robot.config import ArmConfig, CameraConfig, Config, MonitorConfig, SafetyConfig
from robot.kinematics import (
    flange_jacobian,
    flange_pose,
    flange_poses,
    point_positions,
    pose_matrix,
)

#: An arm further outside than this (m from the box, rad past a joint limit) is driven back
#: toward home (or held); within it (model error, sensor noise), the path check keeps it
#: from going further out and lets it move back in.
RETURN_BEYOND_M = 0.002
RETURN_BEYOND_RAD = 0.005


@dataclass(frozen=True)
class Intervention:
    """One safety intervention.

    Attributes:
        kind: ``"box"`` (flange would leave the box), ``"joint_limit"`` (a joint would
            leave its range), ``"screen"`` (the camera would come closer to the screen
            than ``screen_clearance``) or ``"inactive_joint"`` (a fixed joint was commanded).
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
        camera: The wrist camera's mount (``mount_xyz``: the lens in the flange frame, m).
        monitor: The monitor's pose in the base frame. With ``camera``, and
            ``safety.screen_clearance`` > 0, the lens is kept that far from the screen
            plane; without either, only the box and the joint limits are checked.
    """

    def __init__(self, safety: SafetyConfig, arm: ArmConfig, horizon: float,
                 camera: CameraConfig | None = None, monitor: MonitorConfig | None = None):
        if horizon <= 0:
            raise ValueError(f"safety horizon must be > 0 s, got {horizon}")
        self.safety = safety
        self.arm = arm
        self.horizon = horizon
        self.lens: np.ndarray | None = None  # (3,) in the flange frame, m
        if camera is not None and monitor is not None and safety.screen_clearance > 0:
            screen = pose_matrix(np.asarray(monitor.position), np.asarray(monitor.rpy))
            self.lens = np.asarray(camera.mount_xyz, np.float64)
            self.screen_point = screen[:3, 3]
            # the screen's normal, turned toward the robot's side (the base at the origin)
            normal = screen[:3, 2]
            self.screen_normal = normal if normal @ self.screen_point < 0 else -normal
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

    @classmethod
    def for_rig(cls, cfg: Config, horizon: float | None = None) -> SafetyLimits:
        """The limits of a rig's config: its safety, arm, camera mount and monitor.

        Args:
            cfg: The run's config.
            horizon: Prediction horizon, s; default the robot loop's 2 agent periods
                (:meth:`robot.config.RobotLoopConfig.deadline`).
        """
        if horizon is None:
            horizon = cfg.robot.deadline(cfg.task.agent_period)
        return cls(cfg.safety, cfg.arm, horizon, cfg.camera, cfg.monitor)

    def screen_distance(self, q: np.ndarray) -> float:
        """The lens's distance from the screen plane on the robot's side, m.

        Args:
            q: float (6,) joint positions, rad.

        Returns:
            The distance; ``inf`` without a camera and monitor (no screen check).
        """
        if self.lens is None:
            return float("inf")
        return float(self._lens_distances(flange_poses(np.asarray(q)[None], self.arm.model))[0])

    def screen_violation(self, q: np.ndarray) -> float:
        """How far the lens is inside the screen clearance, m (negative; 0 outside it).

        Args:
            q: float (6,) joint positions, rad.

        Returns:
            ``min(screen_distance(q) - screen_clearance, 0)``; always 0 without a camera
            and monitor.
        """
        return min(self.screen_distance(q) - self.safety.screen_clearance, 0.0)

    def _lens_distances(self, flanges: np.ndarray) -> np.ndarray:
        """The lens's distance from the screen plane, m, for (N, 4, 4) flange poses."""
        return (point_positions(flanges, self.lens) - self.screen_point) @ self.screen_normal

    def joint_violation(self, q: np.ndarray) -> np.ndarray:
        """Signed distance of each joint outside its range (0 inside), rad, float64 (6,)."""
        return np.minimum(q - self.q_low, 0.0) + np.maximum(q - self.q_high, 0.0)

    def predicted_path(self, q: np.ndarray, qd: np.ndarray, command: np.ndarray,
                       samples: int = 3) -> np.ndarray:
        """Joint positions along the path of ``command`` for one horizon, then a brake.

        Models speedJ: the velocity vector moves in a straight line toward its target, the
        component with the largest change at ``arm.acceleration`` (UR script manual,
        speedj: "joint acceleration of leading axis"); braking likewise ends every joint
        at once. The joint path is piecewise quadratic; the flange's is curved, so the box
        is checked at points along it, not only at the end.

        Args:
            q: (6,) joint positions, rad.
            qd: (6,) actual joint velocities, rad/s.
            command: (6,) commanded joint velocities, rad/s, or (K, 6) candidates.
            samples: Points per phase (following the command, braking).

        Returns:
            float64 (2 * samples, 6) joint positions, rad (``(K, 2 * samples, 6)`` for K
            candidates): ``samples`` evenly spaced over the horizon (the last at its end),
            then over the brake (the last at rest).
        """
        acc, h = self.arm.acceleration, self.horizon
        change = (np.atleast_2d(command) - qd)[:, None, :]  # (K, 1, 6)
        t_ramp = np.maximum(np.abs(change).max(axis=2, keepdims=True) / acc, 1e-12)
        t = h * np.arange(1, samples + 1)[None, :, None] / samples
        ramp = np.minimum(t, t_ramp)
        follow = q + qd * ramp + change * (ramp**2 / (2 * t_ramp)) \
            + (qd + change * (ramp / t_ramp)) * (t - ramp)
        qd_h = qd + change * np.minimum(h / t_ramp, 1.0)
        t_stop = np.abs(qd_h).max(axis=2, keepdims=True) / acc
        s = t_stop * np.arange(1, samples + 1)[None, :, None] / samples  # 0 at rest already
        brake = follow[:, -1:] + qd_h * (s - s**2 / (2 * np.maximum(t_stop, 1e-12)))
        path = np.concatenate([follow, brake], axis=1)
        return path if np.ndim(command) == 2 else path[0]

    def path_violation(self, q: np.ndarray, qd: np.ndarray,
                       command: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """The worst excursion outside the joint limits, the box and the screen clearance.

        The limits are widened to take in the current position, so an arm a hair outside
        (model error, see :data:`RETURN_BEYOND_M`) may hold or move back, but not further out.

        Returns:
            ``(joints, box, screen)``: float64 (6,) rad, (3,) m and a float m, signed as in
            :meth:`joint_violation`, :meth:`box_violation` and :meth:`screen_violation`
            (0 where the whole path of :meth:`predicted_path` stays inside).
        """
        joints, box, screen = self._path_violations(q, qd, np.asarray(command)[None])
        return joints[0], box[0], float(screen[0])

    def _path_violations(self, q: np.ndarray, qd: np.ndarray, commands: np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`path_violation` of K candidate commands (K, 6) in one batched FK.

        Returns:
            float64 (K, 6) rad, (K, 3) m and (K,) m.
        """
        path = self.predicted_path(q, qd, commands)  # (K, P, 6)
        k, n = path.shape[:2]
        poses = flange_poses(np.vstack([q, path.reshape(-1, 6)]), self.arm.model)
        flange = point_positions(poses)
        p_now, flange = flange[0], flange[1:].reshape(k, n, 3)
        joints = (np.minimum(path - np.minimum(self.q_low, q), 0.0)
                  + np.maximum(path - np.maximum(self.q_high, q), 0.0))
        box = (np.minimum(flange - np.minimum(self.box_low, p_now), 0.0)
               + np.maximum(flange - np.maximum(self.box_high, p_now), 0.0))
        screen = np.zeros(k)
        if self.lens is not None:
            d = self._lens_distances(poses)
            floor = min(self.safety.screen_clearance, d[0])
            screen = np.minimum(d[1:].reshape(k, n).min(axis=1) - floor, 0.0)
        worst = lambda v: np.take_along_axis(  # noqa: E731
            v, np.abs(v).argmax(axis=1)[:, None, :], axis=1)[:, 0]
        return worst(joints), worst(box), screen

    def apply(self, q: np.ndarray, qd: np.ndarray, command: np.ndarray) -> SafetyResult:
        """Make a joint-velocity command safe to send.

        Order: zero inactive joints and clip to ``speed_max``; if the arm is already
        outside the limits, drive it back (or hold it); else if the command's path
        (:meth:`predicted_path`) leaves the joint limits or the flange box, slide along
        them or brake (the module docstring).

        Args:
            q: float (6,) current joint positions, rad.
            qd: float (6,) current joint velocities, rad/s.
            command: float (6,) requested joint velocities, rad/s.

        Returns:
            The command to send (rad/s) and the interventions made.

        Raises:
            ValueError: If an input is not a finite (6,) vector.
        """
        q = np.asarray(q, np.float64)
        qd = np.asarray(qd, np.float64)
        command = np.array(command, np.float64)
        for name, v in (("q", q), ("qd", qd), ("command", command)):
            if v.shape != (6,) or not np.all(np.isfinite(v)):
                raise ValueError(f"safety check needs a finite (6,) {name}, got {v}")
        out: list[Intervention] = []
        if np.any(command[~self.active] != 0.0):
            moved = np.flatnonzero(~self.active & (command != 0)).tolist()
            out.append(Intervention("inactive_joint", f"zeroed joints {moved}"))
            command[~self.active] = 0.0
        np.clip(command, -self.arm.speed_max, self.arm.speed_max, out=command)

        joints_now, box_now = self.joint_violation(q), self.box_violation(q)
        screen_now = self.screen_violation(q)
        if np.any(np.abs(joints_now) > RETURN_BEYOND_RAD) or \
                np.any(np.abs(box_now) > RETURN_BEYOND_M) or -screen_now > RETURN_BEYOND_M:
            if self.safety.on_box_exit == "stop":
                command, action = np.zeros(6), "holding"
            else:
                command, action = self._toward_home(q), "returning toward home"
            kind = "joint_limit" if np.any(np.abs(joints_now) > RETURN_BEYOND_RAD) else \
                "box" if np.any(np.abs(box_now) > RETURN_BEYOND_M) else "screen"
            out.append(Intervention(kind, f"outside the limits (joints "
                                    f"{np.round(np.rad2deg(joints_now), 2).tolist()} deg, box "
                                    f"{np.round(box_now, 4).tolist()} m, screen clearance "
                                    f"{screen_now:.4f} m); {action}"))
            return SafetyResult(command, out)

        joints_rest, box_rest, screen_rest = self.path_violation(q, qd, command)
        if not (np.any(joints_rest != 0.0) or np.any(box_rest != 0.0) or screen_rest != 0.0):
            return SafetyResult(command, out)
        safe = self._slide(q, command, joints_rest, box_rest, screen_rest)
        scale = 0.0 if self.safety.on_limit == "brake" else self._largest_safe_scale(q, qd, safe)
        safe = scale * safe
        kept = float(np.dot(safe, command) / max(np.dot(command, command), 1e-12))
        action = f"braking (kept {kept:.0%} of the command)" if scale == 0.0 else \
            f"sliding (kept {kept:.0%} of the command)"
        if np.any(joints_rest != 0.0):
            bad = np.flatnonzero(joints_rest).tolist()
            out.append(Intervention(
                "joint_limit", f"joints {bad} would come to rest "
                f"{np.round(np.rad2deg(joints_rest[bad]), 2).tolist()} deg outside; {action}"))
        if np.any(box_rest != 0.0):
            out.append(Intervention(
                "box", f"flange would come to rest {np.round(box_rest, 4).tolist()} m outside "
                f"the box; {action}"))
        if screen_rest != 0.0:
            out.append(Intervention(
                "screen", f"camera would come to rest {-screen_rest:.4f} m inside the "
                f"{self.safety.screen_clearance} m screen clearance; {action}"))
        return SafetyResult(safe, out)

    def passes(self, q: np.ndarray, qd: np.ndarray, command: np.ndarray) -> bool:
        """Whether ``command``'s path (:meth:`predicted_path`) stays inside all limits.

        Args:
            q: float (6,) joint positions, rad.
            qd: float (6,) joint velocities, rad/s.
            command: float (6,) joint velocities, rad/s.
        """
        joints, box, screen = self.path_violation(q, qd, command)
        return not (np.any(joints != 0.0) or np.any(box != 0.0) or screen != 0.0)

    def _slide(self, q: np.ndarray, command: np.ndarray, joints_rest: np.ndarray,
               box_rest: np.ndarray, screen_rest: float) -> np.ndarray:
        """Remove the parts of ``command`` that push through the violated limits (steps 1-2)."""
        slid = command.copy()
        toward = np.sign(slid) == np.sign(joints_rest)
        frozen = (joints_rest != 0.0) & toward
        slid[frozen] = 0.0
        free = self.active & ~frozen
        jac = flange_jacobian(q, self.arm.model)
        # each violated face as the joint-space row of its outward speed, m/s per rad/s
        outward = [np.sign(box_rest[axis]) * jac[axis] for axis in np.flatnonzero(box_rest)]
        if screen_rest != 0.0:
            outward.append(-self.screen_normal @ flange_jacobian(q, self.arm.model, self.lens))
        for _ in range(3):  # cyclic projections: a corner has up to four faces
            for face in outward:
                row = np.where(free, face, 0.0)
                norm2 = float(row @ row)
                excess = float(row @ slid) + self.safety.slide_inward_speed
                if norm2 > 1e-12 and excess > 0.0:
                    slid -= row * (excess / norm2)
        return slid

    def _largest_safe_scale(self, q: np.ndarray, qd: np.ndarray, command: np.ndarray,
                            steps: int = 16) -> float:
        """The largest s in {1/steps, ..., 1} with ``s * command`` passing (step 3).

        The whole command is checked first (a slid command usually passes); the other
        candidates in one batched forward kinematics (:meth:`_path_violations`), since the
        control thread runs this within a controller tick.

        Returns 0.0 (a full brake) when no candidate passes.
        """
        if self.passes(q, qd, command):
            return 1.0
        scales = np.arange(steps - 1, 0, -1) / steps
        joints, box, screen = self._path_violations(q, qd, scales[:, None] * command)
        ok = ~(np.any(joints != 0.0, axis=1) | np.any(box != 0.0, axis=1) | (screen != 0.0))
        return float(scales[np.argmax(ok)]) if ok.any() else 0.0

    def _toward_home(self, q: np.ndarray) -> np.ndarray:
        qd = self.safety.return_gain * (self.q_home - q)
        qd[~self.active] = 0.0
        peak = np.max(np.abs(qd))
        limit = 0.25 * self.arm.speed_max
        return qd * (limit / peak) if peak > limit else qd
