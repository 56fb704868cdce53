"""Files rollout writes hold personal data (addresses, usernames, who has 2FA): each is
made closed to others, whatever the umask lets others have, with the owner's and the
group's bits as the umask leaves them; each temporary file is made exclusively, and a
link planted where one is written is never followed (rollout.core.files)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

import rollout.core.files
from rollout import warehouse
from rollout.core.files import write_atomically, written_in_place
from rollout.dev.webhook_signing import WebhookSigner
from rollout.notify.senders import FileSender
from rollout.notify.webhook import EVENTS_PATH, create_app
from tests.test_file_outbox_eml import BASE
from tests.test_webhook import NOW, body_of, served, written

# umask -> (a file's mode, a folder's mode): what the umask leaves, never a bit for others.
RULE = {0o022: (0o640, 0o750), 0o077: (0o600, 0o700), 0o002: (0o660, 0o770)}


@pytest.fixture(params=sorted(RULE), ids=lambda m: f"umask {m:03o}")
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_file_written_whole_is_closed_to_others(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "previews" / "deep" / "top-100.csv"
    write_atomically(path, "username\nann\n")
    assert path.read_text() == "username\nann\n"
    assert mode(path) == RULE[umask][0]
    # Every folder it made, not only the last one.
    assert mode(path.parent) == mode(path.parent.parent) == RULE[umask][1]
    assert [p.name for p in path.parent.iterdir()] == ["top-100.csv"]


def test_a_file_a_writer_makes_in_place_is_closed_to_others(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "landing" / "downloads.csv"
    with written_in_place(path) as temporary:
        # As DuckDB's COPY or Arrow's writer makes it: with the umask's permissions.
        temporary.write_text("package,day,downloads\n")
    assert mode(path) == RULE[umask][0]
    assert mode(path.parent) == RULE[umask][1]
    assert [p.name for p in path.parent.iterdir()] == ["downloads.csv"]


def test_a_folder_already_there_is_left_as_its_owner_made_it(tmp_path: Path) -> None:
    from rollout.core.files import make_folder

    shared = tmp_path / "home"
    shared.mkdir()
    shared.chmod(0o2775)
    make_folder(shared / "outbox")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2775


def test_a_file_where_a_folder_should_be_is_named_as_making_the_folder_in_it_says(
    tmp_path: Path,
) -> None:
    """A file where a folder above the one asked for should be (`reports` made a file):
    "Not a directory", naming the folder that cannot be made in it, as
    Path.mkdir(parents=True) said (a command's and a flow run's one line read it); a
    file at the folder itself: "File exists", as before."""
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(NotADirectoryError) as in_a_file:
        rollout.core.files.make_folder(tmp_path / "reports" / "2022-05-10" / "previews")
    assert in_a_file.value.filename == str(tmp_path / "reports" / "2022-05-10")
    with pytest.raises(FileExistsError):
        rollout.core.files.make_folder(tmp_path / "reports")
    rollout.core.files.make_folder(tmp_path / "a" / "b")  # what is missing is made
    assert (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize(
    ("in_the_way", "target"),
    [
        # `reports/previews` made a file: the folder the list goes in.
        ("previews", "previews/top-100.csv"),
        # `outbox` made a file: a folder above the one the examples go in.
        ("outbox", "outbox/preview/notice.txt"),
    ],
)
def test_a_file_where_a_written_file_s_folder_should_be_is_named_not_the_temporary_name(
    tmp_path: Path, in_the_way: str, target: str
) -> None:
    """A phase preview, an email preview or the events receiver writing where a file
    stands in for its folder (or one above it): the one line names that file, "Not a
    directory", not the hidden `.<name>.<random>.tmp` nobody asked for and that is not
    there."""
    (tmp_path / in_the_way).write_text("not a folder")
    with pytest.raises(NotADirectoryError) as refused:
        write_atomically(tmp_path / target, "username\nann\n")
    assert refused.value.filename == str(tmp_path / in_the_way)
    assert [p.name for p in tmp_path.iterdir()] == [in_the_way]
    assert (tmp_path / in_the_way).read_text() == "not a folder"


def test_a_link_planted_at_the_temporary_name_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    path = tmp_path / "out" / "top-100.csv"
    path.parent.mkdir()
    # The first name drawn is one a neighbour guessed and planted a link at.
    tokens = iter(["guessed", "fresh"])
    monkeypatch.setattr(rollout.core.files.secrets, "token_hex", lambda _n: next(tokens))
    (path.parent / ".top-100.csv.guessed.tmp").symlink_to(victim)
    write_atomically(path, "username\nann\n")
    assert victim.read_text() == "not yours"
    assert path.read_text() == "username\nann\n" and not path.is_symlink()


def test_a_link_where_a_writer_would_write_cannot_be_planted(tmp_path: Path) -> None:
    path = tmp_path / "copy.duckdb"
    with written_in_place(path) as temporary:
        # The writer's path is in a folder of this user's alone, made for this write.
        assert temporary.parent.parent == tmp_path
        assert mode(temporary.parent) == 0o700 and not any(temporary.parent.iterdir())
        temporary.write_text("x")
    assert not temporary.parent.exists()


def test_the_outbox_is_closed_to_others(tmp_path: Path, umask: int) -> None:
    sender = FileSender(tmp_path / "home" / "outbox")
    sender.send(BASE)
    [eml] = (tmp_path / "home" / "outbox").iterdir()
    assert eml.suffix == ".eml" and mode(eml) == RULE[umask][0]
    assert mode(eml.parent) == mode(eml.parent.parent) == RULE[umask][1]


def test_the_outbox_never_writes_through_a_link_planted_at_a_temporary_name(
    tmp_path: Path,
) -> None:
    """The outbox's temporary file was named by the process and thread
    (`.<name>.<pid>.<thread>.tmp`), opened without O_EXCL: a link planted there was
    followed, and the email written over whatever it named."""
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    sender = FileSender(tmp_path / "outbox")
    final = sender.path_for(BASE)
    final.parent.mkdir()
    guessed = f".{final.name}.{os.getpid()}.{threading.get_ident()}.tmp"
    (final.parent / guessed).symlink_to(victim)
    sender.send(BASE)
    assert victim.read_text() == "not yours"
    assert final.is_file() and not final.is_symlink()


def test_the_event_receivers_files_are_closed_to_others_yet_readable_by_the_group(
    tmp_path: Path, umask: int
) -> None:
    """They were always 0600 (mkstemp's): an ingest running as another user of the
    group could not read them."""
    signer = WebhookSigner()
    app = create_app(signer.public_key, tmp_path, clock=lambda: NOW)
    body = body_of()
    with served(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        answer = client.post(EVENTS_PATH, content=body, headers=signer.headers(body, NOW))
    assert answer.status_code == 200
    [landed] = written(tmp_path)
    assert mode(landed) == RULE[umask][0]
    assert mode(landed.parent) == RULE[umask][1]


def test_a_new_warehouse_is_closed_to_others(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "home" / "warehouse.duckdb"
    with warehouse.connect(path):
        pass
    assert mode(path) == RULE[umask][0]
    assert mode(path.parent) == RULE[umask][1]
    assert duckdb.connect(str(path), read_only=True).execute("select 1").fetchone() == (1,)
