"""The emulated controller's rig I/O (sim/emulator_io.py) and its faults, seen by real clients.

The camera stream is read by OpenCV (``cv2.VideoCapture``, FFmpeg) and by the project's real
camera backend; the screen is sent by the project's real display backend; the faults are
seen through the installed ur_rtde. Every controller runs in a child process on its own
127.x.y.z address (RTDE's port 30004 is fixed), HTTP on a free port. Nothing here asserts a
duration: a loaded machine makes these tests slower, not wrong.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import cv2
import numpy as np
import pytest
from polling import wait_for

from robot.backends.base import DeviceError
from robot.backends.monitor import WindowDisplay
from robot.backends.webcam import OpenCVCamera
from robot.config import Q_HOME, ConfigError, MonitorConfig, TargetConfig, config_from_dict
from robot.task import draw_target
from sim.emulator_io import render_config
from sim.mirror import Mirror

SCREEN_WH = (1920, 1080)


@pytest.fixture(scope="module")
def mirror():
    """An in-process mirror that renders what the emulator's camera should show."""
    cfg = render_config("ur5")
    m = Mirror(cfg.arm, cfg.camera, cfg.monitor, cfg.sim)
    yield m
    m.close()


def read_rgb(cap: cv2.VideoCapture) -> np.ndarray:
    ok, bgr = cap.read()
    assert ok, "the stream delivered no frame"
    return bgr[..., ::-1]


def jpeg_close(frame: np.ndarray, reference: np.ndarray) -> bool:
    """Equal within JPEG loss: mean error < 2 levels, under 1 % of pixels off by > 40."""
    diff = np.abs(frame.astype(np.int16) - reference.astype(np.int16)).max(axis=2)
    return frame.shape == reference.shape and diff.mean() < 2.0 and np.mean(diff > 40) < 0.01


def red_centroid(rgb: np.ndarray) -> np.ndarray | None:
    """Centre (x, y) of the target-red pixels, px; None without any."""
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    ys, xs = np.nonzero((r > 150) & (g < 80) & (b < 80))
    return None if len(xs) < 20 else np.array([xs.mean(), ys.mean()])


def http(method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


# --------------------------------------------------------------------------- camera


def test_opencv_reads_the_mirrors_camera_at_the_arms_joint_positions(
        make_controller, clients, mirror):
    controller = make_controller("ur5", http_port=0)
    cap = cv2.VideoCapture(controller.url("/camera.mjpg"), cv2.CAP_FFMPEG)
    try:
        assert cap.isOpened()
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) \
            == (640, 360)
        home = mirror.render(subsample=1, q=np.array(controller.status()["q"]))
        assert jpeg_close(read_rgb(cap), home)

        goal = list(Q_HOME)
        goal[0] += 0.2
        goal[4] -= 0.1
        control = clients("control", controller.host)
        assert control.moveJ(goal, 1.0, 1.4)  # returns at rest at the goal
        q = np.array(controller.status()["q"])
        np.testing.assert_allclose(q, goal, atol=1e-4)
        moved = mirror.render(subsample=1, q=q)
        assert not jpeg_close(moved, home)
        assert wait_for(lambda: jpeg_close(read_rgb(cap), moved), interval=0)
    finally:
        cap.release()

    # The project's camera backend opens the same stream by its URL.
    cfg = render_config("ur5").camera.model_copy(
        update={"device": controller.url("/camera.mjpg"), "subsample": 4})
    camera = OpenCVCamera(cfg, agent_period=0.04, timeout=5.0)
    camera.connect()
    try:
        assert camera.settings["backend"] == "FFMPEG"
        assert wait_for(lambda: jpeg_close(camera.read(5.0).image, moved[::4, ::4]))
    finally:
        camera.disconnect()
    one = cv2.imdecode(np.frombuffer(http("GET", controller.url("/camera.jpg"))[1], np.uint8),
                       cv2.IMREAD_COLOR)
    assert jpeg_close(one[..., ::-1], moved)


def test_a_stream_url_that_serves_nothing_fails_like_a_missing_camera():
    cfg = render_config("ur5").camera.model_copy(
        update={"device": "http://user:secret@127.0.0.1:9/camera.mjpg"})
    camera = OpenCVCamera(cfg, agent_period=0.04, timeout=0.5)
    with pytest.raises(DeviceError, match="no video stream") as err:
        camera.connect()
    assert "secret" not in str(err.value)


# --------------------------------------------------------------------------- screen


def test_the_display_backends_target_shows_on_the_virtual_monitor(make_controller, mirror):
    controller = make_controller("ur5", http_port=0)
    display = WindowDisplay(MonitorConfig(output="offscreen", resolution_px=list(SCREEN_WH),
                                          url=controller.url("/screen")))
    display.connect()  # sends a white screen
    cap = cv2.VideoCapture(controller.url("/camera.mjpg"), cv2.CAP_FFMPEG)
    q = np.array(controller.status()["q"])
    seen = []
    try:
        assert red_centroid(read_rgb(cap)) is None
        for centre in ([0.3, 0.4], [0.7, 0.65]):
            image = draw_target(SCREEN_WH, np.array(centre), TargetConfig())
            display.show(image)
            mirror.set_screen(image)
            expected = red_centroid(mirror.render(subsample=1, q=q))
            assert expected is not None

            def dot_where_drawn(expected=expected) -> bool:
                found = red_centroid(read_rgb(cap))
                return found is not None and np.linalg.norm(found - expected) < 2.0

            assert wait_for(dot_where_drawn, interval=0)
            seen.append(expected)
            status, png = http("GET", controller.url("/screen.png"))
            assert status == 200
            shown = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
            np.testing.assert_array_equal(shown, image)  # PNG both ways: lossless
    finally:
        cap.release()
        display.disconnect()
    assert seen[1][0] - seen[0][0] > 100  # the dot moved right in the image ...
    assert seen[1][1] - seen[0][1] > 30  # ... and down
    assert http("PUT", controller.url("/screen"), b"not an image")[0] == 400


def test_a_screen_url_nobody_serves_fails_at_connect():
    display = WindowDisplay(MonitorConfig(output="offscreen", url="http://127.0.0.1:9/screen"))
    with pytest.raises(DeviceError, match="monitor.url=http://127.0.0.1:9/screen"):
        display.connect()


# --------------------------------------------------------------------------- faults


KICKER = textwrap.dedent(
    """
    import sys, time, rtde_control
    control = rtde_control.RTDEControlInterface(sys.argv[1])
    control.setWatchdog(float(sys.argv[2]))
    print("armed", flush=True)
    while True:
        control.kickWatchdog()
        time.sleep(0.01)
    """
)


def test_cable_pull_stalls_the_stream_and_the_watchdog_stops_the_program(
        make_controller, clients):
    controller = make_controller("ur5")
    receive = clients("receive", controller.host)
    # The watchdog's client runs in a child: after a stalled stream ur_rtde's control
    # interface reconnects on its own threads, and calls into it meanwhile can crash the
    # process (ur_rtde 1.6.5, see docs/real-robot.md).
    kicker = subprocess.Popen([sys.executable, "-c", KICKER, controller.host, "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert kicker.stdout.readline().strip() == "armed"
        controller.pull_cable()
        time.sleep(0.2)  # a package already on its way still arrives
        stalled_at = receive.getTimestamp()
        # The socket stays up but nothing arrives: the controller clock seen by the client
        # stops, and ur_rtde gives the link up after its receive timeout.
        assert wait_for(lambda: not receive.isConnected(), timeout=30)
        assert receive.getTimestamp() == stalled_at
        status = controller.status()
        assert status["tick"] * 0.008 > stalled_at + 1.0  # the controller ticked on
        # The kicks sent meanwhile never reached it: its watchdog stopped the program.
        fired = [text for _, text in status["events"] if "RTDE watchdog" in text]
        assert len(fired) == 1
        assert not status["program_running"]
        assert controller.faults()["cable_pulled"]
    finally:
        kicker.kill()
        kicker.wait()
    controller.plug_cable()
    assert receive.reconnect()
    t0 = receive.getTimestamp()
    assert t0 > stalled_at
    assert wait_for(lambda: receive.getTimestamp() > t0)


def test_connection_reset_drops_the_client_which_reconnects(make_controller, clients):
    controller = make_controller("ur5")
    receive = clients("receive", controller.host)
    assert receive.isConnected()
    assert controller.reset_connections() == 1
    assert wait_for(lambda: not receive.isConnected(), timeout=30)
    assert receive.reconnect()
    t0 = receive.getTimestamp()
    assert wait_for(lambda: receive.getTimestamp() > t0)
    assert "1 RTDE connection(s) reset" in [t for _, t in controller.status()["events"]]


def test_a_killed_script_stops_the_arm_and_refuses_commands_until_reuploaded(
        make_controller, clients):
    controller = make_controller("ur5")
    control = clients("control", controller.host)
    for _ in range(40):
        t = control.initPeriod()
        assert control.speedJ([0.2, 0, 0, 0, 0, 0], 1.4, 0.008)
        control.waitPeriod(t)
    assert controller.kill_script()
    assert wait_for(lambda: not control.isProgramRunning())
    assert wait_for(lambda: max(map(abs, controller.status()["qd"])) < 1e-9)
    assert not control.speedJ([0.2, 0, 0, 0, 0, 0], 1.4, 0.008)
    assert controller.status()["events"][-1][1] == "program stopped: script killed"
    assert control.reuploadScript()
    assert wait_for(control.isProgramRunning)
    assert control.speedJ([0.0] * 6, 1.4, 0.008)


def test_a_slow_controller_runs_its_clock_behind_the_wall_clock(make_controller, clients):
    controller = make_controller("ur5e")
    receive = clients("receive", controller.host)
    with pytest.raises(ValueError, match=">= 1"):
        controller.slow_down(0.5)
    controller.slow_down(5.0)
    assert wait_for(lambda: controller.faults()["slowdown"] == 5.0)
    t0, w0 = receive.getTimestamp(), time.monotonic()
    time.sleep(1.0)
    rate = (receive.getTimestamp() - t0) / (time.monotonic() - w0)
    assert 0.0 < rate < 0.3  # at most 1/5 of wall speed (less on a loaded machine)
    controller.slow_down(1.0)
    assert controller.faults()["slowdown"] == 1.0


def test_faults_over_http(make_controller, clients):
    controller = make_controller("ur5e", http_port=0, unlock_delay=0.0)
    host = controller.host
    receive = clients("receive", host)
    dashboard = clients("dashboard", host)
    status, body = http("POST", controller.url("/fault/remote_control_off"))
    assert status == 200 and json.loads(body)["remote_control"] is False
    assert not dashboard.isInRemoteControl()
    assert http("DELETE", controller.url("/fault/remote_control_off"))[0] == 200
    assert dashboard.isInRemoteControl()

    assert http("POST", controller.url("/fault/protective_stop"))[0] == 200
    assert wait_for(receive.isProtectiveStopped)
    dashboard.closeSafetyPopup()
    dashboard.unlockProtectiveStop()
    assert wait_for(lambda: not receive.isProtectiveStopped())

    status, body = http("POST", controller.url("/fault/slow?factor=3"))
    assert status == 200 and json.loads(body)["slowdown"] == 3.0
    assert http("POST", controller.url("/fault/slow?factor=fast"))[0] == 400
    assert http("DELETE", controller.url("/fault/slow"))[0] == 200
    assert http("POST", controller.url("/fault/cable_pull"))[0] == 200
    assert json.loads(http("GET", controller.url("/status"))[1])["faults"]["cable_pulled"]
    assert http("DELETE", controller.url("/fault/cable_pull"))[0] == 200
    assert http("POST", controller.url("/fault/no_such_fault"))[0] == 404
    assert http("DELETE", controller.url("/fault/script_kill"))[0] == 404


# --------------------------------------------------------------------------- config


def test_config_takes_stream_urls_and_a_screen_url():
    cfg = config_from_dict({"camera": {"device": "http://127.0.0.2:8080/camera.mjpg"},
                            "monitor": {"output": "offscreen",
                                        "url": "http://127.0.0.2:8080/screen"}})
    assert cfg.camera.device == "http://127.0.0.2:8080/camera.mjpg"
    assert cfg.monitor.url == "http://127.0.0.2:8080/screen"
    for bad, key in (({"camera": {"device": "ftp://host/x"}}, "camera.device"),
                     ({"camera": {"device": -1}}, "camera.device"),
                     ({"monitor": {"url": "127.0.0.2:8080/screen"}}, "monitor.url")):
        with pytest.raises(ConfigError, match=key):
            config_from_dict(bad)


# --------------------------------------------------------------------------- madi robot check


def robot_check(controller, out, *extra):
    """``madi robot check`` against ``controller`` (its camera and screen); the table."""
    args = [sys.executable, "-m", "madi.cli", "robot", "check", "--host", controller.host,
            "--set", f"camera.device={controller.url('/camera.mjpg')}",
            "--set", "monitor.output=offscreen",
            "--set", f"monitor.url={controller.url('/screen')}", "--out", str(out), *extra]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    table = json.loads((out / "preflight.json").read_text())
    return proc.returncode, {c["name"]: (c["status"], c["detail"]) for c in table["checks"]}


def test_madi_robot_check_passes_on_the_emulator_and_fails_on_a_pulled_cable(
        make_controller, tmp_path):
    controller = make_controller("ur5", http_port=0)
    # A 1 s watchdog: at 10 Hz a starved check process on a loaded machine (not the
    # emulator, whose watchdog counts its own ticks) misses a kick and fails the jog.
    code, lines = robot_check(controller, tmp_path / "ok", "--move",
                              "--set", "arm.watchdog_hz=1")
    assert code == 0, [(k, v) for k, v in lines.items() if v[0] == "fail"]
    for name in ("controller", "robot mode", "safety status", "RTDE stream", "joint state",
                 "control script", "target display", "jog joint 0", "jog joint 4"):
        assert lines[name][0] == "pass", (name, lines[name])
    assert lines["camera"][0] in ("pass", "warn")  # warn: a loaded machine's frame rate
    assert "red target covers" in lines["camera"][1]
    assert "not seen" not in lines["camera"][1]  # the target reached the virtual monitor

    controller.pull_cable()
    code, lines = robot_check(controller, tmp_path / "cable")
    assert code == 1
    assert lines["controller"][0] == "fail"
    assert "no answer" in lines["controller"][1] and "cable" in lines["controller"][1]
