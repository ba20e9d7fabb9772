"""Session logs that viewers decode: Foxglove's schemas, JSON Schema, and format-1 logs.

A session is recorded by the real robot loop on the real sim rig; the file is then read
the way Foxglove reads it: every channel through the decoder its encoding names (the
mcap-protobuf-support decoder for protobuf, JSON against the channel's JSON Schema).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import jsonschema
import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_protobuf.decoder import DecoderFactory
from scipy.spatial.transform import Rotation

from link.messages import MessageError, Transition
from robot.backends.sim import SimRig
from robot.config import config_from_dict
from robot.kinematics import flange_pose
from robot.recorder import SessionRecorder
from robot.runner import RobotRunner, spaces_of
from robot.session_log import SessionLog, SessionLogError
from robot.session_schemas import (
    SceneFrames,
    TransitionProto,
    json_record,
    json_schema,
    records_from_json,
    transition_from_message,
    transition_message,
)

FORMAT1 = Path(__file__).parent / "data" / "session_format1.mcap"


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A 12-step sim session recorded with the rig's frames and the process's log lines."""
    cfg = config_from_dict({"camera": {"subsample": 8}, "task": {"episode_steps": 6},
                            "arm": {"reset_duration": 0.1}, "sim": {"pace": "fast"}})
    run = tmp_path_factory.mktemp("rec")
    recorder = SessionRecorder(run / "session.mcap", spaces_of(cfg),
                               {"config": yaml.safe_dump(cfg.model_dump(mode="json")),
                                "backend": "sim"}, frames=SceneFrames.from_config(cfg))
    handler = recorder.log_handler()
    logging.getLogger().addHandler(handler)
    try:
        logging.getLogger("robot.test").warning("a line for the %s panel", "Log")
        RobotRunner(cfg, SimRig(cfg), run, link=None, total_steps=12, realtime=False,
                    recorder=recorder).run()
    finally:
        logging.getLogger().removeHandler(handler)
    return recorder.path, cfg


@pytest.fixture(scope="module")
def channels(session) -> dict[str, list]:
    """The session's messages decoded once, per topic (:func:`decoded`)."""
    return decoded(session[0])


def messages(channels: dict[str, list], topic: str) -> list:
    """The decoded messages of ``topic``, schema names dropped."""
    return [m for _, m in channels[topic]]


def decoded(path: Path) -> dict[str, list]:
    """Every message of every viewer channel, decoded by its encoding: {topic: [(schema,
    message)]}. JSON messages are validated against the channel's JSON Schema."""
    out: dict[str, list] = {}
    protobuf = DecoderFactory()
    with open(path, "rb") as f:
        for schema, channel, message in make_reader(f).iter_messages():
            if channel.message_encoding == "protobuf":
                value = protobuf.decoder_for("protobuf", schema)(message.data)
            elif channel.message_encoding == "json":
                assert schema.encoding == "jsonschema"
                value = json.loads(message.data)
                jsonschema.validate(value, json.loads(schema.data))
            else:
                raise AssertionError(f"{channel.topic}: encoding {channel.message_encoding}")
            out.setdefault(channel.topic, []).append((schema.name, value))
    return out


def test_every_viewer_channel_decodes_with_its_schema(channels):
    assert {t: channels[t][0][0] for t in channels} == {
        "/agent/arm_state": "madi.ArmState", "/control/tick": "madi.ControlTick",
        "/events": "madi.Event", "/camera/image": "foxglove.CompressedImage",
        "/tf": "foxglove.FrameTransforms", "/log": "foxglove.Log",
        "/agent/transition": "madi.Transition"}


def test_transitions_decode_generically_to_what_the_reader_validates(session, channels):
    generic = messages(channels, "/agent/transition")
    ours = list(SessionLog(session[0]).transitions())
    assert len(generic) == len(ours) == 12
    for g, t in zip(generic, ours, strict=True):
        frames = np.frombuffer(g.frames, np.uint8).reshape(tuple(g.frames_shape))
        np.testing.assert_array_equal(frames, t.frames)
        np.testing.assert_array_equal(np.array(g.action, np.float32), t.action)
        assert (g.episode_id, g.step_index, g.reward, g.truncated) == \
            (t.episode_id, t.step_index, t.reward, t.truncated)


def test_a_corrupt_transition_is_refused_by_name():
    t = Transition(episode_id=0, step_index=1, frames=np.zeros((1, 3, 4, 5), np.uint8),
                   proprio=np.zeros(3, np.float32), next_proprio=np.zeros(3, np.float32),
                   action=np.zeros(2, np.float32), reward=0.5, terminated=False,
                   truncated=False, frame_time_ns=1, action_time_ns=2, policy_version=0)
    back = transition_from_message(transition_message(t))
    np.testing.assert_array_equal(back.frames, t.frames)
    short = TransitionProto.FromString(transition_message(t))
    short.frames = short.frames[:-1]
    with pytest.raises(MessageError, match="do not fill the shape"):
        transition_from_message(short.SerializeToString())
    nan = TransitionProto.FromString(transition_message(t))
    nan.action[0] = float("nan")
    with pytest.raises(MessageError, match="action"):
        transition_from_message(nan.SerializeToString())
    with pytest.raises(MessageError, match="not a madi.Transition"):
        transition_from_message(b"\xff\xff\xff")


def test_camera_images_are_the_frames_the_agent_saw(session, channels):
    images = messages(channels, "/camera/image")
    transitions = list(SessionLog(session[0]).transitions())
    assert len(images) == len(transitions) == 12
    for image, t in zip(images, transitions, strict=True):
        assert image.format == "jpeg" and image.frame_id == "camera"
        rgb = cv2.imdecode(np.frombuffer(image.data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
        newest = t.frames[-1].transpose(1, 2, 0)  # keyframe or delta: the step's new frame
        assert rgb.shape == newest.shape
        assert np.abs(rgb.astype(int) - newest).mean() < 6  # JPEG at quality 90


def test_tf_places_the_flange_by_forward_kinematics(session, channels):
    path, cfg = session
    tfs = messages(channels, "/tf")
    states = SessionLog(path).arm_states()
    assert len(tfs) == len(states) > 0
    for message, state in zip(tfs, states, strict=True):
        by_child = {tf.child_frame_id: tf for tf in message.transforms}
        assert set(by_child) == {"link1", "link2", "link3", "link4", "link5", "tool0",
                                 "camera", "monitor"}
        tool0, pose = by_child["tool0"], flange_pose(state["q"], cfg.arm.model)
        assert tool0.parent_frame_id == "base"
        np.testing.assert_allclose([tool0.translation.x, tool0.translation.y,
                                    tool0.translation.z], pose[:3, 3], atol=1e-9)
        quat = [tool0.rotation.x, tool0.rotation.y, tool0.rotation.z, tool0.rotation.w]
        np.testing.assert_allclose(Rotation.from_quat(quat).as_matrix(), pose[:3, :3],
                                   atol=1e-9)
        assert by_child["camera"].parent_frame_id == "tool0"


def test_log_lines_are_recorded_with_their_level(channels):
    lines = messages(channels, "/log")
    ours = [m for m in lines if m.name == "robot.test"]
    assert len(ours) == 1 and ours[0].message == "a line for the Log panel"
    assert ours[0].level == 3  # foxglove.Log.WARNING
    assert ours[0].file.endswith("test_session_schemas.py")


def test_json_records_round_trip_and_refuse_wrong_shapes():
    dtype = np.dtype([("step", "<i8"), ("q", "<f8", (6,)), ("stale", "u1")])
    q = np.random.default_rng(0).standard_normal(6)
    row = json_record(dtype, step=3, q=q, stale=True)
    jsonschema.validate(json.loads(row), json_schema("t", dtype))
    back = records_from_json([row], dtype)
    assert back["step"][0] == 3 and back["stale"][0] == 1
    np.testing.assert_array_equal(back["q"][0], q)  # JSON keeps float64 exactly
    with pytest.raises(ValueError, match="shape"):
        json_record(dtype, step=3, q=q[:5], stale=False)
    with pytest.raises(ValueError, match="exactly those fields"):
        json_record(dtype, step=3, q=q)
    with pytest.raises(ValueError, match="lacks or mistypes"):
        records_from_json([b'{"step": 1, "q": [0, 0]}'], dtype)


def test_format_1_logs_still_read():
    """A session recorded before the Foxglove channels (committed as recorded)."""
    log = SessionLog(FORMAT1)
    assert log.format == "1" and not log.cut
    info = log.info()
    assert (info.steps, info.episodes, info.end_reason) == (8, 2, "steps done")
    states, ticks = log.arm_states(), log.control_ticks()
    assert len(states) == 10 and len(ticks) == 40
    assert np.all(np.abs(states["q"]) < 2 * np.pi) and ticks["t_ns"][-1] > ticks["t_ns"][0]
    assert [e["kind"] for e in log.events()][0] == "reset"


def test_an_unknown_format_is_refused_by_name(tmp_path):
    raw = FORMAT1.read_bytes().replace(b"format_version\x01\x00\x00\x001",
                                       b"format_version\x01\x00\x00\x009")
    assert raw != FORMAT1.read_bytes()
    (tmp_path / "s.mcap").write_bytes(raw)
    with pytest.raises(SessionLogError, match="session format 9; this madi reads 1, 2"):
        SessionLog(tmp_path / "s.mcap")
