"""Settings are a pure function of the environment they are given."""

from __future__ import annotations

from pathlib import Path

import pytest

from rollout.core.config import Settings, load_settings, url_shown
from rollout.core.errors import BadInput


def test_defaults_live_under_var() -> None:
    settings = load_settings({})
    assert settings.home == Path("var")
    assert settings.registry_url == "sqlite:///var/registry.db"
    assert settings.warehouse_path == Path("var/warehouse.duckdb")
    assert settings.landing_dir == Path("var/landing")
    assert settings.outbox_dir == Path("var/outbox")
    assert settings.sendgrid_api_key is None


def test_rollout_home_moves_everything() -> None:
    settings = load_settings({"ROLLOUT_HOME": "/srv/rollout"})
    assert settings.registry_url == "sqlite:////srv/rollout/registry.db"
    assert settings.reports_dir == Path("/srv/rollout/reports")


def test_registry_url_overrides_the_sqlite_file() -> None:
    url = "postgresql://rollout@db/rollout"
    assert load_settings({"ROLLOUT_REGISTRY_URL": url}).registry_url == url


def test_the_api_key_never_shows_in_repr() -> None:
    settings = load_settings({"SENDGRID_API_KEY": "SG.secret-value"})
    assert settings.sendgrid_api_key is not None
    assert settings.sendgrid_api_key.get_secret_value() == "SG.secret-value"
    assert "SG.secret-value" not in repr(settings)


def test_an_empty_api_key_means_no_key() -> None:
    assert load_settings({"SENDGRID_API_KEY": ""}).sendgrid_api_key is None


def test_only_the_given_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROLLOUT_HOME", "/from/process")
    assert load_settings({}).home == Path("var")
    assert load_settings().home == Path("/from/process")


def test_a_bad_quarantine_limit_is_refused() -> None:
    with pytest.raises(BadInput, match=r"^environment variable ROLLOUT_QUARANTINE_LIMIT='1\.5': "):
        load_settings({"ROLLOUT_QUARANTINE_LIMIT": "1.5"})


# Every variable Settings reads, with a value it cannot use.
BAD_VALUES = {
    "ROLLOUT_HOME": "",
    "ROLLOUT_REGISTRY_URL": "not a url",
    "ROLLOUT_WAREHOUSE": None,  # any path will do: nothing to refuse
    "ROLLOUT_SENDGRID_URL": "api.sendgrid.com",
    "ROLLOUT_QUARANTINE_LIMIT": "abc",
    "ROLLOUT_DUCKDB_MEMORY_LIMIT": "lots",
    "ROLLOUT_PLAN": " ",
    "ROLLOUT_ACTOR": " ",
    "SENDGRID_API_KEY": None,  # any text may be a key
    "ROLLOUT_SENDGRID_WEBHOOK_KEY": "not-a-key",
    "ROLLOUT_SENDGRID_TIMEOUT_SECONDS": "0",
    "ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS": "-1",
}


def test_every_setting_is_covered() -> None:
    assert set(BAD_VALUES) == {
        f.validation_alias for f in Settings.model_fields.values() if f.validation_alias
    }


@pytest.mark.parametrize(
    ("name", "value"), [(n, v) for n, v in BAD_VALUES.items() if v is not None]
)
def test_a_bad_setting_is_bad_input_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(BadInput) as refused:
        load_settings({name: value})
    message = str(refused.value)
    assert message.startswith(f"environment variable {name}")
    assert "\n" not in message


@pytest.mark.parametrize(
    "value",
    ["500%", "0%", "999999999TB", "0B", "1KB", "2000TB", "\u0661\u0660\u0660MB", "0.00001%"],
)
def test_a_memory_limit_duckdb_would_refuse_or_cannot_work_in_is_bad_input(value: str) -> None:
    """Each failed when the warehouse opened, as a DuckDB traceback, before."""
    with pytest.raises(BadInput, match="ROLLOUT_DUCKDB_MEMORY_LIMIT"):
        load_settings({"ROLLOUT_DUCKDB_MEMORY_LIMIT": value})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("http://127.0.0.1:abc", "Port could not"),
        ("https://api.sendgrid.com:70000", "Port out of range"),
        ("http://[::1", "IPv6"),
        ("https://:443", "host"),
    ],
)
def test_a_sendgrid_url_the_client_cannot_use_is_bad_input(value: str, reason: str) -> None:
    """Each passed the pattern; every email then failed at sending, one 'after the
    request went: SendGrid may have sent it' though nothing went, or the drain ended in
    a ValueError traceback."""
    with pytest.raises(BadInput, match=f"^environment variable ROLLOUT_SENDGRID_URL=.*{reason}"):
        load_settings({"ROLLOUT_SENDGRID_URL": value})


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("ROLLOUT_SENDGRID_TIMEOUT_SECONDS", "ten", "valid number"),
        ("ROLLOUT_SENDGRID_TIMEOUT_SECONDS", "nan", "finite number"),
        ("ROLLOUT_SENDGRID_TIMEOUT_SECONDS", "inf", "finite number"),
        ("ROLLOUT_SENDGRID_TIMEOUT_SECONDS", "301", "less than or equal to 300"),
        ("ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS", "601", "less than or equal to 600"),
    ],
)
def test_a_sendgrid_wait_that_is_no_number_of_seconds_is_bad_input(
    name: str, value: str, reason: str
) -> None:
    """A client without a timeout would wait forever on a silent server, and an
    endless wait makes an endless lease (rollout.notify.drain.lease_for)."""
    with pytest.raises(BadInput, match=f"^environment variable {name}='{value}': .*{reason}"):
        load_settings({name: value})


@pytest.mark.parametrize("separator", ["/", "?", "#", "@"])
def test_a_password_holding_a_url_delimiter_is_hidden_whole(separator: str) -> None:
    """A password pasted without encoding (`/`, `?`, `#` as they are): the authority no
    longer ends at the first of them, so the password was shown whole; and the URL,
    which the client cannot read then, is what the message names."""
    url = f"http://ops:s3cr{separator}et-pw@prefect.example:4200/api"
    assert url_shown(url) == "http://ops:***@prefect.example:4200/api"
    if separator == "@":
        return  # a URL the client reads: its last "@" ends the password
    with pytest.raises(BadInput) as refused:
        load_settings({"ROLLOUT_SENDGRID_URL": url})
    message = str(refused.value)
    assert "s3cr" not in message and "et-pw" not in message
    assert "ROLLOUT_SENDGRID_URL='http://ops:***@prefect.example:4200/api'" in message
    assert "encode a '/', '?', '#' or '@' in the password" in message


def test_a_sendgrid_url_refused_for_its_port_shows_no_password() -> None:
    with pytest.raises(BadInput) as refused:
        load_settings({"ROLLOUT_SENDGRID_URL": "http://proxy:s3cret-pw@mail.example:abc/"})
    assert "s3cret-pw" not in str(refused.value)
    assert "'http://proxy:***@mail.example:abc/'" in str(refused.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://prefect.example:4200/api?owner=ops@example.com",
        "http://prefect.example/api/ops:s3cret@x",
        "http://ops@prefect.example/api",
    ],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert url_shown(url) == url


def test_a_refused_database_url_is_not_echoed() -> None:
    with pytest.raises(BadInput) as refused:
        load_settings({"ROLLOUT_REGISTRY_URL": "mysql://rollout:s3cret@db/registry"})
    assert "s3cret" not in str(refused.value)
    assert "sqlite or postgresql" in str(refused.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ROLLOUT_REGISTRY_URL", "postgres://rollout@db/rollout"),
        ("ROLLOUT_REGISTRY_URL", "sqlite:////srv/registry.db"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "4GB"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "512MiB"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "80%"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "16MB"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "100%"),
        ("ROLLOUT_DUCKDB_MEMORY_LIMIT", "1.5 TiB"),
        ("ROLLOUT_SENDGRID_URL", "http://127.0.0.1:3030"),
        ("ROLLOUT_QUARANTINE_LIMIT", "0"),
        ("ROLLOUT_SENDGRID_TIMEOUT_SECONDS", "2.5"),
        ("ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS", "0"),
    ],
)
def test_usable_settings_are_accepted(name: str, value: str) -> None:
    load_settings({name: value})


def test_a_blank_override_means_unset() -> None:
    settings = load_settings({"ROLLOUT_REGISTRY_URL": "", "ROLLOUT_DUCKDB_MEMORY_LIMIT": ""})
    assert settings.registry_url == "sqlite:///var/registry.db"
    assert settings.duckdb_memory_limit is None


def test_an_api_key_keeps_no_whitespace_around_it_and_none_inside() -> None:
    """A key saved from a file kept its last line feed, and the HTTP client then printed
    it whole in its error."""
    settings = load_settings({"SENDGRID_API_KEY": "SG.secret-key\n"})
    assert settings.sendgrid_api_key is not None
    assert settings.sendgrid_api_key.get_secret_value() == "SG.secret-key"
    assert load_settings({"SENDGRID_API_KEY": " \n"}).sendgrid_api_key is None
    with pytest.raises(BadInput) as refused:
        load_settings({"SENDGRID_API_KEY": "SG.secret\x00key"})
    assert "holds a space or a control character" in str(refused.value)
    assert "secret" not in str(refused.value).replace("(the key is not shown)", "")


def test_a_leading_tilde_is_the_home_folder_as_duckdb_and_a_shell_read_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ROLLOUT_HOME=~/rollout where no shell expands it (a compose file, a unit): rollout
    made a folder named ~ in the working folder while DuckDB put the warehouse at home."""
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = load_settings(
        {
            "ROLLOUT_HOME": "~/rollout",
            "ROLLOUT_WAREHOUSE": "~/w/warehouse.duckdb",
            "ROLLOUT_PLAN": "~/plans/p.yaml",
        }
    )
    assert settings.home == tmp_path / "rollout"
    assert settings.warehouse_path == tmp_path / "w" / "warehouse.duckdb"
    assert settings.plan_path == tmp_path / "plans" / "p.yaml"
    assert settings.registry_url == f"sqlite:///{tmp_path / 'rollout' / 'registry.db'}"
    with pytest.raises(BadInput, match=r"environment variable ROLLOUT_HOME='~no-such-user-x/r'"):
        load_settings({"ROLLOUT_HOME": "~no-such-user-x/r"})
    # The registry's SQLite file too (SQLite opened ./~/registry.db).
    url = load_settings({"ROLLOUT_REGISTRY_URL": "sqlite:///~/reg/registry.db"}).registry_url
    assert url == f"sqlite:///{tmp_path / 'reg' / 'registry.db'}"
    with pytest.raises(BadInput, match=r"ROLLOUT_REGISTRY_URL"):
        load_settings({"ROLLOUT_REGISTRY_URL": "sqlite:///~no-such-user-x/r.db"})


@pytest.mark.parametrize(
    ("environ", "actor"),
    [
        ({"ROLLOUT_ACTOR": "ana", "USER": "bob"}, "ana"),
        ({"USER": "bob"}, "bob"),
        ({}, "rollout"),
        # Set empty (`ROLLOUT_ACTOR=` in an env file): unset, not a refusal.
        ({"ROLLOUT_ACTOR": "", "USER": "bob"}, "bob"),
        ({"ROLLOUT_ACTOR": "", "USER": ""}, "rollout"),
    ],
)
def test_the_actor_is_rollout_actor_else_user_else_rollout(
    environ: dict[str, str], actor: str
) -> None:
    assert load_settings(environ).actor == actor


def test_a_worker_with_rollout_actor_set_empty_records_its_flow_runs() -> None:
    """The flows read an empty ROLLOUT_ACTOR as unset (their run's name), so the
    settings they load must take it too: refused, every flow run failed."""
    from flows.common import run_actor

    environ = {"ROLLOUT_ACTOR": "", "USER": "rollout-worker"}
    assert run_actor(load_settings(environ), environ) == "prefect/local"


@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        ("ROLLOUT_HOME", "{file}", "'{file}' is a file, not a folder"),
        ("ROLLOUT_HOME", "{file}/home", "'{file}' is a file, not a folder"),
        ("ROLLOUT_WAREHOUSE", "{file}/w/warehouse.duckdb", "'{file}' is a file, not a folder"),
        ("ROLLOUT_REGISTRY_URL", "sqlite:///{file}/registry.db", "'{file}', a folder of its"),
        ("ROLLOUT_REGISTRY_URL", "sqlite:///{folder}", "names the folder '{folder}'"),
    ],
)
def test_a_file_where_a_folder_should_be_or_a_folder_for_the_registry_is_bad_input(
    tmp_path: Path, name: str, value: str, said: str
) -> None:
    """Said at start, naming what is in the way: a registry writer said the folder was
    "not writable for this user", SQLite "unable to open database file", ingest "File
    exists" (exit 1)."""
    file, folder = tmp_path / "a-file", tmp_path / "a-folder"
    file.write_text("")
    folder.mkdir()
    where = {"file": file, "folder": folder}
    with pytest.raises(BadInput) as refused:
        load_settings({name: value.format(**where)})
    message = str(refused.value)
    assert message.startswith(f"environment variable {name}")
    assert said.format(**where) in message


def test_folders_still_to_be_made_are_no_problem(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "ROLLOUT_HOME": str(tmp_path / "new" / "home"),
            "ROLLOUT_WAREHOUSE": str(tmp_path / "new" / "w" / "warehouse.duckdb"),
            "ROLLOUT_REGISTRY_URL": f"sqlite:///{tmp_path / 'new' / 'r' / 'registry.db'}",
        }
    )
    assert settings.home == tmp_path / "new" / "home"
    assert not (tmp_path / "new").exists()  # nothing made by reading the settings
