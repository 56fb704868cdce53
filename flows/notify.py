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

A mailing whose last day has passed (a past ``as_of`` caught up late) is held back
unless ``late`` says to queue it anyway, and an email found past its last day as it is
sent (after an outage of the sender, or retried long after it failed) is skipped as
``too late``.

With SendGrid, each run first copies its suppression lists into the registry
(rollout.notify.suppressions), so the day's emails to bounced, blocked, invalid or
complaining addresses are skipped with the reason instead of dropped unseen.

With ``shards`` above 1 the sending fans out: that many ``notify-shard`` runs of the
``notify-shard`` deployment, which any worker of the pool picks up (on other machines),
drain the outbox together (rollout.notify.drain.drain_shard: rows claimed with a lease,
a dead shard's taken over when it runs out). This run holds the ``notify`` lock while
they work, waits for them, and reads what they did from the outbox, and what each had
taken over from it from that shard run's artifact (``read_shard_counts``). Cancelling it
cancels them (the server cancels a cancelled run's subflow runs; their workers stop
them, and each puts back what it held).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from datetime import date, timedelta
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.blocks.system import Secret
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.client.schemas.objects import TERMINAL_STATES, StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelled, Cancelling, State
from pydantic import SecretStr

from flows.common import (
    IO_RETRIES,
    AtLeastOne,
    Concurrency,
    FlowDay,
    NotNegativeSeconds,
    Seconds,
    artifact_key,
    day_or_today,
    fail_on_user_error,
    library_logs_in_run_log,
    run_actor,
    runtime,
    table,
    with_runtime,
)
from rollout.core.config import Settings, api_key
from rollout.core.controls import quoted
from rollout.core.errors import RolloutError
from rollout.core.output import markdown_text
from rollout.notify.drain import (
    DEFAULT_LEASE,
    DrainReport,
    EmailsFailed,
    ShardOrphaned,
    begin_shards,
    drain,
    drain_shard,
    outbox_drained,
    shards_report,
)
from rollout.notify.message import Sender
from rollout.notify.queue import QueueOutcome, queue_due
from rollout.notify.senders import SECRET_BLOCK, SECRET_BLOCK_SETTING, SendGridSender, make_sender
from rollout.notify.suppressions import SuppressionsUnreadable, SyncReport, sync_suppressions
from rollout.phases.snoozes import LandedSnoozes, grant_landed


def settings_with_secret(settings: Settings, environ: Mapping[str, str] = os.environ) -> Settings:
    """The run's settings, with the SendGrid key from a Secret block when the
    environment has none (``settings`` are the environment's: the runtime's)."""
    if settings.sendgrid_api_key is not None:
        return settings
    # Empty is unset, as an empty SENDGRID_API_KEY is no key (and as doctor reads it).
    name = environ.get(SECRET_BLOCK_SETTING) or SECRET_BLOCK
    try:
        stored = str(Secret.load(name).get())
    except ValueError:  # no such block: the file outbox
        return settings
    # As load_settings takes SENDGRID_API_KEY: an empty value is no key, the whitespace
    # around one (a file's last line feed) is dropped.
    try:
        key = api_key(stored)
    except ValueError as error:
        raise RolloutError(f"the Secret block {quoted(name)} {error}") from None
    return settings.model_copy(update={"sendgrid_api_key": SecretStr(key) if key else None})


def run_sender() -> Sender:
    """The sender the run's emails go through, from the plan's From. Only the sender
    sees the key: the runtime keeps the environment's settings."""
    run = runtime()
    plan = run.plan
    return make_sender(
        settings_with_secret(run.settings),
        from_address=plan.notifications.from_address,
        from_name=plan.notifications.from_name,
    )


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
        f"{len(done.refused)} refused, {done.answered_before} refused and answered "
        f"before, {len(done.rejected)} files refused whole."
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
    # Keyed for scripts (spam_reports); read by people here: in words.
    rows = [(key.replace("_", " "), n) for key, n in synced.summary().items()]
    return "\n## SendGrid suppressions\n\n" + table(rows) + "\n"


@task(name="queue-due-emails", cache_policy=NO_CACHE, **IO_RETRIES)
def queue_task(day: date, actor: str, late: bool = False) -> list[QueueOutcome]:
    run = runtime()
    return queue_due(run.registry, run.plan, day, actor=actor, late=late)


@task(name="send-outbox", cache_policy=NO_CACHE, **IO_RETRIES)
def send_task(concurrency: int, retry_failed: bool = False) -> DrainReport:
    logger = get_run_logger()
    run = runtime()
    plan, sender = run.plan, run_sender()
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


SHARD_DEPLOYMENT = "notify-shard/notify-shard"
# How often the fanned-out run looks at its shards and at the outbox.
SHARD_POLL_SECONDS = 2.0
# After the outbox is drained, how long a shard run still not ended is waited for.
STRAGGLER_GRACE_SECONDS = 30.0


@flow(
    name="notify-shard",
    description="One of a notify run's drainers: send the outbox with the others.",
)
@fail_on_user_error
@with_runtime
def notify_shard(
    concurrency: Concurrency = 8, lease_seconds: Seconds = int(DEFAULT_LEASE.total_seconds())
) -> dict | State:
    """Claim, send and record queued emails beside the run's other shards until none
    is queued or held; started by a ``notify`` run with ``shards`` (never on its own:
    that run holds the lock that keeps a plain drain away meanwhile, and a shard whose
    run is gone calls itself off)."""
    logger = get_run_logger()
    run = runtime()
    plan, sender = run.plan, run_sender()
    with library_logs_in_run_log():
        try:
            report = drain_shard(
                run.registry,
                plan,
                sender,
                concurrency=concurrency,
                lease=timedelta(seconds=lease_seconds),
            )
        except ShardOrphaned as gone:
            # Its run was cancelled, or its machine died: the shard is called off with
            # it (Cancelled, as when the run's cancel reaches it first), not Failed. The
            # error is the state's data, so that a deployed run's engine, raising it
            # again at the end, logs no "unexpected exception" (flows.common).
            logger.warning("%s", gone)
            return Cancelled(message=str(gone), data=gone)
    done = {
        "sent": report.sent,
        "failed": report.failed,
        "skipped": sum(report.skipped.values()),
        "overtaken": report.overtaken,
    }
    logger.info(
        "this shard: %(sent)d sent, %(failed)d failed, %(skipped)d skipped, %(overtaken)d "
        "taken over by another shard once this one outlived its lease",
        done,
    )
    # Where its notify run reads them (read_shard_counts): the return value is not.
    create_table_artifact(
        table=[done],
        key=SHARD_COUNTS_KEY,
        description="What this notify-shard run sent, failed, skipped and had taken over",
    )
    return done


# Each notify-shard run's counts, as a table artifact of one row: the one place its
# notify run, on another machine, can read them through the Prefect API. A flow run's
# return value is not: Prefect persists none by default (results.persist_by_default),
# and a persisted one lies in the result storage of the shard's own machine.
SHARD_COUNTS_KEY = "notify-shard-counts"


def read_shard_counts(ids: list[UUID]) -> dict[UUID, dict[str, int]]:
    """The counts each of the shard runs ``ids`` left (its SHARD_COUNTS_KEY artifact),
    by run; a run that did not complete (killed, cancelled, failed) left none."""
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=ids),
                key=ArtifactFilterKey(any_=[SHARD_COUNTS_KEY]),
            )
        )
    counts = {}
    for artifact in artifacts:
        data = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
        if artifact.flow_run_id is not None and isinstance(data, list) and data:
            counts[artifact.flow_run_id] = {k: int(v) for k, v in data[0].items()}
    return counts


def _wait_for_shards(
    ids: list[UUID], grace: float, check: Callable[[], None] | None = None
) -> dict[UUID, StateType]:
    """Wait until every shard run ended. Once the outbox is drained (nothing queued or
    held) a live shard ends within a poll, and one not started yet finds nothing to do:
    a shard still not ended ``grace`` seconds later never will (its machine died; its
    rows were taken over), and its run is set Cancelled. Returns each run's final state.
    ``check`` is called each poll (the notify lock still this run's: RunLockLost)."""
    registry = runtime().registry
    drained_at: float | None = None
    with get_client(sync_client=True) as client:
        while True:
            if check is not None:
                check()
            states = {i: client.read_flow_run(i).state_type for i in ids}
            if all(t in TERMINAL_STATES for t in states.values()):
                return states
            if drained_at is None and outbox_drained(registry):
                drained_at = time.monotonic()
            if drained_at is not None and time.monotonic() - drained_at > grace:
                for i, t in states.items():
                    if t not in TERMINAL_STATES:
                        message = "its machine stopped answering; the outbox was drained"
                        client.set_flow_run_state(i, Cancelled(message=message), force=True)
                        states[i] = StateType.CANCELLED
                return states
            time.sleep(SHARD_POLL_SECONDS)


def _cancel_shards(ids: list[UUID]) -> None:
    """Ask each shard run not ended to stop (Cancelling: its worker stops its process,
    which puts back what it held)."""
    with get_client(sync_client=True) as client:
        for i in ids:
            if client.read_flow_run(i).state_type not in TERMINAL_STATES:
                client.set_flow_run_state(i, Cancelling(message="its notify run was stopped"))


def send_in_shards(
    shards: int,
    concurrency: int,
    lease_seconds: int,
    retry_failed: bool,
    grace: float = STRAGGLER_GRACE_SECONDS,
) -> tuple[DrainReport, int]:
    """The outbox drained by ``shards`` notify-shard runs, any worker's, under this
    run's ``notify`` lock; a shard run not ended ``grace`` seconds after the outbox
    drained is set Cancelled (``_wait_for_shards``). Returns what they did together
    (its ``overtaken`` summed over the shard runs that reported), and how many did."""
    logger = get_run_logger()
    run = runtime()
    sender = run_sender()
    with run.registry.lock("notify") as held:
        begun = begin_shards(run.registry, sender.name, retry_failed=retry_failed)
        children = [
            run_deployment(
                SHARD_DEPLOYMENT,
                parameters={"concurrency": concurrency, "lease_seconds": lease_seconds},
                as_subflow=True,
                timeout=0,  # started, not waited for here: all at once
            )
            for _ in range(shards)
        ]
        logger.info("sending through %s in %d shards: %s", sender.name, shards,
                    ", ".join(c.name for c in children))  # fmt: skip
        ids = [c.id for c in children]
        try:
            # Its lock lost (its PostgreSQL session ended): the shards stop by
            # themselves (their run is gone), and are cancelled here as well.
            states = _wait_for_shards(ids, grace, held.check)
        except BaseException:
            # This run is being stopped (cancelled: its worker's SIGTERM), or its lock
            # is lost: so are its shards, now, rather than when the server's cleanup
            # next looks.
            _cancel_shards(ids)
            raise
        report = shards_report(run.registry, begun)
        drained = outbox_drained(run.registry)
    # What the shards had taken over is theirs to tell (the outbox does not say).
    counts = read_shard_counts(ids)
    report.overtaken = sum(c.get("overtaken", 0) for c in counts.values())
    unfinished = [str(i) for i, t in states.items() if t != StateType.COMPLETED]
    if unfinished:
        logger.warning("shards that did not complete: %s", ", ".join(unfinished))
    if not drained:
        raise RolloutError(
            f"the outbox was not drained: {len(unfinished)} of {shards} shards did not "
            "complete; the next run sends what is left"
        )
    return report, len(counts)


# The artifact's row of the claimed emails another sender took over (notify send's
# ``overtaken``): a sender that outlived its lease (a stall) left them to the taker.
OVERTAKEN_ROW = "taken over by another sender once this one outlived its lease"


def notify_markdown(
    day: date,
    queued: list[QueueOutcome],
    report: DrainReport | None,
    *,
    shards: int = 1,
    shards_reported: int | None = None,
) -> str:
    """The notify run's artifact. ``shards``: how many notify-shard runs sent, whose
    report (``shards_report``) is read from the outbox, and what they had taken over
    from them summed over the ``shards_reported`` that said (``read_shard_counts``)."""
    parts = [f"# Emails {day}"]
    if queued:
        parts.append(
            "## Queued\n\n"
            + table(
                [
                    (f"{o.occasion.step} ({o.occasion.email})", o.added, o.skipped, o.held_back)
                    for o in queued
                ],
                ("mailing", "new", "of which skipped", "held back: past its last day"),
            )
        )
        if any(o.held_back for o in queued):
            parts.append(
                "> Held back: mailings (or accounts, by their own deadline) whose last day "
                "had passed: sent now, they would announce dates already gone. "
                "A run with `late: true` (or `rollout notify queue --as-of D --late --apply`) "
                "queues them anyway."
            )
    else:
        parts.append("Nothing new was due today.")
    if report is not None:
        rows = [("sender", report.sender), ("sent", report.sent), ("failed", report.failed)]
        rows += [(f"skipped: {why}", n) for why, n in sorted(report.skipped.items())]
        rows.append(("resent after an interrupted drain (maybe twice)", report.resumed))
        rows.append(("retried after 5xx/429", report.retried))
        rows.append(("failed before, queued again (retry_failed)", report.requeued))
        reported = shards if shards_reported is None else shards_reported
        if shards > 1 and reported < shards:
            # A shard run killed or cancelled tells nothing of what it had taken over.
            rows.append(
                (
                    OVERTAKEN_ROW,
                    f"{report.overtaken} (told by {reported} of the {shards} shard runs: "
                    "one that did not complete tells none)",
                )
            )
        else:
            rows.append((OVERTAKEN_ROW, report.overtaken))
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
    as_of: FlowDay | None = None,
    send: bool = True,
    concurrency: Concurrency = 8,
    retry_failed: bool = False,
    shards: AtLeastOne = 1,
    lease_seconds: Seconds = int(DEFAULT_LEASE.total_seconds()),
    straggler_grace_seconds: NotNegativeSeconds = STRAGGLER_GRACE_SECONDS,
    late: bool = False,
) -> dict:
    """Queue the emails due on ``as_of`` (default: today, UTC), then send the outbox,
    here or (``shards`` > 1) in that many notify-shard runs on the pool's workers,
    ``concurrency`` sends at a time each; a shard's rows are its for ``lease_seconds``
    at a time (lengthened to the longest one attempt may take, and a margin, if
    shorter: rollout.notify.drain.lease_for), after which, if it died, another takes
    them over.
    A shard run not ended ``straggler_grace_seconds`` after the outbox drained never
    will (its machine died) and is set Cancelled.

    Ends Failed if any email failed, after publishing the artifact. ``retry_failed``:
    first queue again the emails that failed in earlier runs (once what failed them is
    fixed), to go through this run's sender.

    A mailing of ``as_of`` whose last day has passed by today (a past day caught up
    late) is held back, and the artifact says so: sent now it would announce a date
    already gone. ``late`` queues it all the same, to be sent however late. Whatever is
    queued and found past its last day when sent is skipped as ``too late``.
    """
    day = day_or_today(as_of)
    snoozes = snooze_task(run_actor(runtime().settings))
    suppressions = sync_suppressions_task(run_actor(runtime().settings))
    queued = queue_task(day, run_actor(runtime().settings), late)
    reported = None
    if not send:
        report = None
    elif shards > 1:
        report, reported = send_in_shards(
            shards, concurrency, lease_seconds, retry_failed, straggler_grace_seconds
        )
    else:
        report = send_task(concurrency, retry_failed)
    create_markdown_artifact(
        markdown=notify_markdown(
            day, queued, report, shards=shards if send else 1, shards_reported=reported
        )
        + snoozes_markdown(snoozes)
        + suppressions_markdown(suppressions),
        key=artifact_key("notify", day),
        description=f"Emails for {day}",
    )
    if report is not None and report.failed:
        # After the artifact, which lists each failure: the run must not look fine.
        raise EmailsFailed(report.failure_message())
    return {
        # Queued to be sent: the rows recorded as skipped (with why, in the artifact)
        # send nothing.
        "queued": sum(o.added - o.skipped for o in queued),
        "sent": report.sent if report else 0,
        "failed": report.failed if report else 0,
    }
