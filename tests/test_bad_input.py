"""Input that cannot be used is refused, never crashed on: exit code 2, the file, line and
reason on stderr (DESIGN.md), and nothing written or changed."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from rollout.cli import app
from rollout.cli.app import path_given
from rollout.core.errors import BadInput
from rollout.core.plan import Plan
from rollout.phases.previews import save_preview
from rollout.registry.engine import make_engine, session_scope
from rollout.registry.locks import exclusive_run
from rollout.registry.migrate import upgrade
from rollout.registry.models import Account
from tests.support.env import without_rollout_settings
from tests.support.pipes import UNBLOCKED_AFTER_SECONDS, pipe_without_writer

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "plans" / "npm-2022.yaml"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and mtime: what "changed nothing" compares."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def refused(result: Result) -> str:
    """The one-line refusal of a command that exited 2, never a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    return result.stderr


# --- plan files -----------------------------------------------------------------------

# (what is wrong, edit of the reference plan, the reason stderr must give)
BAD_PLANS = [
    (
        "impossible date",
        ("notice_on: 2022-01-04", "notice_on: 2022-02-30"),
        "'2022-02-30' is not a real date",
    ),
    (
        "repeated key",
        ("    batch_size: 500\n", "    batch_size: 500\n    batch_size: 50\n"),
        "'batch_size' appears twice",
    ),
    ("negative repeat_days", ("reminder: 7", "reminder: -7"), "repeat_days.reminder"),
    ("misspelt repeat_days", ("reminder: 7", "remidner: 7"), "repeat_days.remidner"),
    ("phase name with a path", ("  - name: top-100", "  - name: ../../x"), "phases.0.name"),
    (
        "number past int()'s 4300 digits",
        ("max_accounts: 1000", "max_accounts: 1" + "0" * 5000),
        "a number of 5,001 digits is larger than any value of a plan",
    ),
]


def bad_plan(tmp_path: Path, edit: tuple[str, str]) -> tuple[Path, int]:
    """The reference plan with one edit, and the line of the edit."""
    old, new = edit
    text = REFERENCE.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    last = new.splitlines()[-1].strip()
    return path, next(n for n, line in enumerate(text.splitlines(), 1) if line.strip() == last)


@pytest.mark.parametrize(
    "command",
    [
        ["plan", "show"],
        ["phase", "preview", "top-100"],
        ["brownout", "schedule"],
        ["notify", "preview"],
        ["cohorts", "show", "top-100"],
        ["report", "--as-of", "2022-02-01"],
    ],
    ids=" ".join,
)
@pytest.mark.parametrize(("what", "edit", "reason"), BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_every_command_refuses_a_bad_plan_naming_file_and_line(
    rollout_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    what: str,
    edit: tuple[str, str],
    reason: str,
) -> None:
    path, line = bad_plan(tmp_path, edit)
    monkeypatch.setenv("ROLLOUT_PLAN", str(path))
    stderr = refused(run(*command))
    assert f"{path}:{line}: " in stderr and reason in stderr
    assert not rollout_home.exists()


@pytest.mark.parametrize(("what", "edit", "reason"), BAD_PLANS, ids=[c[0] for c in BAD_PLANS])
def test_plan_check_refuses_a_bad_plan(
    rollout_home: Path, tmp_path: Path, what: str, edit: tuple[str, str], reason: str
) -> None:
    path, line = bad_plan(tmp_path, edit)
    stderr = refused(run("plan", "check", str(path)))
    assert f"{path}:{line}: " in stderr and reason in stderr


def a_file_too_large(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (sparse: it takes no disk), as a log named by mistake."""
    with path.open("wb") as file:
        file.truncate(size)
    return path


@pytest.mark.parametrize("given", ["argument", "ROLLOUT_PLAN"])
def test_a_plan_that_is_no_file_to_read_is_refused_at_once_unread(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    # A pipe was waited on for ever (cron's run never ended), /dev/zero read until the
    # memory ran out (a MemoryError's traceback), a huge file read whole.
    def check(path: Path) -> str:
        if given == "argument":
            result = run("plan", "check", str(path))
        else:
            monkeypatch.setenv("ROLLOUT_PLAN", str(path))
            result = run("plan", "show")
        return " ".join(refused(result).split())  # (a long path may wrap)

    with pipe_without_writer(tmp_path / "plan.yaml") as pipe:
        started = time.monotonic()
        stderr = check(pipe)
        assert time.monotonic() - started < UNBLOCKED_AFTER_SECONDS
    assert stderr == (
        f"error: {pipe}: not a regular file (a pipe, a socket or a device), not a plan"
    )
    assert check(Path("/dev/null")) == (
        "error: /dev/null: not a regular file (a pipe, a socket or a device), not a plan"
    )
    huge = a_file_too_large(tmp_path / "huge.yaml", 4 * 2**20 + 1)
    assert check(huge) == (
        f"error: {huge}: larger than 4 MiB, more than any plan holds: nothing read"
    )
    folder = tmp_path / "plans"
    folder.mkdir()
    assert check(folder) == f"error: {folder}: a folder, not a plan: name the file in it"
    assert not rollout_home.exists()


def test_a_plan_mixing_utc_and_offset_times_is_valid(rollout_home: Path, tmp_path: Path) -> None:
    path, _ = bad_plan(
        tmp_path, ("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-23T00:00:00+02:00")
    )
    result = run("plan", "check", str(path))
    assert result.exit_code == 0, result.stderr


def test_a_preview_never_writes_outside_reports_previews(tmp_path: Path, plan: Plan) -> None:
    reports = tmp_path / "home" / "reports"
    preview = SimpleNamespace(
        phase="../../escaped", cohort="c", targets=[], count=0, sessions=0, compliant=0, exempted=[]
    )
    with pytest.raises(BadInput, match=r"phase '\.\./\.\./escaped' cannot be used in a file name"):
        save_preview(plan, preview, reports, actor="test")  # type: ignore[arg-type]
    assert files_under(tmp_path) == {}


def test_a_lock_file_never_lands_outside_the_database_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'registry.db'}"
    with (
        pytest.raises(BadInput, match=r"lock '/\.\./x' cannot be used in a file name"),
        exclusive_run(url, "/../x", None),  # below Registry.lock, which knows its names
    ):
        pass
    assert files_under(tmp_path) == {}


# --- numeric options ------------------------------------------------------------------

BAD_NUMBERS = [
    ["cohorts", "simulate", "--top", "-5"],
    ["cohorts", "simulate", "--top", "0"],
    ["cohorts", "simulate", "--weekly-downloads-gt", "-1"],
    ["cohorts", "simulate", "--dependents-gte", "0"],
    ["quarantine", "--limit", "-1"],
    ["quarantine", "--limit", "0"],
    ["elv", "enroll-all", "--apply", "--batch-size", "0"],
    ["elv", "enroll-all", "--apply", "--batch-size", "-1"],
    ["sample", "--scale", "tiny", "--seed", "-1"],
    ["sample", "--scale", "tiny", "--days", "0"],
    ["phase", "enforce", "top-100", "--apply", "--expect", "-1"],
    ["notify", "send", "--apply", "--limit", "0"],
    ["demo", "--seed", "-1"],
    ["dev", "sendgrid", "--port", "70000"],
]


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--webhook-url", "localhost:3031/events", "is not an http(s) URL"),
        ("--webhook-url", "http://", "is not an http(s) URL"),
        ("--webhook-url", "http://127.0.0.1:99999/x", "is not an http(s) URL"),
        ("--record", "{tmp}", "cannot record messages here: Is a directory"),
        ("--record", "{tmp}/file/under-a-file.jsonl", "cannot record messages here"),
    ],
)
def test_the_dev_sendgrid_server_refuses_at_start_what_would_fail_at_the_first_message(
    rollout_home: Path, tmp_path: Path, option: str, value: str, said: str
) -> None:
    (tmp_path / "file").write_text("")
    stderr = refused(run("dev", "sendgrid", "--port", "0", option, value.format(tmp=tmp_path)))
    assert said in stderr


@pytest.mark.parametrize("server", [["dev", "sendgrid"], ["notify", "events", "serve"]])
@pytest.mark.parametrize("host", ["999.1.1.1", " ", "http://127.0.0.1", "no-such-host.invalid"])
def test_a_server_refuses_an_interface_it_cannot_listen_on_naming_the_option(
    rollout_home: Path, server: list[str], host: str
) -> None:
    # Said as the socket's own words before, naming nothing: "error: Name or service
    # not known" (exit 1).
    stderr = " ".join(refused(run(*server, "--port", "0", "--host", host)).split())
    assert "Invalid value for '--host'" in stderr


def test_the_dev_sendgrid_server_listens_on_an_ipv6_address(rollout_home: Path) -> None:
    from rollout.dev.sendgrid_api import DevSendGrid

    with DevSendGrid(host="::1") as server:
        assert server.url.startswith("http://[::1]:")


def test_the_dev_sendgrid_server_says_which_address_it_cannot_listen_on(
    rollout_home: Path,
) -> None:
    # An address of another machine: a host the option takes, but not this machine's.
    result = run("dev", "sendgrid", "--port", "0", "--host", "192.0.2.1")
    assert result.exit_code == 1, result.stderr
    assert "cannot listen on 192.0.2.1 port 0: " in result.stderr


@pytest.fixture
def registry_with_accounts(rollout_home: Path) -> Path:
    """A registry of three accounts none of which is enrolled in ELV."""
    database = rollout_home / "registry.db"
    rollout_home.mkdir(parents=True)
    engine = make_engine(f"sqlite:///{database}")
    try:
        upgrade(engine)
        with session_scope(engine) as session:
            session.add_all(
                Account(
                    username=name,
                    email=f"{name.replace('/', '_')}@example.com",
                    email_verified=True,
                    created_at=datetime(2021, 6, 1),
                )
                for name in ("kim", "a/b", "../../../escaped")
            )
    finally:
        engine.dispose()
    return database


@pytest.mark.parametrize("command", BAD_NUMBERS, ids=" ".join)
def test_a_number_out_of_range_is_refused_before_anything_runs(
    registry_with_accounts: Path, command: list[str]
) -> None:
    home = registry_with_accounts.parent
    before = files_under(home)
    stderr = refused(run(*command))
    assert "Invalid value for" in stderr and f"'{command[-2]}'" in stderr
    [line] = stderr.strip().splitlines()  # one line, as every error (not a boxed panel)
    assert line.startswith("error: Invalid value for") and line.endswith("--help`)")
    assert files_under(home) == before
    with sqlite3.connect(registry_with_accounts) as connection:
        enrolled = connection.execute(
            "select count(*) from accounts where elv_enrolled_at is not null"
        ).fetchone()[0]
    assert enrolled == 0


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--end", "2199-12-31"], "end 2199-12-31 is in the future"),
        (["--end", "2011-06-30"], "end must be in 2012 or later"),
        (["--days", "100000"], "would start the download history before 2010-01-01"),
    ],
    ids=["end-in-the-future", "end-too-early", "days-before-the-registry"],
)
def test_sample_refuses_a_history_it_cannot_write_before_making_anything(
    rollout_home: Path, tmp_path: Path, options: list[str], reason: str
) -> None:
    """A mistyped --end or --days is refused before the registry is opened: it left an
    empty registry.db (and the home) behind, which the next command took for a registry."""
    stderr = refused(run("sample", "--scale", "tiny", *options))
    assert reason in stderr
    assert not rollout_home.exists()
    assert files_under(tmp_path) == {}


def numeric_parameters(command: Any, path: str = "rollout") -> list[tuple[str, Any]]:
    """Every int or float option and argument of every command, by its command path."""
    found = []
    for name, sub in getattr(command, "commands", {}).items():
        found += numeric_parameters(sub, f"{path} {name}")
    for param in command.params:
        if param.type_descriptor.annotation in (int, float):
            found.append((f"{path} {param.opts[0]}", param))
    return found


def test_every_numeric_option_has_a_lower_bound() -> None:
    parameters = numeric_parameters(typer.main.get_command(app))
    assert len(parameters) >= 10
    assert [name for name, param in parameters if param.min is None] == []


EMPTY_PATHS = [
    ["ingest", ""],
    ["copy-warehouse", ""],
    ["plan", "check", ""],
    ["plan", "simulate", "", "--as-of", "2022-01-03"],
    ["phase", "snooze", "top-100", "--file", " "],
    ["demo", "--plan", ""],
    ["dev", "sendgrid", "--record", ""],
]


@pytest.mark.parametrize("command", EMPTY_PATHS, ids=" ".join)
def test_an_empty_path_is_refused_not_read_as_the_working_folder(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    # `rollout ingest "$LANDING"` with the variable unset scanned the working folder
    # (Path("") is "."), copy-warehouse wrote its copy there.
    folder = tmp_path / "working"
    folder.mkdir()
    (folder / "downloads-2022-01-03.csv").write_text("package,day,downloads\nx,2022-01-03,1\n")
    monkeypatch.chdir(folder)
    before = files_under(tmp_path)
    stderr = " ".join(refused(run(*command)).split())
    assert "is empty: name a file or folder (an unset variable?)" in stderr
    assert files_under(tmp_path) == before


def path_parameters(command: Any, path: str = "rollout") -> list[tuple[str, Any]]:
    """Every option and argument of every command that takes a path, by its command path."""
    found = []
    for name, sub in getattr(command, "commands", {}).items():
        found += path_parameters(sub, f"{path} {name}")
    for param in command.params:
        if param.type_descriptor.annotation in (Path, list[Path]):
            found.append((f"{path} {param.opts[0]}", param))
    return found


def test_every_path_a_command_takes_is_parsed_as_one_given() -> None:
    parameters = path_parameters(typer.main.get_command(app))
    assert len(parameters) == len(EMPTY_PATHS)
    assert [
        name
        for name, param in parameters
        if param.type_descriptor.parameter_info.parser is not path_given
    ] == []


# --- environment ----------------------------------------------------------------------

BAD_ENVIRONMENT = [
    ("ROLLOUT_QUARANTINE_LIMIT", "abc"),
    ("ROLLOUT_QUARANTINE_LIMIT", "2"),
    ("ROLLOUT_REGISTRY_URL", "nonsense"),
    ("ROLLOUT_REGISTRY_URL", "mysql://db/registry"),
    # Prefect's own database URL has asyncpg: rollout connects with psycopg.
    ("ROLLOUT_REGISTRY_URL", "postgresql+asyncpg://rop:s3cret@/registry?host=/nowhere"),
    ("ROLLOUT_REGISTRY_URL", "sqlite+aiosqlite:///registry.db"),
    # A port that is no number, in the query: it was a traceback at connecting.
    ("ROLLOUT_REGISTRY_URL", "postgresql://rop:s3cret@/registry?host=/nowhere&port=abc"),
    # In memory: `db upgrade` said "at revision 0019" and the next command found none.
    ("ROLLOUT_REGISTRY_URL", "sqlite://"),
    ("ROLLOUT_REGISTRY_URL", "sqlite:///"),
    ("ROLLOUT_REGISTRY_URL", "sqlite:///:memory:"),
    ("ROLLOUT_WAREHOUSE", ":memory:"),
    ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "lots"),
    ("ROLLOUT_SENDGRID_URL", "not a url"),
    ("ROLLOUT_ACTOR", " "),
    ("ROLLOUT_HOME", ""),
    ("ROLLOUT_PLAN", ""),
]


@pytest.mark.parametrize("command", [["db", "status"], ["ingest"], ["summary"]], ids=" ".join)
@pytest.mark.parametrize(("name", "value"), BAD_ENVIRONMENT)
def test_a_bad_setting_is_one_line_naming_the_variable(
    rollout_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    name: str,
    value: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # where a blank ROLLOUT_HOME would point
    monkeypatch.setenv(name, value)
    stderr = refused(run(*command))
    assert f"environment variable {name}" in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert files_under(tmp_path) == {}


def test_a_connection_option_the_driver_does_not_know_is_one_line_naming_the_variable(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A misspelt sslmode: libpq refuses it before connecting; it was a page of
    traceback and exit 1."""
    monkeypatch.setenv(
        "ROLLOUT_REGISTRY_URL", "postgresql://rop:s3cret@/registry?host=/nowhere&sslmod=require"
    )
    stderr = refused(run("db", "status"))
    assert stderr.strip() == (
        'error: environment variable ROLLOUT_REGISTRY_URL: invalid connection option "sslmod"'
    )


@pytest.mark.parametrize(
    ("option", "answer"),
    [
        # psycopg reads it itself: it was a traceback.
        ("connect_timeout=abc", "bad value for connect_timeout: 'abc'"),
        # libpq's: it was exit 1, "the registry database: ...", and the flows retried it
        # for a minute, as if the server were away.
        ("port=99999", 'invalid port number: "99999"'),
        ("target_session_attrs=primry", 'invalid target_session_attrs value: "primry"'),
        ("gssencmode=always", 'invalid gssencmode value: "always"'),
        # libpq reads it only on a TCP connection: through this socket it was exit 1.
        ("keepalives=x", 'invalid integer value "x" for connection option "keepalives"'),
    ],
)
def test_a_connection_option_value_the_driver_refuses_is_one_line_naming_the_variable(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, option: str, answer: str
) -> None:
    monkeypatch.setenv(
        "ROLLOUT_REGISTRY_URL", f"postgresql://rop:s3cret@/registry?host=/nowhere&{option}"
    )
    stderr = refused(run("db", "status"))
    [line] = stderr.strip().splitlines()
    assert line.startswith("error: environment variable ROLLOUT_REGISTRY_URL: ")
    assert line.endswith(answer) and "s3cret" not in stderr


# Commands that read or change the registry, or the warehouse, each with its arguments.
NEED_A_REGISTRY = [
    ["db", "downgrade", "0018"],
    ["db", "downgrade", "0018", "--apply", "--from", "0022"],
    ["plan", "show"],
    ["report", "--as-of", "2022-03-01"],
    ["phase", "preview", "top-100"],
    ["phase", "enforce", "top-100", "--apply", "--expect", "3", "--expect-list", "0123456789ab"],
    ["phase", "rollback", "top-100"],
    ["notify", "queue"],
    ["notify", "send", "--apply"],
    ["notify", "status"],
    ["notify", "suppress", "someone@example.com", "--reason", "asked"],
    ["notify", "suppress", "someone@example.com", "--reason", "asked", "--apply"],
    ["notify", "unsuppress", "someone@example.com", "--reason", "ok", "--apply"],
    [
        *("notify", "withdraw", "--email", "reminder", "--reason", "moved", "--apply"),
        *("--expect", "3", "--expect-list", "0123456789ab"),
    ],
    ["cohorts", "release", "left-pad", "--cohort", "top-100", "--reason", "ok", "--apply"],
    ["orgs", "audit", "acme"],
    ["orgs", "enforce", "acme"],
    ["orgs", "reinvite", "acme", "--team", "core"],
    ["brownout", "schedule"],
    ["brownout", "end", "brownout-1", "--reason", "errors", "--apply"],
    ["elv", "enroll-all"],
]
NEED_A_WAREHOUSE = [
    ["summary"],
    ["quarantine"],
    ["metrics", "--as-of", "2022-01-10"],
    ["cohorts", "build", "--as-of", "2022-01-10"],
    ["cohorts", "simulate", "--top", "10"],
    ["plan", "simulate"],
]


# `ingest` checks its landing folder, `ingest FILE` the registry, before either is made.
INGESTS = [["ingest"], ["ingest", "LANDING"]]


@pytest.mark.parametrize("command", [*NEED_A_REGISTRY, *NEED_A_WAREHOUSE, *INGESTS], ids=" ".join)
def test_a_mistyped_home_is_refused_and_makes_no_file(
    rollout_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """ROLLOUT_HOME naming a folder that is not there: each command names what is
    missing there, and leaves no empty registry, warehouse or folder behind."""
    monkeypatch.setenv("ROLLOUT_PLAN", str(REFERENCE))
    landing = tmp_path / "elsewhere" / "downloads-2022-01-10.csv"  # files named outright
    landing.parent.mkdir()
    landing.write_text("package,day,downloads\nleft-pad,2022-01-10,5\n")
    command = [str(landing) if word == "LANDING" else word for word in command]
    stderr = " ".join(refused(run(*command)).split())
    if command in NEED_A_REGISTRY or command[-1] == str(landing):
        assert f"{rollout_home / 'registry.db'}: no registry there: check ROLLOUT_HOME" in stderr
    elif command in NEED_A_WAREHOUSE:
        assert f"{rollout_home / 'warehouse.duckdb'}: no warehouse yet" in stderr
    else:
        assert f"{rollout_home / 'landing'}: no such file or folder" in stderr
    assert not rollout_home.exists()
    assert set(files_under(tmp_path)) <= {"elsewhere/downloads-2022-01-10.csv"}


@pytest.mark.parametrize("folder", ["runs?old", "50%41", "C#", "a@b:c", "[x] y", "x%"])
def test_a_home_whose_name_reads_as_url_syntax_keeps_the_registry_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    """ROLLOUT_HOME is a path, not part of a URL: a folder named ``runs?old`` put the
    registry in a file ``runs`` beside it (the rest read as the URL's query) and
    ``50%41`` in another folder, ``50A``. The registry and its lock files are made in
    the home, and nothing outside it."""
    home = tmp_path / folder
    without_rollout_settings(monkeypatch)
    monkeypatch.setenv("ROLLOUT_HOME", str(home))
    upgraded = run("db", "upgrade")
    assert upgraded.exit_code == 0, upgraded.stderr
    assert (home / "registry.db").is_file()
    assert all(name.startswith(f"{folder}/") for name in files_under(tmp_path))
    status = run("db", "status", "--format", "json")
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["up_to_date"] is True


def test_db_status_says_a_registry_is_not_there_and_makes_none(
    rollout_home: Path, tmp_path: Path
) -> None:
    """The runbooks check where the registry is with `db status` before `db upgrade`."""
    result = run("db", "status", "--format", "json")
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["registry"] == f"sqlite:///{rollout_home / 'registry.db'}"
    assert (status["revision"], status["up_to_date"]) == (None, False)
    assert "no registry there" in " ".join(result.stderr.split())
    assert files_under(tmp_path) == {}


# --- usernames that become file names -------------------------------------------------


@pytest.mark.parametrize("username", ["a/b", "../../../escaped"])
def test_notify_preview_for_any_username_stays_in_outbox_preview(
    registry_with_accounts: Path, monkeypatch: pytest.MonkeyPatch, username: str
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(REFERENCE))
    home = registry_with_accounts.parent
    preview = home / "outbox" / "preview"
    result = run("notify", "preview", "phase_notice", "--account", username)
    assert result.exit_code == 0, (result.stderr, result.exception)
    written = [Path(line) for line in result.stdout.split()]
    assert len(written) == 3
    assert all(path.resolve().parent == preview.resolve() for path in written)
    # The registry's run lock files aside (`db upgrade` leaves them, as runs do).
    assert {str(Path("outbox/preview") / p.name) for p in written} | {"registry.db"} == {
        name for name in files_under(home) if not name.endswith(".lock")
    }


def test_notify_preview_for_an_unknown_account_writes_nothing(
    registry_with_accounts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLOUT_PLAN", str(REFERENCE))
    home = registry_with_accounts.parent
    before = files_under(home)
    stderr = refused(run("notify", "preview", "phase_notice", "--account", "../nobody"))
    assert "no account named '../nobody'" in stderr
    assert files_under(home) == before


def test_a_refused_value_with_a_line_break_cannot_fake_a_line_of_output(
    rollout_home: Path, tmp_path: Path
) -> None:
    """A package name holding a line break and what looks like the ingest's summary:
    the refusal stays one line, the break shown as \\x0a."""
    upgrade(make_engine(f"sqlite:///{rollout_home / 'registry.db'}"))
    landing = tmp_path / "downloads" / "downloads-2022-01-05.csv"
    landing.parent.mkdir()
    fake = "ALL FILES FINE: nothing refused"
    landing.write_text(f'package,day,downloads\n"x\n{fake}",2022-01-05,1\n')
    result = run("ingest", str(landing))
    assert result.exit_code == 2
    [refusal] = [line for line in result.stderr.splitlines() if "x\\x0a" in line]
    assert refusal.startswith("refused:") and fake in refusal
    assert not any(line.startswith("ALL FILES") for line in result.stderr.splitlines())


@pytest.mark.parametrize(
    ("what", "answer"),
    [
        ("a wrong password", 'password authentication failed for user "rollout_password"'),
        ("no such database", 'database "no_such_registry" does not exist'),
    ],
)
def test_a_registry_url_the_server_turns_down_is_a_setting_to_fix(
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    turned_down_postgres_urls: dict[str, str],
    what: str,
    answer: str,
) -> None:
    """The server's own answer, naming the setting, exit 2: trying again cannot help
    (a server not there is another matter: exit 1, and the flows retry)."""
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", turned_down_postgres_urls[what])
    stderr = refused(run("plan", "show"))
    [line] = stderr.strip().splitlines()
    assert line.startswith("error: environment variable ROLLOUT_REGISTRY_URL: ")
    assert line.endswith(answer)
    assert "s3cret" not in stderr


@pytest.mark.parametrize("command", [["plan", "show"], ["notify", "status"]], ids=" ".join)
def test_a_registry_server_that_is_not_there_is_one_line_without_the_password(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", "postgresql://u:s3cret@127.0.0.1:1/db")
    result = run(*command)
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: the registry database: connection failed")
    assert "s3cret" not in result.stderr and "Traceback" not in result.output


def test_a_registry_server_gone_by_the_extract_is_the_same_one_line(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, postgres_schema_url: str
) -> None:
    """The extract reads PostgreSQL through ADBC, a driver of its own: a server gone
    between the command's first query and the extract (a failover) is the one line and
    exit 1 a server not there at all gives (it was ADBC's traceback)."""
    engine = make_engine(postgres_schema_url)
    upgrade(engine)
    engine.dispose()
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", postgres_schema_url)
    (rollout_home / "landing").mkdir(parents=True)
    # The engine reaches the server; ADBC, a moment later, finds nobody there.
    monkeypatch.setattr(
        "rollout.registry.engine.adbc_uri", lambda _url: "postgresql://u:s3cret@127.0.0.1:1/db"
    )
    result = run("ingest")
    assert result.exit_code == 1, (result.stderr, result.exception)
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: the registry database: IO: [libpq] Failed to connect")
    assert "Connection refused" in line
    assert "s3cret" not in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (
            ["--start", "2030-01-01"],
            "--start 2030-01-01 is after the calendar's last day, 2022-05-17 (14 days after "
            "the plan's last step): give --end too",
        ),
        (
            ["--end", "2021-01-01"],
            "--end 2021-01-01 is before the calendar's first day, 2021-11-23 (14 days before "
            "the plan's first step): give --start too",
        ),
        (
            ["--start", "2022-02-01", "--end", "2022-01-01"],
            "--end 2022-01-01 is before --start 2022-02-01",
        ),
    ],
    ids=["start-after-the-default-end", "end-before-the-default-start", "end-before-start"],
)
def test_demo_names_the_calendar_day_a_start_or_end_falls_outside(
    rollout_home: Path, options: list[str], said: str
) -> None:
    """`rollout demo --start 2030-01-01` said "--end is before --start" of an --end
    nobody gave: the README's default calendar (the plan's, 14 days either side) is what
    the day given falls outside, so the refusal names it. Nothing is made."""
    stderr = refused(run("demo", *options))
    assert stderr.strip() == f"error: {said}"
    assert files_under(rollout_home) == {}
