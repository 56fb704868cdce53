"""Benchmark: drain N queued emails into the file outbox (what `make demo` does).

Usage:
    python bench/bench_file_outbox.py [--emails 30000] [--concurrency 16]
        [--sample DIR] [--profile FILE] [--runs 1]

A small sample registry (``--scale small --seed 7``, the demo's: 12,000 accounts) is
generated once into ``--sample`` (default ``bench/out/file-outbox-sample``) and copied
for each run. Every verified account without 2FA is put in both phases' cohorts (with
packages), then the plan's mailings are queued in date order (phase notice, reminders,
brown-out heads-ups, ...), each with its queue day, until ``--emails`` are queued. The
timed part is one ``drain`` into a :class:`FileSender` at ``--concurrency``
(the demo's 16), on SQLite, in one process, as ``rollout demo`` runs it.

Afterwards (not timed) it checks, and exits non-zero if not: every queued row is sent,
``send`` was called exactly once per row, there is exactly one ``.eml`` per row and no
other file, and each parses back with the ``email`` package with its To, Subject,
Message-ID (the ledger's) and both a text and an HTML part.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import date
from email import policy
from email.parser import BytesParser
from pathlib import Path

from sqlalchemy import and_, func, insert, select

sys.path.insert(0, os.environ.get("BENCH_ROLLOUT_PATH") or str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parent))

from registry_copy import copy_registry

from rollout.core.plan import load_plan
from rollout.demo.sample import generate_sample
from rollout.notify import outbox
from rollout.notify.drain import drain
from rollout.notify.message import Message, header_address
from rollout.notify.queue import plan_occasions, queue_email
from rollout.notify.senders import FileSender
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.models import Account, CohortMembership, Notification, has_active_factor

ROOT = Path(__file__).resolve().parents[1]


class CountingSender:
    """The file sender, counting the sends of each outbox id (a row sent twice shows)."""

    def __init__(self, inner: FileSender) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: Counter[int] = Counter()
        self._lock = threading.Lock()

    def send(self, message: Message) -> str:
        with self._lock:
            self.calls[message.outbox_id] += 1
        return self.inner.send(message)


def make_sample(folder: Path) -> Path:
    registry = folder / "registry.db"
    if not registry.exists():
        print(f"generating the small sample (seed 7) into {folder}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        generate_sample(
            "small",
            7,
            registry=Registry(f"sqlite:///{registry}"),
            landing_dir=folder / "landing",
            end=date(2022, 3, 13),
            days=110,
        )
    return registry


def queue(url: str, plan, count: int) -> int:
    """Queue ``count`` emails of the plan's mailings to verified accounts without 2FA."""
    engine = make_engine(url)
    accounts = Account.__table__
    with engine.begin() as connection:
        connection.execute(Notification.__table__.delete())
        connection.execute(CohortMembership.__table__.delete())
        ids = [
            row[0]
            for row in connection.execute(
                select(accounts.c.id)
                .where(and_(accounts.c.email_verified, ~has_active_factor(accounts.c.id)))
                .order_by(accounts.c.id)
            )
        ]
        connection.execute(
            insert(CohortMembership),
            [
                {
                    "cohort": phase.cohort,
                    "account_id": i,
                    "packages": [f"pkg-{i}", f"@scope/pkg-{i}-cli", "shared-core"],
                    "first_qualified_on": phase.cohort_as_of,
                    "last_qualified_on": phase.cohort_as_of,
                }
                for phase in plan.phases
                for i in ids
            ],
        )
        left = count
        for o in plan_occasions(plan):
            if left <= 0:
                break
            audience = select(accounts.c.id).where(accounts.c.id.in_(ids[:left]))
            added, _skipped = queue_email(
                connection,
                email=o.email,
                phase=o.phase,
                occasion=o.occasion,
                account_ids=audience,
                # Years after the plan's days: to be sent however late (notify queue
                # --late), or the drain would skip every one as too late.
                context={
                    **o.context,
                    outbox.RUN_DAY: o.due_on.isoformat(),
                    outbox.QUEUED_LATE: True,
                },
                run_id=None,
                now=outbox.utc_now(),
            )
            left -= added
        queued = connection.execute(
            select(func.count()).where(Notification.state == "queued")
        ).scalar_one()
    engine.dispose()
    if queued != count:
        sys.exit(f"FAIL: queued {queued} emails, not {count} (too few accounts?)")
    return queued


def check(url: str, sender: CountingSender, outbox_dir: Path, queued: int) -> None:
    """Every queued row sent once, written once, parseable; exits non-zero otherwise."""
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Notification.id,
                Notification.state,
                Notification.message_id,
                Notification.email,
                Notification.error,
                Account.email,
            ).join(Account, Account.id == Notification.account_id)
        ).all()
    engine.dispose()
    problems: list[str] = []
    states = Counter(r[1] for r in rows)
    if states != Counter({"sent": queued}):
        failed = [r[4] for r in rows if r[1] == "failed"][:3]
        problems.append(f"states {dict(states)}, expected {queued} sent; failures: {failed}")
    twice = [i for i, n in sender.calls.items() if n != 1]
    if twice or len(sender.calls) != queued:
        problems.append(f"{len(sender.calls)} rows sent, {len(twice)} more than once")
    files = {p.name: p for p in outbox_dir.iterdir()}
    expected = {}
    for row_id, _state, message_id, email, _error, address in rows:
        path = sender.inner.path_for(Message(row_id, email, address, None, "x", "x", ""))
        expected[path.name] = (path, message_id, address)
    if set(files) != set(expected):
        extra = sorted(set(files) - set(expected))[:3]
        missing = sorted(set(expected) - set(files))[:3]
        problems.append(
            f"{len(files)} files for {len(expected)} rows: extra {extra}, missing {missing}"
        )
    parser = BytesParser(policy=policy.default)
    bad = 0
    for path, message_id, address in expected.values():
        with path.open("rb") as f:
            parsed = parser.parse(f)
        to = parsed["To"].addresses if parsed["To"] else ()
        text = parsed.get_body(("plain",))
        html = parsed.get_body(("html",))
        wrong = [
            what
            for what, ok in (
                (f"defects {parsed.defects}", not parsed.defects),
                ("Message-ID is not the ledger's", parsed["Message-ID"] == message_id),
                (f"To {to}", len(to) == 1 and to[0].addr_spec == header_address(address)),
                ("no Subject", bool(parsed["Subject"])),
                ("not multipart/alternative", parsed.get_content_type() == "multipart/alternative"),
                ("no text part", text is not None and text.get_content().strip()),
                ("no HTML part", html is not None and html.get_content().strip()),
            )
            if not ok
        ]
        if wrong:
            bad += 1
            if bad <= 3:
                problems.append(f"{path.name}: {'; '.join(wrong)}")
    if bad:
        problems.append(f"{bad} files do not parse as expected")
    if problems:
        sys.exit("FAIL: " + "\n  ".join(problems))


def run(args: argparse.Namespace, registry: Path, number: int) -> float:
    work = Path(tempfile.mkdtemp(prefix="bench-file-outbox-"))
    try:
        url = copy_registry(registry, work)
        plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
        queued = queue(url, plan, args.emails)
        sender = CountingSender(FileSender(work / "outbox", plan.notifications.from_address))
        profiler = cProfile.Profile() if args.profile else None
        started, cpu_started = time.perf_counter(), time.process_time()
        if profiler:
            profiler.enable()
        with Registry(url) as opened:
            report = drain(opened, plan, sender, concurrency=args.concurrency)
        if profiler:
            profiler.disable()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        check(url, sender, work / "outbox", queued)
        print(
            f"run {number}: drained {report.sent} of {queued} queued emails into the file "
            f"outbox in {elapsed:.2f} s: {report.sent / elapsed:,.0f} emails/s "
            f"({1000 * elapsed / report.sent:.3f} ms each; CPU {cpu:.2f} s, "
            f"{1000 * cpu / report.sent:.3f} ms each) at concurrency {args.concurrency}; "
            "checked: each written once and parsed",
            flush=True,
        )
        if profiler:
            profiler.dump_stats(args.profile)
            stats = pstats.Stats(args.profile)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
        return report.sent / elapsed
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--emails", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=16, help="the demo's: 16")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--sample", type=Path, default=ROOT / "bench" / "out" / "file-outbox-sample"
    )
    parser.add_argument("--profile", help="write a cProfile of the drain here and print it")
    args = parser.parse_args()
    registry = make_sample(args.sample)
    rates = [run(args, registry, n) for n in range(1, args.runs + 1)]
    if len(rates) > 1:
        print(f"emails/s over {len(rates)} runs: min {min(rates):,.0f}, max {max(rates):,.0f}")


if __name__ == "__main__":
    main()
