"""A PostgreSQL schema as the migrations leave it, made again by one script.

Running every migration on each test's fresh schema costs 0.3-0.9 s; replaying a
``pg_dump`` of one schema they made costs about 0.1 s. The dump names its schema in
every statement; the name is a random ``t_<hex>`` (tests/conftest.py's
``fresh_postgres_schema``), so replacing it by the new schema's name touches nothing
else. Where no pg_dump can dump the server (none on the machine, an older major
version than the server's), there is no script and each test migrates its own schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url


@dataclass(frozen=True)
class MigratedSchema:
    """A dump of the schema ``name``, the newest schema the migrations make."""

    name: str
    script: str

    def make(self, engine: Engine) -> None:
        """Makes the dumped schema's tables, triggers and rows in the schema first on
        ``engine``'s search_path (which exists and is empty)."""
        with engine.begin() as connection:
            schema = connection.exec_driver_sql("SELECT current_schema()").scalar_one()
            connection.exec_driver_sql(self.script.replace(self.name, schema))


def _pg_dump() -> str | None:
    # The server's own pg_dump: tests/support/with-postgres names the binaries it chose
    # (a pg_dump older than the server refuses to dump it). A server of the caller's
    # own (ROLLOUT_TEST_POSTGRES_URL set beforehand): whichever pg_dump is on PATH.
    bindir = os.environ.get("ROLLOUT_TEST_POSTGRES_BINDIR")
    if bindir and os.access(Path(bindir) / "pg_dump", os.X_OK):
        return str(Path(bindir) / "pg_dump")
    return shutil.which("pg_dump")


def dump_migrated_schema(url: str) -> MigratedSchema | None:
    """The script that makes again the schema ``url`` searches (a migrated one), or
    None where pg_dump is not at hand or fails."""
    pg_dump = _pg_dump()
    if pg_dump is None:
        return None
    parsed = make_url(url)
    schema = str(parsed.query["options"]).removeprefix("-csearch_path=")
    host, port = parsed.query.get("host"), parsed.query.get("port")
    command = [pg_dump, "--schema", schema, "--inserts", "--no-owner", "--no-privileges"]
    command += ["--dbname", str(parsed.database), "--username", str(parsed.username)]
    command += ["--host", str(host)] if host else []
    command += ["--port", str(port or parsed.port)] if (port or parsed.port) else []
    env = dict(os.environ, PGPASSWORD=parsed.password or "")
    try:
        dump = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    except (OSError, subprocess.CalledProcessError):
        return None
    # Left out: psql's meta-commands (\\restrict), the schema's creation (it exists) and
    # the dump's empty search_path (the names are qualified; the test's own stays).
    kept = [
        line
        for line in dump.stdout.splitlines()
        if not line.startswith(("\\", "CREATE SCHEMA", "SELECT pg_catalog.set_config("))
    ]
    return MigratedSchema(name=schema, script="\n".join(kept))
