"""Benchmark: enforce a phase at npm scale, set-based versus a naive per-row ORM loop.

Usage:
    python bench/bench_enforce.py --registry bench/out/npm/registry.db \\
        [--postgres postgresql://... (an empty database: the npm sample is generated in)]
    python bench/bench_enforce.py --registry DIR/registry.db --naive-accounts 20
        # a quick check on a small sample (bench/bench_sample.py --scale tiny --out DIR)

The phase's cohort is every account with a live web session (about 1.1M sessions at
npm scale; 87.5% of those accounts have no 2FA), so the run flags well over 100k
accounts, revokes about 1M sessions and writes an audit row for each, in batches.
The naive loop (load each account, check its factors, flag it, revoke its sessions
one by one, one audit row each, commit per account) runs on the first accounts only
and its per-account rate gives the ratio. Targets (issue 4): at most 30 s each on
SQLite and PostgreSQL.

Checked after each backend's run (not timed), exiting non-zero with the reasons
otherwise: the previewed count is the cohort's accounts without 2FA; every one of them
is flagged, has the phase's requirement row and no live web session left; the
registry holds exactly as many flagged accounts, phase-revoked sessions, audit rows
(``tfa_required`` and ``revoke_session``) and enforcement emails as the result reports
(plus what the naive loop did, counted on its own), none skipped. When both backends
ran on the same sample (their ``registry_marks`` notes agree), their counts must agree.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from registry_copy import sample_into_postgres
from sqlalchemy import select, text

from rollout.core.plan import CohortRule, Phase, Plan, load_plan
from rollout.notify.emails import ENFORCEMENT_EMAIL
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.ledger import utc_now
from rollout.registry.migrate import upgrade
from rollout.registry.models import (
    Account,
    Action,
    PhaseRequirement,
    RegistryMark,
    TfaFactor,
    WebSession,
)

NAIVE_ACCOUNTS = 2_000


def bench_plan() -> Plan:
    plan = load_plan(Path(__file__).resolve().parents[1] / "plans" / "npm-2022.yaml")
    phase = Phase(
        name="bench",
        cohort="bench",
        cohort_as_of=date(2022, 1, 3),
        notice_on=date(2022, 1, 4),
        enforce_on=date(2022, 2, 1),
        batch_size=10_000,
        max_accounts=2_000_000,
    )
    return plan.model_copy(
        update={
            "cohorts": {**plan.cohorts, "bench": CohortRule(top_by_dependents=1)},
            "phases": [*plan.phases, phase],
        }
    )


def make_cohort(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(text("delete from cohort_memberships where cohort = 'bench'"))
        connection.execute(
            text(
                "insert into cohort_memberships (cohort, account_id, packages, first_qualified_on, "
                "last_qualified_on) select 'bench', account_id, '[]', '2022-01-03', '2022-01-03' "
                "from (select distinct account_id from web_sessions where revoked_at is null) s"
            )
        )
    engine.dispose()


def naive(url: str, account_ids: list[int]) -> tuple[float, int, int]:
    """What a first version would write: the ORM, row by row, a commit per account.
    Returns its seconds, the accounts it flagged and the sessions it revoked."""
    from sqlalchemy.orm import Session

    engine = make_engine(url)
    flagged = revoked = 0
    started = time.perf_counter()
    with Session(engine) as session:
        for account_id in account_ids:
            account = session.get(Account, account_id)
            factors = session.scalars(
                select(TfaFactor).where(
                    TfaFactor.account_id == account_id, TfaFactor.removed_at.is_(None)
                )
            ).all()
            if account is None or factors or account.tfa_required_at is not None:
                continue
            now = utc_now()
            account.tfa_required_at = now
            flagged += 1
            session.add(PhaseRequirement(account_id=account_id, phase="bench", required_at=now))
            session.add(
                Action(
                    effect_key=f"naive-flag:{account_id}",
                    action="tfa_required",
                    account_id=account_id,
                    phase="bench",
                    reason="naive",
                    actor="bench",
                    created_at=now,
                    details={},
                )
            )
            for web in session.scalars(
                select(WebSession).where(
                    WebSession.account_id == account_id, WebSession.revoked_at.is_(None)
                )
            ):
                web.revoked_at, web.revoked_reason = now, "naive"
                revoked += 1
                session.add(
                    Action(
                        effect_key=f"naive-revoke:{web.id}",
                        action="revoke_session",
                        account_id=account_id,
                        reason="naive",
                        actor="bench",
                        created_at=now,
                        details={},
                    )
                )
            session.commit()
    seconds = time.perf_counter() - started
    engine.dispose()
    return seconds, flagged, revoked


CHECKS = {
    "targets": "select count(*) from targets",
    "targets not flagged": "select count(*) from targets join accounts a on a.id = "
    "targets.account_id where a.tfa_required_at is null",
    "targets without the requirement": "select count(*) from targets where not exists "
    "(select 1 from phase_requirements r where r.account_id = targets.account_id "
    "and r.phase = 'bench')",
    "live sessions of targets": "select count(*) from web_sessions s join targets "
    "on targets.account_id = s.account_id where s.revoked_at is null",
    "flagged accounts": "select count(*) from accounts where tfa_required_at is not null",
    "requirements": "select count(*) from phase_requirements where phase = 'bench'",
    "sessions revoked by the phase": "select count(*) from web_sessions "
    "where revoked_reason like 'phase bench:%'",
    "sessions revoked by the naive loop": "select count(*) from web_sessions "
    "where revoked_reason = 'naive'",
    "tfa_required audit rows": "select count(*) from actions where action = 'tfa_required' "
    "and phase = 'bench' and actor = 'bench' and reason like 'phase bench:%'",
    "revoke_session audit rows": "select count(*) from actions where action = "
    "'revoke_session' and phase = 'bench' and actor = 'bench' and reason like 'phase bench:%'",
    "enforcement emails": "select count(*) from notifications where phase = 'bench' "
    f"and email = '{ENFORCEMENT_EMAIL}'",
}
TARGETS = (
    "with targets as (select m.account_id from cohort_memberships m where m.cohort = 'bench' "
    "and m.left_on is null and not exists (select 1 from tfa_factors f "
    "where f.account_id = m.account_id and f.removed_at is null)) "
)


def verify(
    url: str, plan: Plan, expect: int, naive_flagged: int, naive_revoked: int, result: Any
) -> dict[str, int]:
    """The registry after the run against the preview and the result; SystemExit naming
    every difference. Returns the counts."""
    if plan.exempt_usernames:
        raise SystemExit("FAIL: the checks assume a plan without exemptions")
    engine = make_engine(url)
    with engine.connect() as connection:
        found = {
            name: connection.execute(text(TARGETS + query)).scalar_one()
            for name, query in CHECKS.items()
        }
    engine.dispose()
    wanted = {
        "targets": expect,
        "targets not flagged": 0,
        "targets without the requirement": 0,
        "live sessions of targets": 0,
        "flagged accounts": result.accounts_flagged + naive_flagged,
        "requirements": expect,
        "sessions revoked by the phase": result.sessions_revoked,
        "sessions revoked by the naive loop": naive_revoked,
        "tfa_required audit rows": result.accounts_required,
        "revoke_session audit rows": result.sessions_revoked,
        "enforcement emails": result.emails_queued,
    }
    reported = {
        "accounts required": (result.accounts_required, expect - naive_flagged),
        "accounts flagged": (result.accounts_flagged, expect - naive_flagged),
        "emails queued": (result.emails_queued, expect),
        "skipped as now compliant": (result.skipped_now_compliant, 0),
        "skipped as deleted": (result.skipped_deleted, 0),
    }
    problems = [
        f"{name}: the registry holds {found[name]:,}, expected {value:,}"
        for name, value in wanted.items()
        if found[name] != value
    ] + [
        f"{name}: the result reports {got:,}, expected {value:,}"
        for name, (got, value) in reported.items()
        if got != value
    ]
    if problems:
        raise SystemExit("FAIL: " + "\n  ".join(problems))
    return found


def sample_note(url: str) -> str | None:
    engine = make_engine(url)
    with engine.connect() as connection:
        note = connection.execute(
            select(RegistryMark.note).where(RegistryMark.kind == "sample")
        ).scalar_one_or_none()
    engine.dispose()
    return note


def run(label: str, url: str, plan: Plan, naive_accounts: int = NAIVE_ACCOUNTS) -> dict[str, int]:
    make_cohort(url)
    with Registry(url) as registry:
        _ = registry.engine  # made before the clock starts, as the bare engine was
        started = time.perf_counter()
        preview = enforce.preview_phase(registry, plan, plan.phase("bench"))
        preview_seconds = time.perf_counter() - started
    # The naive loop runs first, on the last accounts; the set-based run then does the
    # rest (the naive slice is already flagged, so it changes nothing there).
    slice_ids = [t.account_id for t in preview.targets[len(preview.targets) - naive_accounts :]]
    naive_seconds, naive_flagged, naive_revoked = naive(url, slice_ids)
    with Registry(url) as registry:
        expect = enforce.preview_phase(registry, plan, plan.phase("bench")).count
    # A fresh Registry: the timed run opens the registry itself, as a command's first use.
    with Registry(url) as registry:
        started = time.perf_counter()
        result = enforce.enforce_phase(registry, plan, "bench", expect=expect, actor="bench")
        seconds = time.perf_counter() - started
    found = verify(url, plan, expect, naive_flagged, naive_revoked, result)
    audit_rows = found["tfa_required audit rows"] + found["revoke_session audit rows"]
    per_account_set = seconds / max(result.accounts_flagged, 1)
    per_account_naive = naive_seconds / max(len(slice_ids), 1)
    print(
        f"| {label} | {result.accounts_flagged:,} | {result.sessions_revoked:,} | "
        f"{audit_rows:,} | {result.emails_queued:,} | "
        f"{result.batches} | {seconds:.1f} | {preview_seconds:.1f} | "
        f"{per_account_naive * 1e3:.2f} ms/account ({len(slice_ids):,} accounts in "
        f"{naive_seconds:.1f} s; {per_account_naive * result.accounts_flagged:.0f} s "
        f"extrapolated) | {per_account_naive / per_account_set:.0f}x |",
        flush=True,
    )
    return {
        "previewed": expect,
        "flagged": result.accounts_flagged,
        "sessions revoked": result.sessions_revoked,
        "audit rows": audit_rows,
        "emails queued": result.emails_queued,
        "naive flagged": naive_flagged,
        "naive revoked": naive_revoked,
    }


def undo_earlier_run(url: str) -> None:
    """Back to the sample as generated: the sample flags no account and revokes
    sessions only for its own reasons; the ledger tables start empty."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text("truncate actions, notifications, cohort_memberships, phase_requirements")
        )
        connection.execute(text("delete from plan_runs"))
        connection.execute(
            text(
                "update web_sessions set revoked_at = null, revoked_reason = null "
                "where revoked_reason = 'naive' or revoked_reason like 'phase bench:%'"
            )
        )
        connection.execute(
            text("update accounts set tfa_required_at = null where tfa_required_at is not null")
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("accounts", "web_sessions", "actions", "notifications", "phase_requirements"):
            connection.execute(text(f"vacuum analyze {table}"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--postgres", help="URL of an empty PostgreSQL database")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="the PostgreSQL database already holds the npm sample from an earlier run: "
        "undo that run's changes instead of generating the sample again (~10 min)",
    )
    parser.add_argument(
        "--scale",
        default="npm",
        help="the sample generated into PostgreSQL (seed 1; default npm); a smaller one "
        "with a --registry of the same scale checks the bench quickly",
    )
    parser.add_argument(
        "--naive-accounts",
        type=int,
        default=NAIVE_ACCOUNTS,
        help=f"accounts the naive loop takes before the set-based run (default "
        f"{NAIVE_ACCOUNTS:,}); fewer than a small sample's targets, or it takes them all",
    )
    args = parser.parse_args()
    plan = bench_plan()
    print(
        "| backend | accounts flagged | sessions revoked | audit rows | emails queued "
        "| batches | enforce s | preview s | naive ORM loop | ratio |\n"
        "|---|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    counts: dict[str, dict[str, int]] = {}
    notes: dict[str, str | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-enforce-") as scratch:
        copy = Path(scratch) / "registry.db"
        shutil.copy(args.registry, copy)
        engine = make_engine(f"sqlite:///{copy}")
        upgrade(engine)  # a registry made by an older rollout
        engine.dispose()
        notes["SQLite"] = sample_note(f"sqlite:///{copy}")
        counts["SQLite"] = run("SQLite", f"sqlite:///{copy}", plan, args.naive_accounts)
    if args.postgres and args.reuse:
        undo_earlier_run(args.postgres)
        notes["PostgreSQL"] = sample_note(args.postgres)
        counts["PostgreSQL"] = run("PostgreSQL", args.postgres, plan, args.naive_accounts)
    elif args.postgres:
        sample_into_postgres(args.postgres, args.scale, purpose="enforce")
        notes["PostgreSQL"] = sample_note(args.postgres)
        counts["PostgreSQL"] = run("PostgreSQL", args.postgres, plan, args.naive_accounts)
    if len(counts) == 2:
        if notes["SQLite"] != notes["PostgreSQL"]:
            print(f"backends not compared: different samples {notes}")
        elif counts["SQLite"] != counts["PostgreSQL"]:
            raise SystemExit(
                f"FAIL: the same sample ({notes['SQLite']}) gave different counts: {counts}"
            )
        else:
            print(f"both backends agree: {counts['SQLite']}")


if __name__ == "__main__":
    main()
