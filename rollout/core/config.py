"""Settings, read once from the environment by a pure function (see DESIGN.md).

Every path the pipeline touches hangs off ``ROLLOUT_HOME`` unless overridden, so a
test or a demo can point the whole tool somewhere else with one variable.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rollout.core.controls import quoted
from rollout.core.errors import BadInput
from rollout.core.files import file_in_the_way, make_folder

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
    from sqlalchemy.engine import URL

# The registry runs on these (DESIGN.md); `postgres://` is what people paste.
_REGISTRY_BACKENDS = ("sqlite", "postgresql", "postgres")
_REGISTRY_DRIVERS = {"sqlite": ("pysqlite",), "postgresql": ("psycopg",), "postgres": ("psycopg",)}
# DuckDB's units: KB, MB... are powers of 1000, KiB, MiB... of 1024.
_MEMORY_UNITS = {
    "b": 1,
    **{f"{p}b": 1000 ** (i + 1) for i, p in enumerate("kmgt")},
    **{f"{p}ib": 1024 ** (i + 1) for i, p in enumerate("kmgt")},
}
_MIN_MEMORY, _MAX_MEMORY = 16 * 1000**2, 1000 * 1000**4
# As DuckDB takes a memory limit: a size with its unit, or a share of RAM.
# ASCII digits only: \d also matches other scripts' digits, which DuckDB cannot read.
_MEMORY_LIMIT = r"(?i)^([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b|b|%)$"
_MAY_HOLD_SECRETS = frozenset({"SENDGRID_API_KEY", "ROLLOUT_REGISTRY_URL"})


def api_key(text: str) -> str | None:
    """A SendGrid API key as pasted or stored: the whitespace around it dropped (a
    file's last line feed, a Secret saved from one); None when nothing is left. One
    holding a space or a control character inside is no key: ValueError, not repeating
    it (the HTTP client refused it with the key in its message, in a traceback)."""
    key = text.strip()
    if not key:
        return None
    if any(character.isspace() or not character.isprintable() for character in key):
        raise ValueError("holds a space or a control character (the key is not shown)")
    return key


def webhook_public_key(text: str) -> EllipticCurvePublicKey:
    """SendGrid's Event Webhook verification key (base64 of the DER public key, as its
    settings page shows it) as the official helper loads it: a cryptography
    ``EllipticCurvePublicKey``. ValueError when it is not one."""
    # Imported here: only a configured key needs them.
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    try:
        key = EventWebhook().convert_public_key_to_ecdsa(text.strip())
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("is not SendGrid's verification key (base64 of an ECDSA public key)")
    return key


def url_shown(url: str) -> str:
    """``url`` as a message may show it: a password in its authority
    (``https://ops:secret@prefect.example/api``) replaced by ``***``, one holding an
    unencoded "/", "?" or "#" too. Read as text, so a URL no parser accepts is hidden
    alike."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = _delimited(rest)
    userinfo, at, host = rest[:end].rpartition("@")
    if at:
        if ":" not in userinfo:
            return url
        user = userinfo.partition(":")[0]
        return f"{scheme}://{user}:***@{host}{rest[end:]}"
    # A password pasted unencoded, holding a "/", "?" or "#": the authority seemed to end
    # inside it, and the password was shown whole. Its user holds none of them, and what
    # follows the ":" up to the first of them is not a port (digits).
    userinfo, at, after = rest.partition("@")
    user, colon, password = userinfo.partition(":")
    if not at or not colon or _delimited(user) < len(user):
        return url
    if password[: _delimited(password)].isdigit():
        return url
    return f"{scheme}://{user}:***@{after}"


def url_problem(url: str, error: Exception) -> str:
    """Why a parser could not read ``url``, as a message may say it: its own words
    (``Invalid port: 'abc'``) quote part of the URL, and of a URL holding a password
    that part may be the password's (``Invalid port: 's3cr'`` of an unencoded
    ``ops:s3cr/et@host``). Then it is said without them."""
    if url_shown(url) == url:
        return str(error)
    return (
        "its user, password, host or port cannot be read (encode a '/', '?', '#' or '@' "
        "in the password as %2F, %3F, %23, %40)"
    )


def _delimited(text: str) -> int:
    """Where the authority at the start of ``text`` ends: its first "/", "?" or "#"."""
    return min((i for i in (text.find(c) for c in "/?#") if i >= 0), default=len(text))


def prefect_api(environ: Mapping[str, str]) -> tuple[str, dict[str, str]] | None:
    """The Prefect API ``PREFECT_API_URL`` names and the headers to send it, as Prefect's
    own client reads them (``PREFECT_API_AUTH_STRING``, a server's basic auth, before
    ``PREFECT_API_KEY``, Prefect Cloud's); None when the URL is not set.

    A value that cannot be used is ``BadInput`` naming the variable (a URL the HTTP
    client cannot read was a traceback; a key holding a line break was sent as a header
    and refused in a message that repeated it), and a key is never repeated."""
    url = (environ.get("PREFECT_API_URL") or "").strip()
    if not url:
        return None
    shown = url_shown(url)
    if not url.startswith(("http://", "https://")):
        raise BadInput(None, None, f"PREFECT_API_URL={quoted(shown)}: expected an http(s) URL")
    # Imported here: only the commands that talk to Prefect need it.
    import httpx

    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, ValueError) as error:
        raise BadInput(
            None, None, f"PREFECT_API_URL={quoted(shown)}: not a URL: {url_problem(url, error)}"
        ) from None
    if not host or any(c.isspace() or not c.isprintable() for c in url):
        raise BadInput(None, None, f"PREFECT_API_URL={quoted(shown)}: expected an http(s) URL")
    auth_string = environ.get("PREFECT_API_AUTH_STRING")
    if auth_string:
        token = base64.b64encode(auth_string.encode()).decode()
        return url, {"Authorization": f"Basic {token}"}
    raw_key = environ.get("PREFECT_API_KEY")
    if raw_key:
        try:
            key = api_key(raw_key)
            if key is not None and not key.isascii():
                raise ValueError("holds a character that is not ASCII (the key is not shown)")
        except ValueError as error:
            raise BadInput(None, None, f"environment variable PREFECT_API_KEY {error}") from None
        if key is not None:
            return url, {"Authorization": f"Bearer {key}"}
    return url, {}


# Whole numbers libpq reads only as it opens a TCP connection: through a Unix socket a
# bad value (keepalives=x) passed the engine, then failed ADBC's cancel handle ("Could
# not initialize PGcancel"), a failure the flows retried, at every extract. Checked
# before any connection, on every path, in libpq's own words.
_LIBPQ_WHOLE_NUMBERS = (
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_LIBPQ_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


def connection_option_problem(url: URL) -> str | None:
    """What is wrong with a connection option of a PostgreSQL ``url`` that libpq would
    refuse only on some connections (``_LIBPQ_WHOLE_NUMBERS``), as libpq says it; None
    when nothing is (or for SQLite). Options libpq refuses on every connection (an
    unknown one, sslmode=bogus) are left to it: ``url_refused`` reads its answer."""
    if url.get_backend_name() == "sqlite":
        return None
    for name in _LIBPQ_WHOLE_NUMBERS:
        given = url.query.get(name)
        for value in (given,) if isinstance(given, str) else given or ():
            whole = _LIBPQ_INTEGER.fullmatch(value)
            if whole is None or not -(2**31) <= int(value) < 2**31:
                return f'invalid integer value "{value}" for connection option "{name}"'
    return None


def _machine_memory() -> int:
    """This machine's physical memory in bytes, as DuckDB takes a share of it."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _not_a_file_path(database: Path) -> str | None:
    """Why no SQLite file can be at ``database``: a folder in its place, or a file where a
    folder above it should be. SQLite said only "unable to open database file", and a
    writer blamed the user's permissions."""
    if database.is_dir():
        return f"names the folder {quoted(str(database))}: write sqlite:///PATH/registry.db"
    if (above := file_in_the_way(database.parent)) is not None:
        return f"{quoted(str(above))}, a folder of its path, is a file"
    return None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    home: Path = Field(Path("var"), validation_alias="ROLLOUT_HOME")
    registry_url_override: str | None = Field(None, validation_alias="ROLLOUT_REGISTRY_URL")
    warehouse_path_override: Path | None = Field(None, validation_alias="ROLLOUT_WAREHOUSE")
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias="SENDGRID_API_KEY")
    sendgrid_url: str = Field(
        "https://api.sendgrid.com",
        validation_alias="ROLLOUT_SENDGRID_URL",
        description="an http(s) URL",
        pattern=r"^https?://[^\s/]+(/\S*)?$",
    )
    # How long the SendGrid client waits for a connection and for each read of an
    # answer, and the longest wait before retrying a send (a Retry-After is capped to
    # it). Together they bound one attempt (SendGridSender.longest_attempt), which sets
    # how long a drainer's lease on its rows must be, and so how soon another drainer
    # takes over the rows of one that died (rollout.notify.drain.lease_for).
    sendgrid_timeout_seconds: float = Field(
        10.0,
        validation_alias="ROLLOUT_SENDGRID_TIMEOUT_SECONDS",
        description="seconds, more than 0 and at most 300",
        gt=0,
        le=300,
        allow_inf_nan=False,
    )
    sendgrid_retry_wait_seconds: float = Field(
        30.0,
        validation_alias="ROLLOUT_SENDGRID_RETRY_WAIT_SECONDS",
        description="seconds, from 0 to 600",
        ge=0,
        le=600,
        allow_inf_nan=False,
    )
    # The Event Webhook's verification key, as SendGrid shows it (Mail Settings >
    # Event Webhook > Signed Event Webhook): base64 of an ECDSA public key. The event
    # receiver refuses to start without it (rollout.notify.webhook).
    sendgrid_webhook_key: str | None = Field(
        None,
        validation_alias="ROLLOUT_SENDGRID_WEBHOOK_KEY",
        description="SendGrid's verification key: base64 of an ECDSA public key",
    )
    # Share of bad rows above which a landing file is refused whole instead of
    # loading its good rows and quarantining the rest.
    quarantine_limit: float = Field(0.01, validation_alias="ROLLOUT_QUARANTINE_LIMIT", ge=0, le=1)
    # As DuckDB takes it: a size with its unit (4GB, 512MiB) or a share of RAM (80%).
    duckdb_memory_limit: str | None = Field(
        None,
        validation_alias="ROLLOUT_DUCKDB_MEMORY_LIMIT",
        description="a size with its unit (4GB, 512MiB) or a share of memory (80%)",
        pattern=_MEMORY_LIMIT,
    )
    plan_path: Path = Field(Path("plans/npm-2022.yaml"), validation_alias="ROLLOUT_PLAN")
    # Who the audit ledger says acted: set it in deployments (e.g. the flow's name).
    actor: str = Field(
        "rollout",
        validation_alias="ROLLOUT_ACTOR",
        description="a name on one line, without spaces around it, at most 100 characters",
        pattern=r"^\S(.*\S)?$",
        # The audit ledger's actor columns hold 200: room for "<approver> via <actor>".
        max_length=100,
    )

    @field_validator(
        "sendgrid_api_key",
        "registry_url_override",
        "warehouse_path_override",
        "duckdb_memory_limit",
        "sendgrid_webhook_key",
        mode="before",
    )
    @classmethod
    def _blank_means_none(cls, value: object) -> object:
        # An override set to "" (as compose files and CI templates do) is not set.
        return None if value == "" else value

    @field_validator("sendgrid_api_key", mode="before")
    @classmethod
    def _api_key(cls, value: object) -> object:
        return api_key(value) if isinstance(value, str) else value

    @field_validator("duckdb_memory_limit")
    @classmethod
    def _memory_limit(cls, value: str | None) -> str | None:
        # Within what DuckDB takes (a share above 100% or a size past 2^63 bytes is an
        # error when the warehouse opens) and what a run can work in (below 16MB a
        # warehouse cannot even be opened): refused here, naming the variable.
        if value is None:
            return value
        match = re.match(_MEMORY_LIMIT, value)  # (the field's pattern: it matches)
        assert match is not None
        number, unit = float(match[1]), match[2].lower()
        if unit == "%":
            if not 0 < number <= 100:
                raise ValueError("a share of memory must be above 0% and at most 100%")
            # A share is of this machine's memory: below 16MB of it no warehouse opens.
            if number / 100 * _machine_memory() < _MIN_MEMORY:
                raise ValueError("a share of memory must come to at least 16MB on this machine")
            return value
        size = number * _MEMORY_UNITS[unit]
        if not _MIN_MEMORY <= size <= _MAX_MEMORY:
            raise ValueError("a size must be from 16MB to 1000TB")
        return value

    @field_validator("sendgrid_webhook_key")
    @classmethod
    def _webhook_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        webhook_public_key(value)  # ValueError says why
        return value.strip()

    @field_validator("home", "plan_path", mode="before")
    @classmethod
    def _path_not_blank(cls, value: object) -> object:
        # Path("") is the current directory: never what someone meant.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is empty")
        return value

    @field_validator("warehouse_path_override")
    @classmethod
    def _warehouse_file(cls, value: Path | None) -> Path | None:
        # DuckDB's name for a database in memory: `ingest` loaded every file into it and
        # the next command found no warehouse.
        if value is not None and str(value) == ":memory:":
            raise ValueError(
                "names no file (a DuckDB database in memory is gone when the command "
                "ends): write the warehouse file's path"
            )
        return value

    @field_validator("home", "plan_path", "warehouse_path_override")
    @classmethod
    def _home_folder_expanded(cls, value: Path | None) -> Path | None:
        # `ROLLOUT_HOME=~/rollout` in a compose file, a systemd unit or a deployment's
        # env, where no shell expands it: rollout made a folder named ~ in the working
        # folder while DuckDB, which expands a leading ~ itself, put the warehouse in
        # the home folder. Read as a shell (and DuckDB, and Prefect's settings) read it.
        if value is None or not str(value).startswith("~"):
            return value
        try:
            return value.expanduser()
        except RuntimeError as error:  # HOME unset, or no such user for ~name
            raise ValueError(f"starts with ~, which cannot be expanded here: {error}") from None

    @field_validator("home", "warehouse_path_override")
    @classmethod
    def _no_file_in_the_way(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        # A file where the home folder (or the warehouse's) should be: said once, here,
        # for every command. A registry writer said "its folder ... is not writable for
        # this user" (a file has no search permission), sending the user to look for
        # rights they had, and ingest "File exists", exit 1.
        if value is None:
            return None
        folder = value if info.field_name == "home" else value.parent
        if (above := file_in_the_way(folder)) is not None:
            raise ValueError(f"{quoted(str(above))} is a file, not a folder")
        return value

    @field_validator("sendgrid_url")
    @classmethod
    def _sendgrid_url(cls, value: str) -> str:
        """A URL the HTTP client can send to: the pattern took a port that is no number
        ("host:abc") or past 65535, a broken IPv6 host, no host at all, and each failed
        only at sending, every email alike."""
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (ValueError for a port that is no port)
        except ValueError as error:
            raise ValueError(
                f"is not a URL the client can use: {url_problem(value, error)}"
            ) from None
        if not parts.hostname:
            raise ValueError("names no host")
        return value

    @field_validator("registry_url_override")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # Imported here: only an override needs SQLAlchemy's URL parser at start-up.
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(value)
            backend = url.get_backend_name()
        except ArgumentError as error:
            raise ValueError(
                "is not a database URL (sqlite:///PATH or postgresql://...)"
            ) from error
        if backend not in _REGISTRY_BACKENDS:
            raise ValueError(f"names {quoted(backend)}: the registry runs on sqlite or postgresql")
        # The drivers rollout connects with; another (asyncpg, as Prefect's own database
        # URL has it, or psycopg2) crashed every command with a traceback.
        driver = url.drivername.partition("+")[2]
        if driver and driver not in _REGISTRY_DRIVERS[backend]:
            raise ValueError(
                f"names the driver {quoted(driver)}: rollout connects to {backend} with "
                f"{' or '.join(_REGISTRY_DRIVERS[backend])} (write {backend}://...)"
            )
        if backend == "postgresql":
            # What the driver would be handed, worked out as at connecting, where a port
            # that is no number (?port=abc) crashed every command with a traceback.
            psycopg = url.set(drivername="postgresql+psycopg")
            try:
                psycopg.get_dialect()().create_connect_args(psycopg)
            except ArgumentError as error:
                raise ValueError(str(error)) from None
            # One libpq would refuse only on a TCP connection (keepalives=x).
            if (problem := connection_option_problem(psycopg)) is not None:
                raise ValueError(problem)
        # sqlite:// (or sqlite:///, :memory:) is a database in memory, gone when the
        # command ends: `db upgrade` said "at revision 0019" and every command after it
        # found an empty one, to be upgraded again.
        if backend == "sqlite" and (
            url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        ):
            raise ValueError(
                "names no database file (a SQLite database in memory is gone when the "
                "command ends): write sqlite:///PATH"
            )
        if backend != "sqlite" or not url.database or url.database.startswith("file:"):
            return value
        # sqlite:///~/registry.db: SQLite opens a folder named ~ in the working folder,
        # where ROLLOUT_HOME and ROLLOUT_WAREHOUSE read the home folder (as a shell).
        if url.database.startswith("~"):
            try:
                expanded = str(Path(url.database).expanduser())
            except RuntimeError as error:  # HOME unset, or no such user for ~name
                raise ValueError(f"starts with ~, which cannot be expanded here: {error}") from None
            url = url.set(database=expanded)
            value = url.render_as_string(hide_password=False)
        if (problem := _not_a_file_path(Path(url.database or ""))) is not None:
            raise ValueError(problem)
        return value

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
        """ROLLOUT_REGISTRY_URL as given, else the SQLite file ``registry.db`` in the
        home, its path encoded as a URL's (``?`` as ``%3F``, ``%`` as ``%25``): written
        as it is, a home named ``runs?old`` put the registry in a file ``runs`` beside
        it (the rest read as the URL's query), and ``50%41`` in a folder ``50A``."""
        if self.registry_url_override:
            return self.registry_url_override
        # Imported here: SQLAlchemy's URL only when a command asks for the registry.
        from sqlalchemy.engine import URL

        database = str(self.home / "registry.db")
        return URL.create("sqlite", database=database).render_as_string(hide_password=False)

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
        make_folder(self.home)


_ENV_NAMES = {
    field.validation_alias
    for field in Settings.model_fields.values()
    if isinstance(field.validation_alias, str)
}
_DESCRIPTIONS = {
    field.validation_alias: field.description
    for field in Settings.model_fields.values()
    if isinstance(field.validation_alias, str)
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``environ`` (default: the process environment), nothing else.

    A value that cannot be used is ``BadInput`` naming the variable, so every command
    refuses it with one line and exit code 2 rather than a traceback."""
    source = os.environ if environ is None else environ
    values = {name: source[name] for name in _ENV_NAMES if name in source}
    # ROLLOUT_ACTOR set empty (`ROLLOUT_ACTOR=` in an env file or a compose template) is
    # unset, as the flows read it (flows/common.py run_actor): $USER, else "rollout".
    if not values.get("ROLLOUT_ACTOR"):
        values.pop("ROLLOUT_ACTOR", None)
        if source.get("USER"):
            values["ROLLOUT_ACTOR"] = source["USER"]
    try:
        return Settings(**values)
    except ValidationError as error:
        raise _bad_setting(error, values) from None


def _bad_setting(error: ValidationError, values: Mapping[str, str]) -> BadInput:
    first = error.errors()[0]
    name = str(first["loc"][0]) if first["loc"] else "environment"
    reason = first["msg"].removeprefix("Value error, ")
    if first["type"] == "string_pattern_mismatch":
        reason = f"expected {_DESCRIPTIONS.get(name) or 'another form'}"
    more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
    # The API key, and a database URL's password, are never echoed; another URL's
    # password is shown as *** (ROLLOUT_SENDGRID_URL's, of a proxy in front of SendGrid).
    shown = "" if name in _MAY_HOLD_SECRETS else f"={quoted(url_shown(values.get(name, '')))}"
    return BadInput(None, None, f"environment variable {name}{shown}: {reason}{more}")
