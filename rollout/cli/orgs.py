"""`rollout orgs`: audit an org's members, turn its 2FA enforcement on."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _runtime,
    app,
    reports_errors,
)
from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.output import Format, emit, emit_record, stderr

# --- orgs ----------------------------------------------------------------------------------

orgs_app = typer.Typer(help="Org 2FA: audit members, turn enforcement on.", no_args_is_help=True)
app.add_typer(orgs_app, name="orgs")


def _members_rows(members: list[Any], fmt: Format) -> list[dict[str, Any]]:
    return [
        {
            "username": m.username,
            "role": m.role,
            "tfa_status": m.tfa_status,
            "tfa_methods": m.tfa_methods if fmt is Format.json else ", ".join(m.tfa_methods),
            "joined_at": m.joined_at,
        }
        for m in members
    ]


@orgs_app.command("audit")
@reports_errors
def orgs_audit(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    without_2fa: Annotated[
        bool, typer.Option("--without-2fa", help="Only members with no 2FA.")
    ] = False,
    role: Annotated[
        str | None, typer.Option(help="Only this role: owner, admin or developer.")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Every member of an org with 2FA status and method; filter by status or role."""
    from rollout.phases.orgs import audit_org

    if role is not None and role not in ("owner", "admin", "developer"):
        raise RolloutError(f"--role {role!r}: use owner, admin or developer").with_exit(
            EXIT_BAD_INPUT
        )
    members = audit_org(_runtime(ctx).registry, org)
    shown = [
        m
        for m in members
        if (not without_2fa or m.tfa_status == "none") and (role is None or m.role == role)
    ]
    emit(
        _members_rows(shown, fmt),
        fmt,
        title=f"{org}: {len(shown)} of {len(members)} members",
        columns=["username", "role", "tfa_status", "tfa_methods", "joined_at"],
    )


@orgs_app.command("enforce")
@reports_errors
def orgs_enforce(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    confirm: Annotated[
        str | None, typer.Option(help="The org's name typed back: applies (without: preview only).")
    ] = None,
    owner: Annotated[
        str | None, typer.Option(help="The owner turning enforcement on (must use 2FA).")
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Turn on 2FA enforcement for an org; members without 2FA are removed."""
    from rollout.phases.orgs import enforce_org, enforcement_preview

    runtime = _runtime(ctx)
    settings = runtime.settings
    members = enforcement_preview(runtime.registry, org)
    if confirm is None:
        emit(
            _members_rows(members, fmt),
            fmt,
            title=f"{org}: {len(members)} members would be removed",
            columns=["username", "role", "tfa_status", "tfa_methods", "joined_at"],
        )
        stderr.print(
            f"preview only: to remove these {len(members)} members run "
            f"rollout orgs enforce {org} --owner YOU --confirm {org}",
            highlight=False,
        )
        return
    if owner is None:
        raise RolloutError("--confirm needs --owner: the owner turning enforcement on").with_exit(
            EXIT_BAD_INPUT
        )
    result = enforce_org(runtime.registry, org, confirm=confirm, owner=owner, actor=settings.actor)
    emit_record(
        {
            "org": result.org,
            "run_id": result.run_id,
            "removed": len(result.removed),
            "removed_members": ", ".join(result.removed) or "none",
            "owners_notified": result.owners_notified,
            "was_already_enforced": result.already_enforced,
        },
        fmt,
        title=f"{org}: 2FA enforced",
    )
