import numpy as np
import pytest

from robot.config import ArmConfig, Config, SafetyConfig
from robot.kinematics import flange_jacobian
from robot.safety import SafetyLimits
from sim.env import VisualReacherEnv

HOME = np.array(ArmConfig().q_home)
STILL = np.zeros(6)


def limits(**kw):
    return SafetyLimits(SafetyConfig(**kw), ArmConfig(), horizon=0.04)


def rest_position(lim, q, qd, command):
    return lim.predicted_path(q, qd, command)[-1]


def test_home_is_inside_and_small_command_passes():
    lim = limits()
    assert np.all(lim.box_violation(HOME) == 0) and np.all(lim.joint_violation(HOME) == 0)
    command = np.array([0.1, -0.1, 0.1, 0.0, 0.05, 0.0])
    res = lim.apply(HOME, STILL, command)
    np.testing.assert_array_equal(res.qd, command)
    assert res.interventions == []


def test_inactive_joint_zeroed_and_speed_clipped():
    lim = limits()
    res = lim.apply(HOME, STILL, np.array([0.0, 0, 0, 0, 0.2, 0.3]))
    assert res.qd[5] == 0.0 and res.qd[4] == pytest.approx(0.2)
    assert [i.kind for i in res.interventions] == ["inactive_joint"]
    big = limits().apply(HOME, STILL, np.array([0.0, 0, 0, 0, -9.0, 0]))
    assert big.qd[4] == pytest.approx(-ArmConfig().speed_max) or big.qd[4] == 0.0


def test_rest_position_follows_the_leading_axis_profile():
    lim = limits()
    acc = ArmConfig().acceleration
    qd = np.array([1.4, -0.7, 0, 0, 0, 0])
    # braking from 1.4 rad/s at 1.4 rad/s^2 takes 1 s and 0.7 rad; joint 1 stops with it
    rest = rest_position(lim, HOME, qd, np.zeros(6))
    np.testing.assert_allclose(rest - HOME, [0.7, -0.35, 0, 0, 0, 0], atol=1e-12)
    # from rest, a command of 0.028 rad/s is reached in 0.02 s: ramp, cruise, brake
    cmd = np.array([acc * 0.02, 0, 0, 0, 0, 0])
    rest = rest_position(lim, HOME, STILL, cmd)
    want = 0.5 * cmd[0] * 0.02 + cmd[0] * 0.02 + 0.5 * cmd[0] * 0.02
    assert rest[0] - HOME[0] == pytest.approx(want, rel=1e-12)


def test_joint_pushing_into_its_limit_stops_while_the_others_keep_moving():
    lim = limits()
    q = HOME.copy()
    q[0] = np.deg2rad(119.5)  # 5.5 deg below the base's high limit
    # braking from 0.5 rad/s stops 5.1 deg further; 40 ms more first, 6.3 deg: too far
    qd = np.array([0.5, 0, 0, 0, 0, 0])
    res = lim.apply(q, qd, qd)
    np.testing.assert_array_equal(res.qd, np.zeros(6))
    assert [i.kind for i in res.interventions] == ["joint_limit"]
    # the base is held back, wrist 2 keeps its command
    res = lim.apply(q, qd, np.array([0.5, 0, 0, 0, 0.3, 0]))
    assert res.qd[0] == 0.0 and res.qd[4] > 0.0
    assert lim.passes(q, qd, res.qd)
    assert "sliding" in res.interventions[0].detail
    # moving away from the limit is fine
    away = lim.apply(q, -qd, -qd)
    np.testing.assert_array_equal(away.qd, -qd)


def near_box_face(lim, gap_rad=0.002):
    q = HOME.copy()
    while np.all(lim.box_violation(q + np.array([0, gap_rad, 0, 0, 0, 0])) == 0):
        q[1] += 0.0002  # shoulder until the flange is gap_rad from a face of the box
    return q


def test_command_that_would_leave_the_box_slides_along_the_face():
    lim = limits()
    q = near_box_face(lim)
    command = np.array([0.5, 1.0, 0, 0, 0, 0])  # base turns, shoulder drives out
    res = lim.apply(q, STILL, command)
    assert [i.kind for i in res.interventions] == ["box"]
    assert "sliding" in res.interventions[0].detail
    assert lim.passes(q, STILL, res.qd)
    outside = lim.box_violation(rest_position(lim, q, STILL, command))
    axis = int(np.flatnonzero(outside)[0])  # the face the shoulder drives the flange through
    outward = np.sign(outside[axis]) * flange_jacobian(q)[axis]
    assert outward @ res.qd == pytest.approx(-lim.safety.slide_inward_speed)
    assert res.qd[0] == pytest.approx(0.5, rel=0.05)  # the sideways part is kept
    # the smallest change: what is removed is along the face's normal in joint space
    row = outward * lim.active
    removed = command - res.qd
    np.testing.assert_allclose(removed / np.linalg.norm(removed), row / np.linalg.norm(row),
                               atol=1e-9)


def test_fast_approach_scales_down_or_brakes():
    lim = limits()
    q = near_box_face(lim, gap_rad=0.02)
    qd = np.array([0, 0.6, 0, 0, 0, 0])  # fast toward the face: braking barely stays inside
    res = lim.apply(q, qd, np.array([0, 2.0, 0, 0, 0, 0]))
    assert res.interventions and res.interventions[0].kind == "box"
    assert lim.passes(q, qd, res.qd) or not np.any(res.qd)


def test_the_scaled_command_is_the_largest_sixteenth_that_passes():
    """The batched candidates agree with checking each scale on its own."""
    lim = limits()
    q = near_box_face(lim, gap_rad=0.03)
    qd = np.array([0, 0.2, 0, 0, 0, 0])  # toward the face
    found = []
    for speed in (0.5, 1.0, 2.0, 3.0):
        command = np.array([0, speed, 0, 0.3, 0, 0])
        passing = [k / 16 for k in range(1, 17) if lim.passes(q, qd, k / 16 * command)]
        found.append(lim._largest_safe_scale(q, qd, command))
        assert found[-1] == (max(passing) if passing else 0.0)
    assert 0.0 < min(found) and max(found) < 1.0  # every case needed a partial scale
    batch = np.array([[0.1, 0.2, 0, 0, 0, 0], [0, 1.5, 0, 0.3, 0, 0], [0, 0, 0, 0, 0, 0]])
    assert np.allclose(lim.predicted_path(q, qd, batch),
                       [lim.predicted_path(q, qd, c) for c in batch])


def test_brake_rule_stops_every_joint():
    lim = limits(on_limit="brake")
    q = near_box_face(lim)
    res = lim.apply(q, STILL, np.array([0.5, 1.0, 0, 0, 0, 0]))
    np.testing.assert_array_equal(res.qd, np.zeros(6))
    assert "braking" in res.interventions[0].detail


def test_outside_returns_toward_home_or_holds():
    lim = limits()
    q = HOME.copy()
    while np.abs(lim.box_violation(q)).max() < 0.005:  # beyond model error
        q[1] += 0.01
    res = lim.apply(q, STILL, np.array([0, 0.5, 0, 0, 0, 0]))
    assert "returning toward home" in res.interventions[0].detail
    q_next = q + res.qd * 0.2
    assert np.linalg.norm(lim.box_violation(q_next)) < np.linalg.norm(lim.box_violation(q))
    hold = limits(on_box_exit="stop").apply(q, STILL, np.array([0, 0.5, 0, 0, 0, 0]))
    np.testing.assert_array_equal(hold.qd, np.zeros(6))


def test_random_actions_in_the_mirror_never_leave_box_or_joint_limits():
    """The real speedJ physics of the mirror, full-speed random and constant actions."""
    env = VisualReacherEnv(Config())
    rng = np.random.default_rng(1)
    worst_box, worst_joint, intervened = 0.0, 0.0, 0
    try:
        for episode in range(8):
            env.reset(seed=episode)
            constant = rng.choice([-1.0, 1.0], 5).astype(np.float32)
            for step in range(150):
                action = constant if episode % 2 else rng.uniform(-1, 1, 5).astype(np.float32)
                _, _, _, truncated, info = env.step(action)
                q = env.mirror.q
                worst_box = max(worst_box, np.abs(env.safety.box_violation(q)).max())
                worst_joint = max(worst_joint, np.abs(env.safety.joint_violation(q)).max())
                intervened += any(i.startswith(("box", "joint")) for i in info["interventions"])
                assert not info["contacts"], (episode, step, info["contacts"])
    finally:
        env.close()
    assert intervened > 0  # the limits were actually approached
    assert worst_box < 1e-3 and worst_joint < 1e-3


def test_rejects_bad_vectors():
    lim = limits()
    with pytest.raises(ValueError, match="command"):
        lim.apply(HOME, STILL, np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="q"):
        lim.apply(HOME[:5], STILL, np.zeros(6))


def test_batched_flange_positions_match_the_single_pose():
    from robot.kinematics import flange_pose, flange_positions

    qs = np.random.default_rng(0).uniform(-3, 3, (7, 6))
    for model in ("ur5", "ur5e"):
        want = np.array([flange_pose(q, model)[:3, 3] for q in qs])
        np.testing.assert_allclose(flange_positions(qs, model), want, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        flange_positions(np.zeros(6))
    lens = np.array([0.0, -0.05, 0.03])
    want = np.array([flange_pose(q)[:3, :3] @ lens + flange_pose(q)[:3, 3] for q in qs])
    np.testing.assert_allclose(flange_positions(qs, "ur5", lens), want, atol=1e-12)


def test_the_jacobian_of_a_point_on_the_flange_matches_finite_differences():
    from robot.kinematics import flange_positions

    q, lens, eps = HOME + 0.1, np.array([0.0, -0.05, 0.03]), 1e-6
    numeric = np.stack([(flange_positions((q + eps * e)[None], "ur5", lens)[0]
                         - flange_positions((q - eps * e)[None], "ur5", lens)[0]) / (2 * eps)
                        for e in np.eye(6)], axis=1)
    np.testing.assert_allclose(flange_jacobian(q, "ur5", lens), numeric, atol=1e-8)


def test_the_camera_slides_along_the_screen_clearance_and_never_enters_it():
    """Full speed straight at the screen, in the mirror: the lens stops at the clearance."""
    cfg = Config()
    assert limits().screen_violation(HOME) == 0.0 and limits().lens is None  # box only
    env = VisualReacherEnv(cfg)
    lim = env.safety
    clearance = cfg.safety.screen_clearance
    nearest, screened = np.inf, 0
    try:
        env.reset(seed=0)
        for step in range(150):
            q = env.mirror.q
            jac = flange_jacobian(q, cfg.arm.model, lim.lens)[:, cfg.arm.active_joints]
            toward = np.linalg.pinv(jac) @ (-lim.screen_normal)  # lens straight at the screen
            sideways = np.linalg.pinv(jac) @ np.array([0.1, 0.0, 0.0])
            action = np.clip((toward / np.abs(toward).max() + sideways), -1, 1)
            _, _, _, truncated, info = env.step(action.astype(np.float32))
            nearest = min(nearest, float(lim.screen_distance(env.mirror.q)))
            screened += any(i.startswith("screen") for i in info["interventions"])
            assert not info["contacts"], (step, info["contacts"])
            assert not (truncated and step < 149)  # the time limit, no protective stop
    finally:
        env.close()
    assert screened > 0
    assert clearance - 1e-3 < nearest < clearance + 0.01  # reached it, never went through


def test_a_command_into_the_screen_keeps_its_sideways_part():
    cfg = Config()
    lim = SafetyLimits.for_rig(cfg, horizon=0.04)
    q = HOME.copy()
    jac = flange_jacobian(q, cfg.arm.model, lim.lens)
    # walk the lens toward the screen until it is 0.5 mm from the clearance
    while lim.screen_distance(q) > cfg.safety.screen_clearance + 5e-4:
        q = q + np.linalg.pinv(jac) @ (-lim.screen_normal * 2e-4)
        jac = flange_jacobian(q, cfg.arm.model, lim.lens)
    pinv = np.linalg.pinv(jac)
    inward, sideways = pinv @ (-lim.screen_normal * 0.5), pinv @ np.array([0.3, 0.0, 0.0])
    inward[~lim.active] = sideways[~lim.active] = 0.0
    res = lim.apply(q, STILL, inward + sideways)
    assert [i.kind for i in res.interventions] == ["screen"]
    lens_velocity = flange_jacobian(q, cfg.arm.model, lim.lens) @ res.qd
    assert lens_velocity @ lim.screen_normal > -0.03  # no more than the inward slide speed
    assert abs(lens_velocity[0]) > 0.05  # much of the sideways 0.3 m/s is left (a brake: 0)
    assert lim.passes(q, STILL, res.qd)


def test_poses_inside_every_limit_touch_nothing():
    """Joint limits, flange box and screen clearance together keep the mirror contact-free.

    Without the clearance, 7 of 3,069 such poses put the webcam or the wrist-2 housing
    into the monitor's bezel; with it, none of 2,981 (20,000 draws, seed 0).
    """
    from sim.mirror import Mirror

    cfg = Config()
    lim = SafetyLimits.for_rig(cfg)
    lo, hi = np.deg2rad(cfg.safety.joint_low_deg), np.deg2rad(cfg.safety.joint_high_deg)
    rng = np.random.default_rng(0)
    checked, near_screen = 0, 0
    with Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim) as mirror:
        while checked < 300:
            q = HOME.copy()
            q[:5] = rng.uniform(lo[:5], hi[:5])
            if np.any(lim.box_violation(q)) or lim.screen_violation(q) < 0:
                continue
            checked += 1
            near_screen += lim.screen_distance(q) < cfg.safety.screen_clearance + 0.05
            mirror.reset(q)
            mirror.advance(0.002)
            assert mirror.contacts() == [], np.rad2deg(q).round(1)
    assert near_screen > 10  # the draws did go near the screen
