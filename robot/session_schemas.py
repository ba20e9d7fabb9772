"""Session-log channels that viewers decode: Foxglove schemas and JSON Schema records.

Format 2 of the session log (:mod:`robot.session_log`) writes, beside the training data
(``/agent/transition``, the link codec), channels in encodings every MCAP tool knows:

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
from google.protobuf.message import Message as ProtobufMessage
from mcap_protobuf.schema import build_file_descriptor_set
from scipy.spatial.transform import Rotation

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
