"""A named pipe nobody writes to, as a user may name one by mistake where rollout reads a
file: a reader that opens it waits for a writer. So that a test of a reader that would
wait fails rather than hangs, a writer comes after a while, writes nothing and goes:
the waiting reader then reads an empty file."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# How long the pipe is left without a writer: far longer than a refusal takes.
UNBLOCKED_AFTER_SECONDS = 10.0


@contextmanager
def pipe_without_writer(path: Path) -> Iterator[Path]:
    """A named pipe at ``path``; a reader still waiting on it after
    UNBLOCKED_AFTER_SECONDS is let go (it reads nothing). Removed when the block ends."""
    os.mkfifo(path)
    done = threading.Event()

    def let_go() -> None:
        deadline = time.monotonic() + UNBLOCKED_AFTER_SECONDS
        done.wait(UNBLOCKED_AFTER_SECONDS)
        while not done.is_set() and time.monotonic() < deadline + UNBLOCKED_AFTER_SECONDS:
            try:
                # Without blocking: succeeds only while a reader has it open.
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as error:
                if error.errno != errno.ENXIO:
                    raise
                time.sleep(0.05)
            else:
                return

    writer = threading.Thread(target=let_go, daemon=True)
    writer.start()
    try:
        yield path
    finally:
        done.set()
        writer.join()
        path.unlink()
