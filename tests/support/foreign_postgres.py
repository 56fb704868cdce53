"""A PostgreSQL server of the test's own that answers in another language (its
``lc_messages``), as a production server may: what it says before a login succeeds
(a wrong password, no such database) follows its postmaster's setting, which the shared
server of tests/support/with-postgres cannot change for one test."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE_POSTGRES = os.environ.get("ROLLOUT_REQUIRE_POSTGRES") == "1"


def _unavailable(why: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(why)
    pytest.skip(why)


def _server_binaries() -> Path | None:
    """As tests/support/with-postgres finds them: initdb on PATH, else Debian's newest."""
    if initdb := shutil.which("initdb"):
        return Path(os.path.realpath(initdb)).parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    return None


@contextmanager
def postgres_answering_in(language: str) -> Iterator[str]:
    """The URL (database ``postgres``, superuser ``rollout``, trusted) of a throwaway
    server on a Unix socket whose messages are in ``language`` (gettext's LANGUAGE,
    with lc_messages C.UTF-8), stopped and removed afterwards. The role
    ``rollout_password`` must give its password, ``right-password``."""
    bindir = _server_binaries()
    if bindir is None:
        _unavailable("no PostgreSQL server binaries (initdb, pg_ctl)")
    assert bindir is not None
    owner: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rollout-pg-lang.") as folder:
        if os.getuid() == 0:  # initdb and pg_ctl refuse to run as root
            postgres = pwd.getpwnam("postgres")
            os.chown(folder, postgres.pw_uid, postgres.pw_gid)
            owner = ["runuser", "-u", "postgres", "--"]
        data = Path(folder) / "data"

        def as_owner(*args: str, **env: str) -> None:
            subprocess.run(
                [*owner, "env", *(f"{k}={v}" for k, v in env.items()), *args],
                cwd=folder,
                check=True,
                capture_output=True,
            )

        as_owner(f"{bindir}/initdb", "-D", str(data), "-U", "rollout", "--auth=trust",
                 "--locale=C.UTF-8", "--no-sync")  # fmt: skip
        hba = data / "pg_hba.conf"
        hba.write_text("local all rollout_password scram-sha-256\n" + hba.read_text())
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{folder}'\n"
                "lc_messages = 'C.UTF-8'\nfsync = off\n"
            )
        as_owner(f"{bindir}/pg_ctl", "start", "-D", str(data), "-l", f"{folder}/log", "-w",
                 LANGUAGE=language)  # fmt: skip
        try:
            yield f"postgresql+psycopg://rollout@/postgres?host={folder}"
        finally:
            as_owner(f"{bindir}/pg_ctl", "stop", "-D", str(data), "-m", "immediate")
