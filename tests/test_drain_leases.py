"""A drainer alive but slower than its lease (SendGrid's 429 backoffs, a file outbox on
a slow disk, a long pause): another drainer takes its rows over once the lease runs out.
The slow one then sends none of the rows it no longer holds, records nothing over the
other's, and keeps (renews) the lease on the rows nobody took. While a batch's requests
are under way a heartbeat renews its lease, however long one takes (a server answering
a byte at a time); no attempt of a send starts with less of the lease ahead than it and
the wait after it may take (its sender's longest attempt, and a margin), nor once the
row was taken over during a pause (looked at again once its connection is made, just
before the request is written), so each email goes at most once between live drainers,
but for a request paused mid-way past the lease (a stopped process)."""

from __future__ import annotations

import http.client
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from rollout.core.errors import BadInput
from rollout.core.plan import Plan
from rollout.demo.crowd import NOTICE_DAY
from rollout.dev.sendgrid_api import DevSendGrid
from rollout.notify import drain as drain_module
from rollout.notify.drain import (
    DEFAULT_LEASE,
    LEASE_MARGIN,
    DrainReport,
    _claim,
    _drain_loop,
    _Hold,
    _next_batch,
    _put_back,
    _record,
    _release,
    _renew,
    drain,
    drain_shard,
    lease_for,
)
from rollout.notify.drain import _Outcome as Outcome
from rollout.notify.message import Message
from rollout.notify.outbox import FILE_SENDER, UNVERIFIED
from rollout.notify.senders import SendGridSender
from rollout.registry import Registry
from rollout.registry.ledger import utc_now
from rollout.registry.locks import RunLockLost
from rollout.registry.models import Notification
from tests.factories import AccountFactory, bound_to
from tests.support.outbox import ids, queue_late
from tests.support.run_locks import end_run_lock_session

from .conftest import postgres_only

__all__ = ["ids"]  # a fixture, used by name

T0 = datetime(2026, 1, 5, 9)
KEY = "SG.test-leases.k3y"


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


class Slow:
    """A file-outbox sender (its batch written one message after the other) whose first
    write takes ``pause`` by the drainer's clock, during which ``meanwhile`` runs."""

    name = FILE_SENDER

    def __init__(self, clock: Clock, pause: timedelta, meanwhile: Callable[[], None]) -> None:
        self.clock, self.pause, self.meanwhile = clock, pause, meanwhile
        self.sent: list[int] = []

    def send(self, message: Message) -> str:
        if not self.sent:
            self.clock.at += self.pause
            self.meanwhile()
        self.sent.append(message.outbox_id)
        return f"slow-{message.outbox_id}"


class Quick:
    name = FILE_SENDER

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, message: Message) -> str:
        self.sent.append(message.outbox_id)
        return f"quick-{message.outbox_id}"


def cohort_of(registry: Registry, count: int) -> None:
    with bound_to(registry.engine, batch=True):
        for i in range(count):
            AccountFactory(username=f"user{i:04d}", in_cohort="top-100")


def ledger(registry: Registry) -> dict[int, tuple[str, str | None]]:
    with registry.engine.connect() as connection:
        return {
            i: (state, message_id)
            for i, state, message_id in connection.execute(
                select(Notification.id, Notification.state, Notification.message_id)
            )
        }


def drain_with(
    registry: Registry,
    plan: Plan,
    sender: object,
    clock: Callable[[], datetime],
    *,
    concurrency: int = 4,
    lease: timedelta = DEFAULT_LEASE,
) -> DrainReport:
    return _drain_loop(
        registry.engine,
        plan,
        sender,  # type: ignore[arg-type]
        concurrency=concurrency,
        limit=None,
        clock=clock,
        lease=lease,
    )


def test_rows_taken_over_from_a_slow_drainer_are_not_sent_again_by_it(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    cohort_of(registry, 10)
    queue_late(registry, plan, NOTICE_DAY)
    quick, late = Quick(), Clock(T0 + DEFAULT_LEASE + timedelta(minutes=1))
    slow_clock = Clock(T0)
    # Its first write outlasts the lease; meanwhile another drainer takes everything over.
    slow = Slow(slow_clock, DEFAULT_LEASE + timedelta(minutes=1), lambda: quick_report.append(
        drain_with(registry, plan, quick, late)
    ))  # fmt: skip
    quick_report: list[DrainReport] = []
    report = drain_with(registry, plan, slow, slow_clock)
    sent = Counter(slow.sent + quick.sent)
    # Only the write in flight as the lease ran out goes twice; the slow one sends no more.
    assert slow.sent == slow.sent[:1] and sent[slow.sent[0]] == 2
    assert max(Counter(quick.sent).values()) == 1
    rows = ledger(registry)
    went = {i for i, (state, _) in rows.items() if state == "sent"}
    assert went == set(quick.sent)
    # The ledger keeps the taker's record: the slow one wrote nothing over it.
    assert {rows[i][1] for i in went} == {f"quick-{i}" for i in went}
    assert report.sent == 0 and report.overtaken == 12
    assert quick_report[0].sent == len(went)


def test_a_slow_drainer_whose_rows_nobody_took_renews_its_lease_and_sends_them(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    cohort_of(registry, 10)
    queue_late(registry, plan, NOTICE_DAY)
    clock = Clock(T0)
    taken: list[int] = []

    class Watched(Slow):
        def send(self, message: Message) -> str:
            if len(self.sent) == 1:  # after the long write: another drainer looks
                taken.extend(c.id for c in _claim(registry.engine, 20, clock.at, "file"))
            return super().send(message)

    slow = Watched(clock, DEFAULT_LEASE + timedelta(minutes=1), lambda: None)
    report = drain_with(registry, plan, slow, clock)
    assert taken == []  # its lease renewed before its next write: nothing to take over
    assert report.sent == len(slow.sent) == 12 and report.overtaken == 0
    assert Counter(slow.sent).most_common(1)[0][1] == 1
    rows = ledger(registry)
    assert {rows[i] for i in slow.sent} == {("sent", f"slow-{i}") for i in slow.sent}


def test_a_slow_drainers_results_for_rows_taken_over_leave_the_takers_hold_alone(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    first = _claim(registry.engine, 2, T0, "sendgrid")
    later = T0 + DEFAULT_LEASE + timedelta(seconds=1)
    taken = _claim(registry.engine, 2, later, "sendgrid")  # the first one's lease ran out
    assert {c.id for c in taken} == {c.id for c in first}
    held = {c.id: c.claim for c in first}
    went, failed = first[0].id, first[1].id
    # The slow one's send went, its other failed; then a stop of it puts back both.
    written = _record(
        registry.engine,
        [Outcome(went, "sent", message_id="slow-1"), Outcome(failed, "failed", "HTTP 400")],
        later,
        held=held,
    )
    _put_back(registry.engine, [went, failed], later, held)
    # The one that went is recorded sent (the taker must not send it again); the failure
    # is not the slow one's to record, nor its to put back: the taker still holds it.
    assert written == {went}
    rows = ledger(registry)
    assert rows[went] == ("sent", "slow-1") and rows[failed] == ("sending", None)
    with registry.engine.connect() as connection:
        lease = connection.scalar(
            select(Notification.lease_expires_at).where(Notification.id == failed)
        )
    assert lease == later + DEFAULT_LEASE


def test_a_slow_drainer_leaves_a_later_claim_of_a_reopened_notice_alone(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """Queueing sets a reopened notice's attempts back to 0: a later claim of it then
    has the attempts the slow drainer's claim had. The claim's token tells them apart."""
    queue_late(registry, plan, NOTICE_DAY)
    with registry.engine.connect() as connection:
        ann = connection.scalar(
            select(Notification.id).where(
                Notification.account_id == ids["ann"], Notification.state == "queued"
            )
        )
    slow = {c.id: c.claim for c in _claim(registry.engine, 1, T0, "sendgrid")}
    assert list(slow) == [ann]
    # Its lease runs out: another drainer takes the notice over and skips it, the
    # address unverified by then; verified again, the next queueing reopens it.
    later = T0 + DEFAULT_LEASE + timedelta(seconds=1)
    taker = {c.id: c.claim for c in _claim(registry.engine, 1, later, "sendgrid")}
    assert _record(registry.engine, [Outcome(ann, "skipped", UNVERIFIED)], later, held=taker)
    assert queue_late(registry, plan, NOTICE_DAY)[0].added == 1
    third = {c.id: c.claim for c in _claim(registry.engine, 1, later, "sendgrid")}
    assert list(third) == [ann]
    # The slow one comes back: the row is the third claim's, not its own.
    assert _renew(registry.engine, slow, later, DEFAULT_LEASE) == set()
    assert _record(registry.engine, [Outcome(ann, "failed", "HTTP 400")], later, held=slow) == set()
    _put_back(registry.engine, [ann], later, slow)
    _release(registry.engine, [ann], slow)
    assert ledger(registry)[ann] == ("sending", None)
    assert _renew(registry.engine, third, later, DEFAULT_LEASE) == {ann}


def test_a_send_retrying_past_a_short_lease_is_never_taken_over_mid_send(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """An operator's lease of 60 s, and SendGrid rate-limiting three requests (30 s
    each, its Retry-After): the sends outlast the lease they were given. The
    drainer holds its rows for as long as a send may take, so another drainer looking
    while it waits finds nothing to take over, and each email goes once."""
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    clock = Clock(T0)
    looked: list[int] = []

    def wait(seconds: float) -> None:  # the sender's backoff, by the drainer's clock
        clock.at += timedelta(seconds=seconds)
        looked.extend(c.id for c in _claim(registry.engine, 20, clock.at, "sendgrid"))

    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 429, "retry_after": 30}] * 3)
        sender = SendGridSender(KEY, server.url, timeout=5, sleep=wait)
        report = drain_with(
            registry, plan, sender, clock, concurrency=2, lease=timedelta(seconds=60)
        )
        went = Counter(int(m["body"]["custom_args"]["outbox_id"]) for m in server.messages)
    assert clock.at - T0 == timedelta(seconds=90)  # past the 60 s asked for
    assert looked == []
    assert report.sent == 2 and report.overtaken == 0
    assert sorted(went.values()) == [1, 1]


def test_a_send_whose_row_was_taken_over_during_a_wait_is_not_tried_again(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """SendGrid asks the drainer to wait 30 s before trying again, and the process is
    paused 10 minutes meanwhile, past its lease: another drainer takes the rows over.
    The waiting one does not try again what is no longer its own: the taker sends each
    email, once."""
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    clock = Clock(T0)
    taken: list[int] = []

    paused = threading.Lock()

    def wait(seconds: float) -> None:  # both sends wait; the first wait is the long one
        with paused:
            if not taken:
                # The taker claims at its time, and only then does this process resume
                # there: moved first, the drainer's clock let its other send renew the
                # lease (as no paused process does) before the claim, which took nothing.
                resumed_at = clock.at + timedelta(seconds=seconds, minutes=10)
                taken.extend(c.id for c in _claim(registry.engine, 20, resumed_at, "sendgrid"))
                clock.at = resumed_at

    with DevSendGrid(api_key=KEY) as server:
        server.script([{"status": 429, "retry_after": 30}] * 2)
        sender = SendGridSender(KEY, server.url, timeout=5, sleep=wait)
        report = drain_with(
            registry, plan, sender, clock, concurrency=2, lease=timedelta(seconds=60)
        )
        went = len(server.messages)
    assert len(taken) == 2  # both leases ran out during the pause
    assert went == 0  # neither request was made again
    assert report.sent == 0 and report.overtaken == 2
    assert {ledger(registry)[i] for i in taken} == {("sending", None)}  # the taker's to send


def test_the_lease_covers_the_longest_attempt_its_sender_may_make() -> None:
    default = SendGridSender(KEY, "http://127.0.0.1:9")
    assert default.longest_attempt == 50  # an answer within 2 x 10 s, a wait of up to 30 s
    assert lease_for(default) == DEFAULT_LEASE
    assert lease_for(default, timedelta(seconds=5)) == timedelta(seconds=73)  # (50 + 15) / 0.9
    slow = SendGridSender(KEY, "http://127.0.0.1:9", timeout=200)
    held = (slow.longest_attempt + LEASE_MARGIN.total_seconds()) / 0.9
    assert lease_for(slow) == timedelta(seconds=math.ceil(held)) > DEFAULT_LEASE
    # A sender that says nothing (the file outbox) is held for the margin.
    assert lease_for(Quick(), timedelta(seconds=5)) == timedelta(seconds=17)


def test_a_request_trickling_past_the_lease_keeps_its_rows_from_other_drainers(
    registry: Registry, plan: Plan, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SendGrid answers one send a byte every 0.1 s: no read outlasts the client's 1 s
    timeout, but the request takes 6 s, past the 4 s lease (the longest attempt a
    timeout of 1 s bounds, a 1 s margin: one machine's clock). Its drainer keeps the
    lease while the request is under way, so another drainer looking meanwhile takes
    nothing over, and each email goes once."""
    monkeypatch.setattr(drain_module, "LEASE_MARGIN", timedelta(seconds=1))
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"trickle": 6}])
        sender = SendGridSender(KEY, server.url, timeout=1, backoff_cap=0)
        lease = timedelta(seconds=1)
        assert lease_for(sender, lease) == timedelta(seconds=4)
        others: list[DrainReport] = []

        def another_drainer() -> None:
            server.wait_for_messages(1, timeout=10)  # the trickling one is under way
            time.sleep(5)  # past its lease
            with Registry(registry.url) as own:
                other = SendGridSender(KEY, server.url, timeout=1, backoff_cap=0)
                others.append(drain_with(own, plan, other, utc_now, concurrency=2, lease=lease))

        looker = threading.Thread(target=another_drainer)
        looker.start()
        report = drain_with(registry, plan, sender, utc_now, concurrency=2, lease=lease)
        looker.join(timeout=30)
        went = Counter(int(m["body"]["custom_args"]["outbox_id"]) for m in server.messages)
    assert others[0].sent == 0 and others[0].overtaken == 0
    assert report.sent == 2 and report.overtaken == 0
    assert sorted(went.values()) == [1, 1]
    assert {state for state, _ in ledger(registry).values()} >= {"sent"}
    # The drains' heartbeats ended with them: none keeps the process alive.
    assert not [t for t in threading.enumerate() if t.name == "lease-heartbeat"]


def test_a_heartbeat_that_finds_its_rows_taken_over_leaves_them_unsent(
    registry: Registry, plan: Plan, ids: dict[str, int]
) -> None:
    """The process was paused past its lease (its heartbeat with it) and another drainer
    took the batch over: the next beat renews nothing of the taker's, and the rows not
    yet sent are not sent by this one."""
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    clock = Clock(T0)
    batch = _next_batch(registry.engine, plan, 2, clock, "sendgrid", DEFAULT_LEASE)
    assert batch is not None and len(batch.held) == 2
    hold = _Hold(registry.engine, batch, clock, DEFAULT_LEASE)
    clock.at += DEFAULT_LEASE + timedelta(seconds=1)  # the pause
    taker = {c.id: c.claim for c in _claim(registry.engine, 2, clock.at, "sendgrid")}
    assert set(taker) == set(batch.held)
    hold.renew()
    assert not any(hold.keeps(i) for i in batch.held)
    with registry.engine.connect() as connection:
        leases = set(
            connection.scalars(
                select(Notification.lease_expires_at).where(Notification.id.in_(taker))
            )
        )
    assert leases == {clock.at + DEFAULT_LEASE}  # the taker's, as its claim set it


@pytest.mark.parametrize("concurrency", [0, -1, 65])
def test_a_drain_refuses_a_concurrency_it_could_not_send_with_and_claims_nothing(
    registry: Registry, plan: Plan, ids: dict[str, int], concurrency: int
) -> None:
    """Through SendGrid a batch is ``concurrency`` emails: with 0 the drain claimed none,
    took the outbox for empty and ended as a success, every email left queued (a notify
    run given ``concurrency: 0`` ended Completed, having sent nothing)."""
    cohort_of(registry, 3)
    queue_late(registry, plan, NOTICE_DAY)
    before = ledger(registry)
    with DevSendGrid() as server:
        sender = SendGridSender(server.api_key, server.url)
        with pytest.raises(BadInput, match=rf"concurrency {concurrency}: must be from 1 to 64"):
            drain(registry, plan, sender, concurrency=concurrency)
        with pytest.raises(BadInput, match=rf"concurrency {concurrency}: must be from 1 to 64"):
            drain_shard(registry, plan, sender, concurrency=concurrency)
        assert server.messages == []
    assert ledger(registry) == before and "queued" in {s for s, _ in before.values()}


def test_a_send_paused_while_connecting_past_its_lease_does_not_go_once_taken_over(
    registry: Registry, plan: Plan, ids: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process is paused 10 minutes (SIGSTOP, a VM frozen) while a send connects to
    SendGrid (DNS, TCP, TLS: after the drain looked at its hold, before the request is
    written), past its lease: another drainer takes the rows over and sends them. The
    paused one, resumed with its connection made, looks again before writing the
    request, and sends nothing: each email goes once, the taker's."""
    queue_late(registry, plan, NOTICE_DAY)  # ann and ben
    clock = Clock(T0)
    taken: list[int] = []
    paused = threading.Lock()
    connect = http.client.HTTPConnection.connect

    def paused_connecting(connection: http.client.HTTPConnection) -> None:
        with paused:
            if not taken:
                # As above: the taker claims at its time, then this process resumes there.
                resumed_at = clock.at + timedelta(minutes=10)
                taken.extend(c.id for c in _claim(registry.engine, 20, resumed_at, "sendgrid"))
                clock.at = resumed_at
        connect(connection)

    with DevSendGrid(api_key=KEY) as server:
        monkeypatch.setattr(http.client.HTTPConnection, "connect", paused_connecting)
        sender = SendGridSender(KEY, server.url, timeout=5)
        report = drain_with(registry, plan, sender, clock, concurrency=2)
        went = len(server.messages)
    assert len(taken) == 2  # both leases ran out during the pause
    assert went == 0  # neither request was written
    assert report.sent == 0 and report.overtaken == 2
    assert {ledger(registry)[i] for i in taken} == {("sending", None)}  # the taker's to send


@postgres_only
@pytest.mark.parametrize("processes", [1, 2])
def test_a_drain_whose_run_lock_session_ends_stops_before_its_next_batch(
    registry: Registry, plan: Plan, ids: dict[str, int], processes: int
) -> None:
    """PostgreSQL: the notify lock is an advisory lock of the lock's session. The
    session ended (a server restart, a pooler, a keepalive timeout: here its backend
    terminated), the lock went with it, silently, and another `notify send` may start
    and put back the rows this one holds: the drain stops before it claims again."""
    # Sending every row takes seconds past the lock's loss (20 a second: 4 at once,
    # 0.2 s each), however late a loaded machine lets the parent look.
    total = 100
    with bound_to(registry.engine, batch=True):
        for i in range(total):
            AccountFactory(username=f"user{i:04d}", in_cohort="top-100")
    queue_late(registry, plan, NOTICE_DAY)
    errors: list[BaseException] = []
    with DevSendGrid(api_key=KEY) as server:
        server.script([{"stall": 0.2}] * total)
        sender = SendGridSender(KEY, server.url, timeout=5)

        def send() -> None:
            try:
                drain(registry, plan, sender, concurrency=2, processes=processes)
            except BaseException as error:
                errors.append(error)

        thread = threading.Thread(target=send)
        thread.start()
        deadline = time.monotonic() + 30
        while len(server.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        end_run_lock_session(registry, "notify")  # gone, silently, the drain still at work
        thread.join(timeout=30)
        sent = len(server.messages)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], RunLockLost), errors
    assert "the notify run lock was lost" in str(errors[0])
    if processes == 1:  # the batch in flight, and at most the one claimed meanwhile
        assert sent <= 2 + 2
    else:  # the workers' batches until the parent looks (every LOCK_CHECK_SECONDS)
        assert sent < total
    with registry.engine.connect() as connection:
        left = Counter(connection.execute(select(Notification.state)).scalars())
    assert left["sending"] == 0 and left["queued"] > 0
