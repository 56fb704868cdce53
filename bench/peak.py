"""A process's own peak memory, as the benchmarks report it.

Not ``getrusage``'s ``ru_maxrss``: Linux carries the high-water mark of the memory a
process replaces at ``exec`` into the new program's, and ``subprocess`` starts a child
by (v)fork + exec in the parent's memory. So a child started by a 5 GiB parent reports
at least 5 GiB, however little it uses itself (bench_daily's day processes reported
their parent's 4.9-8.8 GiB that way, against a path that peaks at about 2.5 GB).
``RUSAGE_CHILDREN`` has the same floor: it is at most an upper bound of a child's own.
"""

from __future__ import annotations

import platform
import resource
from pathlib import Path


def own_peak_mib() -> float:
    """This process's peak resident memory since its program started (``VmHWM``)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    # Elsewhere, getrusage's, which may include the parent's (above).
    return _maxrss_mib(resource.RUSAGE_SELF)


def own_peak_gib() -> float:
    return own_peak_mib() / 1024


def children_peak_mib() -> float:
    """The largest peak of the children waited for, floored at this process's size when
    it started each of them (see above): an upper bound of what they used."""
    return _maxrss_mib(resource.RUSAGE_CHILDREN)


def _maxrss_mib(who: int) -> float:
    scale = 1 if platform.system() == "Darwin" else 1024  # macOS counts bytes, Linux KiB
    return resource.getrusage(who).ru_maxrss * scale / 2**20
