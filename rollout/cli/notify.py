"""`rollout notify`: preview, queue, send, status, suppress (by hand or from SendGrid's
lists), lift a suppression and withdraw emails."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _changes_named,
    _fingerprint,
    _given_day,
    _runtime,
    _typed_back,
    app,
    listen_host,
    reports_errors,
)
from rollout.core.controls import quoted, shell_word
from rollout.core.errors import EXIT_BAD_INPUT, EXIT_FAILURE, BadInput, RolloutError
from rollout.core.output import (
    Format,
    emit,
    emit_lines,
    emit_record,
    labelled,
    progress_for,
    stderr,
)
from rollout.core.words import by_count, counted, them

if TYPE_CHECKING:
    from rollout.core.plan import Plan
    from rollout.notify.emails import Recipient
    from rollout.notify.suppressions import AddressStanding
    from rollout.runtime import Runtime

# --- notify --------------------------------------------------------------------------------

notify_app = typer.Typer(
    help="Emails: preview them, queue what the plan calls for, send the outbox.",
    no_args_is_help=True,
)
app.add_typer(notify_app, name="notify")


@notify_app.command("preview")
@reports_errors
def notify_preview(
    ctx: typer.Context,
    email: Annotated[
        str | None, typer.Argument(help="The email's name (default: every email).")
    ] = None,
    account: Annotated[
        str | None, typer.Option(help="Render it for this account (username) instead.")
    ] = None,
    phase: Annotated[
        str | None,
        typer.Option(
            help="The phase whose notice, reminder and enforcement emails to render "
            "(default: the plan's first; for the reminder, its first phase that sends one)."
        ),
    ] = None,
    on: Annotated[
        str | None,
        typer.Option(
            "--on",
            help="The day it goes, YYYY-MM-DD: rendered as the send would word it that day "
            "(default: with --account, today, UTC; else the day the plan sends each).",
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Render examples of an email to outbox/preview/: subject, text and HTML. Lists the
    files written: one path a line (table), or a `file` column (CSV, JSON).

    With --account, an account's email as a send today (or --on DAY) would word it: a
    deadline gone is "since" it, a reminder counts the days left then; one the send
    would skip as too late that day is said so."""
    from rollout.core.calendar import too_late
    from rollout.notify.drain import account_recipient
    from rollout.notify.emails import EMAILS
    from rollout.notify.examples import (
        PHASE_EMAILS,
        example_stored,
        plan_sends,
        preview_examples,
        sent_that_day,
        write_previews,
    )
    from rollout.notify.queue import last_day_said
    from rollout.notify.render import render
    from rollout.registry.ledger import utc_now

    runtime = _runtime(ctx)
    day = _given_day(on, "--on")  # before the plan is read
    settings, plan = runtime.settings, runtime.plan
    if email is not None and email not in EMAILS:
        raise RolloutError(
            f"no email named {quoted(email)} (emails: {', '.join(EMAILS)})"
        ).with_exit(EXIT_BAD_INPUT)
    # Every email the plan sends, or the one asked for (refused if the plan never sends it).
    names = [email] if email else [name for name in EMAILS if plan_sends(name, plan)]
    if phase is not None:
        plan.phase(phase)  # a phase the plan has (exit 2 naming them)
        if email is None:  # its emails: a phase without reminders sends none
            names = [
                n
                for n in names
                if n in PHASE_EMAILS
                and (n != "reminder" or plan.phase(phase).reminders_days_before)
            ]
    directory = settings.outbox_dir / "preview"
    if account is None:
        written = preview_examples(plan, names, directory, phase, day)
    else:
        # An account's email as the send words it on a day (today by default): the
        # plan's first day for it said "from" a deadline long gone, "in 14 days".
        now = utc_now() if day is None else datetime.combine(day, time())
        previews = []
        for name in names:
            stored = sent_that_day(
                example_stored(name, plan, phase if name in PHASE_EMAILS else None), now.date()
            )
            recipient = account_recipient(
                runtime.registry, plan, account, stored.get("phase"), name, now=now
            )
            previews.append((f"{name}-{account}", render(name, recipient, stored, plan)))
            late_from = _too_late_from(plan, name, stored, recipient)
            if late_from is not None and too_late(late_from, now):
                stderr.print(
                    f"{name}: {last_day_said(late_from)}, so on {now.date()} the send skips "
                    "it as too late, unless queued with `rollout notify queue --late`; "
                    "rendered as it would then go",
                    highlight=False,
                    markup=False,
                )
        written = write_previews(directory, previews)
    if fmt is Format.table:
        # A path a line, as scripts have read it: `xargs`, `for f in $(...)`.
        emit_lines(written)
    else:
        emit([{"file": path} for path in written], fmt, columns=["file"])
    stderr.print(f"{counted(len(written), 'file')} under {directory}", highlight=False)


def _too_late_from(
    plan: Plan, email: str, stored: dict[str, Any], recipient: Recipient
) -> datetime | None:
    """The instant a phase's notice or reminder to ``recipient`` is too late from, as
    the drain judges it (rollout.notify.drain._too_late): the plan's, or for a reminder
    under per-account deadlines the account's own deadline. None for another email."""
    from rollout.core.calendar import day_start, too_late_by_plan

    if email not in ("phase_notice", "reminder"):
        return None
    phase = plan.phase(str(stored["phase"]))
    if email == "reminder" and phase.deadline is not None and recipient.deadline is not None:
        return day_start(recipient.deadline)
    return too_late_by_plan(plan, email, phase.name, "")


@notify_app.command("queue")
@reports_errors
def notify_queue(
    ctx: typer.Context,
    as_of: Annotated[
        str | None, typer.Option(help="The day, YYYY-MM-DD (default: today, UTC).")
    ] = None,
    apply: Annotated[bool, typer.Option("--apply", help="Queue them (without: preview).")] = False,
    late: Annotated[
        bool,
        typer.Option(
            "--late",
            help="Queue too the mailings whose last day has passed by today (held back "
            "without it: they would announce dates already gone); the send takes them "
            "however late.",
        ),
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Queue the emails the plan calls for on a day (notices, reminders, heads-ups)."""
    from rollout.notify.queue import last_day_words, past_last_day, queue_due, queue_preview
    from rollout.registry.ledger import utc_now

    runtime = _runtime(ctx)
    day = _given_day(as_of) or utc_now().date()
    settings, plan = runtime.settings, runtime.plan
    if apply:
        outcomes = queue_due(runtime.registry, plan, day, actor=settings.actor, late=late)
    else:
        outcomes = queue_preview(runtime.registry, plan, day, late=late)
    emit(
        [
            {
                "step": o.occasion.step,
                "email": o.occasion.email,
                "due_on": o.occasion.due_on,
                "audience": o.audience,
                "new": o.added,
                # Of new, recorded as skipped with why (unverified, suppressed,
                # compliant, exempt): they send nothing.
                "of_which_skipped": o.skipped,
                "already": o.already,
                # Not queued: past their last day (queued with --late).
                "held_back": o.held_back,
            }
            for o in outcomes
        ],
        fmt,
        title=f"emails due on {day}" + ("" if apply else " (preview)"),
        columns=[
            "step",
            "email",
            "due_on",
            "audience",
            "new",
            "of_which_skipped",
            "already",
            "held_back",
        ],
    )
    if not outcomes:
        stderr.print(f"nothing is due on {day}", highlight=False)
    elif not apply:
        new = sum(o.added for o in outcomes)
        stderr.print(f"preview only: add --apply to queue {them(new)}", highlight=False)
    now = utc_now()
    for o in outcomes:
        # A day queued late goes out today: a mailing whose last day has passed would
        # announce as still to come a date already gone. Held back unless --late.
        whose = (
            last_day_words(o.occasion, now)
            if past_last_day(o.occasion, now)
            else "the accounts' own deadlines came by today"
        )
        if o.held_back:
            stderr.print(
                labelled(
                    "held back:",
                    "bold yellow",
                    f"{o.occasion.step}: {whose}: {counted(o.held_back, 'email')} "
                    f"{'not queued' if apply else 'would not be queued'}, "
                    + by_count(o.held_back, "it", "they")
                    + " would announce "
                    + by_count(o.held_back, "a date", "dates")
                    + f" already gone (--late queues {them(o.held_back)} anyway)",
                ),
                highlight=False,
            )
        if o.late:
            stderr.print(
                labelled(
                    "warning:",
                    "bold yellow",
                    f"{o.occasion.step}: {whose}: {counted(o.late, 'email')} "
                    f"{'queued' if apply else 'would be queued'} late (--late), to be sent "
                    f"however late; {by_count(o.late, 'it', 'they')} would announce "
                    f"{by_count(o.late, 'a date', 'dates')} already gone"
                    + (
                        "; `rollout notify withdraw` takes back "
                        + by_count(o.late, "it if not sent yet", "those not sent yet")
                        if apply
                        else ""
                    ),
                ),
                highlight=False,
            )


@notify_app.command("send")
@reports_errors
def notify_send(
    ctx: typer.Context,
    apply: Annotated[bool, typer.Option("--apply", help="Send (without: count only).")] = False,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Messages sent at once, per process (SendGrid; the file outbox writes "
            "500 at a time).",
        ),
    ] = 8,
    processes: Annotated[
        int, typer.Option(min=1, max=16, help="Processes rendering and sending.")
    ] = 1,
    limit: Annotated[int | None, typer.Option(min=1, help="Send at most this many.")] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Queue failed emails again first.")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Drain the outbox: render and send every queued email, exactly once. Lists the
    emails queued by kind, and those it would skip (too late, already enforced: preview),
    or what the send did."""
    from rollout.notify.drain import drain, skips_waiting
    from rollout.notify.outbox import (
        ENFORCED,
        IN_ELV,
        TOO_LATE,
        check_sender,
        failed_count,
        pending,
    )
    from rollout.notify.senders import make_sender

    runtime = _runtime(ctx)
    settings, plan, registry = runtime.settings, runtime.plan, runtime.registry
    sender = make_sender(
        settings,
        from_address=plan.notifications.from_address,
        from_name=plan.notifications.from_name,
    )
    queued = pending(registry)
    failed = failed_count(registry) if retry_failed else 0
    if apply:  # the preview lists them on stdout
        for email, count in queued.items():
            stderr.print(f"  {email}: {count}", highlight=False)
    stderr.print(
        f"{counted(sum(queued.values()), 'email')} queued; sender: {sender.name}",
        highlight=False,
    )
    if retry_failed:
        stderr.print(f"{counted(failed, 'failed email')} to queue again first", highlight=False)
    # The preview refuses as the send would: the file outbox never takes an email
    # last attempted through SendGrid (the key is missing from this shell).
    check_sender(registry, sender.name, include_failed=retry_failed)
    if not apply:
        # Judged as the send will judge them: "N emails queued" alone announced as to be
        # sent those it then skips, past the day they announce.
        # So are the warnings of a phase enforced on their accounts since they were queued.
        skips = skips_waiting(registry, plan, include_failed=retry_failed)
        by_reason = {
            reason: Counter({email: n for (why, email), n in skips.items() if why == reason})
            for reason in (TOO_LATE, ENFORCED, IN_ELV)
        }
        late, enforced, in_elv = by_reason[TOO_LATE], by_reason[ENFORCED], by_reason[IN_ELV]
        emit(
            [
                {
                    "email": email,
                    "queued": queued.get(email, 0),
                    "too_late": late.get(email, 0),
                    "already_enforced": enforced.get(email, 0),
                    "already_in_elv": in_elv.get(email, 0),
                }
                for email in sorted({*queued, *late, *enforced, *in_elv})
            ],
            fmt,
            title=f"emails queued; sender: {sender.name} (preview)",
            columns=["email", "queued", "too_late", "already_enforced", "already_in_elv"],
        )
        for counts, why in (
            (late, "too late (past their last day)"),
            (
                enforced,
                "already enforced (2FA has been required of their accounts since they were queued)",
            ),
            (
                in_elv,
                "already in ELV (heads-ups of emailed login codes to accounts enrolled since)",
            ),
        ):
            if counts:
                kinds = ", ".join(f"{email} {n}" for email, n in sorted(counts.items()))
                stderr.print(
                    f"{counts.total()} would be skipped as {why}: {kinds}; not sent, for good",
                    highlight=False,
                )
        stderr.print(
            f"preview only: add --apply to send {them(sum(queued.values()))}", highlight=False
        )
        return
    # A stop (SIGTERM/SIGINT) raises Stopped once every worker is gone: reports_errors.
    with progress_for(fmt) as progress:
        task = progress.add_task("sending", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = drain(
            registry,
            plan,
            sender,
            concurrency=concurrency,
            processes=processes,
            limit=limit,
            progress=advance,
            retry_failed=retry_failed,
        )
    emit_record(
        {
            "sender": report.sender,
            "sent": report.sent,
            "failed": report.failed,
            "skipped": sum(report.skipped.values()),
            "resumed": report.resumed,
            "retried": report.retried,
            "requeued": report.requeued,
            "overtaken": report.overtaken,
        },
        fmt,
        title="notify send",
    )
    if retry_failed:
        stderr.print(f"{counted(report.requeued, 'failed email')} queued again", highlight=False)
    skipped = ", ".join(f"{n} {why}" for why, n in sorted(report.skipped.items())) or "none"
    stderr.print(
        f"sent {report.sent}, failed {report.failed}, skipped {sum(report.skipped.values())} "
        f"({skipped}); resent after a crash or a stop (maybe twice): {report.resumed}; "
        f"retried after 5xx/429: {report.retried}",
        highlight=False,
    )
    if report.overtaken:
        # This drain outlived its lease on them (a stall): another sender took them over
        # and sends and records them; each one already in flight is logged as a warning.
        stderr.print(
            f"{counted(report.overtaken, 'claimed email')} "
            f"{by_count(report.overtaken, 'was', 'were')} taken over by another sender "
            "once this one outlived its lease: left to it",
            highlight=False,
        )
    for outbox_id, reason in report.failures[:20]:
        stderr.print(f"  failed #{outbox_id}: {reason}", highlight=False)
    if report.failed:
        stderr.print(report.failure_message(), highlight=False)
        raise typer.Exit(EXIT_FAILURE)


@notify_app.command("status")
@reports_errors
def notify_status(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """The outbox: emails by kind, state and reason (skipped: why; failed: the error)."""
    from rollout.notify.outbox import outbox_status

    rows = outbox_status(_runtime(ctx).registry)
    emit(rows, fmt, title="outbox", columns=["email", "state", "reason", "count"])


def _kinds(counts: dict[str, int]) -> list[str]:
    """Emails by kind, as a list a preview shows: ``reminder 2``."""
    return [f"{email} {n}" for email, n in counts.items()]


def _who_uses(standing: AddressStanding) -> dict[str, object]:
    """The address and the accounts using it, as suppress and unsuppress list them."""
    return {
        "address": standing.address,
        "accounts": len(standing.accounts),
        "usernames": standing.usernames,
    }


def _address_standing(
    ctx: typer.Context, address: str, reason: str, *, example: str
) -> tuple[Runtime, AddressStanding]:
    """The runtime and the address's standing, the reason checked (after the address):
    how suppress and unsuppress both begin."""
    from rollout.notify.outbox import checked_reason
    from rollout.notify.suppressions import standing_of

    runtime = _runtime(ctx)
    standing = standing_of(runtime.registry, address)
    checked_reason(reason, example=example)
    return runtime, standing


def _accounts_words(standing: AddressStanding) -> str:
    if not standing.accounts:
        return "no account uses this address"
    n = len(standing.accounts)
    return f"{counted(n, 'account')} {by_count(n, 'uses', 'use')} it: " + ", ".join(
        quoted(username) for username in standing.usernames
    )


@notify_app.command("suppress")
@reports_errors
def notify_suppress(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The email address to stop writing to.")],
    reason: Annotated[str, typer.Option(help="Why (bounced, complained, asked).")],
    apply: Annotated[
        bool, typer.Option("--apply", help="Suppress it (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Stop every email to an address (recorded as a skip with the reason 'suppressed').

    Previews first: the accounts that use the address (in any case, its domain in IDNA
    or Unicode, as the send matches them), the emails to them not sent yet that would
    be skipped, and whether it is already suppressed (by hand, or on SendGrid's
    lists). With --apply, suppresses it, audited; `notify unsuppress` lifts it."""
    from rollout.notify.outbox import SUPPRESS_EXAMPLES, suppress

    runtime, standing = _address_standing(ctx, address, reason, example=SUPPRESS_EXAMPLES)
    added = False
    if apply:
        added = suppress(runtime.registry, address, reason=reason, actor=runtime.settings.actor)
    emit_record(
        {
            **_who_uses(standing),
            "already_suppressed": [s.words() for s in standing.suppressions],
            "emails_not_sent": sum(standing.waiting.values()),
            "emails_not_sent_by_kind": _kinds(standing.waiting),
            "applied": apply,
            "suppressed_now": added,
        },
        fmt,
        title="suppress" + ("" if apply else " (preview)"),
    )
    stderr.print(f"{quoted(standing.address)}: {_accounts_words(standing)}", highlight=False)
    waiting = sum(standing.waiting.values())
    if waiting:
        stderr.print(
            f"{counted(waiting, 'email')} to them not sent yet "
            + ("will be" if apply else "would be")
            + f" skipped as suppressed: {', '.join(_kinds(standing.waiting))}",
            highlight=False,
        )
    if standing.in_flight:
        stderr.print(
            f"{standing.in_flight} being sent now: "
            f"{by_count(standing.in_flight, 'it goes', 'they go')} if that send goes",
            highlight=False,
        )
    for held in standing.suppressions:
        stderr.print(f"already suppressed {held.words()}", highlight=False)
    if apply:
        stderr.print(
            f"{quoted(standing.address)}: " + ("suppressed" if added else "was already suppressed"),
            highlight=False,
        )
        return
    stderr.print(
        "once lifted (`rollout notify unsuppress`), the next day's queue sends the phase "
        "notices skipped meanwhile, until their last day; reminders, heads-ups and "
        "enforcement notices skipped meanwhile are not sent again",
        highlight=False,
    )
    stderr.print("preview only: add --apply to suppress it", highlight=False)


@notify_app.command("unsuppress")
@reports_errors
def notify_unsuppress(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(help="The email address to write to again.")],
    reason: Annotated[
        str, typer.Option(help="Why (the address works again, suppressed by mistake).")
    ],
    apply: Annotated[
        bool, typer.Option("--apply", help="Lift it (without: preview only).")
    ] = False,
    fmt: FormatOption = Format.table,
) -> None:
    """Lift a suppression set by hand (`notify suppress`), in every form of the address.

    Previews first: the accounts that use it, its suppressions, and the emails skipped
    as suppressed meanwhile (the next day's queue sends the phase notices again, until
    their last day; other emails stay skipped). Refused (exit 3) while one of SendGrid's
    lists (bounces, spam reports, invalid emails) holds the address: remove it there
    first, then `notify sync-suppressions`. With --apply, lifts it, audited."""
    from rollout.notify.suppressions import UNSUPPRESS_EXAMPLES, sendgrid_refusal, unsuppress

    runtime, standing = _address_standing(ctx, address, reason, example=UNSUPPRESS_EXAMPLES)
    refusal = sendgrid_refusal(standing)
    lifted = []
    if apply:
        # Judged again in the transaction that lifts it: refused with nothing changed.
        lifted = unsuppress(runtime.registry, address, reason=reason, actor=runtime.settings.actor)
    emit_record(
        {
            **_who_uses(standing),
            "suppressed": [s.words() for s in standing.suppressions],
            "skipped_as_suppressed": sum(standing.skipped.values()),
            "skipped_as_suppressed_by_kind": _kinds(standing.skipped),
            "notices_queued_again": standing.reopened,
            "applied": apply,
            "lifted": [s.address for s in lifted],
        },
        fmt,
        title="unsuppress" + ("" if apply else " (preview)"),
    )
    stderr.print(f"{quoted(standing.address)}: {_accounts_words(standing)}", highlight=False)
    for held in standing.suppressions:
        stderr.print(f"suppressed {held.words()}", highlight=False)
    if refusal is not None:
        # The preview says what --apply would refuse (exit 3, as it does).
        stderr.print(labelled("would be refused:", "bold yellow", refusal), highlight=False)
    elif not standing.manual:
        stderr.print(
            f"{quoted(standing.address)}: not suppressed by hand: nothing to lift", highlight=False
        )
    if standing.skipped and refusal is None:
        skipped = sum(standing.skipped.values())
        again = (
            f"{by_count(skipped, 'it', 'the phase notice among them')} again, until its last day"
            if standing.reopened == 1
            else f"the {standing.reopened:,} phase notices among them again, until each "
            "notice's last day"
        )
        stderr.print(
            f"{counted(skipped, 'email')} to them {by_count(skipped, 'was', 'were')} "
            f"skipped as suppressed ({', '.join(_kinds(standing.skipped))}): the next "
            f"day's `rollout notify queue` sends {again}; the others stay skipped",
            highlight=False,
        )
    if apply:
        if lifted:
            stderr.print(f"{quoted(standing.address)}: suppression by hand lifted", highlight=False)
        return
    stderr.print("preview only: add --apply to lift it", highlight=False)


@notify_app.command("sync-suppressions")
@reports_errors
def notify_sync_suppressions(ctx: typer.Context, fmt: FormatOption = Format.table) -> None:
    """Copy SendGrid's suppression lists (bounces, blocks, spam reports, invalid emails,
    global unsubscribes) into the registry: queued emails to those addresses are then
    skipped with the reason (a global unsubscribe does not stop the security notices).
    The notify flow does this each day before queueing."""
    from rollout.notify.senders import SendGridSender, make_sender
    from rollout.notify.suppressions import sync_suppressions

    runtime = _runtime(ctx)
    sender = make_sender(runtime.settings)
    if not isinstance(sender, SendGridSender):
        raise RolloutError(
            "no SendGrid key was found, and the suppression lists are SendGrid's: set "
            "SENDGRID_API_KEY (and ROLLOUT_SENDGRID_URL for another server) and run again"
        ).with_exit(EXIT_BAD_INPUT)  # a setting missing: bad usage, as the receiver's key
    with progress_for(fmt) as progress:
        task = progress.add_task("reading SendGrid's lists", total=5)

        def advance(list_name: str, entries: int) -> None:
            progress.update(task, advance=1, description=f"{list_name}: {entries}")

        report = sync_suppressions(
            runtime.registry, sender, actor=runtime.settings.actor, progress=advance
        )
    emit_record(report.summary(), fmt, title="SendGrid suppressions")


events_app = typer.Typer(
    help="SendGrid's delivery events: the signed Event Webhook receiver.", no_args_is_help=True
)
notify_app.add_typer(events_app, name="events")


@events_app.command("serve")
@reports_errors
def notify_events_serve(
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option(parser=listen_host, help="Interface to listen on.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 3031,
    tolerance: Annotated[
        int, typer.Option(min=1, help="Seconds a post's timestamp may be from now.")
    ] = 300,
    max_bytes: Annotated[int, typer.Option(min=1024, help="The largest post taken, in bytes.")] = 5
    * 1024
    * 1024,
    body_timeout: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seconds a post's whole body may take to arrive (a slower one is answered "
            "408 and not written).",
        ),
    ] = 30,
    max_posts: Annotated[
        int,
        typer.Option(
            min=1,
            help="Posts received at once, each holding up to --max-bytes (more are answered "
            "503, which SendGrid posts again).",
        ),
    ] = 16,
    grace: Annotated[
        int,
        typer.Option(
            min=0,
            help="Seconds the posts in progress get to finish once the receiver is told to "
            "stop (a post still arriving then is answered 503 and not written).",
        ),
    ] = 10,
) -> None:
    """Receive SendGrid's Event Webhook posts: each verified with the key in
    ROLLOUT_SENDGRID_WEBHOOK_KEY and written whole under landing/events/ for ingest;
    unsigned, badly signed, stale or oversized posts are refused; one received again is
    acknowledged and not written again."""
    import uvicorn

    from rollout.notify.webhook import EVENTS_PATH, create_app

    settings = _runtime(ctx).settings
    if settings.sendgrid_webhook_key is None:
        raise RolloutError(
            "no verification key: set ROLLOUT_SENDGRID_WEBHOOK_KEY to the key SendGrid shows "
            "for the signed Event Webhook (unsigned posts are never taken)"
        ).with_exit(EXIT_BAD_INPUT)
    if not settings.home.is_dir():
        # A mistyped ROLLOUT_HOME: the posts would land where no ingest reads them, each
        # answered 200, so SendGrid would never send them again.
        raise BadInput(
            settings.home, None, "no such folder: check ROLLOUT_HOME (the events land under it)"
        )
    receiver = create_app(
        settings.sendgrid_webhook_key,
        settings.landing_dir,
        tolerance=tolerance,
        max_bytes=max_bytes,
        body_timeout=body_timeout,
        max_posts=max_posts,
    )
    stderr.print(
        f"receiving SendGrid events on http://{host}:{port}{EVENTS_PATH} into "
        f"{settings.landing_dir / 'events'}",
        highlight=False,
    )
    # uvicorn ends on SIGINT and SIGTERM, after the posts in progress, or after `grace`
    # seconds: a client holding a post open cannot keep it running.
    try:
        uvicorn.run(
            receiver,
            host=host,
            port=port,
            log_level="warning",
            server_header=False,
            timeout_graceful_shutdown=grace,
        )
    except SystemExit as exited:
        # uvicorn's own exit when it cannot listen (the port taken): 3, which here
        # means a refusal by a safety guard. Its reason is logged just above.
        if exited.code in (None, 0):
            raise
        raise RolloutError(f"cannot listen on {host}:{port} (the reason is above)") from None


@notify_app.command("withdraw")
@reports_errors
def notify_withdraw(
    ctx: typer.Context,
    phase: Annotated[
        str | None, typer.Option(help="Only emails of this phase (or org:NAME, or '' for none).")
    ] = None,
    email: Annotated[
        str | None, typer.Option(help="Only emails of this kind, e.g. enforcement_notice.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why they must not go (kept with each).")] = "",
    apply: Annotated[
        bool, typer.Option("--apply", help="Withdraw them (without: preview only).")
    ] = False,
    expect: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="The count of queued or failed emails the preview showed, typed back "
            "(required with --apply): refuses if another count would be withdrawn now.",
        ),
    ] = None,
    expect_list: Annotated[
        str | None,
        typer.Option(
            help="The fingerprint of the emails the preview showed (required with "
            "--apply): refuses if others would be withdrawn now, even at the same count.",
        ),
    ] = None,
    fmt: FormatOption = Format.table,
) -> None:
    """Take back queued emails that must no longer go, by phase, kind or both, for good.

    Every email not sent yet is taken: queued ones and failed ones. They stay in the
    outbox as skipped ('withdrawn: REASON'), audited, and are never queued again. One a
    send is sending now goes only if that send goes (it is not queued again after a stop
    or a crash); emails already sent are not touched. The preview saves its list under
    reports/previews/; --apply needs the preview's count and its list's fingerprint typed
    back (--expect N --expect-list F), and a refusal names the emails changed since."""
    from rollout.notify.emails import EMAILS
    from rollout.notify.withdraw import (
        Selection,
        in_flight_note,
        listed_counts,
        listed_fingerprint,
        phase_in_outbox,
        withdraw,
        withdraw_list,
    )
    from rollout.phases.withdrawals import naming_email_changes, save_withdraw_preview

    if phase is None and email is None:
        raise RolloutError("say which emails: --phase, --email or both").with_exit(EXIT_BAD_INPUT)
    if email is not None and email not in EMAILS:
        raise RolloutError(
            f"no email named {quoted(email)}: one of {', '.join(sorted(EMAILS))}"
        ).with_exit(EXIT_BAD_INPUT)
    selection = Selection(phase=phase, email=email)
    preview_command = "rollout notify withdraw" + "".join(
        f" --{option} {shell_word(value)}"
        for option, value in (("phase", phase), ("email", email))
        if value is not None
    )
    if apply:
        # Withdrawn is for good (never queued again): the count the preview showed and
        # its list's fingerprint typed back, so emails queued since (the day's notices)
        # are not silenced unseen, not even in place of others sent since.
        _typed_back(
            "--apply",
            preview_command,
            [
                ("--expect N", "the count the preview showed", expect),
                ("--expect-list F", "the fingerprint the preview showed", expect_list),
                ("--reason '...'", "why they must not go", reason if reason.strip() else None),
            ],
        )
        _fingerprint(expect_list)
    runtime = _runtime(ctx)
    settings, registry = runtime.settings, runtime.registry
    with registry.engine.connect() as connection:
        # One read: the counts shown, the list saved and its fingerprint are one list.
        emails = withdraw_list(connection, selection)
        # A phase an earlier plan had is known by its emails (taken back, or already
        # withdrawn by a first run); one neither in the plan nor in the outbox is a
        # typo: plan.phase refuses it.
        if phase and not phase.startswith("org:") and not phase_in_outbox(connection, phase):
            runtime.plan.phase(phase)
    queued = listed_counts(emails)
    total = sum(row["queued"] for row in queued)
    flying = sum(row["in_flight"] for row in queued)
    emit(
        queued,
        fmt,
        title="emails to withdraw",
        columns=["phase", "email", "queued", "in_flight"],
    )
    if not apply and not emails:
        # Nothing an --apply would take: no list kept (reports/previews/ holds what was
        # approved), no command suggested that would change nothing.
        # Each name quoted, as a refusal quotes it (an org's phase is named by the org).
        which = " and ".join(
            # The phase is a name (an org's: org:NAME); the kind one of EMAILS.
            f"{what} {quoted(value) if what == 'phase' else value}"
            for what, value in (("phase", phase), ("kind", email))
            if value is not None
        )
        stderr.print(
            f"nothing to withdraw: no queued, failed or in-flight emails of {which}",
            highlight=False,
            markup=False,
        )
        return
    if not apply:
        # Kept as shown: a refused apply names which emails changed since
        # (naming_email_changes).
        saved = save_withdraw_preview(settings.reports_dir, selection, emails, actor=settings.actor)
        stderr.print(f"the list: {saved}", highlight=False, markup=False)
        stderr.print(
            f"{counted(total, 'queued or failed email')} would be withdrawn for good"
            f"{in_flight_note(flying)}; preview only: to withdraw "
            f"{them(total)} run {preview_command} --apply --expect {total} "
            f"--expect-list {listed_fingerprint(emails)} --reason '...'",
            highlight=False,
        )
        return
    # Which emails changed since the preview typed back, when its files are here.
    with _changes_named(
        lambda refused: naming_email_changes(refused, registry, settings.reports_dir, expect_list)
    ):
        withdrawn = withdraw(
            registry,
            selection,
            reason=reason,
            actor=settings.actor,
            expect=expect,
            expect_list=expect_list,
            preview=preview_command,
        )
    stderr.print(
        f"withdrew {counted(withdrawn.taken, 'queued or failed email')}"
        f"{in_flight_note(withdrawn.in_flight)}",
        highlight=False,
    )
