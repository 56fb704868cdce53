"""A SQLite registry this user may not write (an analyst's read access, a read-only
mount): every read-only command reads it, opened read-only; a writer is refused in one
line naming the file and why, nothing changed. The tests mount file systems: they run
as root, here and in CI."""

from __future__ import annotations

import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from rollout.cli import app
from rollout.registry.engine import make_engine
from rollout.registry.models import Account, EmailSuppression

from .factories import AccountFactory, bound_to

READERS = (
    ["db", "status"],
    ["notify", "status"],
    ["brownout", "status"],
    ["plan", "show"],
    ["report"],
)
WRITERS = (
    ["notify", "suppress", "someone@example.com", "--reason", "asked", "--apply"],
    ["notify", "queue", "--apply"],
)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _registry_with_two_accounts(folder: Path) -> None:
    """A registry migrated by `db upgrade` in FOLDER, holding two accounts."""
    url = f"sqlite:///{folder}/registry.db"
    made = CliRunner().invoke(app, ["db", "upgrade"], env={"ROLLOUT_REGISTRY_URL": url})
    assert made.exit_code == 0, made.stderr
    engine = make_engine(url)
    with bound_to(engine):
        AccountFactory.create_batch(2)
    engine.dispose()


@pytest.fixture
def registry_folder(tmp_path: Path, rollout_home: Path) -> Iterator[Path]:
    """A folder holding a migrated registry with two accounts, the home elsewhere."""
    folder = tmp_path / "shared"
    folder.mkdir()
    _registry_with_two_accounts(folder)
    yield folder


@pytest.fixture
def read_only_file_system(tmp_path: Path, rollout_home: Path) -> Iterator[Path]:
    """A file system of its own (tmpfs) holding the registry, remounted read-only:
    nothing on this machine can change it."""
    folder = tmp_path / "snapshot"
    folder.mkdir()
    _mount("-t", "tmpfs", "tmpfs", str(folder))
    try:
        _registry_with_two_accounts(folder)
        _mount("-o", "remount,ro", str(folder))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.fixture
def read_only_view(tmp_path: Path, registry_folder: Path) -> Iterator[Path]:
    """``registry_folder`` seen through a read-only bind mount: read-only here, written
    by whoever writes the folder itself."""
    view = tmp_path / "view"
    view.mkdir()
    _mount("--bind", "-o", "ro", str(registry_folder), str(view))
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_every_read_only_command_reads_a_registry_on_a_read_only_file_system(
    read_only_file_system: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = read_only_file_system / "registry.db"
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{database}")
    runner = CliRunner()
    for reader in READERS:
        read = runner.invoke(app, reader)
        assert read.exit_code == 0, (reader, read.stderr)
    status = runner.invoke(app, ["db", "status", "--format", "json"])
    assert '"up_to_date": true' in status.stdout


def test_a_writer_on_a_registry_it_may_not_write_is_refused_in_one_line(
    read_only_file_system: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = read_only_file_system / "registry.db"
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{database}")
    runner = CliRunner()
    for writer in WRITERS:
        refused = runner.invoke(app, writer)
        assert refused.exit_code == 1, (writer, refused.stderr)
        [said] = refused.stderr.strip().splitlines()
        assert said.startswith(f"error: {database}: this command writes the registry"), said
        assert "mounted read-only" in said and "Nothing was changed" in said
    reader = sqlite3.connect(f"file:{database}?immutable=1", uri=True)
    assert reader.execute(f"select count(*) from {EmailSuppression.__tablename__}").fetchone() == (
        0,
    )
    reader.close()


def test_a_read_only_view_of_a_registry_no_one_has_open_is_refused_in_one_line(
    read_only_view: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a read-only bind mount the file can still change (the folder itself is
    written): not read as immutable; SQLite needs the WAL's -shm file, which only a
    process that has the registry open keeps there."""
    database = read_only_view / "registry.db"
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{database}")
    refused = CliRunner().invoke(app, ["notify", "status"])
    assert refused.exit_code == 1
    [said] = refused.stderr.strip().splitlines()
    assert said.startswith(f"error: {database}: cannot read the registry: ")
    assert "registry.db-shm" in said and "Traceback" not in refused.stderr


def test_a_read_only_view_reads_what_a_writer_at_work_commits(
    read_only_view: Path, registry_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make_engine(f"sqlite:///{registry_folder}/registry.db")
    with writer.connect() as held:  # its -shm file beside the registry
        with bound_to(writer):
            AccountFactory.create()
        view = make_engine(f"sqlite:///{read_only_view}/registry.db")
        with view.connect() as reading:
            assert reading.scalar(select(func.count()).select_from(Account)) == 3
        view.dispose()
        monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{read_only_view}/registry.db")
        read = CliRunner().invoke(app, ["notify", "status"])
        assert read.exit_code == 0, read.stderr
        held.rollback()
    writer.dispose()


def test_a_registry_named_through_a_symbolic_link_is_read_where_its_file_is(
    read_only_view: Path, registry_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An analyst's home links to the registry in a folder shared read-only: SQLite opens
    the file the link names and finds its -shm beside that file, not beside the link;
    the link's own folder (writable) is not the one that may not be written."""
    link = tmp_path / "mine" / "registry.db"
    link.parent.mkdir()
    link.symlink_to(read_only_view / "registry.db")
    writer = make_engine(f"sqlite:///{registry_folder}/registry.db")
    with writer.connect() as held:  # its -shm file beside the registry
        held.execute(select(func.count()).select_from(Account))
        monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{link}")
        read = CliRunner().invoke(app, ["notify", "status"])
        assert read.exit_code == 0, read.stderr
        refused = CliRunner().invoke(app, list(WRITERS[0]))
        assert refused.exit_code == 1
        [said] = refused.stderr.strip().splitlines()
        assert f"the file system holding {read_only_view} is mounted read-only" in said, said
        held.rollback()
    writer.dispose()


@pytest.mark.parametrize("name", ["registry.db", "new/registry.db"])
def test_a_registry_to_be_made_where_it_may_not_be_written_is_refused_in_one_line(
    tmp_path: Path, rollout_home: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """``db upgrade`` on a new path on a read-only mount said only 'the registry
    database: unable to open database file' (why_read_only judged a file not yet made
    writable), or the folder it could not make."""
    folder = tmp_path / "mounted"
    folder.mkdir()
    _mount("-t", "tmpfs", "-o", "ro", "tmpfs", str(folder))
    try:
        database = folder / name
        monkeypatch.setenv("ROLLOUT_REGISTRY_URL", f"sqlite:///{database}")
        refused = CliRunner().invoke(app, ["db", "upgrade"])
        assert refused.exit_code == 1
        [said] = refused.stderr.strip().splitlines()
        assert said == (
            f"error: {database}: this command writes the registry, which may not be "
            f"written here (the file system holding {folder} is mounted read-only); run "
            "it as the registry's operator, where it may be written. Nothing was changed"
        )
        assert list(folder.iterdir()) == []
    finally:
        subprocess.run(["umount", str(folder)], check=False)
