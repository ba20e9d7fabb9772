"""The real-arm backend (robot/backends/ur5.py) where the emulated controller cannot reach.

Everything else of the backend runs against the emulator with the installed ur_rtde
(tests/test_ur5_backend_emulated.py). Here, the ur_rtde test double (tests/fake_ur_rtde.py:
ur_rtde's class names and signatures, the sim mirror's arm at the controller rate, the real
controller's faults) stands in for:
- the ExternalControl URCap mode, which the emulator does not run;
- a link that stalls (pulled cable) or resets under a connected arm: the installed ur_rtde's
  control interface then reconnects on its own threads, and calls into it meanwhile crash
  or hang the calling process (docs/real-robot.md, "Known limits"). The stalled stream is
  also read here with the real ``RTDEReceiveInterface``, against the product's RTDE server.
"""

from __future__ import annotations

import contextlib
import time
from types import SimpleNamespace

import fake_ur_rtde
import numpy as np
import pytest
from fake_ur_rtde import running_controller
from polling import wait_for

from robot.backends.base import ArmLinkLostError
from robot.backends.ur5 import UR5Arm
from robot.config import config_from_dict


def ur5_config(**arm):
    return config_from_dict({
        "backend": "ur5",
        "arm": {"host": "ur-fake", "reset_duration": 0.2, "watchdog_hz": 10.0, **arm},
        "camera": {"subsample": 8},
    })



@pytest.fixture
def cfg():
    return ur5_config()


@pytest.fixture
def controller(cfg):
    with running_controller(cfg, "ur-fake", unlock_delay=0.3) as c:
        yield c


@pytest.fixture
def arm(cfg, controller):
    arm = UR5Arm(cfg.arm, rtde=fake_ur_rtde)
    arm.connect()
    yield arm
    arm.disconnect()


def test_the_urcap_control_mode_needs_no_remote_control():
    """ExternalControl URCap mode: the program runs on the pendant, nothing is uploaded."""
    cfg = ur5_config(model="ur5e")
    with running_controller(cfg, "ur-e", version=(5, 11, 0), remote_control=False):
        urcap = UR5Arm(cfg.arm.model_copy(update={"host": "ur-e", "control_mode": "urcap"}),
                       rtde=fake_ur_rtde)
        urcap.connect()
        assert urcap.step_time == pytest.approx(0.002)
        urcap.disconnect()


def test_pulled_cable_is_caught_by_the_stale_timestamp_and_the_watchdog_halts_the_arm(
        arm, controller, cfg):
    arm.set_watchdog(10.0)
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)
    controller.drop_link(cable=True)
    arm.read_state()  # within state_timeout the cached sample still passes ...
    arm.speedj(np.array([0.1, 0, 0, 0, 0, 0]), 1.4)  # ... and commands vanish silently
    time.sleep(cfg.arm.state_timeout + 0.05)
    assert arm._rx.isConnected()  # ur_rtde has not noticed (its deadline is 2.5 s) ...
    with pytest.raises(ArmLinkLostError, match="no new joint state"):
        arm.read_state()  # ... but the frozen timestamp gives it away
    # The script runs on with the last target (the ur_rtde pitfall) until the watchdog
    # sees no input for 1/10 s and halts it.
    assert wait_for(lambda: controller.watchdog_fired, 1.0)
    np.testing.assert_array_equal(controller.target, 0.0)
    controller.restore_link()
    arm.disconnect()
    arm.connect()  # a reconnect after the link is back works
    assert arm.read_state().q.shape == (6,)


def test_reset_connection_is_refused_at_once(arm, controller):
    controller.drop_link(cable=False)
    with pytest.raises(ArmLinkLostError, match="link .* is down"):
        arm.read_state()
    with pytest.raises(ArmLinkLostError):
        arm.speedj(np.zeros(6), 1.4)


def test_the_real_receive_interface_stale_and_dropped_streams_are_refused(make_server):
    """UR5Arm with ur_rtde's real RTDEReceiveInterface, against an RTDE server on loopback."""
    import rtde_receive

    server = make_server()
    cfg = ur5_config(host=server.host)
    rtde = SimpleNamespace(RTDEReceiveInterface=rtde_receive.RTDEReceiveInterface,
                           RTDEControlInterface=fake_ur_rtde.RTDEControlInterface,
                           DashboardClient=fake_ur_rtde.DashboardClient)
    q = [1.5, -2.0, 2.1, -3.0, -1.5, 3.1]
    server.set_state(q=q, qd=[0.1] * 6)
    with running_controller(cfg, server.host):  # behind the control interface
        arm = UR5Arm(cfg.arm, rtde=rtde)
        arm.connect()
        try:
            assert wait_for(lambda: np.allclose(arm.read_state().q, q))
            assert arm.read_state().qd == pytest.approx([0.1] * 6)
            server.set_state(safety_status_bits=1 | 1 << 2)
            assert wait_for(lambda: arm.read_state().protective_stopped)
            server.set_state(safety_status_bits=1)
            server.pause_stream()  # connected, but nothing new: ur_rtde serves its cache
            time.sleep(0.05)  # packages sent before the pause have arrived
            with contextlib.suppress(ArmLinkLostError):  # (already stale is fine too)
                arm.read_state()  # the last of them: the clock of staleness starts here
            time.sleep(cfg.arm.state_timeout + 0.1)
            assert arm._rx.isConnected()
            with pytest.raises(ArmLinkLostError, match="no new joint state"):
                arm.read_state()
            server.resume_stream()
            assert wait_for(lambda: _reads(arm))
            server.drop_clients()
            assert wait_for(lambda: not arm._rx.isConnected())
            with pytest.raises(ArmLinkLostError, match="link .* is down"):
                arm.read_state()
        finally:
            arm.disconnect()


def _reads(arm) -> bool:
    try:
        arm.read_state()
        return True
    except ArmLinkLostError:
        return False


