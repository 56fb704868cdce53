"""`rollout phase` (preview, enforce, rollback) and the approvals of deployed enforce runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _changes_named,
    _fingerprint,
    _runtime,
    _typed_back,
    app,
    path_given,
    reports_errors,
)
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import EXIT_BAD_INPUT, GuardRefused, RolloutError
from rollout.core.output import Format, emit, emit_record, progress_for, stderr
from rollout.core.words import counted, them

if TYPE_CHECKING:
    from rollout.core.plan import Phase

# --- phases ------------------------------------------------------------------------------

phase_app = typer.Typer(
    help="Rollout phases: preview, enforce, roll back (previews by default).",
    no_args_is_help=True,
)
app.add_typer(phase_app, name="phase")


@phase_app.command("preview")
@reports_errors
def phase_preview(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    fmt: FormatOption = Format.table,
) -> None:
    """Exactly who and what enforcing a phase would change: the accounts short of its
    requirements (without 2FA, or holding tokens it forbids), their sessions and tokens.

    Writes nothing to the registry; saves the list as a CSV under reports/previews/
    (and the tokens to revoke in a second CSV) with a record beside it that
    `rollout plan show` reads."""
    from rollout.phases.enforce import (
        asks_more_than_told,
        enforceable_from,
        fewer_days_than_told,
        preview_phase,
    )
    from rollout.phases.previews import (
        COLUMNS,
        acted_word,
        preview_rows,
        reach_verdict,
        save_preview,
    )
    from rollout.registry.ledger import utc_now

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    preview = preview_phase(runtime.registry, plan, plan.phase(phase))
    saved = save_preview(plan, preview, settings.reports_dir, actor=settings.actor)
    # Only what the phase does: a phase that revokes tokens alone signs nobody out.
    signs_out, revokes_tokens = preview.signs_out, preview.revokes_tokens
    sessions = f", {counted(preview.sessions, 'web session')}" if signs_out else ""
    tokens = f", {counted(preview.token_count, 'token')}" if revokes_tokens else ""
    emit(
        preview_rows(preview),
        fmt,
        title=f"phase {phase}: {counted(preview.count, 'account')}{sessions}{tokens}",
        columns=COLUMNS,
    )
    short = (
        "without 2FA"
        if preview.asks_only_2fa
        else f"short of the phase's requirements ({'; '.join(preview.requirements)})"
    )
    acted = acted_word(preview.effects)
    if preview.required_by_phase:
        # The phase was applied: its accounts still short stay on the list (the count
        # --expect checks), but enforcing again changes only the new ones.
        who = (
            f"{counted(preview.count, 'account')} {short} in cohort {preview.cohort}: "
            f"{preview.required_by_phase} already {acted} by this phase (enforced), "
            f"{preview.newly_required} would be newly {acted}"
            + (
                f"; {counted(preview.sessions, 'live web session')} would be signed out"
                if signs_out
                else ""
            )
        )
    else:
        done = [
            *(
                [f"required to {'enrol' if preview.asks_only_2fa else 'comply'}"]
                if "require_2fa" in preview.effects
                else []
            ),
            *([f"signed out of {counted(preview.sessions, 'web session')}"] if signs_out else []),
        ]
        who = f"{counted(preview.count, 'account')} {short} in cohort {preview.cohort}" + (
            f" would be {' and '.join(done)}" if done else ""
        )
    apply = f"rollout phase enforce {phase} --apply --expect {preview.count}"
    if revokes_tokens:
        # Irreversible: a revoked token is gone, and the CI publishing with it breaks.
        by_rule = preview.tokens_by_rule()
        who += (
            f"; {preview.token_count:,} of their tokens would be revoked, which cannot be "
            "undone"
            + (
                " (by the rule each breaks, a token may break several: "
                + ", ".join(f"{rule}: {count:,}" for rule, count in by_rule)
                + ")"
                if by_rule
                else ""
            )
            + f" (listed in {saved.csv_path.with_name(saved.csv_path.stem + '-tokens.csv')},"
            " with the rules each breaks)"
        )
        apply += f" --expect-tokens {preview.token_count}"
    if preview.over_unreached_limit:
        apply += f" --accept-unreached {len(preview.unreached)}"
    apply += f" --expect-list {preview.fingerprint}"
    # The date `phase enforce` refuses before: enforce_on, or a later date the
    # phase's sent notices or reminders gave (enforce_on moved earlier since).
    due = enforceable_from(runtime.registry, plan, plan.phase(phase))
    today = utc_now().date()
    when: list[str] = []  # lines of their own, before the command to copy
    # Over the plan's blast radius, enforcement refuses whatever is typed back: said
    # before the command to copy, as "Not due yet" is.
    over = preview.blast_radius_verdict()
    if over is not None:
        when.append(over)
    fewer = fewer_days_than_told(runtime.registry, plan, plan.phase(phase)) or (
        asks_more_than_told(runtime.registry, plan, plan.phase(phase))
    )
    if fewer is not None:
        when.append(f"Not to be enforced: {fewer}.")
    elif today < due:
        # Not in the command to copy: enforcing before the date is a decision of its own.
        days = (due - today).days
        when.append(
            f"Not due yet: the phase is enforced from {due} (in {counted(days, 'day')}), "
            "the date its emails gave; `phase enforce` refuses before it without --early."
        )
    if preview.per_account_deadlines:
        who += (
            f"; {preview.not_due} more fall short but their own deadline has not come "
            f"(untouched today; {preview.never_noticed} of them were never sent the notice)"
        )
    stderr.print(
        f"{who}; {preview.compliant} already "
        f"{'use 2FA' if preview.asks_only_2fa else 'comply'}; "
        f"exempted: {', '.join(map(quoted, preview.exempted)) or 'none'}"
        + (
            f" ({', '.join(map(quoted, preview.exempt_but_required))} required by this phase "
            "before the exemption: it does not undo that; `phase rollback` releases the "
            "phase's accounts)"
            if preview.exempt_but_required
            else ""
        )
        + ".",
        f"Enforcement does: {preview.effects_in_words()}.",
        reach_verdict(preview)
        + (
            " Why: "
            + ", ".join(f"{why} {n}" for why, n in preview.unreached_by_category().items())
            + " (column notice)."
            if preview.unreached
            else ""
        ),
        *when,
        f"The list: {saved.csv_path}",
        f"To apply: {apply}",
        sep="\n",
        highlight=False,
    )


@phase_app.command("enforce")
@reports_errors
def phase_enforce(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the change (without: preview only).")
    ] = False,
    expect: Annotated[
        int | None, typer.Option(min=0, help="The account count the preview showed, typed back.")
    ] = None,
    expect_tokens: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="The token count the preview showed, typed back (required with --apply "
            "for a phase revoking tokens).",
        ),
    ] = None,
    accept_unreached: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Enforce although more accounts than the plan's max_unreached_share were "
            "never reached by a warning: their count, as the preview showed it.",
        ),
    ] = None,
    early: Annotated[
        bool,
        typer.Option(
            "--early",
            help="Enforce before the phase's enforce_on, the date its emails gave "
            "(refused without it).",
        ),
    ] = False,
    expect_list: Annotated[
        str | None,
        typer.Option(
            help="The list's fingerprint the preview showed (required with --apply): "
            "refuses if the accounts or tokens differ from the previewed ones, even at the "
            "same count."
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Apply the phase's effects to its non-compliant accounts (by default: require 2FA
    and revoke their web sessions; a plan may add the banner, token revocation, ...)."""
    from rollout.phases.enforce import enforce_phase, naming_changes
    from rollout.phases.previews import approved_preview_at

    if not apply:
        phase_preview(ctx, phase, fmt)
        return
    # Sessions and tokens revoked cannot be restored: the release manager types back
    # who, as the preview listed them, not only how many (as an org's owner does); for
    # a phase revoking tokens, how many of those too. The plan says which (a file, not
    # the registry): nothing is read before a missing one is said.
    runtime = _runtime(ctx)
    revokes_tokens = runtime.plan.phase(phase).does("revoke_tokens")
    _typed_back(
        "--apply",
        f"rollout phase preview {shell_word(phase)}",
        [
            ("--expect N", "the count the preview showed", expect),
            *(
                [("--expect-tokens T", "the token count the preview showed", expect_tokens)]
                if revokes_tokens
                else []
            ),
            ("--expect-list F", "the fingerprint of the list the preview showed", expect_list),
        ],
    )
    expect_list = _fingerprint(expect_list)
    settings = runtime.settings
    # Who changed since the preview approved, when its files are here to say.
    with (
        _changes_named(lambda refused: naming_changes(refused, settings.reports_dir, expect_list)),
        progress_for(fmt) as progress,
    ):
        task = progress.add_task(f"phase {phase}: accounts", total=expect)
        result = enforce_phase(
            runtime.registry,
            runtime.plan,
            phase,
            expect=expect,
            expect_tokens=expect_tokens,
            accept_unreached=accept_unreached,
            actor=settings.actor,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
            early=early,
            expect_list=expect_list,
            # The sessions signed in since the approved preview, counted apart.
            previewed_at=approved_preview_at(settings.reports_dir, phase, expect_list),
        )
    emit_record(
        enforced_record(runtime.plan.phase(phase), result.summary(), fmt),
        fmt,
        title=f"phase {phase} enforced",
    )


def enforced_record(phase: Phase, summary: dict[str, Any], fmt: Format) -> dict[str, Any]:
    """An enforcement run's summary as `phase enforce` prints it: of a phase requiring
    no 2FA (a banner, TOTP set-ups closed, tokens revoked), the accounts it applied to
    as ``accounts_acted_on``, as its preview says "acted on" and `plan show` and the
    summary email say it (counts_as_told): it required nothing of their logins. The
    JSON keeps ``accounts_required`` beside it, the stored summary's key, which scripts
    read (docs/runbook-release-manager.md)."""
    from rollout.notify.emails import ACCOUNTS_ACTED_ON, ACCOUNTS_REQUIRED, counts_as_told
    from rollout.phases.enforce import with_unknowns_said

    told = counts_as_told(phase, summary)
    if fmt is Format.json and ACCOUNTS_ACTED_ON in told:
        told[ACCOUNTS_REQUIRED] = summary[ACCOUNTS_REQUIRED]
    # A count not known (no saved preview here to count sessions against): null in
    # JSON, said in words elsewhere, never a 0 that reads as measured.
    return told if fmt is Format.json else with_unknowns_said(told)


@phase_app.command("snooze")
@reports_errors
def phase_snooze(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    username: Annotated[
        str | None, typer.Argument(help="The account asking (or --file for many).")
    ] = None,
    days: Annotated[
        int | None, typer.Option(min=1, help="How many days to postpone its deadline by.")
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            parser=path_given,
            help="A CSV of requests: username,days and an optional requested_at (UTC).",
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Grant them (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Postpone accounts' own deadlines, once each, by at most the phase's snooze_days
    (phases with per-account deadlines). Each request is granted or refused with the
    reason; a grant is audited. Exit 3 when any request is refused."""
    from rollout.phases.snoozes import (
        command_request,
        read_requests,
        replies_owed,
        snooze,
        snooze_preview,
    )
    from rollout.registry.ledger import utc_now

    if (username is None) == (file is None):
        raise RolloutError("give a USERNAME and --days, or --file").with_exit(EXIT_BAD_INPUT)
    if username is not None and days is None:
        raise RolloutError("a USERNAME needs --days N").with_exit(EXIT_BAD_INPUT)
    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    plan.phase(phase)  # a typo is said as such, not as what reading --file found first
    now = utc_now()
    if file is not None:
        requests = read_requests(file, now, read_each_day=True)
    else:
        assert username is not None and days is not None
        requests = [command_request(username, days, now)]
    if apply:
        outcomes = snooze(runtime.registry, plan, phase, requests, actor=settings.actor, now=now)
    else:
        outcomes = snooze_preview(runtime.registry, plan, phase, requests)
    # Each account asking is answered by email: granted, or why not (snooze_reply).
    replies = replies_owed(outcomes)
    emit(
        [o.summary() for o in outcomes],
        fmt,
        title=f"phase {phase}: snoozes" + ("" if apply else " (preview)"),
        columns=["username", "days", "outcome", "deadline", "reason"],
    )
    refused = sum(o.outcome == "refused" for o in outcomes)
    granted = sum(o.outcome == "granted" for o in outcomes)
    if not apply:
        stderr.print(
            f"{granted} would be granted, {refused} refused, {replies} answered by email; "
            "preview only: add --apply",
            highlight=False,
        )
    elif replies:
        stderr.print(
            f"{counted(replies, 'reply', 'replies')} queued (snooze_reply): "
            f"`rollout notify send` sends {them(replies)}",
            highlight=False,
        )
    if refused:
        raise GuardRefused(
            f"{refused:,} of {counted(len(outcomes), 'request')} refused (listed above)"
            + (f"; the other {granted} granted" if apply and granted else "")
        )


@phase_app.command("rollback")
@reports_errors
def phase_rollback(
    ctx: typer.Context,
    phase: Annotated[str, typer.Argument(help="The phase, as named in the plan.")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Make the change (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Withdraw a phase: its 2FA requirement and the marks its effects set (revoked
    sessions and tokens stay revoked).

    An account stays required while another applied phase requires it: the preview
    lists every account the phase requires and what the rollback does to each."""
    from rollout.notify.withdraw import in_flight_note
    from rollout.phases.enforce import (
        MARKING_EFFECTS,
        require_enforced,
        rollback_phase,
        rollback_preview,
    )

    runtime = _runtime(ctx)
    settings, plan = runtime.settings, runtime.plan
    rolled_back = plan.phase(phase)
    require_enforced(runtime.registry, phase)
    preview = rollback_preview(runtime.registry, phase, plan)
    # What the phase's effects left on each account that a rollback clears: none for a
    # phase that only revoked (sessions, tokens), whose revocations stay.
    marking = [e for e in rolled_back.effects if e in MARKING_EFFECTS]
    if not apply:
        emit(
            [
                {
                    "account_id": a.account_id,
                    "username": a.username,
                    "outcome": (
                        "withdrawn (nothing to clear)"
                        if not marking
                        else "cleared"
                        if a.cleared
                        else f"still required by {', '.join(a.still_required_by)}"
                    ),
                }
                for a in preview.accounts
            ],
            fmt,
            title=f"rollback of phase {phase}",
            columns=["account_id", "username", "outcome"],
        )
    if rolled_back.does("require_2fa"):
        what = (
            f"rollback of {phase} would withdraw its 2FA requirement from "
            f"{counted(len(preview.accounts), 'account')}: {len(preview.cleared)} no longer "
            "required, "
            f"{len(preview.kept)} still required by another applied phase"
        )
    elif marking:
        # It required no 2FA: what it undoes is the marks its effects set.
        what = (
            f"rollback of {phase} would withdraw the phase from "
            f"{counted(len(preview.accounts), 'account')} and clear what it set "
            f"({', '.join(marking)}) where no other applied "
            "phase set the same"
        )
    else:
        what = (
            f"rollback of {phase} would withdraw the phase from "
            f"{counted(len(preview.accounts), 'account')}; it set nothing on "
            f"{them(len(preview.accounts))} to clear"
        )
    revoked = [
        what_
        for effect, what_ in (("revoke_sessions", "sessions"), ("revoke_tokens", "tokens"))
        if rolled_back.does(effect)
    ]
    kept = f"; revoked {' and '.join(revoked)} stay revoked" if revoked else ""
    stderr.print(
        f"{what}; "
        f"{counted(preview.queued_emails, 'queued or failed email')} of its enforcement "
        "withdrawn"
        f"{in_flight_note(preview.in_flight_emails)}{kept}",
        highlight=False,
    )
    if not apply:
        stderr.print("preview only: add --apply to roll back", highlight=False)
        return
    result = rollback_phase(runtime.registry, plan, phase, actor=settings.actor)
    emit_record(result.summary(), fmt, title=f"phase {phase} rolled back")


# --- approvals of phase-enforce runs (Prefect's REST API) -------------------------------


@app.command("approvals")
@reports_errors
def approvals(fmt: FormatOption = Format.table) -> None:
    """List the phase-enforce runs waiting for an approval, with their full ids.

    Reads the Prefect server PREFECT_API_URL names. Each row: the run's id and name,
    its phase, since when it waits and until when, the preview's account and session
    counts, its list's fingerprint (``list``), the preview's CSV and its artifact key."""
    from rollout.phases.approvals import COLUMNS, api_from_environ, waiting_approvals

    with api_from_environ() as api:
        waiting = waiting_approvals(api)
    emit([w.row() for w in waiting], fmt, title="runs waiting for approval", columns=COLUMNS)
    stderr.print(
        f"{counted(len(waiting), 'run')} waiting; approve one with: "
        "rollout approve RUN_ID --expect ACCOUNTS --expect-list LIST [--as NAME]",
        highlight=False,
    )


@app.command("approve")
@reports_errors
def approve(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's full id, as `rollout approvals` lists.")],
    expect: Annotated[
        int, typer.Option(min=0, help="The account count the preview showed, typed back.")
    ],
    expect_list: Annotated[
        str,
        typer.Option(
            help="The fingerprint of the preview's list (`rollout approvals` column list), "
            "typed back: the run refuses another list, even at the same count."
        ),
    ],
    accept_unreached: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Over the plan's max_unreached_share: the count of accounts no warning "
            "reached, as the preview showed it.",
        ),
    ] = None,
    approved_by: Annotated[
        str | None,
        typer.Option("--as", help="Who approves (default: $ROLLOUT_ACTOR, else $USER)."),
    ] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the run to its end and report how it ended.")
    ] = True,
    timeout: Annotated[
        int, typer.Option(min=1, help="Seconds to follow the run before giving up waiting.")
    ] = 3600,
    fmt: FormatOption = Format.table,
) -> None:
    """Approve a waiting phase-enforce run: resume it with the count and the list's
    fingerprint typed back, as `phase enforce --apply` takes them.

    The server refuses an approval its form does not accept (exit 2; the run keeps
    waiting). The run checks the list against its preview's, and the count and list
    against a fresh preview under the enforce lock; a wrong one fails it, changing
    nothing (exit 3, the guard's reason on stderr)."""
    from rollout.phases.approvals import (
        api_from_environ,
        outcome,
        parse_run_id,
        raise_for_outcome,
        wait_for_outcome,
    )
    from rollout.phases.approvals import approve as resume

    run = parse_run_id(run_id)
    expect_list = (_fingerprint(expect_list) or "").strip().lower()
    name = _runtime(ctx).settings.actor if approved_by is None else approved_by
    with api_from_environ() as api:
        waited = resume(
            api,
            run,
            expect=expect,
            expect_list=expect_list,
            approved_by=name,
            accept_unreached=accept_unreached,
        )
        stderr.print(
            f"approved flow run {quoted(waited.run_name)} ({run}) as {quoted(name)} for "
            f"{counted(expect, 'account')} (list {expect_list})",
            highlight=False,
        )
        found = wait_for_outcome(api, run, timeout=timeout) if wait else outcome(api, run)
    emit_record(
        {
            "run_id": found.run_id,
            "run_name": found.run_name,
            "state": found.state_name,
            "message": found.message,
        },
        fmt,
        title=f"flow run {found.run_name}",
    )
    if wait:
        raise_for_outcome(found)
