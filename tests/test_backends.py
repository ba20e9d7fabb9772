"""Device interface contract, the Rig's ordering, and the sim backend (SimRig)."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np
import pytest

from robot.backends.base import (
    Arm,
    ArmState,
    Camera,
    DeviceError,
    DeviceNotConnectedError,
    Frame,
    ProtectiveStopError,
    Rig,
    TargetDisplay,
)
from robot.backends.sim import SimRig
from robot.config import Config

CFG = Config()
HOME = np.array(CFG.arm.q_home)
PERIOD = CFG.arm.control_period
PERIOD_NS = round(PERIOD * 1e9)
ACC = CFG.arm.acceleration
#: Shoulder angle a little above where the webcam first touches the table (about -1.0).
SHOULDER_NEAR_TABLE = -1.15


@pytest.fixture(scope="module")
def rig():
    with SimRig(CFG) as r:
        yield r


@pytest.fixture
def home(rig):
    rig.arm.move_home(HOME, 0.0)
    return rig


# --------------------------------------------------------------- contract with fakes
class Recorder:
    def __init__(self):
        self.log: list[str] = []


class FakeArm(Arm):
    name = "fake arm"

    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    @property
    def control_period(self) -> float:
        return 0.008

    def _connect(self):
        self.rec.log.append("arm.connect")

    def _disconnect(self):
        self.rec.log.append("arm.disconnect")

    def _read_state(self):
        return ArmState(np.zeros(6), np.zeros(6), 0)

    def _speedj(self, qd, acceleration):
        self.rec.log.append("arm.speedj")

    def _speed_stop(self, deceleration):
        self.rec.log.append(f"arm.speed_stop({deceleration})")

    def _move_home(self, q, duration):
        pass

    def _set_watchdog(self, min_frequency):
        pass



class FakeCamera(Camera):
    name = "fake camera"

    def __init__(self, rec: Recorder, fail: bool = False):
        super().__init__()
        self.rec, self.fail = rec, fail

    @property
    def obs_size(self):
        return (2, 3)

    def _connect(self):
        if self.fail:
            raise DeviceError("no camera at /dev/video9")
        self.rec.log.append("camera.connect")

    def _disconnect(self):
        self.rec.log.append("camera.disconnect")

    def _read(self, timeout):
        return Frame(np.zeros((2, 3, 3), np.uint8), 0, 0)


class FakeDisplay(TargetDisplay):
    name = "fake display"

    def __init__(self, rec: Recorder):
        super().__init__()
        self.rec = rec

    @property
    def size_px(self):
        return (4, 3)

    def _connect(self):
        self.rec.log.append("display.connect")

    def _disconnect(self):
        self.rec.log.append("display.disconnect")

    def _show(self, image):
        self.rec.log.append("display.show")


def test_rig_connects_arm_last_and_stops_it_first():
    rec = Recorder()
    rig = Rig(FakeArm(rec), FakeCamera(rec), FakeDisplay(rec), stop_deceleration=3.0)
    with rig:
        assert rig.is_connected
        rig.connect()  # idempotent
    assert not rig.is_connected
    assert rec.log == ["display.connect", "camera.connect", "arm.connect",
                       "arm.speed_stop(3.0)", "arm.disconnect", "camera.disconnect",
                       "display.disconnect"]
    rig.disconnect()  # idempotent: nothing more happens
    assert len(rec.log) == 7


def test_rig_connect_failure_leaves_nothing_connected():
    rec = Recorder()
    rig = Rig(FakeArm(rec), FakeCamera(rec, fail=True), FakeDisplay(rec), stop_deceleration=1)
    with pytest.raises(DeviceError, match="no camera"):
        rig.connect()
    assert not (rig.arm.is_connected or rig.camera.is_connected or rig.display.is_connected)
    assert rec.log == ["display.connect", "display.disconnect"]


def test_device_input_validation():
    rec = Recorder()
    arm, display = FakeArm(rec), FakeDisplay(rec)
    with arm, display:
        with pytest.raises(ValueError, match="6 finite"):
            arm.speedj(np.zeros(5), 1.0)
        with pytest.raises(ValueError, match="6 finite"):
            arm.speedj(np.array([0, 0, np.nan, 0, 0, 0]), 1.0)
        with pytest.raises(ValueError, match="acceleration"):
            arm.speedj(np.zeros(6), 0.0)
        with pytest.raises(ValueError, match="duration"):
            arm.move_home(HOME, -1.0)
        with pytest.raises(ValueError, match="uint8"):
            display.show(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="stop_deceleration"):
        Rig(arm, FakeCamera(rec), display, stop_deceleration=0)


# ------------------------------------------------------------------------ SimRig
def test_sim_lifecycle_and_use_before_connect():
    rig = SimRig(CFG)
    calls = [lambda: rig.arm.read_state(), lambda: rig.arm.speedj(np.zeros(6), ACC),
             lambda: rig.arm.speed_stop(ACC), lambda: rig.arm.move_home(HOME, 0.0),
             lambda: rig.camera.read(), lambda: rig.display.show(np.zeros((4, 4, 3), np.uint8))]
    for call in calls:
        with pytest.raises(DeviceNotConnectedError, match="not connected"):
            call()
    assert issubclass(DeviceNotConnectedError, ConnectionError)
    rig.connect()
    rig.connect()
    assert rig.is_connected
    rig.arm.disconnect()  # the mirror stays up while the camera uses it
    assert rig.camera.read().image.shape == (*CFG.camera.obs_size, 3)
    with pytest.raises(DeviceNotConnectedError):
        rig.arm.read_state()
    rig.disconnect()
    rig.disconnect()
    assert not rig.is_connected
    for call in calls:
        with pytest.raises(DeviceNotConnectedError):
            call()
    with rig:  # reconnects with a fresh mirror
        assert rig.arm.read_state().t_ns == 0


def test_speedj_advances_one_tick_within_the_acceleration_bound(home):
    arm = home.arm
    s0 = arm.read_state()
    target = np.array([1.0, -1.0, 0.5, 0.0, 0.0, 0.0])
    arm.speedj(target, ACC)
    s1 = arm.read_state()
    assert s1.t_ns - s0.t_ns == PERIOD_NS
    # From rest the leading axis gains exactly a * dt; the others follow in proportion.
    np.testing.assert_allclose(s1.qd, target * (ACC * PERIOD), atol=1e-6)
    qd = [s1.qd]
    for _ in range(20):
        arm.speedj(target, ACC)
        qd.append(arm.read_state().qd)
    dv = np.abs(np.diff(qd, axis=0)).max(axis=1)
    assert np.all(dv <= ACC * PERIOD * 1.01)
    # A smaller bound is honoured; a larger one is capped at the mirror's arm.acceleration.
    arm.move_home(HOME, 0.0)
    arm.speedj(target, 0.25)
    np.testing.assert_allclose(np.abs(arm.read_state().qd).max(), 0.25 * PERIOD, rtol=1e-3)
    arm.speedj(target, 100.0)
    assert np.abs(arm.read_state().qd).max() <= (0.25 + ACC) * PERIOD * 1.01
    arm.speed_stop(ACC)
    state = arm.read_state()
    np.testing.assert_allclose(state.qd, 0.0, atol=1e-6)
    assert not state.protective_stopped


def test_move_home_takes_its_sim_duration(home):
    arm = home.arm
    arm.speedj(np.array([0.5, 0, 0, 0, 0, 0]), ACC)
    t0 = arm.read_state().t_ns
    q = HOME + np.array([0.1, -0.1, 0.1, 0.0, 0.0, 0.0])
    arm.move_home(q, 0.4)
    s = arm.read_state()
    assert s.t_ns - t0 == round(0.4 / PERIOD) * PERIOD_NS
    np.testing.assert_allclose(s.q, q, atol=1e-5)
    np.testing.assert_allclose(s.qd, 0.0, atol=1e-5)


def test_camera_frames_shape_time_and_sequence(home):
    rig = home
    frames = []
    for _ in range(3):
        frames.append(rig.camera.read())
        rig.arm.speedj(np.array([0.5, 0.0, 0.0, 0.0, 0.0, 0.0]), ACC)
    for f in frames:
        assert f.image.shape == (*CFG.camera.obs_size, 3) == (*rig.camera.obs_size, 3)
        assert f.image.dtype == np.uint8
    assert [f.t_ns for f in frames] == sorted({f.t_ns for f in frames})
    assert np.all(np.diff([f.seq for f in frames]) == 1)
    # Any thread may read: the rendering happens on the rig's own GL thread.
    got = {}
    worker = threading.Thread(target=lambda: got.setdefault("frame", rig.camera.read()))
    worker.start()
    worker.join(10)
    assert got["frame"].seq == frames[-1].seq + 1
    assert got["frame"].t_ns == rig.arm.read_state().t_ns


def test_camera_latency_shows_an_older_pose():
    cfg = Config()
    cfg.sim.camera_latency = 2 * PERIOD
    with SimRig(cfg) as rig:
        first = rig.camera.read()
        assert first.t_ns == 0  # never older than the last reset
        for _ in range(5):
            rig.arm.speedj(np.array([1.0, 0, 0, 0, 0, 0]), ACC)
        now = rig.arm.read_state().t_ns
        assert rig.camera.read().t_ns == now - 2 * PERIOD_NS


def test_a_slow_render_is_waited_for_and_a_hung_one_is_a_timeout(monkeypatch, caplog):
    """A render process starved by a busy host (stopped with SIGSTOP for 0.8 s) delivers
    late: the sim clock waits, a warning names it. One stopped past the stall bound
    (shortened to 1 s here) is a TimeoutError, which the robot runner turns into a stop."""
    import signal

    import robot.backends.sim as sim_backend

    monkeypatch.setattr(sim_backend, "_RENDER_STALL_TIMEOUT", 1.0)
    with SimRig(Config()) as rig:
        pid = rig._core._render_process()._proc.pid
        os.kill(pid, signal.SIGSTOP)
        resume = threading.Timer(0.8, os.kill, (pid, signal.SIGCONT))
        resume.start()
        with caplog.at_level("WARNING", logger="robot.backends.sim"):
            frame = rig.camera.read(timeout=0.3)
        resume.join()
        assert frame.image.shape == (*CFG.camera.obs_size, 3)
        assert "render took" in caplog.text and "host is busy" in caplog.text
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError, match="did not answer a render within 1.0 s"):
                rig.camera.read(timeout=0.3)
        finally:
            os.kill(pid, signal.SIGCONT)


def test_show_changes_the_rendered_frame(home):
    rig = home
    w, h = rig.display.size_px
    rig.display.show(np.full((h, w, 3), 255, np.uint8))
    white = rig.camera.read().image
    red = np.zeros((h // 2, w // 2, 3), np.uint8)  # another size: resized to size_px
    red[..., 0] = 255
    rig.display.show(red)
    shown = rig.camera.read().image
    changed = np.any(shown != white, axis=2)
    assert changed.mean() > 0.05
    # Where the screen changed it went from white to red: green and blue dropped.
    assert shown[changed][:, 1].mean() < white[changed][:, 1].mean() - 50
    rig.display.show(np.full((h, w, 3), 255, np.uint8))


def test_protective_stop_on_contact_refuses_motion_until_move_home(home):
    arm = home.arm
    near_table = HOME.copy()
    near_table[1] = SHOULDER_NEAR_TABLE
    arm.move_home(near_table, 0.0)
    assert not arm.read_state().protective_stopped
    down = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.0])  # shoulder down, no safety limits
    for _ in range(200):
        arm.speedj(down, ACC)
        if arm.read_state().protective_stopped:
            break
    state = arm.read_state()
    assert state.protective_stopped
    assert any("table" in pair for pair in arm.contacts)
    np.testing.assert_allclose(state.qd, 0.0, atol=1e-6)  # halted at once
    with pytest.raises(ProtectiveStopError, match="move_home"):
        arm.speedj(down, ACC)
    with pytest.raises(ProtectiveStopError):
        arm.speedj(-down, ACC)  # also away from the table: cleared only by move_home
    arm.speed_stop(ACC)  # stopping is always allowed
    np.testing.assert_array_equal(arm.read_state().q, state.q)  # nothing moved
    arm.move_home(HOME, 0.1)
    state = arm.read_state()
    assert not state.protective_stopped and arm.contacts == []
    arm.speedj(-down, ACC)
    assert arm.read_state().qd[1] < 0


def test_move_home_into_contact_raises(home):
    bad = HOME.copy()
    bad[1] = -0.5  # wrist through the table
    with pytest.raises(ProtectiveStopError, match="contact"):
        home.arm.move_home(bad, 0.05)
    home.arm.move_home(HOME, 0.0)
    assert not home.arm.read_state().protective_stopped
