"""Another process with a warehouse open, as a pipeline run has it (for writing) or
another analyst's notebook (``read_only``): what a command, a flow or a notebook meets
when it opens that warehouse meanwhile."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = """
import sys, time, duckdb
connection = duckdb.connect(sys.argv[1], read_only=sys.argv[2] == "True")
print("held", flush=True)
time.sleep(float(sys.argv[3]))
connection.close()
"""


@contextmanager
def warehouse_held(
    path: Path, *, read_only: bool = False, seconds: float = 60
) -> Iterator[subprocess.Popen[str]]:
    """A process holding the warehouse at ``path`` open from the block's start for
    ``seconds`` (it then lets go by itself), killed when the block ends."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(read_only), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
