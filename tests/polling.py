"""Waiting for a condition in tests that run real threads, processes and sockets."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0,
             interval: float = 0.005) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s passed; return its last value.

    The timeout only bounds a failing test: a passing one returns as soon as it can.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
