"""`rollout orgs`: audit an org's members, turn its 2FA enforcement on, invite removed
members back."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _changes_named,
    _fingerprint,
    _runtime,
    _typed_back,
    app,
    reports_errors,
)
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.output import Format, emit, emit_record, stderr
from rollout.core.words import by_count, counted

# --- orgs ----------------------------------------------------------------------------------

orgs_app = typer.Typer(
    help="Org 2FA: audit members, turn enforcement on, invite removed members back.",
    no_args_is_help=True,
)
app.add_typer(orgs_app, name="orgs")


def _owner_word(owner: str | None) -> str:
    """The owner in a preview's hint: the one given with the preview (`--owner`), so the
    hint runs as printed; else YOU, for the owner running it to fill in."""
    return "YOU" if owner is None else shell_word(owner)


def _these(n: int, noun: str) -> str:
    """``this member`` or ``these 3 members``: the ones a preview just listed."""
    return f"this {noun}" if n == 1 else f"these {counted(n, noun)}"


def _members_rows(members: list[Any], fmt: Format) -> list[dict[str, Any]]:
    return [
        {
            "username": m.username,
            "role": m.role,
            "tfa_status": m.tfa_status,
            # Fixed vocabulary (totp, webauthn): bare in a table; a list in JSON and CSV.
            "tfa_methods": ", ".join(m.tfa_methods) if fmt is Format.table else m.tfa_methods,
            "joined_at": m.joined_at,
        }
        for m in members
    ]


def _confirmed(
    preview: str,
    acting: tuple[str, str],
    owner: str | None,
    expect: int | None,
    expect_list: str | None,
) -> str:
    """What ``--confirm`` needs besides the org's name: the owner acting, and the count
    and the list's fingerprint the preview printed (``preview``: the command that shows
    them), as the owner confirms the exact list (``_typed_back``: exit 2 naming each one
    missing). Returns the fingerprint as typed back, checked (``_fingerprint``)."""
    _typed_back(
        "--confirm",
        preview,
        [
            (*acting, owner),
            ("--expect N", "the count the preview showed", expect),
            ("--expect-list F", "the fingerprint of the list the preview showed", expect_list),
        ],
    )
    assert expect_list is not None
    _fingerprint(expect_list)
    return expect_list


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
        raise RolloutError(f"--role {quoted(role)}: use owner, admin or developer").with_exit(
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
        title=f"{quoted(org)}: {len(shown):,} of {counted(len(members), 'member')}",
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
    expect: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="The count the preview showed, typed back (required with --confirm): "
            "refused if it changed.",
        ),
    ] = None,
    expect_list: Annotated[
        str | None,
        typer.Option(
            help="The list's fingerprint the preview showed (required with --confirm): "
            "refused if the members to remove differ from the previewed ones, "
            "even at the same count."
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Turn on 2FA enforcement for an org; members without 2FA are removed."""
    from rollout.phases.orgs import (
        audit_org,
        enforce_org,
        naming_member_changes,
        owners_with_2fa,
        removal_fingerprint,
        removed_by_enforcement,
        save_enforcement_preview,
    )

    runtime = _runtime(ctx)
    settings = runtime.settings
    everyone = audit_org(runtime.registry, org)
    members = removed_by_enforcement(everyone)
    if confirm is None:
        # Kept as shown: a refused apply names who changed since (naming_member_changes).
        saved = save_enforcement_preview(
            runtime.registry, org, members, settings.reports_dir, actor=settings.actor
        )
        emit(
            _members_rows(members, fmt),
            fmt,
            title=f"{quoted(org)}: {counted(len(members), 'member')} would be removed",
            columns=["username", "role", "tfa_status", "tfa_methods", "joined_at"],
        )
        # Owners and admins go too: said apart, as the org loses who runs it.
        # Each named (quoted: a username is anyone's choice), after the count by role.
        leading = {
            role: names
            for role in ("owner", "admin")
            if (names := [m.username for m in members if m.role == role])
        }
        if leading:
            going = sum(len(names) for names in leading.values())
            stderr.print(
                "of them "
                + " and ".join(counted(len(names), role) for role, names in leading.items())
                + f", without 2FA, {by_count(going, 'is', 'are')} removed too: "
                + "; ".join(
                    f"{by_count(len(names), role, role + 's')} "
                    + ", ".join(quoted(name) for name in names)
                    for role, names in leading.items()
                ),
                highlight=False,
            )
        stderr.print(f"the list: {saved}", highlight=False, markup=False)
        if not owners_with_2fa(everyone):
            # Every --owner would be refused: no command to suggest.
            stderr.print(
                f"preview only: no owner of {quoted(org)} uses 2FA, and only an owner with "
                "2FA can turn enforcement on: one of them must enable 2FA first",
                highlight=False,
                markup=False,
            )
            return
        stderr.print(
            f"preview only: to remove {_these(len(members), 'member')} run "
            f"rollout orgs enforce {shell_word(org)} --owner {_owner_word(owner)} "
            f"--confirm {shell_word(org)} "
            f"--expect {len(members)} --expect-list {removal_fingerprint(members)}",
            highlight=False,
        )
        return
    # It removes people: the owner typed back who they are, as the preview listed them.
    expect_list = _confirmed(
        f"rollout orgs enforce {shell_word(org)}",
        ("--owner", "the owner turning enforcement on"),
        owner,
        expect,
        expect_list,
    )
    # Who changed since the preview confirmed, when its files are here to say.
    with _changes_named(
        lambda refused: naming_member_changes(refused, settings.reports_dir, expect_list)
    ):
        result = enforce_org(
            runtime.registry,
            org,
            confirm=confirm,
            owner=owner,
            actor=settings.actor,
            expect=expect,
            expect_list=expect_list,
        )
    emit_record(
        {
            "org": result.org,
            "run_id": result.run_id,
            "removed": len(result.removed),
            "removed_members": list(result.removed),
            "owner_summaries_queued": result.owner_summaries_queued,
            "was_already_enforced": result.already_enforced,
        },
        fmt,
        title=f"{quoted(org)}: 2FA enforced",
    )


@orgs_app.command("reinvite")
@reports_errors
def orgs_reinvite(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    team: Annotated[str, typer.Option(help="The team the invitations are to.")],
    confirm: Annotated[
        str | None, typer.Option(help="The org's name typed back: applies (without: preview only).")
    ] = None,
    owner: Annotated[str | None, typer.Option(help="The owner inviting (must use 2FA).")] = None,
    expect: Annotated[
        int | None,
        typer.Option(
            min=0, help="The count the preview showed, typed back (required with --confirm)."
        ),
    ] = None,
    expect_list: Annotated[
        str | None,
        typer.Option(
            help="The list's fingerprint the preview showed (required with --confirm): "
            "refused if the members to invite differ from the previewed ones, "
            "even at the same count."
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Invite back into a team the members org enforcement removed who now use 2FA."""
    from rollout.phases.orgs import (
        INVITATION_DAYS,
        invitation_fingerprint,
        naming_member_changes,
        reinvite,
        reinvite_preview,
        save_reinvite_preview,
    )

    runtime = _runtime(ctx)
    settings = runtime.settings
    invitees = reinvite_preview(runtime.registry, org, team)
    if confirm is None and not invitees:
        # Nothing an apply would do: no list kept (reports/previews/ holds what was
        # approved), no command suggested that would invite nobody.
        emit(
            [],
            fmt,
            title=f"{quoted(org)}: no removed member to invite back",
            columns=["username", "removed_at"],
        )
        stderr.print(
            f"nobody to invite back: no member the enforcement of {quoted(org)} removed "
            "uses 2FA now without an invitation pending",
            highlight=False,
            markup=False,
        )
        return
    if confirm is None:
        saved = save_reinvite_preview(
            runtime.registry, org, team, invitees, settings.reports_dir, actor=settings.actor
        )
        emit(
            [{"username": i.username, "removed_at": i.removed_at} for i in invitees],
            fmt,
            title=f"{quoted(org)}: {counted(len(invitees), 'removed member')} now "
            f"{by_count(len(invitees), 'uses', 'use')} 2FA",
            columns=["username", "removed_at"],
        )
        stderr.print(f"the list: {saved}", highlight=False, markup=False)
        stderr.print(
            f"preview only: to invite {_these(len(invitees), 'member')} back into team "
            f"{quoted(team)} (the invitations stay open {counted(INVITATION_DAYS, 'day')}) run "
            "rollout orgs reinvite "
            f"{shell_word(org)} --team {shell_word(team)} --owner {_owner_word(owner)} "
            f"--confirm {shell_word(org)} "
            f"--expect {len(invitees)} --expect-list {invitation_fingerprint(invitees, team)}",
            highlight=False,
        )
        return
    expect_list = _confirmed(
        f"rollout orgs reinvite {shell_word(org)} --team {shell_word(team)}",
        ("--owner", "the owner inviting"),
        owner,
        expect,
        expect_list,
    )
    with _changes_named(
        lambda refused: naming_member_changes(refused, settings.reports_dir, expect_list)
    ):
        result = reinvite(
            runtime.registry,
            org,
            team,
            owner=owner,
            confirm=confirm,
            expect=expect,
            actor=settings.actor,
            expect_list=expect_list,
        )
    emit_record(
        {
            "org": result.org,
            "team": result.team,
            "run_id": result.run_id,
            "invited": len(result.invited),
            "invited_members": list(result.invited),
            "emails_queued": result.emails_queued,
            "expires_at": result.expires_at,
        },
        fmt,
        title=f"{quoted(org)}: invitations back into team {quoted(team)}",
    )


@orgs_app.command("invitations")
@reports_errors
def orgs_invitations(
    ctx: typer.Context,
    org: Annotated[str, typer.Argument(help="The org's name.")],
    fmt: FormatOption = Format.table,
) -> None:
    """The org's invitations back and their state (pending, accepted, expired); records
    first those accepted or expired since. An account the registry deleted since is
    listed too, by its id, with account_deleted true and no username."""
    from rollout.phases.orgs import invitations

    runtime = _runtime(ctx)
    found = invitations(runtime.registry, org, actor=runtime.settings.actor)
    columns = [
        "username",
        "account_id",
        "account_deleted",
        "team",
        "state",
        "invited_by",
        "created_at",
        "expires_at",
        "settled_at",
    ]
    emit(
        [{c: getattr(i, c) for c in columns} for i in found],
        fmt,
        title=f"{quoted(org)}: {counted(len(found), 'invitation')}",
        columns=columns,
    )
