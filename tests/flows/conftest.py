"""One temporary Prefect server for all flow tests (starting one costs ~14 s), which run
on one xdist worker at a stretch (tests/conftest.py): scoped to the package, it stops
after their last test rather than idle to the end of the run.

Prefect reads its settings when first imported, so the environment is set here, before
anything under tests/flows imports prefect: its own PREFECT_HOME, no analytics, and a
startup timeout a 2-core machine meets.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

PREFECT_HOME = tempfile.mkdtemp(prefix="rollout-prefect-")
atexit.register(shutil.rmtree, PREFECT_HOME, True)
os.environ.update(
    {
        "PREFECT_HOME": PREFECT_HOME,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
)


@pytest.fixture(scope="package")
def prefect_server() -> Iterator[None]:
    """A temporary Prefect server and database for all of tests/flows."""
    from prefect.testing.utilities import prefect_test_harness

    # None: use PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (the default is 30 s).
    with prefect_test_harness(server_startup_timeout=None):
        yield
