"""Processes a test starts, each in a session of its own and carrying a marker
variable its descendants inherit, so that however the test ends, its teardown kills
every such session and then any process still carrying the marker (one that started
a session of its own). Shared by tests/e2e/ and tests/test_benches.py."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the test process that started it
    dies, even killed (SIGTERM, SIGKILL) before its teardown ran: a Prefect server an
    interrupted run started went on serving, and taking CPU, for hours."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_logged(
    args: list[str], env: dict[str, str], cwd: Path, log: Path
) -> subprocess.Popen[bytes]:
    """``args`` started in a session of its own (so that :func:`kill_group` reaches all
    it starts), no input, both its streams written to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )


def pids_carrying(variable: str, value: str) -> list[int]:
    """Live processes whose environment has ``variable=value`` (Linux /proc; elsewhere
    none are found), this one left out."""
    needle = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone, or not ours to read
    return [pid for pid in found if pid != os.getpid()]


def kill_group(process: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM the process's session, then SIGKILL whatever is left of it."""
    kill_groups([process], grace)


def kill_groups(processes: list[subprocess.Popen[Any]], grace: float = 10) -> None:
    """SIGTERM each process's session at once, give them ``grace`` seconds together,
    then SIGKILL whatever is left: a module's teardown waited out each worker's grace
    in turn (20 s for two workers that finish their flow runs first)."""
    for process in processes:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.01))
    for process in processes:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)


def kill_carrying(variable: str, value: str, grace: float = 10) -> list[int]:
    """SIGKILL every process still carrying the marker; returns those alive after
    ``grace`` seconds."""
    for pid in pids_carrying(variable, value):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while (left := pids_carrying(variable, value)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left
