"""Every message of the robot <-> learner link and its wire format (no pickle).

Both processes import this module; it is the one definition of what crosses the link
(docs/architecture.md). It imports neither ZeroMQ nor torch, only numpy and pydantic.

Messages (pydantic dataclasses in strict mode, validated on construction, before encoding
and on decoding; docs/link-protocol.md describes the wire format for other peers):

- control channel: :class:`Hello` (protocol version, role, config hash, run and session
  ids, :class:`Spaces`), :class:`HelloAck` (accept or reject with a reason),
  :class:`Heartbeat`, :class:`Pause`, :class:`Resume`, :class:`Shutdown`, and
  :class:`Evaluation` (robot -> learner, the results of an evaluation for its metrics);
- transitions channel (robot -> learner): :class:`Transition`;
- weights channel (learner -> robot, conflated): :class:`Weights`.

Wire format. A JSON header (UTF-8)::

    {"type": "transition", "protocol": 1, "fields": {...scalars...},
     "arrays": [{"name": "frames", "dtype": "uint8", "shape": [1, 3, 90, 160],
                 "offset": 0, "nbytes": 43200}, ...]}

followed by the raw little-endian bytes of each array, in one of two framings:

- multipart (:func:`encode`): frame 0 is the header, frame ``1 + i`` holds array ``i``
  (``offset`` 0, ``nbytes`` = the frame length); large arrays go out zero-copy;
- packed (:func:`encode_packed`), one frame for a ``CONFLATE`` socket, which would
  otherwise keep only part of a multipart message: ``b"MDP1"`` + header length (uint32
  little-endian) + header + zero padding to a multiple of 8 + payload; ``offset`` is
  relative to the payload start (8-byte aligned).

:func:`decode` accepts both framings and validates everything (type known, protocol
version equal, exactly the required fields with the right types, dtype in
:data:`ALLOWED_DTYPES`, non-negative shape dims whose product matches ``nbytes``, every
size bounded by ``max_bytes``); on any violation it raises :class:`MessageError` with a
short ``reason`` code (used by the link to count drops per reason) and never any other
exception. Arrays are read-only ``np.frombuffer`` views of the received frames.

Frames of a transition. The observation image stacks the ``k`` newest RGB frames
``(3k, H, W)`` and ``next_obs`` is ``obs`` shifted by one frame, so a transition carries
``k + 1`` distinct frames, of which only the newest is new at a 25 Hz step. A
:class:`Transition` therefore carries either that one new frame (a *delta*, 43,200 bytes
at 3x90x160) or the whole window of ``k + 1`` frames (a *keyframe*, 172,800 bytes): at an
episode start, after a dropped message, on a new learner session, whenever the chain is
broken, and every ``keyframe_every`` messages as a safety net. Sending both full stacks
would cost 259,200 bytes per step (6.5 MB/s at 25 Hz) against about 1.16 MB/s here
(keyframe every 50 steps), which matters on a remote learner over a shared network.
:class:`TransitionPacker` (robot side) makes these messages from full observations and
:class:`TransitionAssembler` (learner side) rebuilds the exact ``obs`` / ``next_obs``
dicts that :meth:`learner.replay_buffer.ReplayBuffer.add` takes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import struct
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

__all__ = [
    "ALLOWED_DTYPES",
    "HELLO_REQUIRED",
    "MAX_ARRAYS",
    "MAX_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "MESSAGE_TYPES",
    "PACKED_MAGIC",
    "PROTOCOL_VERSION",
    "ROLES",
    "Hello",
    "HelloAck",
    "Evaluation",
    "Heartbeat",
    "Message",
    "MessageError",
    "Pause",
    "Resume",
    "Shutdown",
    "Spaces",
    "Transition",
    "TransitionAssembler",
    "TransitionBounds",
    "TransitionPacker",
    "Weights",
    "decode",
    "encode",
    "encode_packed",
]

PROTOCOL_VERSION = 1
"""Version of this wire format and message set; peers must be equal (no negotiation)."""

MAX_MESSAGE_BYTES = 64 * 2**20
"""Default bound on the bytes of one message, all frames together (64 MiB).

The paper's policy (Masker 32 filters, encoder 4x32 convs, actor MLP 1024x1024) is
1,182,571 float32 parameters, 4.7 MB; a UR5 keyframe is 173 KB.
"""

MAX_HEADER_BYTES = 256 * 2**10
"""Bound on the JSON header (256 KiB)."""

MAX_ARRAYS = 1024
"""Bound on the number of arrays in one message (a state dict has a few dozen)."""

MAX_NDIM = 8
"""Bound on the dimensions of one array."""

MAX_STR = 1024
"""Bound on the characters of a string field or array name."""

MAX_COUNTERS = 256
"""Bound on the entries of :attr:`Heartbeat.counters`."""

PACKED_MAGIC = b"MDP1"
"""First four bytes of a packed (one-frame) message."""

ROLES = ("robot", "learner")
"""Values of the ``role`` fields."""

HELLO_REQUIRED = "hello required"
""":attr:`HelloAck.reason` sent to a peer that talks before its :class:`Hello` was accepted
(e.g. to a robot whose learner restarted): the peer should say hello again at once."""

ALLOWED_DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("|u1"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "int64": np.dtype("<i8"),
    "bool": np.dtype("|b1"),
}
"""dtype names allowed on the wire and their (little-endian) numpy dtypes."""

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_PACKED_PREFIX = struct.Struct("<4sI")


class MessageError(ValueError):
    """A message that cannot be encoded or decoded, with a short reason code.

    Args:
        reason: Short machine-readable code, used as the key of the link's
            ``rejected_by_reason`` counters (e.g. ``"bad_header"``, ``"protocol_version"``,
            ``"unknown_type"``, ``"bad_field"``, ``"bad_array"``, ``"too_large"``).
        detail: Human-readable explanation.

    Attributes:
        reason: The reason code.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


# ---------------------------------------------------------------------- field types
# Every scalar field is validated by pydantic in strict mode (no "1" for 1, no True for 1,
# no 1.5 for an int); numpy scalars count as the Python value they hold.
def _python_scalar(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


_Scalar = BeforeValidator(_python_scalar)
Count = Annotated[int, _Scalar, Strict(), Field(ge=0, le=_INT64_MAX)]
"""An integer in 0 .. 2**63 - 1 (ids, indices, versions, sequence numbers)."""
TimeNs = Annotated[int, _Scalar, Strict(), Field(ge=_INT64_MIN, le=_INT64_MAX)]
"""A signed 64-bit integer (``time.monotonic_ns()`` stamps, counters)."""
Finite = Annotated[float, _Scalar, Strict(), Field(allow_inf_nan=False)]
"""A finite number."""
Flag = Annotated[bool, _Scalar, Strict()]
"""A bool (not 0 or 1)."""
Text = Annotated[str, Strict(), Field(max_length=MAX_STR)]
"""A string of at most :data:`MAX_STR` characters."""
Role = Literal["robot", "learner"]
"""The ``role`` fields (:data:`ROLES`)."""


def _array(value: Any, dtype: str, ndim: int | None, finite: bool) -> np.ndarray:
    """Validate an array field; float inputs are cast to ``dtype`` when it is a float."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, duck-typed
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise ValueError(f"expected np.ndarray {dtype}, got {type(value).__name__}")
    target = ALLOWED_DTYPES[dtype]
    if value.dtype != target:
        same_kind = value.dtype.kind == target.kind and value.dtype.itemsize == target.itemsize
        if not (same_kind or (target.kind == "f" and value.dtype.kind == "f")):
            raise ValueError(f"expected dtype {dtype}, got {value.dtype}")
        value = value.astype(target)
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"expected {ndim} dims, got shape {value.shape}")
    if value.ndim > MAX_NDIM:
        raise ValueError(f"more than {MAX_NDIM} dims")
    if finite and value.dtype.kind == "f" and not np.isfinite(value).all():
        raise ValueError("expected finite values")
    return np.ascontiguousarray(value)


def Array(dtype: str, ndim: int | None = None, finite: bool = False) -> Any:  # noqa: N802
    """The type of an array field: a C-contiguous ``dtype`` array of ``ndim`` dims."""
    return Annotated[np.ndarray, BeforeValidator(partial(_array, dtype=dtype, ndim=ndim,
                                                         finite=finite))]


_CONFIG = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


def _message_error(name: str, fields: list[str], err: ValidationError) -> MessageError:
    """The first error of a pydantic validation as a :class:`MessageError`."""
    first = err.errors(include_url=False)[0]
    kind = first["type"]
    reason = ("missing_field" if kind in ("missing", "missing_argument") else
              "unknown_field" if kind in ("unexpected_keyword_argument", "extra_forbidden") else
              "bad_field")
    loc = [fields[p] if isinstance(p, int) and not i and p < len(fields) else str(p)
           for i, p in enumerate(first["loc"])]
    detail = first["msg"].removeprefix("Value error, ")
    return MessageError(reason, f"{name}.{'.'.join(loc)}: {detail}"[:300])


def _validated(cls: type) -> type:
    """``cls`` as a pydantic dataclass that raises :class:`MessageError` when invalid.

    Construction validates every field (pydantic, strict); ``__post_init__`` adds the
    checks that span fields.
    """
    cls = pydantic_dataclass(cls, config=_CONFIG)
    init = cls.__init__
    names = [f.name for f in dataclasses.fields(cls)]

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        try:
            init(self, *args, **kwargs)
        except ValidationError as err:
            raise _message_error(getattr(cls, "TYPE", "") or cls.__name__, names, err) from None

    cls.__init__ = __init__
    return cls


# ---------------------------------------------------------------------- messages
_Dim = Annotated[int, _Scalar, Strict(), Field(ge=1, le=2**16)]


@_validated
class Spaces:
    """Observation and action spaces both peers must agree on (checked at the handshake).

    Attributes:
        image_shape: ``(3k, H, W)`` of the uint8 observation image: ``k`` RGB frames of
            ``H x W`` pixels stacked on the channel axis, oldest first (UR5: (9, 90, 160)).
        proprio_dim: Size ``P`` of the float32 proprioception vector (UR5: 15).
        action_dim: Size ``A`` of the float32 action vector (UR5: 5).
    """

    image_shape: Annotated[tuple[_Dim, _Dim, _Dim], BeforeValidator(
        lambda v: tuple(v) if isinstance(v, list) else v)]
    proprio_dim: Annotated[int, _Scalar, Strict(), Field(ge=0, le=2**16)]
    action_dim: _Dim

    def __post_init__(self) -> None:
        if self.image_shape[0] % 3:
            raise ValueError(f"image_shape[0]: expected 3k channels, got {self.image_shape[0]}")

    @property
    def frame_stack(self) -> int:
        """Frames per observation ``k``."""
        return self.image_shape[0] // 3

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """One RGB frame ``(3, H, W)``."""
        return (3, self.image_shape[1], self.image_shape[2])

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (``image_shape`` as a list)."""
        return {
            "image_shape": list(self.image_shape),
            "proprio_dim": self.proprio_dim,
            "action_dim": self.action_dim,
        }

    @classmethod
    def from_json(cls, value: Any) -> Spaces:
        """Build from :meth:`to_json` output, validating keys and values.

        Args:
            value: Decoded JSON.

        Returns:
            The spaces.

        Raises:
            MessageError: If keys are missing or extra, or a value is invalid.
        """
        if isinstance(value, Spaces):
            return value
        if not isinstance(value, dict):
            raise MessageError(
                "bad_field", "spaces: expected a dict with image_shape, proprio_dim, action_dim"
            )
        try:
            return cls(**value)
        except MessageError as err:
            raise MessageError("bad_field", f"spaces: {err}") from None


_SpacesField = Annotated[Spaces, BeforeValidator(Spaces.from_json)]


class Message:
    """Base of every message: the type name and the (de)serialisation hooks.

    Subclasses are pydantic dataclasses (:func:`_validated`), checked on construction and
    again before encoding; array fields are listed in ``ARRAY_FIELDS`` with their wire
    dtype.
    """

    TYPE: ClassVar[str] = ""
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {}

    def _json_fields(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name in self.ARRAY_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = value.to_json() if isinstance(value, Spaces) else value
        return out

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return [(name, getattr(self, name)) for name in self.ARRAY_FIELDS]

    def revalidated(self) -> Message:
        """A validated copy (arrays shared): fields may have changed since construction.

        Raises:
            MessageError: If a field is no longer valid.
        """
        return type(self)(**{f.name: getattr(self, f.name)
                             for f in dataclasses.fields(self)})  # type: ignore[arg-type]

    @classmethod
    def _from_wire(cls, fields: dict[str, Any], arrays: list[tuple[str, np.ndarray]]) -> Message:
        stray = set(fields) & set(cls.ARRAY_FIELDS)
        if stray:
            raise MessageError("unknown_field", f"{cls.TYPE}: arrays in the fields {sorted(stray)}")
        got = {name for name, _ in arrays}
        if got != set(cls.ARRAY_FIELDS) or len(arrays) != len(cls.ARRAY_FIELDS):
            raise MessageError(
                "bad_array",
                f"{cls.TYPE}: expected arrays {sorted(cls.ARRAY_FIELDS)}, got {sorted(got)}",
            )
        for name, arr in arrays:
            if arr.dtype != ALLOWED_DTYPES[cls.ARRAY_FIELDS[name]]:
                raise MessageError(
                    "bad_array",
                    f"{cls.TYPE}.{name}: expected dtype {cls.ARRAY_FIELDS[name]}, got {arr.dtype}",
                )
        return cls(**fields, **dict(arrays))


@_validated
class Hello(Message):
    """Handshake, sent by the robot on the control channel until a :class:`HelloAck`.

    A new Hello is accepted at any time (a restarted robot, or a robot whose learner
    restarted), replacing the previous peer.

    Attributes:
        role: ``"robot"`` or ``"learner"``, the sender's role.
        config_hash: Hash of the run configuration; must equal the receiver's.
        run_id: Name of the run (free text, for logs).
        session_id: Random id of the sending process instance; changes on a restart.
        spaces: The sender's :class:`Spaces`; must equal the receiver's.
        protocol_version: The sender's :data:`PROTOCOL_VERSION`.
    """

    TYPE: ClassVar[str] = "hello"
    role: Role
    config_hash: Text
    run_id: Text
    session_id: Text
    spaces: _SpacesField
    protocol_version: Count = PROTOCOL_VERSION


@_validated
class HelloAck(Message):
    """Answer to a :class:`Hello`: accepted, or rejected with a reason.

    Attributes:
        accepted: True when the handshake succeeded.
        reason: Why it was rejected (empty when accepted), e.g. a config-hash mismatch or
            :data:`HELLO_REQUIRED`.
        role: The replier's role.
        config_hash: The replier's config hash (the robot checks it too); empty in a
            rejection, which an unauthenticated peer may receive.
        run_id: The replier's run name; empty in a rejection.
        session_id: The replier's process instance id (a new one means it restarted);
            empty in a rejection.
        protocol_version: The replier's :data:`PROTOCOL_VERSION`.
    """

    TYPE: ClassVar[str] = "hello_ack"
    accepted: Flag
    reason: Text
    role: Role
    config_hash: Text
    run_id: Text
    session_id: Text
    protocol_version: Count = PROTOCOL_VERSION


@_validated
class Transition(Message):
    """One agent step, robot -> learner (see the module docstring for delta/keyframe).

    Attributes:
        episode_id: Episode counter of the robot process (>= 0).
        step_index: Index of this transition in its episode, 0 for the first (>= 0).
        frames: uint8 ``(n, 3, H, W)``, RGB, 0..255. ``n == 1`` (delta): the newest frame
            of ``next_obs``; the learner takes the other ``k`` from the previous
            transition. ``n == k + 1`` (keyframe): the whole window, ``obs`` image =
            ``frames[:k]`` and ``next_obs`` image = ``frames[1:]`` (each reshaped to
            ``(3k, H, W)``).
        proprio: float32 ``(P,)``, proprioception of ``obs``.
        next_proprio: float32 ``(P,)``, proprioception of ``next_obs``.
        action: float32 ``(A,)`` in [-1, 1], the action the policy chose (the safety
            limits may have changed what the arm got; SAC learns from the chosen one).
        reward: Reward of the transition (finite).
        terminated: ``next_obs`` is terminal (no bootstrapping).
        truncated: The episode was cut by the time limit at ``next_obs``.
        frame_time_ns: Capture time of the newest frame of ``obs`` (the frame the action
            was computed from), ``time.monotonic_ns()`` of the robot machine.
        action_time_ns: Time the action was sent to the arm, same clock.
        policy_version: :attr:`Weights.version` of the policy that chose the action, 0
            for random actions before any weights arrived.
    """

    TYPE: ClassVar[str] = "transition"
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {
        "frames": "uint8",
        "proprio": "float32",
        "next_proprio": "float32",
        "action": "float32",
    }
    episode_id: Count
    step_index: Count
    frames: Array("uint8", 4)
    proprio: Array("float32", 1, finite=True)
    next_proprio: Array("float32", 1, finite=True)
    action: Array("float32", 1, finite=True)
    reward: Finite
    terminated: Flag
    truncated: Flag
    frame_time_ns: TimeNs
    action_time_ns: TimeNs
    policy_version: Count

    def __post_init__(self) -> None:
        if self.frames.shape[0] < 1 or self.frames.shape[1] != 3:
            raise ValueError(f"frames: expected (n >= 1, 3, H, W), got {self.frames.shape}")
        if self.next_proprio.shape != self.proprio.shape:
            raise ValueError(
                f"next_proprio: shape {self.next_proprio.shape} != proprio {self.proprio.shape}")

    @property
    def keyframe(self) -> bool:
        """True if :attr:`frames` holds the whole window (more than one frame)."""
        return self.frames.shape[0] > 1


_TensorName = Annotated[str, Strict(), Field(min_length=1, max_length=256)]


@_validated
class Weights(Message):
    """Policy parameters, learner -> robot, sent packed in one frame (conflated channel).

    Attributes:
        version: Monotonic version within a learner session (number of publishes or of
            updates, the learner's choice); transitions echo it as ``policy_version``.
        tensors: Named float32 arrays, ``"<module>/<parameter>"`` -> array of the
            parameter's shape, e.g. ``"actor/trunk.0.weight"`` float32 (1024, 79). See
            :meth:`from_state_dicts` / :meth:`to_state_dicts`.
        session_id: Session id of the publishing learner (the link fills it in).
    """

    TYPE: ClassVar[str] = "weights"
    version: Count
    tensors: Annotated[dict[_TensorName, Array("float32", finite=True)],
                       Field(max_length=MAX_ARRAYS)]
    session_id: Text = ""

    def _json_fields(self) -> dict[str, Any]:
        return {"version": self.version, "session_id": self.session_id}

    def _named_arrays(self) -> list[tuple[str, np.ndarray]]:
        return list(self.tensors.items())

    @classmethod
    def _from_wire(cls, fields: dict[str, Any], arrays: list[tuple[str, np.ndarray]]) -> Message:
        for name, arr in arrays:
            if arr.dtype != ALLOWED_DTYPES["float32"]:
                raise MessageError(
                    "bad_array", f"weights[{name!r}]: expected float32, got {arr.dtype}"
                )
        if "tensors" in fields:
            raise MessageError("unknown_field", "weights: tensors in the fields")
        return cls(**fields, tensors=dict(arrays))

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors (4 per parameter)."""
        return int(sum(a.nbytes for a in self.tensors.values()))

    @classmethod
    def from_state_dicts(
        cls, version: int, modules: Mapping[str, Mapping[str, Any] | None], session_id: str = ""
    ) -> Weights:
        """Flatten module state dicts into one :class:`Weights`.

        Args:
            version: :attr:`version`.
            modules: ``{"masker": sd or None, "encoder": sd, "actor": sd}``; values are
                torch tensors or numpy arrays (copied to float32 numpy); None is skipped.
            session_id: :attr:`session_id`.

        Returns:
            Weights with names ``"<module>/<parameter>"``.

        Raises:
            MessageError: On a non-float tensor, a non-finite value or a bad name.
        """
        tensors = {}
        for module, state in modules.items():
            if state is None:
                continue
            if "/" in module:
                raise MessageError("bad_field", f"module name {module!r} must not contain '/'")
            for name, value in state.items():
                if hasattr(value, "detach"):  # torch tensor: detach, to CPU, numpy
                    value = value.detach().cpu().numpy()
                # A copy: later optimiser steps must not change a message in flight.
                tensors[f"{module}/{name}"] = np.array(value, copy=True)
        return cls(version=version, tensors=tensors, session_id=session_id)

    def to_state_dicts(self, as_tensors: bool = False) -> dict[str, dict[str, Any]]:
        """Split :attr:`tensors` back into per-module state dicts.

        Args:
            as_tensors: Return writable torch tensors (copies; what
                ``nn.Module.load_state_dict`` needs) instead of the read-only numpy views.

        Returns:
            ``{"masker": {...}, "encoder": {...}, "actor": {...}}`` (the modules present).
        """
        out: dict[str, dict[str, Any]] = {}
        if as_tensors:
            import torch  # lazy: this module stays importable without torch

        for full_name, arr in self.tensors.items():
            module, _, name = full_name.partition("/")
            out.setdefault(module, {})[name] = torch.from_numpy(arr.copy()) if as_tensors else arr
        return out


@_validated
class Heartbeat(Message):
    """Application-level liveness signal, both directions on the control channel.

    Attributes:
        role: The sender's role.
        seq: Sequence number, +1 per heartbeat of the sender.
        time_ns: The sender's ``time.monotonic_ns()`` at sending (its own clock).
        counters: The sender's link and loop counters (name -> int), e.g.
            ``"weights_version"``, ``"dropped_full"``, ``"overruns"``.
    """

    TYPE: ClassVar[str] = "heartbeat"
    role: Role
    seq: Count
    time_ns: TimeNs
    counters: Annotated[dict[Annotated[str, Strict(), Field(max_length=128)], TimeNs],
                        Field(max_length=MAX_COUNTERS)] = dataclasses.field(default_factory=dict)


@_validated
class Pause(Message):
    """Ask the peer to pause (robot -> learner: stop updates, e.g. during a reset).

    Attributes:
        reason: Free text, e.g. ``"reset"``.
    """

    TYPE: ClassVar[str] = "pause"
    reason: Text = ""


@_validated
class Resume(Message):
    """End of a :class:`Pause`.

    Attributes:
        reason: Free text, e.g. ``"reset done"``.
    """

    TYPE: ClassVar[str] = "resume"
    reason: Text = ""


@_validated
class Shutdown(Message):
    """The sender is shutting down; the receiver decides what to do (e.g. exit).

    Attributes:
        reason: Free text, e.g. ``"ctrl-c"`` or ``"steps done"``.
    """

    TYPE: ClassVar[str] = "shutdown"
    reason: Text = ""


@_validated
class Evaluation(Message):
    """The results of one evaluation, robot -> learner on the control channel.

    The robot process runs the periodic evaluations of ``madi train`` (deterministic
    policy, fixed episodes) and sends their returns so the learner logs them with its
    other metrics (``charts/eval_return``: metrics.csv, TensorBoard, W&B).

    Attributes:
        env_steps: Env steps of training when the evaluation ran.
        distractions: The distraction set shown during it (e.g. ``"none"``).
        policy_version: :attr:`Weights.version` of the evaluated policy.
        returns: float64 ``(n,)``, one undiscounted return per episode, ``n >= 1``, finite.
        successes: bool ``(n,)``, whether each episode reached the target.
    """

    TYPE: ClassVar[str] = "evaluation"
    ARRAY_FIELDS: ClassVar[dict[str, str]] = {"returns": "float64", "successes": "bool"}
    env_steps: Count
    distractions: Text
    policy_version: Count
    returns: Array("float64", 1, finite=True)
    successes: Array("bool", 1)

    def __post_init__(self) -> None:
        n = len(self.returns)
        if n < 1 or len(self.successes) != n:
            raise ValueError(f"returns: {n} returns and {len(self.successes)} successes "
                             "(need the same n >= 1)")


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, HelloAck, Transition, Weights, Heartbeat, Pause, Resume, Shutdown,
                Evaluation)
}
"""Wire type name -> message class."""


# ---------------------------------------------------------------------- encoding
def _checked(msg: Message) -> Message:
    if not isinstance(msg, Message) or type(msg).TYPE not in MESSAGE_TYPES:
        raise MessageError("unknown_type", f"cannot encode {type(msg).__name__}")
    return msg.revalidated()


def _header(msg: Message, descs: list[dict[str, Any]]) -> bytes:
    header = {"type": msg.TYPE, "protocol": PROTOCOL_VERSION, "fields": msg._json_fields()}
    header["arrays"] = descs
    try:
        data = json.dumps(header, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise MessageError("bad_field", f"{msg.TYPE}: not JSON-serialisable ({err})") from err
    if len(data) > MAX_HEADER_BYTES:
        raise MessageError("too_large", f"header of {len(data)} bytes > {MAX_HEADER_BYTES}")
    return data


def _desc(name: str, arr: np.ndarray, offset: int) -> dict[str, Any]:
    dtype_name = next(k for k, v in ALLOWED_DTYPES.items() if v == arr.dtype)
    return {
        "name": name,
        "dtype": dtype_name,
        "shape": list(arr.shape),
        "offset": offset,
        "nbytes": arr.nbytes,
    }


def _raw(arr: np.ndarray) -> np.ndarray:
    """The bytes of a C-contiguous array as a 1-D uint8 view (no copy)."""
    return arr.reshape(-1).view(np.uint8)


def encode(msg: Message) -> list[bytes | np.ndarray]:
    """Encode a message as multipart frames: JSON header, then one frame per array.

    Pass the result to ``socket.send_multipart(frames, copy=False)``: array frames are
    views of the message's arrays (zero-copy above pyzmq's copy threshold of 64 KB), so
    do not modify them until the send returns.

    Args:
        msg: Any message of :data:`MESSAGE_TYPES`.

    Returns:
        ``[header bytes, uint8 view of array 0, ...]``.

    Raises:
        MessageError: If a field is invalid or the header is too large.
    """
    msg = _checked(msg)
    arrays = msg._named_arrays()
    descs = [_desc(name, arr, 0) for name, arr in arrays]
    return [_header(msg, descs), *(_raw(arr) for _, arr in arrays)]


def _align8(n: int) -> int:
    return (n + 7) & ~7


def encode_packed(msg: Message) -> bytearray:
    """Encode a message as one frame (for a ``CONFLATE`` socket).

    Layout: :data:`PACKED_MAGIC`, header length (uint32 LE), JSON header, zero padding to
    a multiple of 8, payload; every array starts at an 8-byte aligned payload offset.

    Args:
        msg: Any message of :data:`MESSAGE_TYPES`.

    Returns:
        The frame (one copy of every array).

    Raises:
        MessageError: If a field is invalid or the header is too large.
    """
    msg = _checked(msg)
    arrays = msg._named_arrays()
    descs, offset = [], 0
    for name, arr in arrays:
        descs.append(_desc(name, arr, offset))
        offset = _align8(offset + arr.nbytes)
    header = _header(msg, descs)
    start = _align8(_PACKED_PREFIX.size + len(header))
    buf = bytearray(start + offset)
    _PACKED_PREFIX.pack_into(buf, 0, PACKED_MAGIC, len(header))
    buf[_PACKED_PREFIX.size : _PACKED_PREFIX.size + len(header)] = header
    view = memoryview(buf)
    for desc, (_, arr) in zip(descs, arrays, strict=True):
        begin = start + desc["offset"]
        view[begin : begin + arr.nbytes] = memoryview(_raw(arr))
    return buf


# ---------------------------------------------------------------------- decoding
def _as_bytes_view(frame: Any) -> memoryview:
    try:
        view = memoryview(frame)
    except TypeError as err:
        raise MessageError("bad_frames", f"frame of type {type(frame).__name__}") from err
    if view.ndim != 1 or view.format != "B":
        if not view.c_contiguous:
            raise MessageError("bad_frames", "frame buffer is not contiguous")
        view = view.cast("B")
    return view


def _reject_constant(name: str) -> None:
    raise MessageError("bad_header", f"JSON constant {name} is not allowed")


class _Header(BaseModel):
    """The JSON header of every message (module docstring)."""

    model_config = ConfigDict(strict=True, extra="forbid")
    type: str
    protocol: int
    fields: dict[str, Any]
    arrays: list[Any]


class _ArrayDesc(BaseModel):
    """One entry of the header's ``arrays``: where an array's bytes are and what they are."""

    model_config = ConfigDict(strict=True, extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=256)]
    dtype: str
    shape: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_NDIM)]
    offset: Annotated[int, Field(ge=0)]
    nbytes: Annotated[int, Field(ge=0)]


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    return f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"[:200]


def _parse_header(view: memoryview) -> tuple[type[Message], dict[str, Any], list[Any]]:
    if len(view) > MAX_HEADER_BYTES:
        raise MessageError("too_large", f"header of {len(view)} bytes > {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(bytes(view).decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # includes UnicodeDecodeError
        raise MessageError("bad_header", f"header is not valid JSON ({err})") from err
    try:
        header = _Header.model_validate(obj)
    except ValidationError as err:
        raise MessageError("bad_header", f"header {_first_error(err)}") from None
    if header.protocol != PROTOCOL_VERSION:
        raise MessageError(
            "protocol_version",
            f"peer speaks protocol {header.protocol}, this side {PROTOCOL_VERSION}"
        )
    if header.type not in MESSAGE_TYPES:
        raise MessageError("unknown_type", f"unknown message type {header.type[:64]!r}")
    if len(header.arrays) > MAX_ARRAYS:
        raise MessageError("too_large", f"more than {MAX_ARRAYS} arrays")
    return MESSAGE_TYPES[header.type], header.fields, header.arrays


def _check_desc(
    i: int, desc: Any, max_bytes: int
) -> tuple[str, np.dtype, tuple[int, ...], int, int]:
    try:
        d = _ArrayDesc.model_validate(desc)
    except ValidationError as err:
        raise MessageError("bad_array", f"array {i}: {_first_error(err)}") from None
    if d.dtype not in ALLOWED_DTYPES:
        raise MessageError(
            "bad_dtype", f"array {d.name!r}: dtype {d.dtype[:32]!r} not in {sorted(ALLOWED_DTYPES)}"
        )
    dtype = ALLOWED_DTYPES[d.dtype]
    if max(d.shape, default=0) > max_bytes or max(d.offset, d.nbytes) > max_bytes:
        raise MessageError("bad_array", f"array {d.name!r}: a size beyond {max_bytes} bytes")
    if math.prod(d.shape) * dtype.itemsize != d.nbytes:
        raise MessageError(
            "bad_array",
            f"array {d.name!r}: shape {d.shape} x {dtype.itemsize} bytes != nbytes {d.nbytes}",
        )
    return d.name, dtype, tuple(d.shape), d.offset, d.nbytes


def _view_array(
    buf: memoryview, dtype: np.dtype, shape: tuple[int, ...], offset: int
) -> np.ndarray:
    count = math.prod(shape)
    if count == 0:
        arr = np.empty(shape, dtype=dtype)
    else:
        arr = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape)
    arr.flags.writeable = False
    return arr


def decode(frames: Sequence[Any], max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Decode and validate a message from multipart or packed frames.

    Args:
        frames: The frames as received: bytes, bytearray, memoryview or ``zmq.Frame``
            (anything with the buffer protocol). One frame starting with
            :data:`PACKED_MAGIC` is a packed message; otherwise frame 0 is the JSON header
            and each further frame one array.
        max_bytes: Bound on the total bytes of all frames.

    Returns:
        The message; its arrays are read-only views of the frames (keep them alive).

    Raises:
        MessageError: For any invalid input, with a reason code; never another exception.
    """
    try:
        return _decode(frames, max_bytes)
    except MessageError:
        raise
    except Exception as err:  # the contract: nothing but MessageError escapes decode
        detail = f"undecodable message ({type(err).__name__}: {err})"
        raise MessageError("internal", detail) from err


def _decode(frames: Sequence[Any], max_bytes: int) -> Message:
    if isinstance(frames, (bytes, bytearray, memoryview, str)) or not isinstance(frames, Sequence):
        raise MessageError("bad_frames", "expected a sequence of frames")
    if not 1 <= len(frames) <= MAX_ARRAYS + 1:
        raise MessageError("bad_frames", f"expected 1..{MAX_ARRAYS + 1} frames, got {len(frames)}")
    views = [_as_bytes_view(f) for f in frames]
    total = sum(len(v) for v in views)
    if total > max_bytes:
        raise MessageError("too_large", f"message of {total} bytes > max {max_bytes}")
    arrays: list[tuple[str, np.ndarray]] = []
    if len(views) == 1 and bytes(views[0][:4]) == PACKED_MAGIC:
        frame = views[0]
        if len(frame) < _PACKED_PREFIX.size:
            raise MessageError("bad_frames", "packed frame shorter than its prefix")
        _, header_len = _PACKED_PREFIX.unpack_from(frame, 0)
        header_end = _PACKED_PREFIX.size + header_len
        start = _align8(header_end)
        if start > len(frame):
            raise MessageError("bad_frames", f"packed header length {header_len} beyond the frame")
        cls, fields, descs = _parse_header(frame[_PACKED_PREFIX.size : header_end])
        payload = frame[start:]
        for i, desc in enumerate(descs):
            name, dtype, shape, offset, nbytes = _check_desc(i, desc, max_bytes)
            if offset + nbytes > len(payload):
                raise MessageError(
                    "bad_array", f"array {name!r}: bytes {offset}..{offset + nbytes} beyond payload"
                )
            arrays.append((name, _view_array(payload, dtype, shape, offset)))
    else:
        cls, fields, descs = _parse_header(views[0])
        if len(descs) != len(views) - 1:
            raise MessageError(
                "bad_frames", f"header lists {len(descs)} arrays but {len(views) - 1} frames follow"
            )
        for i, desc in enumerate(descs):
            name, dtype, shape, offset, nbytes = _check_desc(i, desc, max_bytes)
            if offset != 0 or nbytes != len(views[i + 1]):
                raise MessageError(
                    "bad_array",
                    f"array {name!r}: offset {offset}, nbytes {nbytes}, frame {len(views[i + 1])}",
                )
            arrays.append((name, _view_array(views[i + 1], dtype, shape, 0)))
    if len({name for name, _ in arrays}) != len(arrays):
        raise MessageError("bad_array", "duplicate array names")
    try:
        return cls._from_wire(fields, arrays)
    except TypeError as err:  # e.g. a field name that is not a valid keyword
        raise MessageError("bad_field", f"{cls.TYPE}: {err}") from err


# ---------------------------------------------------------------------- frame deltas
def _image(name: str, obs: Any, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(obs, Mapping) or "image" not in obs or "proprio" not in obs:
        raise ValueError(f"{name}: expected a dict with keys 'image' and 'proprio'")
    image = obs["image"]
    if not isinstance(image, np.ndarray) or image.shape != shape or image.dtype != np.uint8:
        got = (
            f"{image.dtype}{image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        )
        raise ValueError(f"{name}['image']: expected uint8{shape}, got {got}")
    return image


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One agent step as the robot loop lived it: what the link packs and the recorder keeps.

    The robot process builds one per step (:class:`robot.runner.RobotRunner`) and hands the
    same record to :meth:`link.endpoints.RobotLink.send_step` and
    :meth:`robot.recorder.SessionRecorder.transition`; :meth:`TransitionPacker.pack` turns
    it into the wire :class:`Transition` (a delta or a keyframe).

    Attributes:
        episode_id: Episode counter.
        step_index: Step in the episode (0 first).
        obs: ``{"image": uint8 (3k, H, W), "proprio": float32 (P,)}``.
        action: float32 ``(A,)``, the applied action.
        reward: Reward.
        next_obs: Same layout; its image must be ``obs`` shifted by one frame.
        terminated: Terminal ``next_obs``.
        truncated: Time-limit end at ``next_obs``.
        frame_time_ns: Capture time of the newest frame of ``obs`` (monotonic ns).
        action_time_ns: Time the action was sent (monotonic ns).
        policy_version: Weights version that chose the action (0: random).
    """

    episode_id: int
    step_index: int
    obs: Mapping[str, np.ndarray]
    action: np.ndarray
    reward: float
    next_obs: Mapping[str, np.ndarray]
    terminated: bool
    truncated: bool
    frame_time_ns: int
    action_time_ns: int
    policy_version: int


class TransitionPacker:
    """Robot side: turns full observations into :class:`Transition` messages.

    A message is a delta (newest frame only) when the learner can rebuild it from the
    previous message: same episode, next step, ``obs`` image equal to the previous
    ``next_obs`` image, fewer than ``keyframe_every`` messages since the last keyframe,
    and no :meth:`force_keyframe` since (the link calls it after a dropped message and on
    a new learner session). Otherwise it is a keyframe.

    Args:
        spaces: The observation/action spaces.
        keyframe_every: A keyframe at least every this many messages (0: only when
            needed). Bounds the transitions lost after an undetected gap.
    """

    def __init__(self, spaces: Spaces, keyframe_every: int = 50):
        self.spaces = spaces
        self.keyframe_every = int(keyframe_every)
        if self.keyframe_every < 0:
            raise ValueError(f"keyframe_every must be >= 0, got {keyframe_every}")
        self._last_key: tuple[int, int] | None = None  # (episode_id, step_index) packed last
        self._last_next_image: np.ndarray | None = None
        self._since_keyframe = 0
        self._force = True

    def force_keyframe(self) -> None:
        """Make the next message a keyframe (e.g. after the previous one was dropped)."""
        self._force = True

    def pack(self, step: Step) -> Transition:
        """Build the message for one step: a delta when it follows the last one packed.

        Returns:
            The transition (a delta or a keyframe).

        Raises:
            ValueError: If an image has the wrong shape/dtype or ``next_obs`` is not
                ``obs`` shifted by one frame (:class:`MessageError` for other fields).
        """
        obs, next_obs = step.obs, step.next_obs
        shape = self.spaces.image_shape
        image = _image("obs", obs, shape)
        next_image = _image("next_obs", next_obs, shape)
        if not np.array_equal(next_image[:-3], image[3:]):
            raise ValueError(
                "next_obs['image']: expected obs['image'] shifted by one frame; pass the "
                "final observation of an episode, not the reset one"
            )
        k, frame_shape = self.spaces.frame_stack, self.spaces.frame_shape
        key = (int(step.episode_id), int(step.step_index))
        delta = (
            not self._force
            and self._last_key is not None
            and key == (self._last_key[0], self._last_key[1] + 1)
            and (self.keyframe_every == 0 or self._since_keyframe + 1 < self.keyframe_every)
            and self._last_next_image is not None
            and np.array_equal(image, self._last_next_image)
        )
        newest = next_image[-3:].reshape(1, *frame_shape)
        if delta:
            frames = newest
            self._since_keyframe += 1
        else:
            frames = np.concatenate([image.reshape(k, *frame_shape), newest])
            self._since_keyframe = 0
            self._force = False
        msg = Transition(
            episode_id=step.episode_id,
            step_index=step.step_index,
            frames=frames,
            proprio=obs["proprio"],
            next_proprio=next_obs["proprio"],
            action=step.action,
            reward=step.reward,
            terminated=step.terminated,
            truncated=step.truncated,
            frame_time_ns=step.frame_time_ns,
            action_time_ns=step.action_time_ns,
            policy_version=step.policy_version,
        )
        if step.terminated or step.truncated:
            self._last_key, self._last_next_image = None, None
        else:
            self._last_key = key
            self._last_next_image = next_image.copy()
        return msg


@dataclasses.dataclass(frozen=True)
class TransitionBounds:
    """Value ranges of a transition, checked by the learner before it trusts one.

    Shapes and finiteness are checked on decode; these catch finite values no real robot
    of the task can send (an injected reward of 1e6, a proprio vector from another arm).

    Attributes:
        reward_low / reward_high: Reward range of the task (dense: [0, dense_clip];
            sparse: [-1, 0]).
        proprio_high: float32 ``(P,)``; proprio and next_proprio must lie in
            ``[-proprio_high, proprio_high]``.
        action_high: Largest ``|action|`` (1.0: actions are fractions of ``speed_max``).
    """

    reward_low: float
    reward_high: float
    proprio_high: np.ndarray
    action_high: float = 1.0

    def contains(self, t: Transition) -> bool:
        """True if the reward, proprio, next_proprio and action of ``t`` are in range."""
        return bool(
            self.reward_low <= t.reward <= self.reward_high
            and np.all(np.abs(t.proprio) <= self.proprio_high)
            and np.all(np.abs(t.next_proprio) <= self.proprio_high)
            and np.all(np.abs(t.action) <= self.action_high)
        )


class TransitionAssembler:
    """Learner side: rebuilds ``ReplayBuffer.add`` arguments from :class:`Transition` s.

    A keyframe always assembles; a delta assembles when it continues the previous
    message (same episode, next step); otherwise it is counted as a gap and dropped until
    the next keyframe (the robot sends one at least every ``keyframe_every`` messages).

    Args:
        spaces: The observation/action spaces.
        bounds: Value ranges a transition must keep (None: shapes only).

    Attributes:
        counters: ``assembled``, ``keyframes``, ``gaps`` (deltas dropped because the
            previous message is missing), ``bad_shape`` (frames/proprio/action that do
            not fit ``spaces``) and ``out_of_bounds`` (a reward, proprio or action value
            outside ``bounds``).
    """

    def __init__(self, spaces: Spaces, bounds: TransitionBounds | None = None):
        self.spaces = spaces
        self.bounds = bounds
        self.counters = {"assembled": 0, "keyframes": 0, "gaps": 0, "bad_shape": 0,
                         "out_of_bounds": 0}
        self.reset()

    def reset(self) -> None:
        """Forget the previous message (the next delta is a gap)."""
        self._last_key: tuple[int, int] | None = None
        self._next_frames: np.ndarray | None = None  # (k, 3, H, W) of the last next_obs

    def fits(self, t: Transition) -> bool:
        """True if the shapes of ``t`` fit :attr:`spaces` (frames count 1 or ``k + 1``)."""
        s = self.spaces
        return (
            t.frames.shape[1:] == s.frame_shape
            and t.frames.shape[0] in (1, s.frame_stack + 1)
            and t.proprio.shape == (s.proprio_dim,)
            and t.action.shape == (s.action_dim,)
        )

    def push(self, t: Transition) -> dict[str, Any] | None:
        """Rebuild one transition.

        Args:
            t: A received transition.

        Returns:
            ``{"obs", "action", "reward", "next_obs", "terminated", "truncated"}`` to pass
            as ``replay.add(**out)`` (images uint8 ``(3k, H, W)``, proprio float32
            ``(P,)``; read-only), or None for a gap or a shape mismatch (counted).
        """
        if not self.fits(t):
            self.counters["bad_shape"] += 1
            self.reset()
            return None
        if self.bounds is not None and not self.bounds.contains(t):
            self.counters["out_of_bounds"] += 1
            self.reset()
            return None
        k, (c, h, w) = self.spaces.frame_stack, self.spaces.frame_shape
        key = (t.episode_id, t.step_index)
        if t.keyframe:
            obs_frames, next_frames = t.frames[:k], t.frames[1:]
            self.counters["keyframes"] += 1
        elif (
            self._next_frames is not None
            and self._last_key is not None
            and key == (self._last_key[0], self._last_key[1] + 1)
        ):
            obs_frames = self._next_frames
            next_frames = np.concatenate([obs_frames[1:], t.frames])
        else:
            self.counters["gaps"] += 1
            self.reset()
            return None
        if t.terminated or t.truncated:
            self.reset()
        else:
            self._last_key, self._next_frames = key, next_frames
        self.counters["assembled"] += 1
        return {
            "obs": {"image": obs_frames.reshape(k * c, h, w), "proprio": t.proprio},
            "action": t.action,
            "reward": t.reward,
            "next_obs": {"image": next_frames.reshape(k * c, h, w), "proprio": t.next_proprio},
            "terminated": t.terminated,
            "truncated": t.truncated,
        }
