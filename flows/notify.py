"""The ``notify`` flow: queue the emails the plan calls for today, then send the outbox.

The SendGrid key comes from the environment (``SENDGRID_API_KEY``) or, in a
deployment, from the Prefect Secret block named by ``ROLLOUT_SENDGRID_SECRET_BLOCK``
(default ``sendgrid-api-key``); without either, emails go to the file outbox. The key
is handed to the sender and nowhere else: not a parameter, not logged, not in the
artifact.

A run where any email failed ends Failed ("N emails failed: <reasons>"), after its
artifact is published. A rerun does not send failed emails again unless asked:
``retry_failed=True`` queues them again first and sends them through the same sender.
The file outbox refuses emails last attempted through SendGrid (the drain's check).

With SendGrid, each run first copies its suppression lists into the registry
(rollout.notify.suppressions), so the day's emails to bounced, blocked, invalid or
complaining addresses are skipped with the reason instead of dropped unseen.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import date

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from flows.common import (
    IO_RETRIES,
    artifact_key,
    day_or_today,
    fail_on_user_error,
    library_logs_in_run_log,
    run_actor,
    runtime,
    table,
    with_runtime,
)
from rollout.core.config import Settings
from rollout.core.output import markdown_text
from rollout.notify.drain import DrainReport, EmailsFailed, drain
from rollout.notify.queue import QueueOutcome, queue_due
from rollout.notify.senders import SendGridSender, make_sender
from rollout.notify.suppressions import SuppressionsUnreadable, SyncReport, sync_suppressions
from rollout.phases.snoozes import LandedSnoozes, grant_landed

SECRET_BLOCK = "sendgrid-api-key"


def settings_with_secret(settings: Settings, environ: Mapping[str, str] = os.environ) -> Settings:
    """The run's settings, with the SendGrid key from a Secret block when the
    environment has none (``settings`` are the environment's: the runtime's)."""
    if settings.sendgrid_api_key is not None:
        return settings
    name = environ.get("ROLLOUT_SENDGRID_SECRET_BLOCK", SECRET_BLOCK)
    try:
        key = str(Secret.load(name).get())
    except ValueError:  # no such block: the file outbox
        return settings
    # As load_settings takes SENDGRID_API_KEY: an empty value is no key.
    return settings.model_copy(update={"sendgrid_api_key": SecretStr(key) if key else None})


@task(name="grant-landed-snoozes", cache_policy=NO_CACHE, **IO_RETRIES)
def snooze_task(actor: str) -> LandedSnoozes:
    """The snooze requests landed under landing/snoozes/<phase>/, granted before the
    day's reminders are queued (so a snoozed account's reminder waits)."""
    rt = runtime()
    return grant_landed(rt.registry, rt.plan, rt.settings.landing_dir, actor=actor)


def snoozes_markdown(done: LandedSnoozes) -> str:
    """The artifact's part on landed snooze requests; nothing when there were none."""
    if not (done.granted or done.refused or done.rejected):
        return ""
    parts = [
        f"\n## Snooze requests\n\n{done.granted} granted, {done.already} granted before, "
        f"{len(done.refused)} refused, {len(done.rejected)} files refused whole."
    ]
    if done.refused:
        rows = [(f"{user} ({file})", why) for file, user, why in done.refused[:50]]
        parts.append(table(rows, ("request", "refused because")))
    if done.rejected:
        parts.append(table([("file refused whole", why) for why in done.rejected[:50]]))
    return "\n\n".join(parts) + "\n"


@task(name="sync-suppressions", cache_policy=NO_CACHE, **IO_RETRIES)
def sync_suppressions_task(actor: str) -> SyncReport | str | None:
    """SendGrid's suppression lists into the registry before anything is queued, so
    the day's emails to bounced, blocked, invalid or complaining addresses are skipped
    with the reason. None without SendGrid (the file outbox has no lists).

    Lists that cannot be read (after the sender's retries) leave the last copy as it
    was and the day's notices still go: a warning, and the reason (returned) in the
    artifact. Holding back every security notice because a list was unreadable would
    leave everyone unwarned; SendGrid still drops mail to the addresses it lists."""
    run = runtime()
    sender = make_sender(settings_with_secret(run.settings))
    if not isinstance(sender, SendGridSender):
        return None
    try:
        report = sync_suppressions(run.registry, sender, actor=actor)
    except SuppressionsUnreadable as error:
        get_run_logger().warning("SendGrid suppressions not synced: %s", error)
        return str(error)
    get_run_logger().info("SendGrid suppressions: %s", report.summary())
    return report


def suppressions_markdown(synced: SyncReport | str | None) -> str:
    """The artifact's part on the suppression sync: its counts, or why it failed."""
    if synced is None:
        return ""
    if isinstance(synced, str):
        return (
            "\n## SendGrid suppressions\n\n> **Warning: not synced**, the last copy was "
            f"used: {markdown_text(synced)}\n"
        )
    return "\n## SendGrid suppressions\n\n" + table(list(synced.summary().items())) + "\n"


@task(name="queue-due-emails", cache_policy=NO_CACHE, **IO_RETRIES)
def queue_task(day: date, actor: str) -> list[QueueOutcome]:
    run = runtime()
    return queue_due(run.registry, run.plan, day, actor=actor)


@task(name="send-outbox", cache_policy=NO_CACHE, **IO_RETRIES)
def send_task(concurrency: int, retry_failed: bool = False) -> DrainReport:
    logger = get_run_logger()
    run = runtime()
    # Only the sender sees the key: the runtime keeps the environment's settings.
    settings, plan = settings_with_secret(run.settings), run.plan
    sender = make_sender(
        settings,
        from_address=plan.notifications.from_address,
        from_name=plan.notifications.from_name,
    )
    logger.info("sending the outbox through %s", sender.name)

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            logger.info("%d of %d emails done", done, total)

    # The sender's retry warnings come from the drain's send threads.
    with library_logs_in_run_log():
        report = drain(
            run.registry,
            plan,
            sender,
            concurrency=concurrency,
            progress=progress,
            retry_failed=retry_failed,
        )
    if retry_failed:
        logger.info("%d failed emails queued again", report.requeued)
    return report


def notify_markdown(day: date, queued: list[QueueOutcome], report: DrainReport | None) -> str:
    parts = [f"# Emails {day}"]
    if queued:
        parts.append(
            "## Queued\n\n"
            + table(
                [(f"{o.occasion.step} ({o.occasion.email})", o.added) for o in queued],
                ("mailing", "new"),
            )
        )
    else:
        parts.append("Nothing new was due today.")
    if report is not None:
        rows = [("sender", report.sender), ("sent", report.sent), ("failed", report.failed)]
        rows += [(f"skipped: {why}", n) for why, n in sorted(report.skipped.items())]
        rows.append(("resent after an interrupted drain", report.resumed))
        rows.append(("retried after 5xx/429", report.retried))
        rows.append(("failed before, queued again (retry_failed)", report.requeued))
        parts.append("## Sent\n\n" + table(rows))
        if report.failures:
            parts.append(
                "## Failures\n\n"
                + table([(f"#{i}", why) for i, why in report.failures[:50]], ("outbox", "reason"))
            )
    return "\n\n".join(parts) + "\n"


@flow(name="notify", description="Queue today's emails from the plan, then send the outbox.")
@fail_on_user_error
@with_runtime
def notify(
    as_of: date | None = None, send: bool = True, concurrency: int = 8, retry_failed: bool = False
) -> dict:
    """Queue the emails due on ``as_of`` (default: today, UTC), then send the outbox.

    Ends Failed if any email failed, after publishing the artifact. ``retry_failed``:
    first queue again the emails that failed in earlier runs (once what failed them is
    fixed), to go through this run's sender.
    """
    day = day_or_today(as_of)
    snoozes = snooze_task(run_actor(runtime().settings))
    suppressions = sync_suppressions_task(run_actor(runtime().settings))
    queued = queue_task(day, run_actor(runtime().settings))
    report = send_task(concurrency, retry_failed) if send else None
    create_markdown_artifact(
        markdown=notify_markdown(day, queued, report)
        + snoozes_markdown(snoozes)
        + suppressions_markdown(suppressions),
        key=artifact_key("notify", day),
        description=f"Emails for {day}",
    )
    if report is not None and report.failed:
        # After the artifact, which lists each failure: the run must not look fine.
        raise EmailsFailed(report.failure_message())
    return {
        "queued": sum(o.added for o in queued),
        "sent": report.sent if report else 0,
        "failed": report.failed if report else 0,
    }
