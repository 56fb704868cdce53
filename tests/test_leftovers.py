"""What a process killed mid-write leaves (a SIGKILL runs no clean-up): the temporary
files and private folders of rollout.core.files. The next writer of the folder removes
those no write touched for an hour (never a live writer's), and `rollout doctor` names
any left anywhere the runs write, with the command that removes them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollout.core.config import load_settings
from rollout.core.files import STALE_TEMPORARY_SECONDS, remove_stale_temporaries
from rollout.dev.webhook_signing import WebhookSigner
from rollout.notify.webhook import create_app
from rollout.ops import doctor
from rollout.ops.doctor import Status, check_leftovers
from rollout.phases.previews import save_list

ROOT = Path(__file__).resolve().parent.parent

# A writer that stops in the middle of its write until it is killed.
WRITER = """
import sys, time
from pathlib import Path
from rollout.core import files
target = Path(sys.argv[2])
if sys.argv[1] == "file":
    fd, temp = files.open_temporary(target)
    files.os.write(fd, b"half of it")
    print(temp, flush=True)
else:
    with files.written_in_place(target) as temp:
        temp.write_bytes(b"half of it")
        print(temp.parent, flush=True)
        time.sleep(600)
time.sleep(600)
"""


def killed_mid_write(how: str, target: Path) -> Path:
    """The temporary file (or private folder) a writer of ``target`` killed with
    SIGKILL in the middle of its write left behind."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, how, str(target)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        text=True,
    )
    try:
        left = Path(writer.stdout.readline().strip())
    finally:
        writer.kill()
        writer.wait(timeout=30)
        writer.stdout.close()
    assert left.exists() and left.name.startswith(".")
    return left


def aged(path: Path, seconds: float = STALE_TEMPORARY_SECONDS + 60) -> Path:
    """``path`` (and what a folder holds) last written ``seconds`` ago."""
    then = time.time() - seconds
    for inside in [*path.rglob("*"), path] if path.is_dir() else [path]:
        os.utime(inside, (then, then))
    return path


def test_the_doctor_names_what_killed_writers_left_with_the_command_that_removes_it(
    tmp_path: Path,
) -> None:
    settings = load_settings({"ROLLOUT_HOME": str(tmp_path / "home")})
    post = killed_mid_write("file", settings.landing_dir / "events" / "events-1.json")
    sample = killed_mid_write("folder", settings.landing_dir / "downloads" / "d.parquet")
    preview = killed_mid_write("file", settings.outbox_dir / "preview" / "x" / "a.html")
    report = killed_mid_write("file", settings.reports_dir / "previews" / "top-100.csv")
    copy = killed_mid_write("file", settings.warehouse_path)
    now = datetime.now(UTC)
    fresh = check_leftovers(settings, now)
    assert fresh.status is Status.ok  # a live writer's: never named, never removed

    row = check_leftovers(settings, now + timedelta(seconds=STALE_TEMPORARY_SECONDS + 60))
    assert row.status is Status.warn
    assert "5 temporary files of writes killed midway" in row.detail
    command = row.detail.split("`")[1]
    for left in (post, sample, preview, report, copy):
        assert str(left) in command
    subprocess.run(["sh", "-c", command], check=True)
    assert not any(p.exists() for p in (post, sample, preview, report, copy))
    assert (settings.landing_dir / "events").is_dir()
    assert check_leftovers(settings, now + timedelta(hours=2)).status is Status.ok


def test_a_private_folder_a_slow_writer_still_writes_in_is_not_stale(tmp_path: Path) -> None:
    """The folder was made long ago, its file was written a moment ago: a live sample."""
    folder = killed_mid_write("folder", tmp_path / "downloads" / "big.parquet")
    aged(folder)
    (folder / "big.parquet").write_bytes(b"more")
    os.utime(folder, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(tmp_path / "downloads") == 0 and folder.exists()


def test_a_restarted_events_receiver_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    stale = aged(killed_mid_write("file", tmp_path / "events" / "events-1.json"))
    live = killed_mid_write("file", tmp_path / "events" / "events-2.json")
    landed = tmp_path / "events" / "events-3.json"
    landed.write_text("[]")
    aged(landed)
    create_app(WebhookSigner().public_key, tmp_path)
    assert not stale.exists()
    assert live.exists() and landed.exists()  # a live writer's, and a landing file


def test_the_next_preview_list_removes_what_a_killed_one_left(tmp_path: Path) -> None:
    stale = aged(killed_mid_write("file", tmp_path / "previews" / "top-100.csv"))
    path, _, _ = save_list(tmp_path, "top-100", ("username",), [{"username": "a"}], {})
    assert path.is_file() and not stale.exists()


def test_a_folder_of_too_many_files_to_look_through_in_time_is_said_unchecked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file outbox of a season's emails (400,000 .eml files here took the row 1.8 s of
    a cron job every 5 minutes, growing with every send): the folders are looked
    through for LEFTOVERS_SECONDS at most, then the row says which were not looked
    through to the end, with the `find` that lists their leftovers."""
    settings = load_settings({"ROLLOUT_HOME": str(tmp_path / "home")})
    left = aged(killed_mid_write("file", settings.outbox_dir / "00000001-a.eml"))
    for number in range(2, 3000):
        (settings.outbox_dir / f"{number:08d}-a.eml").write_text("x")
    now = datetime.now(UTC)
    assert str(left) in check_leftovers(settings, now).detail  # in time: found

    monkeypatch.setattr(doctor, "LEFTOVERS_SECONDS", 0.0)
    started = time.monotonic()
    row = check_leftovers(settings, now)
    assert time.monotonic() - started < 1.0
    assert row.status is Status.warn, row
    assert "not checked to the end" in row.detail
    assert str(settings.outbox_dir) in row.detail
    command = row.detail.split("`")[1]
    listed = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True)
    assert str(left) in listed.stdout.split("\n")
