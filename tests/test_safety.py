import numpy as np
import pytest

from robot.config import ArmConfig, SafetyConfig
from robot.kinematics import flange_pose
from robot.safety import SafetyLimits

HOME = np.array(ArmConfig().q_home)


def limits(**kw):
    return SafetyLimits(SafetyConfig(**kw), ArmConfig(), horizon=0.04)


def test_home_is_inside_box_and_small_command_passes():
    lim = limits()
    assert np.all(lim.box_violation(HOME) == 0)
    qd = np.array([0.1, -0.1, 0.1, 0.0, 0.05, 0.0])
    res = lim.apply(HOME, qd)
    np.testing.assert_array_equal(res.qd, qd)
    assert res.interventions == []


def test_inactive_joint_zeroed_and_speed_clipped():
    lim = limits()
    res = lim.apply(HOME, np.array([5.0, 0, 0, 0, 0, 0.3]))
    assert res.qd[0] == pytest.approx(ArmConfig().speed_max)
    assert res.qd[5] == 0.0
    assert [i.kind for i in res.interventions] == ["inactive_joint"]


def test_joint_leaving_range_is_reversed_but_returning_joint_is_not():
    lim = limits()
    q = HOME.copy()
    q[0] = np.deg2rad(125.0)  # at the high limit of the base
    res = lim.apply(q, np.array([0.5, 0, 0, 0, 0, 0]))
    assert res.qd[0] == pytest.approx(-0.5)
    assert any(i.kind == "joint_limit" for i in res.interventions)
    res = lim.apply(q, np.array([-0.5, 0, 0, 0, 0, 0]))
    assert res.qd[0] == pytest.approx(-0.5) and res.interventions == []


def flange(q):
    return flange_pose(q)[:3, 3]


def test_box_exit_returns_toward_home_or_stops():
    lim = limits()
    # Shoulder up moves the flange up and out of the box eventually: find such a q.
    q = HOME.copy()
    while np.all(lim.box_violation(q) == 0):
        q[1] += 0.01
    res = lim.apply(q, np.array([0, 0.5, 0, 0, 0, 0]))
    assert [i.kind for i in res.interventions] == ["box"]
    # the replacement drives toward home: flange distance to the box shrinks
    q_next = q + res.qd * 0.04
    assert np.linalg.norm(lim.box_violation(q_next)) < np.linalg.norm(lim.box_violation(q))
    stop = limits(on_box_exit="stop").apply(q, np.array([0, 0.5, 0, 0, 0, 0]))
    np.testing.assert_array_equal(stop.qd, np.zeros(6))


def test_random_commands_never_leave_box_or_joint_limits():
    lim = limits()
    rng = np.random.default_rng(1)
    q = HOME.copy()
    dt = 0.04
    worst_box, worst_joint = 0.0, 0.0
    for _ in range(3000):
        qd = np.zeros(6)
        qd[:5] = rng.uniform(-2, 2, 5)
        q = q + lim.apply(q, qd).qd * dt
        worst_box = max(worst_box, np.abs(lim.box_violation(q)).max())
        over = np.maximum(q - lim.q_high, 0) + np.maximum(lim.q_low - q, 0)
        worst_joint = max(worst_joint, over.max())
    # prediction is exact to first order: overshoot is second order in the step
    assert worst_box < 0.01
    assert worst_joint < 1e-9


def test_rejects_bad_vectors():
    lim = limits()
    with pytest.raises(ValueError, match="qd"):
        lim.apply(HOME, np.array([np.nan, 0, 0, 0, 0, 0]))
    with pytest.raises(ValueError, match="q"):
        lim.apply(HOME[:5], np.zeros(6))
