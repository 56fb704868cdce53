"""Benchmark: revoke the tokens of a phase at npm scale, against a hand-written SQL peer.

Usage:
    python bench/bench_tokens.py --registry bench/out/npm/registry.db \\
        [--postgres postgresql://... (an empty database: the npm sample is generated in)]

The phase is npm's of 2025-12-09: every maintainer, no classic token. Its cohort is
every account holding a token (919,865 tokens at npm scale, all considered), so
enforcement revokes every live classic token there, writes one `revoke_token` audit row
each and queues one enforcement email per account, in batches of 10,000 accounts.
Target (issue 15): at most 30 s on SQLite and on PostgreSQL.

The peer is what an expert would write by hand for the same change: one transaction of
four set-based statements (the offending tokens into a temp table, one UPDATE, one
INSERT ... SELECT of the audit rows, one of the emails), without the preview, the
batches, the guards or the re-check of each batch. It runs first and is rolled back, so
both run on the same registry; its revoked token ids must equal enforcement's.

Checked after each backend's run (not timed), exiting non-zero with the reasons
otherwise: the previewed tokens are exactly the cohort's live classic tokens; each was
revoked by the phase, with one audit row; no other token was revoked by it; the result's
counts match the registry's; the peer found the same tokens.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from registry_copy import sample_into_postgres
from sqlalchemy import text

from rollout.core.plan import CohortRule, Phase, Plan, load_plan
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.ledger import utc_now
from rollout.registry.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]


def bench_plan() -> Plan:
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    phase = Phase.model_validate(
        {
            "name": "bench",
            "cohort": "bench",
            "cohort_as_of": date(2025, 9, 21),
            "notice_on": date(2025, 9, 22),
            "enforce_on": date(2025, 12, 9),
            "batch_size": 10_000,
            "max_accounts": 3_000_000,
            "requires": {"two_factor": "none", "no_classic_tokens": True},
            "effects": ["revoke_tokens"],
            "max_tokens": 5_000_000,
        }
    )
    return plan.model_copy(
        update={
            "cohorts": {**plan.cohorts, "bench": CohortRule(every_maintainer=True)},
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
                "last_qualified_on) select 'bench', account_id, '[]', '2025-09-21', '2025-09-21' "
                "from (select distinct account_id from tokens) s"
            )
        )
    engine.dispose()


# The peer: what an expert writes by hand for the same change, in one transaction.
PEER = [
    "create temp table peer_tokens as select t.id, t.account_id from tokens t "
    "join cohort_memberships m on m.account_id = t.account_id "
    "where m.cohort = 'bench' and m.left_on is null and t.revoked_at is null "
    "and (t.expires_at is null or t.expires_at > :now) "
    "and t.kind in ('automation', 'publish', 'read_only')",
    "update tokens set revoked_at = :now, revoked_reason = 'peer' "
    "where id in (select id from peer_tokens)",
    "insert into actions (effect_key, action, account_id, subject, phase, reason, actor, "
    "created_at, details) select 'peer-revoke-token:' || id, 'revoke_token', account_id, "
    "'token:' || id, 'bench', 'peer', 'bench', :now, {json} from peer_tokens",
    "insert into notifications (account_id, email, phase, occasion, state, context, attempts, "
    "created_at, updated_at) select account_id, 'enforcement_notice', 'peer', '', "
    "'queued', {json}, 0, :now, :now from (select distinct account_id from peer_tokens) s",
]


def peer(url: str) -> tuple[float, int, int]:
    """The peer's seconds, and the count and id sum of the tokens it revoked; rolled
    back, so the registry is as before."""
    engine = make_engine(url)
    now = utc_now()
    with engine.connect() as connection:
        started = time.perf_counter()
        transaction = connection.begin()
        # An empty JSON object: PostgreSQL's json columns take no text.
        empty = "'{}'::json" if connection.dialect.name == "postgresql" else "'{}'"
        for statement in PEER:
            connection.execute(text(statement.replace("{json}", empty)), {"now": now})
        count, id_sum = connection.execute(
            text("select count(*), coalesce(sum(id), 0) from peer_tokens")
        ).one()
        seconds = time.perf_counter() - started
        transaction.rollback()
    engine.dispose()
    return seconds, int(count), int(id_sum)


CHECKS = {
    "cohort's live classic tokens at the start": "select count(*) from tokens t "
    "join cohort_memberships m on m.account_id = t.account_id and m.cohort = 'bench' "
    "where t.kind in ('automation', 'publish', 'read_only') and "
    "(t.revoked_at is null or t.revoked_reason like 'phase bench:%') "
    "and (t.expires_at is null or t.expires_at > :started)",
    "classic tokens still live": "select count(*) from tokens t join cohort_memberships m "
    "on m.account_id = t.account_id and m.cohort = 'bench' where t.revoked_at is null "
    "and t.kind in ('automation', 'publish', 'read_only') "
    "and (t.expires_at is null or t.expires_at > :started)",
    "tokens revoked by the phase": "select count(*) from tokens "
    "where revoked_reason like 'phase bench:%'",
    "of them, not classic": "select count(*) from tokens where revoked_reason like "
    "'phase bench:%' and kind not in ('automation', 'publish', 'read_only')",
    "id sum of the tokens revoked by the phase": "select coalesce(sum(id), 0) from tokens "
    "where revoked_reason like 'phase bench:%'",
    "revoke_token audit rows": "select count(*) from actions where action = 'revoke_token' "
    "and phase = 'bench' and actor = 'bench'",
    "tokens with one audit row": "select count(*) from tokens t where t.revoked_reason "
    "like 'phase bench:%' and (select count(*) from actions a where a.effect_key = "
    "'revoke-token:' || t.id) = 1",
    "enforcement emails": "select count(*) from notifications where phase = 'bench'",
}


def run(label: str, url: str, plan: Plan) -> dict[str, int]:
    make_cohort(url)
    peer_seconds, peer_count, peer_sum = peer(url)
    started_at = utc_now()
    with Registry(url) as registry:
        started = time.perf_counter()
        preview = enforce.preview_phase(registry, plan, plan.phase("bench"))
        preview_seconds = time.perf_counter() - started
    considered = _scalar(url, "select count(*) from tokens")
    # A fresh Registry: the timed run opens the registry itself, as a command's first use.
    with Registry(url) as registry:
        started = time.perf_counter()
        result = enforce.enforce_phase(
            registry,
            plan,
            "bench",
            expect=preview.count,
            expect_tokens=preview.token_count,
            actor="bench",
        )
        seconds = time.perf_counter() - started
    engine = make_engine(url)
    with engine.connect() as connection:
        found = {
            name: int(connection.execute(text(query), {"started": started_at}).scalar_one())
            for name, query in CHECKS.items()
        }
    engine.dispose()
    wanted = {
        "cohort's live classic tokens at the start": preview.token_count,
        "classic tokens still live": 0,
        "tokens revoked by the phase": result.tokens_revoked,
        "of them, not classic": 0,
        "id sum of the tokens revoked by the phase": peer_sum,
        "revoke_token audit rows": result.tokens_revoked,
        "tokens with one audit row": result.tokens_revoked,
        "enforcement emails": result.emails_queued,
    }
    problems = [
        f"{name}: the registry holds {found[name]:,}, expected {value:,}"
        for name, value in wanted.items()
        if found[name] != value
    ]
    if result.tokens_revoked != peer_count:
        problems.append(
            f"the peer revoked {peer_count:,} tokens, the phase {result.tokens_revoked:,}"
        )
    if result.tokens_revoked != preview.token_count:
        problems.append(
            f"the preview listed {preview.token_count:,} tokens, the phase revoked "
            f"{result.tokens_revoked:,}"
        )
    if problems:
        raise SystemExit("FAIL: " + "\n  ".join(problems))
    print(
        f"| {label} | {considered:,} | {preview.count:,} | {result.tokens_revoked:,} | "
        f"{result.emails_queued:,} | {result.batches} | {seconds:.1f} | "
        f"{preview_seconds:.1f} | {peer_seconds:.1f} |",
        flush=True,
    )
    return {
        "accounts": preview.count,
        "tokens revoked": result.tokens_revoked,
        "emails": result.emails_queued,
    }


def _scalar(url: str, query: str) -> int:
    engine = make_engine(url)
    with engine.connect() as connection:
        value = int(connection.execute(text(query)).scalar_one())
    engine.dispose()
    return value


def undo_earlier_run(url: str) -> None:
    """Back to the sample as generated: the ledger tables empty, the phase's tokens live."""
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            text("truncate actions, notifications, cohort_memberships, phase_requirements")
        )
        connection.execute(text("delete from plan_runs"))
        connection.execute(
            text(
                "update tokens set revoked_at = null, revoked_reason = null "
                "where revoked_reason like 'phase bench:%'"
            )
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("tokens", "actions", "notifications", "phase_requirements"):
            connection.execute(text(f"vacuum analyze {table}"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, required=True)
    parser.add_argument("--postgres", help="URL of an empty PostgreSQL database")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="the PostgreSQL database already holds the npm sample from an earlier run",
    )
    parser.add_argument("--scale", default="npm", help="the sample generated into PostgreSQL")
    args = parser.parse_args()
    plan = bench_plan()
    print(
        "| backend | tokens considered | accounts | tokens revoked | emails queued | batches "
        "| enforce s | preview s | hand-written SQL peer s |\n"
        "|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    counts: dict[str, dict[str, int]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as scratch:
        copy = Path(scratch) / "registry.db"
        shutil.copy(args.registry, copy)
        engine = make_engine(f"sqlite:///{copy}")
        upgrade(engine)  # a registry made by an older rollout
        engine.dispose()
        counts["SQLite"] = run("SQLite", f"sqlite:///{copy}", plan)
    if args.postgres:
        if args.reuse:
            undo_earlier_run(args.postgres)
        else:
            sample_into_postgres(args.postgres, args.scale, purpose="tokens")
        counts["PostgreSQL"] = run("PostgreSQL", args.postgres, plan)
    if len(counts) == 2 and counts["SQLite"] != counts["PostgreSQL"]:
        print(f"backends differ (different samples?): {counts}")


if __name__ == "__main__":
    main()
