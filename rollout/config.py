"""Settings, read once from the environment by a pure function (see DESIGN.md).

Every path the pipeline touches hangs off ``ROLLOUT_HOME`` unless overridden, so a
test or a demo can point the whole tool somewhere else with one variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    home: Path = Field(Path("var"), validation_alias="ROLLOUT_HOME")
    registry_url_override: str | None = Field(None, validation_alias="ROLLOUT_REGISTRY_URL")
    warehouse_path_override: Path | None = Field(None, validation_alias="ROLLOUT_WAREHOUSE")
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias="SENDGRID_API_KEY")
    sendgrid_url: str = Field("https://api.sendgrid.com", validation_alias="ROLLOUT_SENDGRID_URL")
    # Share of bad rows above which a landing file is refused whole instead of
    # loading its good rows and quarantining the rest.
    quarantine_limit: float = Field(0.01, validation_alias="ROLLOUT_QUARANTINE_LIMIT", ge=0, le=1)
    duckdb_memory_limit: str | None = Field(None, validation_alias="ROLLOUT_DUCKDB_MEMORY_LIMIT")
    plan_path: Path = Field(Path("plans/npm-2022.yaml"), validation_alias="ROLLOUT_PLAN")
    # Who the audit ledger says acted: set it in deployments (e.g. the flow's name).
    actor: str = Field("rollout", validation_alias="ROLLOUT_ACTOR")

    @field_validator("sendgrid_api_key", mode="before")
    @classmethod
    def _blank_key_means_none(cls, value: object) -> object:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what load_settings passes in: the environment is read in one place.
        return (init_settings,)

    @property
    def registry_url(self) -> str:
        return self.registry_url_override or f"sqlite:///{self.home / 'registry.db'}"

    @property
    def warehouse_path(self) -> Path:
        return self.warehouse_path_override or self.home / "warehouse.duckdb"

    @property
    def landing_dir(self) -> Path:
        return self.home / "landing"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)


_ENV_NAMES = {
    field.validation_alias
    for field in Settings.model_fields.values()
    if isinstance(field.validation_alias, str)
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment), nothing else."""
    source = os.environ if environ is None else environ
    values = {name: source[name] for name in _ENV_NAMES if name in source}
    if "ROLLOUT_ACTOR" not in values and source.get("USER"):
        values["ROLLOUT_ACTOR"] = source["USER"]
    return Settings(**values)
