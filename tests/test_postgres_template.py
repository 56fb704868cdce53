"""The PostgreSQL registry each test gets is the one the migrations make.

tests/conftest.py makes each test's PostgreSQL schema by replaying a dump of one schema
the migrations made (tests/support/postgres_template.py): a test of the registry is only
as good as that copy, so it must hold the same tables, columns, constraints, indexes,
triggers, functions, sequences and rows as migrating an empty schema does.
"""

from __future__ import annotations

import re

import pytest

from rollout.registry.engine import make_engine
from rollout.registry.migrate import upgrade
from tests.conftest import fresh_postgres_schema
from tests.support.postgres_template import MigratedSchema, dump_migrated_schema

from .conftest import postgres_only

pytestmark = pytest.mark.postgres


def _normalised(schema: MigratedSchema) -> str:
    # Each schema's own name and registry instance (a random hex each) stand apart, and
    # a CHECK's casts read back as PostgreSQL deparses them (`ARRAY[...]::text[]` made
    # again becomes `ARRAY[(...)::text, ...]`): the same condition, spelled without them.
    text = schema.script.replace(schema.name, "<schema>")
    text = re.sub(r"'[0-9a-f]{32}'", "'<instance>'", text)
    return "\n".join(
        re.sub(r"[()\[\]]|::text|::character varying", "", line) if " CHECK " in line else line
        for line in text.splitlines()
    )


def test_a_schema_made_from_the_dump_is_the_migrated_one(
    _migrated_postgres_schema: MigratedSchema | None,
) -> None:
    assert _migrated_postgres_schema is not None, "pg_dump could not dump the test server"
    with fresh_postgres_schema() as migrated_url, fresh_postgres_schema() as copied_url:
        engine = make_engine(migrated_url)
        upgrade(engine)
        engine.dispose()
        engine = make_engine(copied_url)
        _migrated_postgres_schema.make(engine)
        engine.dispose()
        migrated, copied = dump_migrated_schema(migrated_url), dump_migrated_schema(copied_url)
    assert migrated is not None and copied is not None
    assert "CREATE TRIGGER" in copied.script and "INSERT INTO" in copied.script
    assert _normalised(copied) == _normalised(migrated)


def _left_out(script: str, what: str) -> str:
    """The dump ``script`` without its last object of pg_dump's type ``what`` (the
    block under its ``-- Name: ...; Type: <what>;`` header), or without its last row."""
    if what == "row":
        lines = script.splitlines()
        last = max(i for i, line in enumerate(lines) if line.startswith("INSERT INTO "))
        return "\n".join(lines[:last] + lines[last + 1 :])
    blocks = script.split("\n--\n-- Name: ")
    last = max(i for i, block in enumerate(blocks) if f"; Type: {what};" in block.split("\n")[0])
    return "\n--\n-- Name: ".join(blocks[:last] + blocks[last + 1 :])


@pytest.mark.parametrize("what", ["TRIGGER", "INDEX", "row", "FK CONSTRAINT", "DEFAULT"])
def test_a_copy_missing_a_trigger_an_index_or_a_row_is_told_from_the_migrated_one(
    _migrated_postgres_schema: MigratedSchema | None, what: str
) -> None:
    """The comparison above would see a dump replayed without one of its statements
    (a filter of dump_migrated_schema's that took too much, say): the copy's own dump
    is not the migrated one's."""
    migrated = _migrated_postgres_schema
    assert migrated is not None, "pg_dump could not dump the test server"
    short = MigratedSchema(name=migrated.name, script=_left_out(migrated.script, what))
    assert len(short.script) < len(migrated.script)
    with fresh_postgres_schema() as copied_url:
        engine = make_engine(copied_url)
        short.make(engine)
        engine.dispose()
        copied = dump_migrated_schema(copied_url)
    assert copied is not None
    assert _normalised(copied) != _normalised(migrated)


@postgres_only
def test_a_copied_schema_needs_no_migration(registry_url: str) -> None:
    engine = make_engine(registry_url)
    try:
        with engine.connect() as connection:
            tables = connection.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables"
                " WHERE table_schema = current_schema()"
            ).scalar_one()
        assert tables > 10
        upgrade(engine)  # at the newest revision, with its change tracking: nothing to do
    finally:
        engine.dispose()
