"""Session-log channels that viewers decode: Foxglove schemas and JSON Schema records.

Format 2 of the session log (:mod:`robot.session_log`) writes every channel in an
encoding that MCAP tools know, so Foxglove (and any reader with protobuf and JSON
support) decodes each message with the schema its channel declares:

- ``/agent/transition``: ``madi.Transition`` (protobuf, a schema of this project built
  here, :data:`TransitionProto`): the link's :class:`link.messages.Transition` field by
  field, frames as raw bytes with their shape; read back through the same validation;
- ``/camera/image``: ``foxglove.CompressedImage`` (protobuf), the newest camera frame of
  each agent step as JPEG, in frame ``camera``;
- ``/tf``: ``foxglove.FrameTransforms`` (protobuf), the DH link frames ``link1`` ..
  ``link5``, ``tool0`` (the flange) from forward kinematics of the joint positions read,
  ``camera`` on ``tool0`` (the hand-eye mount) and the target ``monitor``, all in ``base``;
- ``/log``: ``foxglove.Log`` (protobuf), the robot process's log lines;
- ``/agent/arm_state``, ``/control/tick`` and ``/events``: JSON messages described by a
  JSON Schema, so Foxglove's plots and tables read joint positions q (rad), velocities qd
  (rad/s) and the applied speedJ commands (rad/s) directly.

Schemas: Foxglove's message schemas (https://docs.foxglove.dev/docs/sdk/schemas), as the
``foxglove-schemas-protobuf`` package compiles them; the MCAP well-known encodings
(https://mcap.dev/spec/registry): protobuf channels carry a serialized
``FileDescriptorSet``, JSON channels a JSON Schema.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from foxglove_schemas_protobuf.CompressedImage_pb2 import CompressedImage
from foxglove_schemas_protobuf.FrameTransform_pb2 import FrameTransform
from foxglove_schemas_protobuf.FrameTransforms_pb2 import FrameTransforms
from foxglove_schemas_protobuf.Log_pb2 import Log
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtobufMessage
from mcap_protobuf.schema import build_file_descriptor_set
from scipy.spatial.transform import Rotation

from link.messages import MessageError, Transition
from robot.kinematics import link_transforms, pose_matrix

CAMERA_TOPIC = "/camera/image"
TF_TOPIC = "/tf"
LOG_TOPIC = "/log"

#: Python logging levels -> ``foxglove.Log.Level``.
_LOG_LEVELS = ((logging.CRITICAL, Log.FATAL), (logging.ERROR, Log.ERROR),
               (logging.WARNING, Log.WARNING), (logging.INFO, Log.INFO),
               (logging.DEBUG, Log.DEBUG))

#: JSON Schema of ``/events``: a ``kind`` and its details.
EVENT_SCHEMA = {"title": "madi.Event", "type": "object",
                "properties": {"kind": {"type": "string"}}, "required": ["kind"]}


def _transition_proto() -> type[ProtobufMessage]:
    """The ``madi.Transition`` protobuf message class (proto3, built without protoc)."""
    f = descriptor_pb2.FieldDescriptorProto
    fields = [("episode_id", f.TYPE_INT64), ("step_index", f.TYPE_INT64),
              ("frames", f.TYPE_BYTES), ("frames_shape", f.TYPE_UINT32),
              ("proprio", f.TYPE_FLOAT), ("next_proprio", f.TYPE_FLOAT),
              ("action", f.TYPE_FLOAT), ("reward", f.TYPE_DOUBLE), ("terminated", f.TYPE_BOOL),
              ("truncated", f.TYPE_BOOL), ("frame_time_ns", f.TYPE_INT64),
              ("action_time_ns", f.TYPE_INT64), ("policy_version", f.TYPE_INT64)]
    repeated = {"frames_shape", "proprio", "next_proprio", "action"}
    file = descriptor_pb2.FileDescriptorProto(name="madi/transition.proto", package="madi",
                                              syntax="proto3")
    message = file.message_type.add(name="Transition")
    for number, (name, kind) in enumerate(fields, start=1):
        message.field.add(name=name, number=number, type=kind,
                          label=f.LABEL_REPEATED if name in repeated else f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("madi.Transition"))


#: ``madi.Transition``: one :class:`link.messages.Transition` (frames: the raw uint8
#: bytes of the ``(n, 3, H, W)`` array, C order, its shape in ``frames_shape``).
TransitionProto = _transition_proto()


def transition_message(t: Transition) -> bytes:
    """A :class:`link.messages.Transition` as a serialized ``madi.Transition``."""
    return TransitionProto(
        episode_id=t.episode_id, step_index=t.step_index, frames=t.frames.tobytes(),
        frames_shape=t.frames.shape, proprio=t.proprio.tolist(),
        next_proprio=t.next_proprio.tolist(), action=t.action.tolist(), reward=t.reward,
        terminated=t.terminated, truncated=t.truncated, frame_time_ns=t.frame_time_ns,
        action_time_ns=t.action_time_ns, policy_version=t.policy_version,
    ).SerializeToString()


def transition_from_message(data: bytes) -> Transition:
    """A serialized ``madi.Transition`` back into a validated :class:`Transition`.

    Raises:
        MessageError: If the bytes do not parse, the frames do not fill their shape, or
            a field fails the link's validation.
    """
    try:
        m = TransitionProto.FromString(data)
    except DecodeError as err:
        raise MessageError("bad_field", f"not a madi.Transition: {err}") from None
    shape = tuple(m.frames_shape)
    if len(shape) != 4 or int(np.prod(shape)) != len(m.frames):
        raise MessageError("bad_field", f"frames: {len(m.frames)} bytes do not fill the "
                           f"shape {shape}")
    return Transition(
        episode_id=m.episode_id, step_index=m.step_index,
        frames=np.frombuffer(m.frames, np.uint8).reshape(shape),
        proprio=np.array(m.proprio, np.float32), next_proprio=np.array(m.next_proprio, np.float32),
        action=np.array(m.action, np.float32), reward=m.reward, terminated=m.terminated,
        truncated=m.truncated, frame_time_ns=m.frame_time_ns,
        action_time_ns=m.action_time_ns, policy_version=m.policy_version)


def protobuf_schema(message: type[ProtobufMessage]) -> tuple[str, bytes]:
    """MCAP schema of a protobuf channel: the full message name and its descriptor set."""
    return (message.DESCRIPTOR.full_name,
            build_file_descriptor_set(message).SerializeToString())


def json_schema(title: str, dtype: np.dtype) -> dict:
    """JSON Schema of the records of a numpy structured dtype (one property per field).

    Args:
        title: The schema's name, e.g. ``madi.ArmState``.
        dtype: Fields of integer, unsigned (flags: 0/1) or float kind, scalar or 1-D.
    """
    properties = {}
    for name in dtype.names:
        base, shape = dtype.fields[name][0].base, dtype.fields[name][0].shape
        item = {"type": "number" if base.kind == "f" else "integer"}
        properties[name] = item if not shape else {
            "type": "array", "items": item, "minItems": shape[0], "maxItems": shape[0]}
    return {"title": title, "type": "object", "properties": properties,
            "required": list(dtype.names)}


def json_record(dtype: np.dtype, **values: Any) -> bytes:
    """One JSON message of :func:`json_schema` ``(dtype)`` from keyword values.

    Raises:
        ValueError: If a field is missing or has the wrong shape.
    """
    if set(values) != set(dtype.names):
        raise ValueError(f"a {dtype.names} record needs exactly those fields, got "
                         f"{sorted(values)}")
    record = {}
    for name in dtype.names:
        field, value = dtype.fields[name][0], values[name]
        if np.shape(value) != field.shape:
            raise ValueError(f"{name} must have shape {field.shape}, got {np.shape(value)}")
        record[name] = (np.asarray(value, field.base).tolist() if field.shape
                        else float(value) if field.kind == "f" else int(value))
    return json.dumps(record).encode()


def records_from_json(rows: list[bytes], dtype: np.dtype) -> np.ndarray:
    """JSON messages of :func:`json_record` back into one structured array.

    Raises:
        ValueError: If a row is not JSON or lacks a field (KeyError is turned into this).
    """
    out = np.zeros(len(rows), dtype)
    for i, row in enumerate(rows):
        record = json.loads(row)
        try:
            out[i] = tuple(record[name] for name in dtype.names)
        except (KeyError, TypeError) as err:
            raise ValueError(f"record {i} lacks or mistypes a field: {err}") from None
    return out


def _stamp(message: Any, t_ns: int) -> None:
    message.timestamp.seconds, message.timestamp.nanos = divmod(int(t_ns), 1_000_000_000)


def compressed_image(frame: np.ndarray, t_ns: int, quality: int = 90) -> bytes:
    """A ``foxglove.CompressedImage`` (JPEG) of one camera frame, in frame ``camera``.

    Args:
        frame: uint8 (H, W, 3) RGB.
        t_ns: Capture time, ns.
        quality: JPEG quality 0-100 (lossy: the lossless frames are the transitions').
    """
    ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(frame[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"cannot JPEG-encode a frame of shape {frame.shape}")
    message = CompressedImage(frame_id="camera", format="jpeg", data=jpeg.tobytes())
    _stamp(message, t_ns)
    return message.SerializeToString()


def log_line(record: logging.LogRecord, t_ns: int) -> bytes:
    """A ``foxglove.Log`` of one Python log record."""
    level = next((fox for py, fox in _LOG_LEVELS if record.levelno >= py), Log.UNKNOWN)
    message = Log(level=level, message=record.getMessage(), name=record.name,
                  file=record.pathname, line=record.lineno)
    _stamp(message, t_ns)
    return message.SerializeToString()


@dataclass(frozen=True)
class SceneFrames:
    """The rig's fixed frames, for ``/tf``.

    Attributes:
        model: ``"ur5"`` or ``"ur5e"`` (the DH parameters).
        camera_mount: float64 (4, 4) flange <- camera (OpenCV camera axes), m.
        monitor_pose: float64 (4, 4) base <- screen centre, m.
    """

    model: str
    camera_mount: np.ndarray
    monitor_pose: np.ndarray

    @classmethod
    def from_config(cls, cfg: Any) -> SceneFrames:
        """The frames of a :class:`robot.config.Config` (arm model, camera mount, monitor)."""
        return cls(cfg.arm.model, pose_matrix(cfg.camera.mount_xyz, cfg.camera.mount_rpy),
                   pose_matrix(cfg.monitor.position, cfg.monitor.rpy))

    def transforms(self, q: np.ndarray, t_ns: int) -> bytes:
        """A ``foxglove.FrameTransforms`` of the rig at joint positions ``q`` (6,), rad."""
        links = link_transforms(q, self.model)
        frames = [("base", f"link{i + 1}", pose) for i, pose in enumerate(links[:-1])]
        frames += [("base", "tool0", links[-1]), ("tool0", "camera", self.camera_mount),
                   ("base", "monitor", self.monitor_pose)]
        quats = Rotation.from_matrix([pose[:3, :3] for _, _, pose in frames]).as_quat()
        message = FrameTransforms()
        for (parent, child, pose), (x, y, z, w) in zip(frames, quats, strict=True):
            tf = FrameTransform(parent_frame_id=parent, child_frame_id=child)
            _stamp(tf, t_ns)
            tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in pose[:3, 3])
            tf.rotation.x, tf.rotation.y, tf.rotation.z, tf.rotation.w = x, y, z, w
            message.transforms.append(tf)
        return message.SerializeToString()
