"""Settings are a pure function of the environment they are given."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rollout.config import load_settings


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
    with pytest.raises(ValidationError):
        load_settings({"ROLLOUT_QUARANTINE_LIMIT": "1.5"})
