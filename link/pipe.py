"""Length-prefixed messages on a pipe, between a process and a child it started.

The robot process hands work that would hold its GIL to child processes that it starts as
``python -m <module>`` and talks to over the child's stdin and stdout: the mirror's camera
(:mod:`sim.render_process`) and the session log's writer (:mod:`robot.session_writer`).
A message is a little-endian uint32 length and that many bytes; the bytes are raw arrays
and JSON, never pickle.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

_LEN = struct.Struct("<I")


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes from file descriptor ``fd``.

    Raises:
        EOFError: If the other end closed the pipe first.
    """
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv(fd: int) -> bytes:
    """Read one message from ``fd`` (blocks until it is whole).

    Raises:
        EOFError: If the pipe closed before or inside the message.
    """
    (n,) = _LEN.unpack(read_exact(fd, _LEN.size))
    return read_exact(fd, n)


def send(stream: BinaryIO, body: bytes) -> None:
    """Write one message to ``stream`` and flush it (blocks while the pipe is full).

    Raises:
        BrokenPipeError: If the reader is gone.
    """
    stream.write(_LEN.pack(len(body)) + body)
    stream.flush()
