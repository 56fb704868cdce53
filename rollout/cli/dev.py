"""`rollout dev`: development tools (the local SendGrid server)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rollout.cli.app import (
    _runtime,
    app,
    listen_host,
    path_given,
    reports_errors,
)

# --- dev -----------------------------------------------------------------------------------

dev_app = typer.Typer(help="Development tools.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")


@dev_app.command("sendgrid")
@reports_errors
def dev_sendgrid(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(parser=listen_host, help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 3030,
    api_key: Annotated[
        str | None,
        typer.Option(help="The key clients must send (default: $SENDGRID_API_KEY or a dev key)."),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(
            parser=path_given, help="Append each accepted message to this JSON lines file."
        ),
    ] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(
            help="Post signed delivery events of each accepted message here (e.g. "
            "http://127.0.0.1:3031/sendgrid/events, `rollout notify events serve`); the "
            "verification key to give the receiver is printed at start."
        ),
    ] = None,
) -> None:
    """A local server that speaks SendGrid's v3 mail/send API, for development and tests.

    Point rollout at it: ROLLOUT_SENDGRID_URL=http://HOST:PORT SENDGRID_API_KEY=KEY."""
    import logging

    from rollout.dev.sendgrid_api import DEFAULT_API_KEY, serve

    _check_sendgrid_options(record, webhook_url)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = _runtime(ctx).settings
    key = api_key or (
        settings.sendgrid_api_key.get_secret_value() if settings.sendgrid_api_key else None
    )
    from rollout.core.errors import RolloutError

    try:
        serve(host, port, key or DEFAULT_API_KEY, record, webhook_url)
    except OSError as error:
        # The port taken, an address not this machine's: said with what was asked for,
        # not as the socket's bare words ("error: Cannot assign requested address").
        reason = error.strerror or str(error)
        raise RolloutError(f"cannot listen on {host} port {port}: {reason}") from None


def _check_sendgrid_options(record: Path | None, webhook_url: str | None) -> None:
    """Refuse at start (exit 2) what would fail only at the first message: a webhook URL
    that is no http(s) URL, a record file that cannot be appended to."""
    from urllib.parse import urlsplit

    from rollout.core.controls import quoted
    from rollout.core.errors import BadInput
    from rollout.core.files import open_appending

    if webhook_url is not None:
        try:
            parts = urlsplit(webhook_url)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError:
            ok = False
        if not ok:
            raise BadInput(
                None,
                None,
                f"--webhook-url {quoted(webhook_url)} is not an http(s) URL "
                "(e.g. http://127.0.0.1:3031/sendgrid/events)",
            )
    if record is not None:
        try:
            with open_appending(record):
                pass
        except OSError as error:
            raise BadInput(record, None, f"cannot record messages here: {error.strerror}") from None
