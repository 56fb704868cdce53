"""Phase flows: ``phase-preview`` (who would change) and ``phase-enforce`` (apply it,
after a person approves the exact count).

``phase-enforce`` previews, publishes the preview artifact, then pauses until a release
manager resumes it with an :class:`Approval` (in the Prefect UI, or
``resume_flow_run(id, run_input={...})``) typing back the account count the preview
showed. Enforcement itself re-checks that count against a fresh preview, under the
enforce lock, so a cohort that moved while the run waited is refused, not applied.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from flows.common import cell, key_for, run_actor, table
from rollout.config import load_settings
from rollout.enforce import EnforceResult, enforce_phase, preview_phase
from rollout.plan import load_plan
from rollout.previews import SavedPreview, preview_markdown, save_preview
from rollout.registry.migrate import open_registry

# A day is long enough to reach a release manager; after it the run fails unapplied.
APPROVAL_TIMEOUT_SECONDS = 24 * 3600
# How often the paused run looks for the approval.
APPROVAL_POLL_SECONDS = 10


class Approval(RunInput):
    """What the approver types back: the count the preview showed, and their name."""

    expect: int = Field(ge=0)
    # Refused by the form itself when empty or too long for the audit ledger's actor
    # ("<approver> via <run>" must fit its 200 characters).
    approved_by: str = Field(min_length=1, max_length=80, pattern=r"^\S(.*\S)?$")


@task(name="preview-phase", cache_policy=NO_CACHE)
def preview_task(phase: str, actor: str) -> SavedPreview:
    settings = load_settings()
    plan = load_plan(settings.plan_path)
    with open_registry(settings.registry_url) as engine:
        preview = preview_phase(engine, plan, plan.phase(phase))
    return save_preview(plan, preview, settings.reports_dir, actor=actor)


@task(name="enforce-phase", cache_policy=NO_CACHE)
def enforce_task(phase: str, expect: int, actor: str) -> EnforceResult:
    settings = load_settings()
    return enforce_phase(
        settings.registry_url, load_plan(settings.plan_path), phase, expect=expect, actor=actor
    )


def publish_preview(saved: SavedPreview) -> None:
    create_markdown_artifact(
        markdown=preview_markdown(saved),
        key=key_for("phase-preview", saved.preview.phase),
        description=f"Who enforcing phase {cell(saved.preview.phase)} would change",
    )


@flow(name="phase-preview", description="Preview a phase: exactly who enforcing it would change.")
def phase_preview(phase: str) -> int:
    """The preview as an artifact and a CSV; changes no account. Returns the count."""
    saved = preview_task(phase, run_actor(load_settings()))
    publish_preview(saved)
    return saved.preview.count


def enforce_markdown(result: EnforceResult, approval: Approval) -> str:
    rows: list[tuple[str, Any]] = [
        ("accounts the phase now requires 2FA of", result.accounts_required),
        ("of them, not required by another phase before", result.accounts_flagged),
        ("web sessions revoked", result.sessions_revoked),
        ("enforcement emails queued", result.emails_queued),
        ("skipped: enrolled since the preview", result.skipped_now_compliant),
        ("batches", result.batches),
    ]
    return (
        f"# Phase {cell(result.phase)}: enforced\n\n"
        f"Approved by {cell(approval.approved_by)} for {approval.expect} accounts; "
        f"registry run `{result.run_id}`.\n\n{table(rows)}\n"
    )


@flow(
    name="phase-enforce",
    description="Enforce a phase after a person approves the previewed count.",
)
def phase_enforce(
    phase: str,
    approval_timeout_seconds: Annotated[int, Field(ge=60)] = APPROVAL_TIMEOUT_SECONDS,
) -> dict:
    """Preview, pause for an :class:`Approval`, then enforce exactly the approved count."""
    logger = get_run_logger()
    settings = load_settings()
    saved = preview_task(phase, run_actor(settings))
    publish_preview(saved)
    count = saved.preview.count
    logger.info(
        "phase %s would require 2FA of %d accounts and revoke %d web sessions; "
        "waiting for approval (type back the count %d)",
        phase,
        count,
        saved.preview.sessions,
        count,
    )
    approval = pause_flow_run(
        wait_for_input=Approval.with_initial_data(
            description=(
                f"Enforce phase **{cell(phase)}**: {count} accounts, {saved.preview.sessions} "
                f"web sessions. Type back the account count to approve (list: "
                f"{cell(saved.csv_path)})."
            ),
            expect=0,
            approved_by="",
        ),
        timeout=approval_timeout_seconds,
        poll_interval=APPROVAL_POLL_SECONDS,
        key=key_for("approve", phase),
    )
    if not approval.approved_by.strip():
        raise ValueError("an approval must name who approved it")
    actor = f"{approval.approved_by.strip()} via {run_actor(settings)}"
    result = enforce_task(phase, approval.expect, actor)
    create_markdown_artifact(
        markdown=enforce_markdown(result, approval),
        key=key_for("phase-enforce", phase),
        description=f"Phase {cell(phase)} enforcement",
    )
    return result.summary()
