"""Phase flows: ``phase-preview`` (who would change) and ``phase-enforce`` (apply it,
after a person approves the exact count).

``phase-enforce`` previews, publishes the preview artifact, records what it found (the
flow run input ``rollout-approval-request``, which ``rollout approvals`` lists), then
waits for an :class:`Approval`: the account count and the list's fingerprint the
preview showed typed back, and the approver's name (``rollout approve RUN --expect N
--expect-list F --as NAME``, or the Prefect UI's Resume form). A list other than its
preview's is refused; enforcement itself re-checks the count and the list against a
fresh preview, under the enforce lock, so a cohort that moved while the run waited is
refused, not applied.

Deployed, the run *suspends*: its process exits and the server keeps the run, so a
worker restart while it waits loses nothing; the approval reschedules it and it starts
again from the top in a new process. So everything before the wait must be safe to
run twice: the second pass finds the recorded request and skips the preview, and the
suspend, already fired, hands back the approval at once. Called in-process (no
deployment, nothing could reschedule it) it pauses in its own process instead.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run, suspend_flow_run
from prefect.input import RunInput, create_flow_run_input, read_flow_run_input
from prefect.runtime import deployment, flow_run
from prefect.states import Failed, State
from pydantic import Field

from flows.common import (
    IO_RETRIES,
    FlowName,
    cell,
    fail_on_user_error,
    key_for,
    run_actor,
    runtime,
    table,
    with_runtime,
)
from rollout.core.errors import GuardRefused
from rollout.core.fingerprints import same_list
from rollout.core.output import labelled_rows
from rollout.core.words import counted
from rollout.phases.approvals import REFUSED_STATE, REQUEST_INPUT_KEY, ApprovalRequest
from rollout.phases.enforce import (
    NOT_KNOWN,
    EnforceResult,
    enforce_phase,
    naming_changes,
    preview_phase,
)
from rollout.phases.previews import SavedPreview, preview_markdown, save_preview

# A day is long enough to reach a release manager; after it the run fails unapplied.
APPROVAL_TIMEOUT_SECONDS = 24 * 3600
# How often a run paused in-process looks for the approval (a suspended one does not).
APPROVAL_POLL_SECONDS = 10


class Approval(RunInput):
    """What the approver types back: the count and the list's fingerprint the preview
    showed (as `phase enforce --apply` takes them), and their name.

    The server checks a resume's input against this schema and refuses one that does
    not fit, leaving the run waiting. Never give it initial data
    (``with_initial_data(expect=0, ...)``): the subclass Prefect makes then keeps the
    types but drops these constraints, and a default makes the field optional."""

    expect: int = Field(ge=0)
    # The fingerprint of the preview's list (12 hex digits, as the form's description
    # and `rollout approvals` show it): the run refuses another list, even at the count.
    expect_list: str = Field(pattern=r"^\s*[0-9a-fA-F]{12}\s*$")
    # Refused when empty or too long for the audit ledger's actor ("<approver> via
    # <run>" must fit its 200 characters).
    approved_by: str = Field(min_length=1, max_length=80, pattern=r"^\S(.*\S)?$")
    # Over the phase's max_unreached_share, the count of accounts no warning reached,
    # typed back too (the preview lists them); optional: within the limit it is not asked.
    accept_unreached: int | None = Field(None, ge=0)


@task(name="preview-phase", cache_policy=NO_CACHE, **IO_RETRIES)
def preview_task(phase: str, actor: str) -> SavedPreview:
    run = runtime()
    settings, plan = run.settings, run.plan
    preview = preview_phase(run.registry, plan, plan.phase(phase))
    return save_preview(plan, preview, settings.reports_dir, actor=actor)


# Never retried: enforcement is exactly once anyway, but a retry after a guard's
# refusal (a count that moved, the lock held) would be wrong, and a person approved
# this one attempt.
@task(name="enforce-phase", cache_policy=NO_CACHE)
def enforce_task(
    phase: str,
    expect: int,
    actor: str,
    expect_tokens: int | None = None,
    accept_unreached: int | None = None,
    expect_list: str | None = None,
    previewed_at: datetime | None = None,
) -> EnforceResult:
    run = runtime()
    return enforce_phase(
        run.registry,
        run.plan,
        phase,
        expect=expect,
        expect_tokens=expect_tokens,
        accept_unreached=accept_unreached,
        actor=actor,
        expect_list=expect_list,
        previewed_at=previewed_at,
    )


def publish_preview(saved: SavedPreview) -> str:
    """The preview as a markdown artifact; returns its key."""
    key = key_for("phase-preview", saved.preview.phase)
    create_markdown_artifact(
        markdown=preview_markdown(saved),
        key=key,
        description=f"Who enforcing phase {cell(saved.preview.phase)} would change",
    )
    return key


@flow(name="phase-preview", description="Preview a phase: exactly who enforcing it would change.")
@fail_on_user_error
@with_runtime
def phase_preview(phase: FlowName) -> int:
    """The preview as an artifact and a CSV; changes no account. Returns the count."""
    saved = preview_task(phase, run_actor(runtime().settings))
    publish_preview(saved)
    return saved.preview.count


def enforce_markdown(result: EnforceResult, approval: Approval) -> str:
    # The phase and the run are the heading's and the sentence's.
    # A count not known (None) said so, not a blank cell.
    rows = [
        (k, NOT_KNOWN if v is None else v)
        for k, v in labelled_rows(result)
        if k not in ("phase", "run id")
    ]
    return (
        f"# Phase {cell(result.phase)}: enforced\n\n"
        f"Approved by {cell(approval.approved_by)} for {counted(approval.expect, 'account')}"
        f" (list `{cell(approval.expect_list.strip().lower())}`); "
        f"registry run `{result.run_id}`.\n\n{table(rows)}\n"
    )


def request_approval(phase: str, settings_actor: str) -> ApprovalRequest:
    """The preview the approver decides on: taken, published and recorded on the first
    pass; on a resumed pass, the one recorded then (the list the approver saw, not a
    second CSV and artifact)."""
    recorded = read_flow_run_input(REQUEST_INPUT_KEY)
    if recorded is not None:
        return ApprovalRequest.from_json(recorded)
    saved = preview_task(phase, settings_actor)
    request = ApprovalRequest.from_saved(saved, publish_preview(saved))
    create_flow_run_input(REQUEST_INPUT_KEY, request.to_json())
    return request


def approved_list(request: ApprovalRequest, typed: str) -> None:
    """GuardRefused when ``typed`` is not the fingerprint of the list this run previewed
    (a request recorded before fingerprints names none: the fresh preview's is checked)."""
    if request.fingerprint is None or same_list(request.fingerprint, typed):
        return
    raise GuardRefused(
        f"phase {request.phase}: the list approved ({typed.strip()}) is not the one this "
        f"run previewed (list {request.fingerprint}, {request.csv_path}): nothing was "
        "changed; check that list and start a new run, or approve the run whose preview "
        "you checked"
    )


def approval_description(request: ApprovalRequest, run_id: object) -> str:
    """What the approval form says: the preview's counts (the sessions as the rule they
    are: every live one when enforced), and what to type back."""
    return (
        f"Enforce phase **{cell(request.phase)}**: {request.accounts} accounts"
        + (
            # A rule, not a list: every live one when enforced (counted apart then).
            f", {request.sessions} web sessions signed out (live now; any signed in since too)"
            if request.sessions is not None
            else ""
        )
        + (f", {request.tokens} tokens revoked" if request.tokens is not None else "")
        + (
            f"; {request.unreached} of the accounts were never reached by a notice or "
            "reminder"
            + (
                ", over the plan's limit: type that count back too (accept_unreached)"
                if request.over_unreached_limit
                else ""
            )
            if request.unreached
            else ""
        )
        + ". Type back the account count (expect) and the list's fingerprint "
        + (f"(expect_list: {request.fingerprint})" if request.fingerprint else "(expect_list)")
        + f" to approve (list: {cell(request.csv_path)}), or run `rollout approve "
        f"{run_id} --expect {request.accounts} --expect-list "
        f"{request.fingerprint or 'F'} --as NAME`."
    )


def wait_for_approval(request: ApprovalRequest, timeout: int) -> Approval:
    """Suspend when deployed (the process exits; resuming reschedules the run), pause
    in-process otherwise. Either way the server checks the input against the schema."""
    form = Approval.with_initial_data(description=approval_description(request, flow_run.id))
    key = key_for("approve", request.phase)
    if deployment.id:
        return suspend_flow_run(wait_for_input=form, timeout=timeout, key=key)
    return pause_flow_run(
        wait_for_input=form, timeout=timeout, poll_interval=APPROVAL_POLL_SECONDS, key=key
    )


@flow(
    name="phase-enforce",
    description="Enforce a phase after a person approves the previewed count.",
)
@fail_on_user_error
@with_runtime
def phase_enforce(
    phase: FlowName,
    approval_timeout_seconds: Annotated[int, Field(ge=60)] = APPROVAL_TIMEOUT_SECONDS,
) -> dict | State:
    """Preview, wait for an :class:`Approval`, then enforce exactly the approved count.

    A guard's refusal (the count moved or was mistyped, the blast radius, the lock) ends
    the run Failed, named ``Refused``, its message the guard's one line."""
    logger = get_run_logger()
    settings = runtime().settings
    request = request_approval(phase, run_actor(settings))
    logger.info(
        "phase %s would change %d accounts (sessions to sign out: %s, tokens to revoke: %s); "
        "waiting for approval (type back the count %d and the list %s)",
        phase,
        request.accounts,
        "none" if request.sessions is None else request.sessions,
        "none" if request.tokens is None else request.tokens,
        request.accounts,
        request.fingerprint,
    )
    # Nothing of the registry held open while a person decides (a day, at most): the
    # enforce task opens it again.
    runtime().close()
    approval = wait_for_approval(request, approval_timeout_seconds)
    actor = f"{approval.approved_by} via {run_actor(settings)}"
    try:
        # The list approved is this run's preview's (not another run's, or an older
        # preview's); and the accounts and tokens enforced are those it listed: another
        # count under the lock refuses, and so does another list of the same size.
        approved_list(request, approval.expect_list)
        result = enforce_task(
            phase,
            approval.expect,
            actor,
            request.tokens,
            approval.accept_unreached,
            expect_list=request.fingerprint or approval.expect_list,
            # Its sessions signed in since this run's preview, counted apart.
            previewed_at=datetime.fromisoformat(request.previewed_at),
        )
    except GuardRefused as guard:
        # Who changed since this run's preview, when the list is not the one it listed.
        refused = naming_changes(guard, settings.reports_dir, request.fingerprint)
        logger.error("refused: %s", refused)
        # The refusal as the state's data: a deployed run's engine raises it again at
        # the end, and logs no traceback for it (flows.common), as for any user error.
        return Failed(name=REFUSED_STATE, message=str(refused), data=refused)
    create_markdown_artifact(
        markdown=enforce_markdown(result, approval),
        key=key_for("phase-enforce", phase),
        description=f"Phase {cell(phase)} enforcement",
    )
    return result.summary()
