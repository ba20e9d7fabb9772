"""CURVE key files of the robot <-> learner link (made by ``madi keys``).

ZeroMQ CURVE (RFC 26/CURVEZMQ, https://rfc.zeromq.org/spec/26/) encrypts every tcp
connection of the link and authenticates both ends: the robot pins the learner's public
key (a learner without the matching secret key cannot complete the handshake), and the
learner admits only robots whose public key lies in its allow-list directory, checked
through the ZAP handler (RFC 27/ZAP, https://rfc.zeromq.org/spec/27/) of pyzmq's
``zmq.auth`` (https://pyzmq.readthedocs.io/en/latest/api/zmq.auth.html).

Files are pyzmq/czmq certificates (``zmq.auth.create_certificates``): ``NAME.key`` holds
a public key (may be copied anywhere), ``NAME.key_secret`` the key pair (mode 0600, never
leaves its machine). Layout of a keys directory (``--keys DIR`` / ``link.keys``)::

    learner DIR                       robot DIR
      learner.key         public        robot.key           public
      learner.key_secret  0600          robot.key_secret    0600
      robots/*.key        allow-list    learner.key         the pinned learner key

One directory may hold both roles (``madi train`` over tcp on one machine): the learner's
own ``learner.key`` is then also the key the robot pins.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq.auth
from zmq.utils import z85

from link.endpoints import LinkError

__all__ = [
    "ALLOW_DIR",
    "CurveKeys",
    "KeyFileError",
    "allow_robot",
    "fingerprint",
    "load_keys",
    "new_keys",
    "pin_learner",
    "read_public_key",
]

ALLOW_DIR = "robots"
"""Sub-directory of a learner's keys directory holding the allowed robots' public keys."""

_ROLES = ("learner", "robot")
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


class KeyFileError(LinkError):
    """A key file or keys directory that is missing, malformed or unsafe."""


@dataclass(frozen=True)
class CurveKeys:
    """CURVE key material of one end of the link (z85 text, 40 characters per key).

    Attributes:
        role: ``"learner"`` or ``"robot"``.
        public: This end's public key.
        secret: This end's secret key (kept out of ``repr``).
        server_public: Robot: the pinned learner public key (ZMQ_CURVE_SERVERKEY); None
            on the learner.
        allow_dir: Learner: the directory of allowed robot public keys (``*.key``), read
            again at every connection attempt; None on a robot.
    """

    role: str
    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes | None = None
    allow_dir: Path | None = None


def fingerprint(public: bytes) -> str:
    """Short, filename-safe id of a public key: the first 12 hex digits of its SHA-256.

    Args:
        public: A z85 public key.

    Returns:
        12 hex characters.
    """
    return hashlib.sha256(public).hexdigest()[:12]


def _check_role(role: str) -> None:
    if role not in _ROLES:
        raise ValueError(f"role {role!r}: expected 'learner' or 'robot'")


def new_keys(directory: str | os.PathLike, role: str) -> Path:
    """Make a key pair ``ROLE.key`` + ``ROLE.key_secret`` (0600) in ``directory``.

    The directory is created with mode 0700 if missing; a learner's also gets an empty
    ``robots/`` allow-list (0700). The files are written in a private temporary directory
    and moved into place, so the secret key is never readable by others, not even briefly.

    Args:
        directory: The keys directory.
        role: ``"learner"`` or ``"robot"``.

    Returns:
        The public key file (give it to the other machine).

    Raises:
        KeyFileError: If ``ROLE.key`` or ``ROLE.key_secret`` already exists there.
        ValueError: For another role.
    """
    _check_role(role)
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = directory / f"{role}.key", directory / f"{role}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists; keep it, or delete {public} and {secret} "
                               f"to make a new key pair")
    with tempfile.TemporaryDirectory(dir=directory) as tmp:  # mode 0700
        made_public, made_secret = zmq.auth.create_certificates(tmp, role)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    if role == "learner":
        (directory / ALLOW_DIR).mkdir(mode=0o700, exist_ok=True)
    return public


def read_public_key(path: str | os.PathLike) -> bytes:
    """The public key in a public key file (``*.key``).

    Args:
        path: The file.

    Returns:
        The z85 public key (40 characters).

    Raises:
        KeyFileError: If the file is missing, holds no valid public key, or holds a secret
            key (secret key files are never copied between machines).
    """
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise KeyFileError(f"{path}: not a key file ({err}); pass a file made by "
                           f"`madi keys new`") from err
    if secret is not None:
        raise KeyFileError(f"{path} holds a secret key; pass the public key file (*.key), "
                           f"never a *.key_secret")
    if not _is_z85_key(public):
        raise KeyFileError(f"{path}: the public key is not 40 characters of z85; pass a file "
                           f"made by `madi keys new`")
    return public


def _is_z85_key(key: bytes) -> bool:
    """True for a 32-byte key in z85 text (40 characters, ZeroMQ RFC 32)."""
    try:
        return len(key) == 40 and len(z85.decode(key)) == 32
    except (KeyError, ValueError):
        return False


def _install_public(source: Path, key: bytes, target: Path) -> None:
    """Copy the public key file ``source`` (holding ``key``) to ``target`` (0644).

    Nothing to do if ``target`` holds the same key already.
    """
    if target.exists():
        if read_public_key(target) == key:
            return
        raise KeyFileError(f"{target} holds another key; delete it first if you mean to "
                           f"replace it")
    shutil.copyfile(source, target)
    os.chmod(target, 0o644)


def allow_robot(learner_dir: str | os.PathLike, robot_public: str | os.PathLike,
                name: str | None = None) -> Path:
    """Add a robot's public key to a learner's allow-list (``learner_dir/robots/NAME.key``).

    A running learner reads the allow-list at every connection attempt, so the robot may
    connect at once (a robot refused before must be restarted: ZeroMQ stops retrying after
    an authentication failure).

    Args:
        learner_dir: The learner's keys directory (``madi keys new --learner``).
        robot_public: The robot's public key file (its ``robot.key``).
        name: File name in the allow-list (letters, digits, ``_.-``; default
            ``robot-<fingerprint>``).

    Returns:
        The file written (or found with the same key).

    Raises:
        KeyFileError: If ``learner_dir`` has no allow-list, the file is not a public key,
            or ``NAME.key`` holds another key.
        ValueError: For a bad name.
    """
    allow_dir = Path(learner_dir) / ALLOW_DIR
    if not allow_dir.is_dir():
        raise KeyFileError(f"{allow_dir} does not exist; run `madi keys new --learner "
                           f"{learner_dir}` first")
    source = Path(robot_public)
    key = read_public_key(source)
    name = name or f"robot-{fingerprint(key)}"
    if not _NAME.fullmatch(name):
        raise ValueError(f"name {name!r}: use 1..64 of A-Z a-z 0-9 _ . - (not starting with .)")
    target = allow_dir / f"{name}.key"
    _install_public(source, key, target)
    return target


def pin_learner(robot_dir: str | os.PathLike, learner_public: str | os.PathLike) -> Path:
    """Pin the learner's public key on a robot (``robot_dir/learner.key``).

    Args:
        robot_dir: The robot's keys directory (``madi keys new --robot``).
        learner_public: The learner's public key file (its ``learner.key``).

    Returns:
        The file written (or found with the same key).

    Raises:
        KeyFileError: If ``robot_dir`` has no robot key pair, the file is not a public
            key, or another learner key is pinned already.
    """
    robot_dir = Path(robot_dir)
    if not (robot_dir / "robot.key_secret").exists():
        raise KeyFileError(f"{robot_dir} has no robot key pair; run `madi keys new --robot "
                           f"{robot_dir}` first")
    source, target = Path(learner_public), robot_dir / "learner.key"
    _install_public(source, read_public_key(source), target)
    return target


def _check_private(path: Path, mode_mask: int, fix: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & mode_mask:
        raise KeyFileError(f"{path} has mode {mode:04o}, open to other users; run `{fix}`")


def _read_pair(directory: Path, role: str) -> tuple[bytes, bytes]:
    path = directory / f"{role}.key_secret"
    if not path.exists():
        raise KeyFileError(f"{path} does not exist; run `madi keys new --{role} {directory}`")
    _check_private(path, 0o077, f"chmod 600 {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise KeyFileError(f"{path}: unreadable key file ({err}); make a new pair with "
                           f"`madi keys new --{role}`") from err
    if secret is None or not (_is_z85_key(public) and _is_z85_key(secret)):
        raise KeyFileError(f"{path} holds no valid key pair; make a new pair with "
                           f"`madi keys new --{role}`")
    return public, secret


def load_keys(directory: str | os.PathLike, role: str) -> CurveKeys:
    """Load one end's keys from its keys directory and check them.

    Learner: ``learner.key_secret`` and the ``robots/`` allow-list (at least one key; not
    writable by others). Robot: ``robot.key_secret`` and the pinned ``learner.key``.

    Args:
        directory: The keys directory (``--keys DIR`` / ``link.keys``; ``~`` is expanded).
        role: ``"learner"`` or ``"robot"``.

    Returns:
        The keys.

    Raises:
        KeyFileError: If a file is missing, malformed, or a secret key file is readable by
            others (mode other than 0600/0400), each message naming the command that fixes it.
        ValueError: For another role.
    """
    _check_role(role)
    directory = Path(directory).expanduser()
    public, secret = _read_pair(directory, role)
    if role == "robot":
        pinned = directory / "learner.key"
        if not pinned.exists():
            raise KeyFileError(f"{pinned} does not exist; copy the learner's learner.key here "
                               f"and run `madi keys pin --robot {directory} LEARNER.key`")
        return CurveKeys(role, public, secret, server_public=read_public_key(pinned))
    allow_dir = directory / ALLOW_DIR
    if not allow_dir.is_dir() or not any(allow_dir.glob("*.key")):
        raise KeyFileError(f"no robot public keys in {allow_dir}; run `madi keys allow "
                           f"--learner {directory} ROBOT.key`")
    _check_private(allow_dir, 0o022, f"chmod go-w {allow_dir}")
    return CurveKeys(role, public, secret, allow_dir=allow_dir)
