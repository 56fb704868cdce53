"""Drainers sharing the outbox (rollout.notify.drain.drain_shard), as the notify flow's
shards on several machines: each row claimed with a lease, each email sent once across
them; a drainer that dies leaves its rows to be taken over when its lease runs out,
within the same run, and only those in flight can go out twice. The shards send only
while their notify run holds the ``notify`` lock (this test process plays it)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text

from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.notify import drain as drain_module
from rollout.notify.drain import (
    OWNER_POLL_SECONDS,
    DrainReport,
    ShardOrphaned,
    _claim,
    begin_shards,
    drain_shard,
    outbox_drained,
    shards_report,
)
from rollout.notify.senders import SendGridSender
from rollout.registry import Registry
from rollout.registry.engine import make_engine
from rollout.registry.locks import advisory_lock_holders
from rollout.registry.migrate import downgrade, upgrade
from rollout.registry.models import Notification
from tests.factories import AccountFactory, bound_to
from tests.support.outbox import ids, queue_late

__all__ = ["ids"]  # a fixture, used by name

KEY = "SG.test-shards.k3y"


def cohort_of(registry: Registry, count: int) -> None:
    with bound_to(registry.engine, batch=True):
        for i in range(count):
            AccountFactory(username=f"user{i:04d}", in_cohort="top-100")


def delivered(server: DevSendGrid) -> Counter[int]:
    return Counter(int(m["body"]["custom_args"]["outbox_id"]) for m in server.messages)


def states(registry: Registry) -> Counter[str]:
    with registry.engine.connect() as connection:
        return Counter(connection.execute(select(Notification.state)).scalars())


def test_shards_side_by_side_send_each_email_once_and_share_the_work(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    cohort_of(registry, 120)
    queue_late(registry, plan, NOTICE_DAY)
    queued = states(registry)["queued"]
    reports: list[DrainReport] = []
    with DevSendGrid(api_key=KEY) as server:

        def shard() -> None:
            with Registry(registry.url) as own:  # a machine of its own: its connections
                sender = SendGridSender(KEY, server.url, timeout=5)
                reports.append(drain_shard(own, plan, sender, concurrency=4))

        shards = [threading.Thread(target=shard) for _ in range(2)]
        with registry.lock("notify"):
            for thread in shards:
                thread.start()
            for thread in shards:
                thread.join(timeout=120)
        sent = delivered(server)
    assert sum(r.sent for r in reports) == queued == len(sent)
    assert set(sent.values()) == {1}
    assert all(r.sent > 0 for r in reports), [r.sent for r in reports]
    assert states(registry)["sending"] == 0


def test_rows_a_dead_drainer_held_are_taken_over_when_its_lease_runs_out(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    cohort_of(registry, 10)
    queue_late(registry, plan, NOTICE_DAY)
    # The dead one claimed four rows, with a lease running out in a second, and sent
    # one of them before it died (the only kind of duplicate a shard allows).
    held = _claim(registry.engine, 4, datetime.utcnow(), "sendgrid", timedelta(seconds=1))
    with DevSendGrid(api_key=KEY) as server:
        sender = SendGridSender(KEY, server.url, timeout=5)
        started = time.monotonic()
        with registry.lock("notify"):
            report = drain_shard(registry, plan, sender, concurrency=4)
        waited = time.monotonic() - started
        sent = delivered(server)
    assert report.sent == 12 and set(sent) >= {c.id for c in held}
    assert states(registry) == Counter({"sent": 12, "skipped": 2})  # cat and dan: queue-time
    assert waited >= 0.5  # it waited for the lease, not the next day's drain
    with registry.engine.connect() as connection:
        attempts = dict(connection.execute(select(Notification.id, Notification.attempts)).all())
    assert {attempts[c.id] for c in held} == {2}


def test_rows_a_live_drainer_holds_are_left_to_it(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    held = _claim(registry.engine, 1, datetime.utcnow(), "sendgrid", timedelta(hours=1))
    assert _claim(registry.engine, 5, datetime.utcnow(), "sendgrid") != held
    with registry.engine.connect() as connection:
        sending = (
            connection.execute(select(Notification.id).where(Notification.state == "sending"))
            .scalars()
            .all()
        )
    assert len(sending) == 2  # one each: the other's was not taken


SHARD_SCRIPT = textwrap.dedent(
    """
    import sys
    from datetime import timedelta
    from rollout.core.plan import load_plan
    from rollout.notify import drain
    from rollout.notify.senders import SendGridSender
    from rollout.registry import Registry
    url, server, key, plan = sys.argv[1:5]
    drain.LEASE_MARGIN = timedelta(seconds=1)  # one machine: no clocks to disagree
    with Registry(url) as registry:
        drain.drain_shard(registry, load_plan(plan),
                          SendGridSender(key, server, timeout=1, backoff_cap=0.5),
                          concurrency=4, lease=timedelta(seconds=2))
    """
)


def test_a_shard_killed_mid_run_leaves_the_run_to_finish_with_at_most_its_flight_twice(
    registry: Registry, plan: Plan, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A sender quick to give up, and one machine's clock: the dead shard's lease (the
    # longest attempt and the margin: lease_for) runs out in 4 s, not the 61 s of
    # SendGrid's defaults and the margin between machines.
    monkeypatch.setattr(drain_module, "LEASE_MARGIN", timedelta(seconds=1))
    root = Path(__file__).resolve().parents[1]
    cohort_of(registry, 200)
    queue_late(registry, plan, NOTICE_DAY)
    queued = states(registry)["queued"]
    with DevSendGrid(api_key=KEY) as server, registry.lock("notify"):
        doomed = subprocess.Popen(
            [
                sys.executable, "-c", SHARD_SCRIPT, registry.url, server.url, KEY,
                str(root / "plans" / "npm-2022.yaml"),
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(server.messages) < 20 and time.monotonic() < deadline:
            time.sleep(0.005)
        doomed.kill()
        doomed.wait()
        sender = SendGridSender(KEY, server.url, timeout=1, backoff_cap=0.5)
        report = drain_shard(registry, plan, sender, concurrency=4, lease=timedelta(seconds=2))
        sent = delivered(server)
    assert states(registry)["sent"] == queued and states(registry)["sending"] == 0
    with registry.engine.connect() as connection:
        recorded = set(
            connection.execute(
                select(Notification.id).where(Notification.state == "sent")
            ).scalars()
        )
    assert set(sent) == recorded  # none lost
    twice = [i for i, n in sent.items() if n > 1]
    assert len(twice) <= 4 and max(sent.values()) <= 2  # at most the dead one's flight
    assert report.sent > 0


def test_lock_held_tells_whether_any_process_holds_the_run_lock(registry: Registry) -> None:
    assert not registry.lock_held("notify")
    with registry.lock("notify"):
        assert registry.lock_held("notify") and not registry.lock_held("enforce")
        with Registry(registry.url) as elsewhere:  # another machine's connections
            assert elsewhere.lock_held("notify")
    assert not registry.lock_held("notify")
    with registry.lock("notify"):  # looking took nothing: the lock is still free to take
        pass


def test_lock_holder_tells_one_run_from_the_next_holding_the_same_lock(
    registry: Registry,
) -> None:
    assert registry.lock_holder("notify") is None
    with registry.lock("notify"):
        first = registry.lock_holder("notify")
        with Registry(registry.url) as elsewhere:  # another machine's connections
            assert elsewhere.lock_holder("notify") == first is not None
        assert registry.lock_holder("enforce") is None
    assert registry.lock_holder("notify") is None
    with registry.lock("notify"):  # the next run: on PostgreSQL, the same pooled session
        assert registry.lock_holder("notify") not in (None, first)


def test_a_shard_without_a_notify_run_sends_nothing(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)
    with DevSendGrid(api_key=KEY) as server:
        with pytest.raises(ShardOrphaned, match="no notify run holds the notify lock"):
            drain_shard(registry, plan, SendGridSender(KEY, server.url, timeout=5))
        assert server.messages == []
    assert states(registry)["queued"] == 2


def test_a_shard_whose_notify_run_goes_away_stops_and_puts_back_what_it_held(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The process that started the shards died (its lock went with it): the next drain
    may start any time and take over every held row, so the shard must not go on."""
    cohort_of(registry, 40)
    queue_late(registry, plan, NOTICE_DAY)
    queued = states(registry)["queued"]
    errors: list[BaseException] = []
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"stall": 0.3}] * 100)  # slow: the run goes away mid-send
        sender = SendGridSender(KEY, server.url, timeout=5)

        def shard() -> None:
            try:
                drain_shard(registry, plan, sender, concurrency=2)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=shard)
        with registry.lock("notify"):
            thread.start()
            deadline = time.monotonic() + 30
            while len(server.messages) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        gone = time.monotonic()
        thread.join(timeout=30)
        stopped_after = time.monotonic() - gone
        sent = delivered(server)
    assert not thread.is_alive() and stopped_after < OWNER_POLL_SECONDS + 3
    assert len(errors) == 1 and isinstance(errors[0], ShardOrphaned), errors
    assert "its notify run is gone" in str(errors[0])
    now = states(registry)
    assert now["sending"] == 0 and 0 < now["queued"] < queued
    assert set(sent.values()) == {1}
    assert now["sent"] <= len(sent) <= now["sent"] + 2  # a stalled send may have gone


def test_a_held_run_lock_leaves_no_transaction_open(postgres_schema_url: str) -> None:
    """A run holds its lock for hours (a phase waiting a day for its approval): an
    open transaction all that time would keep PostgreSQL from cleaning up any row
    updated meanwhile, and the outbox's claims would slow down as the run went on."""
    engine = make_engine(postgres_schema_url)
    upgrade(engine)
    engine.dispose()
    registry = Registry(postgres_schema_url)
    try:
        with registry.lock("notify"), registry.engine.connect() as connection:
            holders = (
                connection.execute(
                    text("select state from pg_stat_activity where pid = any(:pids)"),
                    {"pids": advisory_lock_holders(connection, "notify")},
                )
                .scalars()
                .all()
            )
        assert holders == ["idle"]  # not "idle in transaction"
    finally:
        registry.close()


def test_rows_a_drain_before_leases_left_in_flight_are_sent_by_the_shards(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """A drain of a rollout at revision 0014 died holding rows ('sending', and no lease
    column yet); after the upgrade no shard took them over (only leases that ran out
    are), so every sharded notify run ended with them held, "not drained", and only a
    plain drain sent them."""
    cohort_of(registry, 6)
    queue_late(registry, plan, NOTICE_DAY)  # sent by the real clock, years later
    queued = states(registry)["queued"]
    engine = registry.engine
    downgrade(engine, "0014")
    with engine.begin() as connection:  # what that drain's claim left
        connection.execute(
            text("update notifications set state = 'sending', attempts = 1 where state = 'queued'")
        )
    upgrade(engine)
    with DevSendGrid(api_key=KEY) as server:
        sender = SendGridSender(KEY, server.url, timeout=5)
        with registry.lock("notify"):
            begun = begin_shards(registry, sender.name)
            drain_shard(registry, plan, sender, concurrency=4)
            report = shards_report(registry, begun)
            assert outbox_drained(registry)
        sent = delivered(server)
    assert len(sent) == queued and set(sent.values()) == {1}
    assert report.sent == queued and report.resumed == queued  # they may have gone out
    assert states(registry)["sending"] == 0


def test_a_shard_frozen_past_its_run_sends_nothing_under_the_next_run(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """A shard frozen (SIGSTOP, a paused VM) while its notify run ended, resumed while a
    later run holds the notify lock: that lock is not its run's. Going on, it would send
    with its old plan and settings, beside a run whose restart puts back every held row
    (the shard's live ones too: sent twice). It stops at once, claiming nothing more."""
    root = Path(__file__).resolve().parents[1]
    cohort_of(registry, 60)
    queue_late(registry, plan, NOTICE_DAY)
    queued = states(registry)["queued"]
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"stall": 0.2}] * 1000)
        with registry.lock("notify"):  # its run
            shard = subprocess.Popen(
                [
                    sys.executable, "-c", SHARD_SCRIPT, registry.url, server.url, KEY,
                    str(root / "plans" / "npm-2022.yaml"),
                ],
                stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 60
            while len(server.messages) < 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            shard.send_signal(signal.SIGSTOP)
        with registry.lock("notify"):  # the next run, the shard still frozen
            time.sleep(5)  # past the shard's lease (4 s): what it held is no longer its
            before = len(server.messages)
            shard.send_signal(signal.SIGCONT)
            try:
                _, stderr = shard.communicate(timeout=OWNER_POLL_SECONDS + 20)
            finally:
                shard.kill()
            after = len(server.messages)
    assert shard.returncode != 0 and "ShardOrphaned" in stderr, stderr[-2000:]
    assert "another notify run holds the notify lock" in stderr
    # Nothing claimed under the other run: at most its batch in flight went (rows still
    # its own, under their claim: a run that had queued them again drew another).
    assert after - before <= 4, stderr
    now = states(registry)
    assert now["queued"] > 0 and now["sent"] < queued
