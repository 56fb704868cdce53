"""Servers the tests start as processes of their own: a free port for one, and waiting
until it answers (shared by tests/test_webhook.py, tests/test_delivery_loop.py and
tests/e2e/)."""

from __future__ import annotations

import socket
import subprocess
import time
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_answering(
    url: str, process: subprocess.Popen[Any], what: str, seconds: float = 60
) -> None:
    """Until ``url`` answers 2xx; fails naming ``what`` (with the process's output, when
    it could be read) if the process ends first or the time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(url, timeout=1).is_success:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            out = process.stdout or process.stderr
            raise AssertionError(
                f"{what} ended ({process.returncode})"
                + (f": {out.read()}" if out is not None else "")
            )
        assert time.monotonic() < deadline, f"{what} did not answer at {url}"
        time.sleep(0.2)
