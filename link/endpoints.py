"""ZeroMQ endpoints of the robot <-> learner link: thin sockets with counters, no threads.

The robot process owns a :class:`RobotLink`, the learner process a :class:`LearnerLink`;
each process calls the link from its own loop (the link has no thread of its own; a
learner with keys runs pyzmq's ZAP authenticator thread, which only answers handshakes).
Messages are those of :mod:`link.messages`.

Channels (the learner binds, the robot connects, so a learner on another machine is
reached at ``tcp://host:port`` and the robot reconnects by itself when it restarts):

==============  ===============================  ===========================================
channel         sockets                          behaviour
==============  ===============================  ===========================================
transitions     robot PUSH -> learner PULL       robot sends with ``NOBLOCK`` and a small
                                                 ``SNDHWM``; a full queue (or no learner
                                                 connected: ``IMMEDIATE``) is a counted
                                                 drop, never a wait
weights         learner PUB -> robot SUB         one packed frame per message, ``CONFLATE``
                                                 on both sides: the robot sees the newest
control         robot DEALER <-> learner ROUTER  hello / ack, heartbeats, pause / resume,
                                                 shutdown; all sends ``NOBLOCK``
==============  ===============================  ===========================================

Why DEALER/ROUTER for control rather than PAIR: PAIR is meant for inproc; over tcp/ipc a
bound PAIR serves a single connection, so a restarted robot (or a stray client) cannot
be told apart or answered while the old pipe lingers. The ROUTER sees an identity per
connection: it answers each :class:`~link.messages.Hello` (accept or reject with a
reason) on the connection it came from, talks to the one accepted robot, and rejects
messages of other peers. ``ROUTER_MANDATORY`` turns a send to a vanished robot into a
counted drop instead of a silent one.

Handshake and liveness. The robot sends a Hello (protocol version, role, config hash,
run and session ids, spaces) every ``hello_interval_s`` until a HelloAck accepts it, and
again whenever the learner looks dead. The learner accepts a Hello whose config hash and
spaces equal its own (a restarted robot too) unless another robot holds the slot (see
:class:`LearnerLink`), and answers a message from an unknown peer with
``HelloAck(accepted=False, reason=HELLO_REQUIRED)`` so that a robot whose learner
restarted says hello again at once. Both sides send
:class:`~link.messages.Heartbeat` s every ``heartbeat_interval_s``; ``*_alive(now)``
is False when no valid control message came from the peer within ``peer_timeout_s``
(ZeroMQ's own heartbeats, also enabled, only keep the TCP connections honest). The
robot sends transitions only while its hello is accepted. The learner republishes its
newest weights on a new handshake and whenever the robot's heartbeat reports another
version (``PUB`` drops messages sent before the ``SUB`` is connected).

Usage, in each process's own loop::

    # robot process, every 40 ms agent step
    for msg in robot_link.service():  # handshake, heartbeats; Pause/Resume/Shutdown out
        ...
    weights = robot_link.poll_weights()  # newest or None
    if weights is not None:
        policy.load_weights(weights.to_state_dicts(as_tensors=True))
    robot_link.send_step(Step(episode, step, obs, action, reward, next_obs, terminated,
                              truncated, t_frame, t_action, version))  # False: dropped

    # learner process
    assembler = TransitionAssembler(spaces)
    for t in learner_link.recv_transitions(max_n=64, timeout_ms=5):
        step = assembler.push(t)  # None for a gap until the next keyframe
        if step is not None:
            replay.add(**step)
    control = learner_link.service()
    learner_link.publish_weights(Weights.from_state_dicts(version, state_dicts))

Every received message is decoded and validated; an invalid, mismatched or unexpected
one is dropped, counted per reason in ``counters()["rejected_by_reason"]`` and logged
(at most once per ``log_interval_s`` per reason). Receive calls never raise for bad input.

Security (docs/security.md). With ``keys`` (:func:`link.keys.load_keys`) every socket
speaks ZeroMQ CURVE (RFC 26): traffic is encrypted, the robot pins the learner's public
key (``CURVE_SERVERKEY``) and the learner's ZAP handler (RFC 27, ``zmq.auth``) admits only
robot keys in its allow-list directory; a client without an allowed key never completes
the handshake, so it can neither send nor read anything. The robot slot belongs to the
accepted robot's public key (the ZAP ``User-Id`` of every message), and transitions from
another key are rejected. Without keys (ipc in a private directory, or loopback tcp with
a warning) the link trusts every local process; binding or connecting to any other tcp
address without keys raises :class:`LinkError`. Either way a hello from another peer
does not evict a robot whose heartbeats are fresh, and a rejection carries no config
hash, run or session id.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from link.messages import (
    HELLO_REQUIRED,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Evaluation,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    MessageError,
    Pause,
    Resume,
    Shutdown,
    Spaces,
    Step,
    Transition,
    TransitionPacker,
    Weights,
    decode,
    encode,
    encode_packed,
)

if TYPE_CHECKING:
    from link.keys import CurveKeys

__all__ = [
    "DEFAULT_TCP_PORT",
    "LearnerLink",
    "LinkAddresses",
    "LinkError",
    "RobotLink",
]

logger = logging.getLogger(__name__)

DEFAULT_TCP_PORT = 5555
"""First of the three TCP ports (transitions, weights, control = port, port+1, port+2)."""

_E = TypeVar("_E", bound="_Endpoint")
_IPC_PATH_MAX = 107  # sockaddr_un.sun_path (108 bytes) minus the NUL
_MAX_DRAIN = 1000  # messages handled per control/weights drain: a flood cannot stall a loop


class LinkError(ConnectionError):
    """A link that cannot be set up (bad address, bind failure)."""


@dataclass(frozen=True)
class LinkAddresses:
    """ZeroMQ endpoints of the three channels.

    Attributes:
        transitions: Robot PUSH -> learner PULL, e.g. ``"ipc:///tmp/madi-run/transitions"``.
        weights: Learner PUB -> robot SUB.
        control: Robot DEALER <-> learner ROUTER.
    """

    transitions: str
    weights: str
    control: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.transitions, self.weights, self.control))

    @classmethod
    def from_base(cls, base: str) -> LinkAddresses:
        """Derive the three addresses from one base.

        Args:
            base: ``"ipc:///some/dir"`` -> ``ipc:///some/dir/{transitions,weights,control}``;
                ``"tcp://host:port"`` -> ports ``port``, ``port + 1``, ``port + 2``
                (the learner binds e.g. ``tcp://0.0.0.0:5555``, the robot connects to
                ``tcp://learner-host:5555``); ``"tcp://host"`` uses
                :data:`DEFAULT_TCP_PORT`.

        Returns:
            The addresses.

        Raises:
            LinkError: For another scheme, a bad port or an ipc path that is too long.
        """
        if base.startswith("ipc://"):
            root = base[len("ipc://") :].rstrip("/")
            if not root:
                raise LinkError(f"ipc base {base!r}: expected ipc:///a/directory")
            addrs = cls(*(f"ipc://{root}/{name}" for name in ("transitions", "weights", "control")))
            for addr in (addrs.transitions, addrs.weights, addrs.control):
                if len(os.fsencode(addr[len("ipc://") :])) > _IPC_PATH_MAX:
                    raise LinkError(
                        f"ipc path {addr!r} is longer than {_IPC_PATH_MAX} bytes; use a "
                        f"shorter directory"
                    )
            return addrs
        match = re.fullmatch(r"tcp://(\[[0-9a-fA-F:.]+\]|[^:/\[\]]+)(?::(\d+))?/?", base)
        if match:
            host, port = match.group(1), int(match.group(2) or DEFAULT_TCP_PORT)
            if not 1 <= port <= 65533:
                raise LinkError(f"tcp base {base!r}: port must be in 1..65533 (uses port..port+2)")
            return cls(*(f"tcp://{host}:{port + i}" for i in range(3)))
        raise LinkError(f"link base {base!r}: expected ipc:///dir or tcp://host:port")

    @classmethod
    def default(cls, run: str = "default") -> LinkAddresses:
        """Local ipc addresses under the temp dir: ``ipc://<tmp>/madi-<run>/...``.

        Args:
            run: Run name (letters, digits, ``-_.``); one learner per run name and host.

        Returns:
            The addresses.

        Raises:
            LinkError: If ``run`` has other characters or the path is too long.
        """
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", run):
            raise LinkError(f"run name {run!r}: use 1..64 of A-Z a-z 0-9 _ . -")
        return cls.from_base(f"ipc://{tempfile.gettempdir()}/madi-{run}")


class _RateLimitedLog:
    """Log a warning per key at most once per ``interval_s``, counting the suppressed."""

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        suffix = f" ({suppressed} more since the last report)" if suppressed else ""
        logger.warning("%s%s", message, suffix)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _is_loopback(address: str) -> bool:
    """True for ``tcp://`` on 127.0.0.0/8, ``[::1]`` or ``localhost`` (no other names, no ``*``)."""
    host = address[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_keys(addresses: LinkAddresses, keys: CurveKeys | None, role: str, fix: str) -> None:
    """Refuse tcp beyond loopback without keys, warn on loopback tcp; check the keys' role."""
    if keys is not None:
        if keys.role != role:
            raise LinkError(f"{role} link got {keys.role} keys; load them with "
                            f"link.keys.load_keys(DIR, {role!r})")
        return
    tcp = [addr for addr in addresses if addr.startswith("tcp://")]
    for addr in tcp:
        if not _is_loopback(addr):
            raise LinkError(f"{role} link refuses {addr} without keys (unauthenticated, "
                            f"anyone on the network could read or drive the robot): {fix}")
    if tcp:
        logger.warning("%s link on %s without keys: any local process can join it; use ipc, "
                       "or keys (madi keys new, docs/security.md)", role, tcp[0])


def _private_dir(directory: str) -> None:
    """Create ``directory`` (0700) if missing; refuse one that others own or may write to.

    A user who may write to the directory of the ipc sockets could replace them with their
    own and stand in for the learner (Unix sockets are otherwise guarded by their mode).
    """
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        st = os.stat(directory)
    except OSError as err:
        raise LinkError(f"ipc directory {directory}: {err}; pick a directory you own") from err
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.getuid() or mode & 0o022:
        raise LinkError(f"ipc directory {directory} (owner uid {st.st_uid}, mode {mode:04o}) "
                        f"is open to other users, who could replace its sockets; use a "
                        f"directory you own that only you can write to")


class _AllowList:
    """ZAP credentials provider (``zmq.auth`` ``configure_curve_callback``).

    Admits a CURVE client whose public key has a ``*.key`` file in ``allow_dir``; the
    directory is read at every connection attempt, so added or removed keys count for the
    next connection. Runs in the authenticator's thread: it keeps its own log limiter.
    """

    def __init__(self, allow_dir: Path, log_interval_s: float):
        self.allow_dir = allow_dir
        #: Connection attempts refused so far.
        self.denied = 0
        self._log = _RateLimitedLog(log_interval_s)

    def callback(self, domain: str, key: bytes) -> bool:
        """True if the z85 public ``key`` is on the allow-list (``domain`` is unused)."""
        try:
            allowed = key in zmq.auth.load_certificates(self.allow_dir)
        except (OSError, ValueError) as err:
            self._log.warning("allow_list", f"learner link: cannot read the allow-list "
                              f"{self.allow_dir} ({err}); refusing robots until it is fixed")
            allowed = False
        if not allowed:
            self.denied += 1
            self._log.warning("denied", f"learner link: refused a robot key not in "
                              f"{self.allow_dir}: {key.decode()}; to admit it run `madi keys "
                              f"allow --learner DIR ITS_robot.key`")
        return allowed


#: Handshake failures the robot's control socket reports: (counter, what to do).
_HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: (
        "handshake_refused",
        "the learner refused this robot's key (not on its allow-list); on the learner run "
        "`madi keys allow --learner DIR robot.key`, then restart the robot",
    ),
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "handshake_failed",
        "handshake with the learner failed (protocol or security mismatch); give both "
        "sides keys (--keys DIR) or neither",
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: (
        "handshake_failed",
        "handshake with the learner failed; with keys, check that DIR/learner.key is this "
        "learner's public key (`madi keys pin`)",
    ),
}


class _Endpoint:
    """Shared state of both ends: identity, counters, validation, heartbeats."""

    role = ""
    peer_role = ""

    def __init__(
        self,
        config_hash: str,
        spaces: Spaces,
        run_id: str,
        session_id: str | None,
        heartbeat_interval_s: float,
        peer_timeout_s: float,
        max_message_bytes: int,
        log_interval_s: float,
        context: zmq.Context | None,
        keys: CurveKeys | None,
    ):
        if not isinstance(spaces, Spaces):
            raise TypeError(f"spaces: expected link.messages.Spaces, got {type(spaces)}")
        self.config_hash = str(config_hash)
        self.spaces = spaces
        self.run_id = str(run_id)
        self.session_id = session_id or uuid.uuid4().hex
        self.heartbeat_interval_ns = int(
            _check_positive("heartbeat_interval_s", heartbeat_interval_s) * 1e9
        )
        self.peer_timeout_ns = int(_check_positive("peer_timeout_s", peer_timeout_s) * 1e9)
        self.max_message_bytes = int(max_message_bytes)
        self._own_context = context is None
        self._ctx = zmq.Context() if context is None else context
        self._sockets: list[zmq.Socket] = []
        #: CURVE keys of this end, None for a link without encryption or authentication.
        self.keys = keys
        self._auth: ThreadAuthenticator | None = None  # the learner's ZAP handler
        self._log = _RateLimitedLog(log_interval_s)
        self._counts: dict[str, int] = {}
        self._rejected: dict[str, int] = {}
        self._last_peer_ns: int | None = None
        self._last_heartbeat_ns: int | None = None
        self._heartbeat_seq = 0
        #: Counters of the peer's last heartbeat (e.g. its drops, weights version).
        self.peer_counters: dict[str, int] = {}
        #: The owner's own counters (name -> int, e.g. ``"updates"``, ``"overruns"``),
        #: sent with every heartbeat next to the link's counters.
        self.status_counters: dict[str, int] = {}
        #: Session id of the accepted peer, None before the first handshake.
        self.peer_session_id: str | None = None
        #: Reason of the last :class:`Shutdown` received from the peer, else None.
        self.shutdown_reason: str | None = None
        self.closed = False

    # ------------------------------------------------------------------ sockets
    def _socket(self, kind: int, **options: Any) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        self._sockets.append(sock)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # ZMTP heartbeats drop dead TCP connections (the application has its own).
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3000)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3000)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name), value)
        if self.keys is not None:
            self._apply_curve(sock)
        return sock

    def _apply_curve(self, sock: zmq.Socket) -> None:
        """Set this end's CURVE options on ``sock`` before it binds or connects (per role)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ counters
    def _count(self, name: str, n: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + n

    def _reject(self, reason: str, detail: str) -> None:
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        self._count("rejected")
        self._log.warning(f"reject:{reason}", f"{self.role} link dropped a message: {detail}")

    def counters(self) -> dict[str, Any]:
        """Link counters.

        Returns:
            ``{name: int}`` (sent, dropped, received ... as they occur; see the class
            docstring) plus ``"rejected_by_reason": {reason: int}``.
        """
        out: dict[str, Any] = dict(self._counts)
        out.setdefault("rejected", 0)
        out["rejected_by_reason"] = dict(self._rejected)
        return out

    def _flat_counters(self) -> dict[str, int]:
        out = {k: int(v) for k, v in self.status_counters.items()}
        out.update(self._counts)
        out.update({f"rejected/{k}": v for k, v in self._rejected.items()})
        return out

    def _decode(self, frames: list[Any]) -> Message | None:
        try:
            return decode(frames, self.max_message_bytes)
        except MessageError as err:
            self._reject(err.reason, str(err))
            return None

    # ------------------------------------------------------------------ liveness
    def _peer_alive(self, now_ns: int | None) -> bool:
        if self._last_peer_ns is None:
            return False
        now = time.monotonic_ns() if now_ns is None else now_ns
        return now - self._last_peer_ns <= self.peer_timeout_ns

    def _heartbeat_due(self, now: int) -> bool:
        return (
            self._last_heartbeat_ns is None
            or now - self._last_heartbeat_ns >= self.heartbeat_interval_ns
        )

    def _heartbeat(self, now: int) -> Heartbeat:
        self._last_heartbeat_ns = now
        self._heartbeat_seq += 1
        return Heartbeat(self.role, self._heartbeat_seq, now, self._flat_counters())

    def _check_peer_hello(self, msg: Hello | HelloAck) -> tuple[str, str] | None:
        """(reason code, detail) if the peer's hello/ack does not match this side."""
        if msg.role != self.peer_role:
            return "role", f"peer role {msg.role!r}, expected {self.peer_role!r}"
        if msg.protocol_version != PROTOCOL_VERSION:
            return (
                "protocol_version",
                f"peer protocol {msg.protocol_version}, this side {PROTOCOL_VERSION}",
            )
        if msg.config_hash != self.config_hash:
            return (
                "config_hash",
                f"peer config hash {msg.config_hash!r} != this side's {self.config_hash!r}",
            )
        if isinstance(msg, Hello) and msg.spaces != self.spaces:
            return "spaces", f"peer spaces {msg.spaces} != this side's {self.spaces}"
        return None

    def _on_common(self, msg: Message, now: int) -> Message | None:
        """Handle heartbeat/pause/resume/shutdown/evaluation from the accepted peer."""
        self._last_peer_ns = now
        self._count("received_control")
        if isinstance(msg, Heartbeat):
            if msg.role != self.peer_role:
                self._reject("role", f"heartbeat from role {msg.role!r}")
                return None
            self.peer_counters = msg.counters
            return None
        if isinstance(msg, Shutdown):
            self.shutdown_reason = msg.reason
            logger.info("%s link: peer %s shuts down (%s)", self.role, self.peer_role, msg.reason)
        return msg

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close every socket at once (``LINGER`` 0: unsent messages are discarded)."""
        if self.closed:
            return
        self.closed = True
        for sock in self._sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._ctx.term()

    def __enter__(self: _E) -> _E:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RobotLink(_Endpoint):
    """The robot process's end: transitions out, newest weights in, control both ways.

    Never blocks: every send is ``NOBLOCK`` and returns False on a full queue; every
    receive is non-blocking. Call :meth:`service` from the robot loop (any period up to
    ``heartbeat_interval_s``) for the handshake, heartbeats and control messages.

    Counters (:meth:`counters`): ``sent_transitions``, ``keyframes``, ``dropped_full``
    (queue full or no learner connected), ``dropped_no_peer`` (hello not accepted yet),
    ``received_weights``, ``weights_version``, ``sent_control``, ``dropped_control``,
    ``received_control``, ``handshakes``, ``duplicate_weights``, ``handshake_refused``
    (the learner's ZAP handler refused this robot's key), ``handshake_failed`` (another
    ZMTP/CURVE handshake failure, e.g. a wrong pinned learner key), ``rejected`` and
    ``rejected_by_reason``.

    Args:
        addresses: The learner's addresses (:class:`LinkAddresses`, or a base string for
            :meth:`LinkAddresses.from_base`).
        config_hash: Hash of the run configuration; must equal the learner's.
        spaces: Observation/action spaces; must equal the learner's.
        run_id: Run name, for logs.
        session_id: Id of this process instance (default: a random UUID).
        sndhwm: Transitions queued at most before sends fail (about 43 KB each).
        keyframe_every: See :class:`~link.messages.TransitionPacker`.
        hello_interval_s: Hello retry period while not accepted.
        heartbeat_interval_s: Heartbeat period.
        peer_timeout_s: The learner is dead after this long without a control message.
        require_handshake: Send transitions only while the hello is accepted.
        max_message_bytes: Bound on a received message (weights).
        log_interval_s: Minimum period of repeated warnings per reason.
        context: ZeroMQ context to use (default: a private one, terminated on close).
        keys: This robot's CURVE keys with the pinned learner key
            (``load_keys(DIR, "robot")``); None: no encryption or authentication, for
            ipc or loopback tcp only.

    Raises:
        LinkError: If an address is invalid, or is tcp beyond loopback and ``keys`` is None.
    """

    role = "robot"
    peer_role = "learner"

    def __init__(
        self,
        addresses: LinkAddresses | str,
        config_hash: str,
        spaces: Spaces,
        *,
        run_id: str = "",
        session_id: str | None = None,
        sndhwm: int = 16,
        keyframe_every: int = 50,
        hello_interval_s: float = 0.1,
        heartbeat_interval_s: float = 0.25,
        peer_timeout_s: float = 1.0,
        require_handshake: bool = True,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        log_interval_s: float = 5.0,
        context: zmq.Context | None = None,
        keys: CurveKeys | None = None,
    ):
        if isinstance(addresses, str):
            addresses = LinkAddresses.from_base(addresses)
        _check_keys(addresses, keys, self.role,
                    "run `madi keys new --robot DIR` and pass --keys DIR (docs/security.md)")
        super().__init__(
            config_hash,
            spaces,
            run_id,
            session_id,
            heartbeat_interval_s,
            peer_timeout_s,
            max_message_bytes,
            log_interval_s,
            context,
            keys,
        )
        self.addresses = addresses
        self.hello_interval_ns = int(_check_positive("hello_interval_s", hello_interval_s) * 1e9)
        self.require_handshake = bool(require_handshake)
        self.packer = TransitionPacker(spaces, keyframe_every)
        self._accepted = False
        self._last_hello_ns: int | None = None
        self._weights_session: str | None = None
        self._counts.update(weights_version=0)
        try:
            self._push = self._socket(zmq.PUSH, SNDHWM=int(sndhwm), IMMEDIATE=1)
            self._sub = self._socket(
                zmq.SUB, CONFLATE=1, RCVHWM=1, MAXMSGSIZE=self.max_message_bytes
            )
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            self._dealer = self._socket(
                zmq.DEALER, SNDHWM=64, IMMEDIATE=1, MAXMSGSIZE=self.max_message_bytes
            )
            self._monitor = self._dealer.get_monitor_socket(sum(_HANDSHAKE_FAILURES))
            self._sockets.append(self._monitor)
            self._push.connect(addresses.transitions)
            self._sub.connect(addresses.weights)
            self._dealer.connect(addresses.control)
        except zmq.ZMQError as err:
            self.close()
            raise LinkError(f"robot link cannot connect to {addresses}: {err}") from err
        logger.info("robot link connecting to %s (session %s, %s)", addresses, self.session_id,
                    "CURVE" if keys else "no keys")

    def _apply_curve(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_serverkey = self.keys.server_public

    @property
    def accepted(self) -> bool:
        """True while the learner has accepted this robot's hello and looks alive."""
        return self._accepted

    def learner_alive(self, now_ns: int | None = None) -> bool:
        """True if a valid control message came from the learner within the timeout.

        Args:
            now_ns: ``time.monotonic_ns()`` now (default: read the clock).

        Returns:
            Whether the learner looks alive.
        """
        return self._accepted and self._peer_alive(now_ns)

    # ------------------------------------------------------------------ transitions
    def send_transition(self, transition: Transition) -> bool:
        """Queue one transition without blocking.

        Args:
            transition: The message (see :meth:`send_step` to build it from observations).

        Returns:
            True if queued; False if dropped (queue full, no learner connected, or hello
            not accepted), counted in ``dropped_full`` / ``dropped_no_peer``.
        """
        if self.require_handshake and not self._accepted:
            self._count("dropped_no_peer")
            self.packer.force_keyframe()
            return False
        try:
            frames = encode(transition)
        except MessageError as err:
            self._reject(f"send_{err.reason}", f"cannot encode transition: {err}")
            self.packer.force_keyframe()
            return False
        try:
            self._push.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._count("dropped_full")
            self.packer.force_keyframe()
            return False
        self._count("sent_transitions")
        if transition.keyframe:
            self._count("keyframes")
        return True

    def send_step(self, step: Step) -> bool:
        """Pack one step (delta or keyframe, :attr:`packer`) and send it without blocking.

        Returns:
            As :meth:`send_transition`.

        Raises:
            ValueError: If the observations do not fit :attr:`spaces` or ``next_obs`` is
                not ``obs`` shifted (a bug in the caller, not a link failure).
        """
        if self.require_handshake and not self._accepted:
            self._count("dropped_no_peer")
            self.packer.force_keyframe()
            return False
        return self.send_transition(self.packer.pack(step))

    # ------------------------------------------------------------------ weights
    def poll_weights(self) -> Weights | None:
        """Newest valid weights received since the last call, without blocking.

        Weights from a learner session other than the accepted one are rejected
        (``"session"``); the learner republishes until this robot reports the version.
        A republished copy of the version this robot already has is skipped (counted in
        ``duplicate_weights``), so the caller loads each version once.

        Returns:
            The weights (read-only arrays) or None.
        """
        newest = None
        for _ in range(_MAX_DRAIN):
            try:
                frames = self._sub.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames)
            if msg is None:
                continue
            if not isinstance(msg, Weights):
                self._reject("unexpected_type", f"{msg.TYPE} on the weights channel")
                continue
            if not self._accepted or msg.session_id != self.peer_session_id:
                self._reject("session", f"weights of learner session {msg.session_id!r}")
                continue
            newest = msg
        if newest is None:
            return None
        if (
            self._counts.get("received_weights")
            and newest.version == self._counts["weights_version"]
        ):
            self._count("duplicate_weights")  # a republish of what this robot already has
            return None
        self._count("received_weights")
        self._counts["weights_version"] = newest.version
        return newest

    # ------------------------------------------------------------------ control
    def send_control(self, msg: Hello | Heartbeat | Pause | Resume | Shutdown | Evaluation
                     ) -> bool:
        """Send a control message to the learner without blocking.

        Args:
            msg: The message (Pause/Resume around resets, Shutdown on exit, Evaluation
                after an evaluation).

        Returns:
            True if queued, False if dropped (counted in ``dropped_control``).
        """
        try:
            self._dealer.send_multipart(encode(msg), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._count("dropped_control")
            return False
        self._count("sent_control")
        return True

    def pause(self, reason: str = "reset") -> bool:
        """Tell the learner to pause updates (e.g. during a reset); see :meth:`send_control`."""
        return self.send_control(Pause(reason))

    def resume(self, reason: str = "") -> bool:
        """Tell the learner to resume updates; see :meth:`send_control`."""
        return self.send_control(Resume(reason))

    def shutdown(self, reason: str = "") -> bool:
        """Tell the learner this robot shuts down; see :meth:`send_control`."""
        return self.send_control(Shutdown(reason))

    def _hello(self) -> Hello:
        return Hello(self.role, self.config_hash, self.run_id, self.session_id, self.spaces)

    def service(self, now_ns: int | None = None) -> list[Message]:
        """Handshake, heartbeats and incoming control messages; never blocks.

        Args:
            now_ns: ``time.monotonic_ns()`` now (default: read the clock).

        Returns:
            Pause / Resume / Shutdown messages from the accepted learner, oldest first.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        out: list[Message] = []
        self._check_handshakes()
        for _ in range(_MAX_DRAIN):
            try:
                frames = self._dealer.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames)
            if msg is not None:
                handled = self._on_control(msg, now)
                if handled is not None:
                    out.append(handled)
        if self._accepted and not self._peer_alive(now):
            self._accepted = False
            self._log.warning("learner_dead", "robot link: learner silent, saying hello again")
        if not self._accepted:
            if self._last_hello_ns is None or now - self._last_hello_ns >= self.hello_interval_ns:
                self._last_hello_ns = now
                self.send_control(self._hello())
        elif self._heartbeat_due(now):
            self.send_control(self._heartbeat(now))
        return out

    def _check_handshakes(self) -> None:
        """Count and log (rate-limited) the handshake failures of the control socket."""
        for _ in range(_MAX_DRAIN):
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            counter, hint = _HANDSHAKE_FAILURES.get(event["event"], (None, ""))
            if counter is not None:
                self._count(counter)
                self._log.warning(counter, f"robot link: {hint} ({self.addresses.control})")

    def _on_control(self, msg: Message, now: int) -> Message | None:
        if isinstance(msg, HelloAck):
            if not msg.accepted:  # a refusal carries no config hash to check
                self._accepted = False
                self._count("rejected_by_peer")
                if msg.reason == HELLO_REQUIRED:
                    self._last_hello_ns = None  # hello again at once
                else:
                    self._log.warning(
                        "hello_rejected", f"robot link: learner rejected the hello: {msg.reason}"
                    )
                return None
            mismatch = self._check_peer_hello(msg)
            if mismatch is not None:
                self._reject(*mismatch)
                return None
            if msg.session_id != self.peer_session_id:
                self.packer.force_keyframe()
                self._counts["weights_version"] = 0  # nothing received from this session yet
                logger.info("robot link: learner session %s accepted the hello", msg.session_id)
            self.peer_session_id = msg.session_id
            self._accepted = True
            self._last_peer_ns = now
            self._count("handshakes")
            return None
        if isinstance(msg, (Heartbeat, Pause, Resume, Shutdown)):
            if not self._accepted:
                self._reject("no_handshake", f"{msg.TYPE} before the hello was accepted")
                return None
            return self._on_common(msg, now)
        self._reject("unexpected_type", f"{msg.TYPE} on the control channel")
        return None


class LearnerLink(_Endpoint):
    """The learner process's end: binds all three channels.

    Call :meth:`recv_transitions` and :meth:`service` from the learner loop. One robot
    at a time holds the slot: a hello from another peer is refused (``slot_taken``) while
    the holder's heartbeats are fresh (within ``peer_timeout_s``). The holder is known by
    its public key with ``keys`` (a robot restarted with the same key takes the slot back at
    once), else by its connection or session id.

    Counters (:meth:`counters`): ``received_transitions``, ``published_weights``,
    ``republished_weights``, ``sent_control``, ``dropped_control``,
    ``received_control``, ``handshakes``, ``auth_denied`` (with ``keys``: connection
    attempts of keys not on the allow-list), ``rejected`` and ``rejected_by_reason``.

    Args:
        addresses: Where to bind (:class:`LinkAddresses` or a base string); ipc
            directories are created (mode 0700) and must belong to this user and be
            writable by nobody else.
        config_hash: Hash of the run configuration.
        spaces: Observation/action spaces.
        run_id: Run name, for logs.
        session_id: Id of this process instance (default: a random UUID).
        rcvhwm: Transitions queued on the receive side at most.
        heartbeat_interval_s: Heartbeat period.
        peer_timeout_s: The robot is dead after this long without a control message.
        republish_interval_s: Minimum time between sending the newest weights (publish or
            republish) and republishing them to a robot whose heartbeat reports another
            version.
        max_message_bytes: Bound on a received message.
        log_interval_s: Minimum period of repeated warnings per reason.
        context: ZeroMQ context to use (default: a private one, terminated on close). With
            ``keys`` the link installs the context's ZAP handler: one keyed learner per
            context.
        keys: The learner's CURVE keys and robot allow-list (``load_keys(DIR,
            "learner")``); None: no encryption or authentication, for ipc or loopback tcp
            only.

    Raises:
        LinkError: If an address is invalid, cannot be bound (e.g. in use), is tcp
            beyond loopback and ``keys`` is None, or is in an ipc directory open to others.
    """

    role = "learner"
    peer_role = "robot"

    def __init__(
        self,
        addresses: LinkAddresses | str,
        config_hash: str,
        spaces: Spaces,
        *,
        run_id: str = "",
        session_id: str | None = None,
        rcvhwm: int = 256,
        heartbeat_interval_s: float = 0.25,
        peer_timeout_s: float = 1.0,
        republish_interval_s: float = 0.5,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        log_interval_s: float = 5.0,
        context: zmq.Context | None = None,
        keys: CurveKeys | None = None,
    ):
        if isinstance(addresses, str):
            addresses = LinkAddresses.from_base(addresses)
        _check_keys(addresses, keys, self.role, "run `madi keys new --learner DIR` and pass "
                    "--keys DIR, or bind tcp://127.0.0.1:PORT (docs/security.md)")
        for addr in addresses:
            if addr.startswith("ipc://"):
                _private_dir(os.path.dirname(addr[len("ipc://") :]))
        super().__init__(
            config_hash,
            spaces,
            run_id,
            session_id,
            heartbeat_interval_s,
            peer_timeout_s,
            max_message_bytes,
            log_interval_s,
            context,
            keys,
        )
        self.addresses = addresses
        self.republish_interval_ns = int(
            _check_positive("republish_interval_s", republish_interval_s) * 1e9
        )
        self._peer: bytes | None = None
        self._peer_key: str | None = None  # z85 public key (ZAP User-Id) of the holder
        self._allow: _AllowList | None = None
        self._last_unknown_reply_ns: int | None = None
        self._last_republish_ns: int | None = None
        self._latest_weights: bytearray | None = None
        self._latest_version: int | None = None
        #: True between a Pause and a Resume from the robot.
        self.robot_paused = False
        try:
            if keys is not None:
                self._start_authenticator(keys.allow_dir)
            self._pull = self._socket(zmq.PULL, RCVHWM=int(rcvhwm), MAXMSGSIZE=max_message_bytes)
            self._pub = self._socket(zmq.PUB, SNDHWM=1, CONFLATE=1)
            self._router = self._socket(
                zmq.ROUTER, ROUTER_MANDATORY=1, SNDHWM=64, MAXMSGSIZE=max_message_bytes
            )
            for sock, addr in (
                (self._pull, addresses.transitions),
                (self._pub, addresses.weights),
                (self._router, addresses.control),
            ):
                sock.bind(addr)
        except (zmq.ZMQError, OSError) as err:
            self.close()
            raise LinkError(f"learner link cannot bind {addresses}: {err}; is another learner "
                            f"bound there? pick a free port or ipc directory") from err
        logger.info("learner link bound to %s (session %s, %s)", addresses, self.session_id,
                    f"CURVE, allow-list {keys.allow_dir}" if keys else "no keys")

    def _start_authenticator(self, allow_dir: Path) -> None:
        """Install the ZAP handler before any socket binds (else libzmq admits any key)."""
        self._allow = _AllowList(allow_dir, self._log.interval_s)
        self._auth = ThreadAuthenticator(self._ctx)
        self._auth.start()
        self._auth.configure_curve_callback("*", self._allow)

    def _apply_curve(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.keys.secret
        sock.curve_publickey = self.keys.public
        sock.curve_server = True

    def counters(self) -> dict[str, Any]:
        """Link counters; see :meth:`_Endpoint.counters` and the class docstring."""
        out = super().counters()
        if self._allow is not None:
            out["auth_denied"] = self._allow.denied
        return out

    def robot_alive(self, now_ns: int | None = None) -> bool:
        """True if a valid control message came from the accepted robot within the timeout.

        Args:
            now_ns: ``time.monotonic_ns()`` now (default: read the clock).

        Returns:
            Whether the robot looks alive.
        """
        return self._peer is not None and self._peer_alive(now_ns)

    # ------------------------------------------------------------------ transitions
    def recv_transitions(self, max_n: int = 64, timeout_ms: int = 0) -> list[Transition]:
        """Receive up to ``max_n`` valid transitions, waiting at most ``timeout_ms``.

        Transitions that do not fit :attr:`spaces` (frames ``(1 or k+1, 3, H, W)``,
        proprio ``(P,)``, action ``(A,)``) or arrive while no robot is accepted are
        rejected and counted.

        Args:
            max_n: Maximum number of messages to take.
            timeout_ms: Wait this long for the first message (0: do not wait).

        Returns:
            Transitions in arrival order (read-only arrays; feed them to a
            :class:`~link.messages.TransitionAssembler`).
        """
        out: list[Transition] = []
        if timeout_ms > 0 and not self._pull.poll(timeout_ms, zmq.POLLIN):
            return out
        s = self.spaces
        frame_counts = (1, s.frame_stack + 1)
        for _ in range(max(0, int(max_n)) * 4):  # bound the work when many are rejected
            if len(out) >= max_n:
                break
            try:
                frames = self._pull.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            msg = self._decode(frames)
            if msg is None:
                continue
            if not isinstance(msg, Transition):
                self._reject("unexpected_type", f"{msg.TYPE} on the transitions channel")
                continue
            if (
                msg.frames.shape[1:] != s.frame_shape
                or msg.frames.shape[0] not in frame_counts
                or msg.proprio.shape != (s.proprio_dim,)
                or msg.action.shape != (s.action_dim,)
            ):
                self._reject(
                    "spaces",
                    f"transition frames {msg.frames.shape}, proprio {msg.proprio.shape}, "
                    f"action {msg.action.shape} do not fit {s}",
                )
                continue
            if self._peer is None:
                self._reject("no_handshake", "transition before any robot hello")
                continue
            if self._peer_key is not None and frames[0].get("User-Id") != self._peer_key:
                self._reject("peer_key", "transition from a key other than the accepted robot's")
                continue
            out.append(msg)
        self._count("received_transitions", len(out))
        return out

    # ------------------------------------------------------------------ weights
    def publish_weights(self, weights: Weights) -> bool:
        """Publish weights as one packed frame on the conflated channel (never blocks).

        Args:
            weights: The weights; ``session_id`` is set to this learner's.

        Returns:
            True if handed to ZeroMQ (a conflated PUB never reports a full queue).

        Raises:
            MessageError: If the weights are invalid (e.g. non-finite values).
        """
        weights = replace(weights, session_id=self.session_id)
        self._latest_weights = encode_packed(weights)
        self._latest_version = weights.version
        self._count("published_weights")
        # A heartbeat already in flight reports the previous version: no republish for
        # republish_interval_s after a publish.
        self._last_republish_ns = time.monotonic_ns()
        return self._send_latest_weights()

    def _send_latest_weights(self) -> bool:
        if self._latest_weights is None:
            return False
        try:
            self._pub.send(self._latest_weights, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:  # pragma: no cover - a conflated PUB does not refuse
            self._count("dropped_weights")
            return False
        return True

    # ------------------------------------------------------------------ control
    def _send_to(self, identity: bytes, msg: Message) -> bool:
        try:
            self._router.send_multipart([identity, *encode(msg)], flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._count("dropped_control")
            return False
        except zmq.ZMQError as err:  # EHOSTUNREACH: the peer has gone (ROUTER_MANDATORY)
            self._count("dropped_control")
            if err.errno != zmq.EHOSTUNREACH:
                self._log.warning("send_error", f"learner link: control send failed: {err}")
            return False
        self._count("sent_control")
        return True

    def send_control(self, msg: Heartbeat | Pause | Resume | Shutdown) -> bool:
        """Send a control message to the accepted robot without blocking.

        Args:
            msg: The message.

        Returns:
            True if queued; False if no robot is accepted or it is unreachable (counted
            in ``dropped_control``).
        """
        if self._peer is None:
            self._count("dropped_control")
            return False
        return self._send_to(self._peer, msg)

    def shutdown(self, reason: str = "") -> bool:
        """Tell the robot this learner shuts down; see :meth:`send_control`."""
        return self.send_control(Shutdown(reason))

    def _ack(self) -> HelloAck:
        return HelloAck(True, "", self.role, self.config_hash, self.run_id, self.session_id)

    def _refusal(self, reason: str) -> HelloAck:
        """A rejection: the reason only, no config hash, run or session id for the peer."""
        return HelloAck(False, reason, self.role, "", "", "")

    def service(self, now_ns: int | None = None) -> list[Message]:
        """Handshakes, heartbeats, weight republishing and control messages; never blocks.

        Args:
            now_ns: ``time.monotonic_ns()`` now (default: read the clock).

        Returns:
            Pause / Resume / Shutdown / Evaluation messages from the accepted robot, oldest
            first.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        out: list[Message] = []
        for _ in range(_MAX_DRAIN):
            try:
                frames = self._router.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            if len(frames) < 2:
                self._reject("bad_frames", "control message without content")
                continue
            identity = frames[0].bytes
            key = frames[1].get("User-Id") if self.keys is not None else None
            msg = self._decode(frames[1:])
            if msg is not None:
                handled = self._on_control(identity, key, msg, now)
                if handled is not None:
                    out.append(handled)
        if self._peer is not None and self._heartbeat_due(now):
            self.send_control(self._heartbeat(now))
        return out

    def _on_control(
        self, identity: bytes, key: str | None, msg: Message, now: int
    ) -> Message | None:
        if isinstance(msg, Hello):
            self._on_hello(identity, key, msg, now)
            return None
        if identity != self._peer:
            self._reject("no_handshake", f"{msg.TYPE} from a peer whose hello was not accepted")
            if self._last_unknown_reply_ns is None or now - self._last_unknown_reply_ns >= (
                self.heartbeat_interval_ns
            ):
                self._last_unknown_reply_ns = now
                self._send_to(identity, self._refusal(HELLO_REQUIRED))
            return None
        if isinstance(msg, (Heartbeat, Pause, Resume, Shutdown, Evaluation)):
            handled = self._on_common(msg, now)
            if isinstance(msg, Heartbeat) and msg.role == self.peer_role:
                version = msg.counters.get("weights_version")
                if self._latest_version is not None and version != self._latest_version:
                    if (
                        self._last_republish_ns is None
                        or now - self._last_republish_ns >= self.republish_interval_ns
                    ):
                        self._republish(now)
            elif isinstance(msg, Pause):
                self.robot_paused = True
            elif isinstance(msg, Resume):
                self.robot_paused = False
            return handled
        self._reject("unexpected_type", f"{msg.TYPE} on the control channel")
        return None

    def _on_hello(self, identity: bytes, key: str | None, msg: Hello, now: int) -> None:
        mismatch = self._check_peer_hello(msg)
        if mismatch is not None:
            self._reject(*mismatch)  # the values go to this side's log only
            self._send_to(identity, self._refusal(f"{mismatch[0]} mismatch"))
            return
        if self._slot_taken(identity, key, msg, now):
            self._reject("slot_taken", f"hello of robot session {msg.session_id} while robot "
                         f"session {self.peer_session_id} holds the slot")
            self._send_to(identity, self._refusal("another robot holds the learner"))
            return
        new_peer = identity != self._peer or msg.session_id != self.peer_session_id
        if new_peer or not self._peer_alive(now):
            logger.info("learner link: robot session %s accepted%s", msg.session_id,
                        f" (key {key})" if key else "")
            self._count("handshakes")
            self.robot_paused = False
            self._republish(now)
        # else: a hello sent again before the ack arrived (e.g. queued while this
        # learner was starting): ack it, nothing else changes.
        self._peer, self._peer_key, self.peer_session_id = identity, key, msg.session_id
        self._last_peer_ns = now
        self._send_to(identity, self._ack())

    def _slot_taken(self, identity: bytes, key: str | None, msg: Hello, now: int) -> bool:
        """True if a live robot other than this hello's sender holds the slot."""
        if self._peer is None or not self._peer_alive(now):
            return False
        if self._peer_key is not None:  # CURVE: the same key is the same robot
            return key != self._peer_key
        # no keys: the same connection, or the same robot session reconnected
        return identity != self._peer and msg.session_id != self.peer_session_id

    def _republish(self, now: int) -> None:
        if self._latest_weights is not None:
            self._last_republish_ns = now
            self._count("republished_weights")
            self._send_latest_weights()
