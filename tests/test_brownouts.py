"""Brown-outs and ELV on SQLite and PostgreSQL: the login rule, scheduling from the
plan, starting early, the emergency end, and enrolling everyone."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.errors import BadInput, GuardRefused
from rollout.core.plan import Brownout, Plan, load_plan
from rollout.phases import brownouts, drift
from rollout.registry import Registry, locks
from rollout.registry.ledger import utc_now
from rollout.registry.models import Account, Action, BrownoutWindow, Notification, PlanRun
from tests.factories import AccountFactory
from tests.support.run_locks import end_run_lock_session

from .conftest import postgres_only

ROOT = Path(__file__).resolve().parent.parent


def soon(plan: Plan) -> Plan:
    """The plan with one brown-out tomorrow, so it can still be started or ended."""
    tomorrow = utc_now().replace(microsecond=0) + timedelta(days=1)
    return plan.model_copy(update={"brownouts": [Brownout(name="drill", starts_at=tomorrow)]})


@pytest.fixture
def accounts(factories: None) -> dict[str, int]:
    """kim and max without 2FA, lee with TOTP; made in that order (ids ascending)."""
    people = {
        "kim": AccountFactory(username="kim"),
        "lee": AccountFactory(username="lee", with_totp=True),
        "max": AccountFactory(username="max"),
    }
    return {name: account.id for name, account in people.items()}


def on_the_morning_of(day: date) -> AbstractContextManager[object]:
    """The pipeline's clock at 06:00 UTC of ``day``: a day's emails are queued on it."""
    return use_clock(SimulatedClock(datetime.combine(day, time(6))))


def required(registry: Registry, account_id: int, at: datetime) -> bool:
    with registry.engine.connect() as connection:
        return brownouts.elv_required(connection, account_id, at)


def test_the_reference_brownouts_schedule_once(registry: Registry, plan: Plan) -> None:
    assert [what for _, what in brownouts.schedule_preview(registry, plan)] == [
        "create 2022-02-16 00:00 UTC + 24 h",
        "create 2022-02-23 00:00 UTC + 24 h",
    ]
    brownouts.schedule(registry, plan, actor="rm")
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("brownout-1", "ended"),
        ("brownout-2", "ended"),
    ]
    assert [(w.name, w.state) for w in brownouts.status(registry, datetime(2022, 2, 16, 12))] == [
        ("brownout-1", "active"),
        ("brownout-2", "scheduled"),
    ]
    brownouts.schedule(registry, plan, actor="rm")
    with registry.engine.connect() as connection:
        assert (
            connection.execute(select(func.count()).select_from(BrownoutWindow)).scalar_one() == 2
        )
        assert connection.execute(select(func.count()).select_from(Action)).scalar_one() == 2


def test_a_window_that_started_cannot_be_moved(registry: Registry, plan: Plan) -> None:
    brownouts.schedule(registry, plan, actor="rm")
    moved = plan.model_copy(
        update={
            "brownouts": [plan.brownouts[0].model_copy(update={"starts_at": datetime(2022, 2, 17)})]
        }
    )
    with pytest.raises(GuardRefused, match="brownout-1: refused: already ended"):
        brownouts.schedule(registry, moved, actor="rm")


def test_a_window_moved_away_and_back_is_audited_each_time(registry: Registry, plan: Plan) -> None:
    drill = soon(plan)
    planned = drill.brownouts[0]
    later = drill.model_copy(
        update={
            "brownouts": [
                planned.model_copy(update={"starts_at": planned.starts_at + timedelta(days=1)})
            ]
        }
    )
    for version in (drill, later, drill):
        brownouts.schedule(registry, version, actor="rm")
    with registry.engine.connect() as connection:
        audited = (
            connection.execute(
                select(Action.reason)
                .where(Action.action == "brownout_scheduled")
                .order_by(Action.id)
            )
            .scalars()
            .all()
        )
    assert [reason.split()[0] for reason in audited] == ["create", "move", "move"]


def test_the_login_rule(registry: Registry, plan: Plan, accounts: dict[str, int]) -> None:
    brownouts.schedule(registry, plan, actor="rm")
    inside, outside = datetime(2022, 2, 16, 9), datetime(2022, 2, 18, 9)
    assert required(registry, accounts["kim"], inside)
    assert not required(registry, accounts["kim"], outside)
    # An account with 2FA never gets the emailed code.
    assert not required(registry, accounts["lee"], inside)


def test_start_early_and_the_emergency_end(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    drill = soon(plan)
    brownouts.schedule(registry, drill, actor="rm")
    assert not required(registry, accounts["kim"], utc_now())
    assert brownouts.change_preview(registry, "drill", "start").startswith(
        "would start drill now (scheduled)"
    )
    started = brownouts.start_now(registry, "drill", actor="rm", reason="rehearsal")
    assert started.state == "active" and started.ends_at - started.starts_at == timedelta(hours=24)
    assert required(registry, accounts["kim"], utc_now())
    ended = brownouts.end_now(registry, "drill", actor="rm", reason="login errors spiking")
    assert ended.state == "ended early"
    assert not required(registry, accounts["kim"], utc_now() + timedelta(seconds=1))
    with pytest.raises(GuardRefused, match="already ended early"):
        brownouts.change_preview(registry, "drill", "end")  # the preview says so too
    with pytest.raises(GuardRefused, match="already ended early"):
        brownouts.end_now(registry, "drill", actor="rm", reason="again")
    with pytest.raises(BadInput, match="no brown-out window named 'nope'"):
        brownouts.end_now(registry, "nope", actor="rm", reason="x")


def test_ending_a_window_that_is_not_there_names_the_windows_that_are(
    registry: Registry, plan: Plan, registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped emergency stop says which windows there are, and in what state, so the
    release manager sees the name to type (not a command that cannot help)."""
    from typer.testing import CliRunner

    from rollout.cli import app

    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    with pytest.raises(BadInput, match="no brown-out window named 'drill': the registry has none"):
        brownouts.end_now(registry, "drill", actor="rm", reason="x")
    brownouts.schedule(registry, plan, actor="rm")
    brownouts.schedule(registry, soon(plan), actor="rm")
    brownouts.start_now(registry, "drill", actor="rm", reason="rehearsal")

    result = CliRunner().invoke(app, ["brownout", "end", "dril", "--reason", "stop"])

    assert result.exit_code == 2
    assert " ".join(result.stderr.split()).endswith(
        "no brown-out window named 'dril': the registry has 'brownout-1' (ended), "
        "'brownout-2' (ended) and 'drill' (active)"
    )
    assert brownouts.no_window_named("brownout-3", [], plan) == (
        "no brown-out window named 'brownout-3': the registry has none (`rollout brownout "
        "schedule --apply` creates the plan's windows)"
    )
    started = CliRunner().invoke(app, ["brownout", "start", "dril", "--reason", "drill"])
    assert started.exit_code == 2
    assert " ".join(started.stderr.split()).endswith("'brownout-2' (ended) and 'drill' (active)")
    unscheduled = plan.model_copy(
        update={
            "brownouts": [*plan.brownouts, Brownout(name="late", starts_at=datetime(2022, 4, 1))]
        }
    )
    assert brownouts.no_window_named("late", brownouts.status(registry), unscheduled) == (
        "no brown-out window named 'late' in the registry: plan npm-2022 names it, but nobody "
        "scheduled it yet (`rollout brownout schedule --apply` creates the plan's windows)"
    )


def _at_once(
    monkeypatch: pytest.MonkeyPatch,
    decide: str,
    first: Callable[[], object],
    second: Callable[[], object],
) -> tuple[object, object]:
    """Run ``first`` and, once ``first`` has made its decision (``decide``, one of
    brownouts' _start_values, _end_values) but not yet written it, ``second`` in another
    thread: two runs at once, each past its reading before the other wrote. ``first``
    waits (up to a few seconds) for ``second`` to finish before writing. Returns what
    each returned, or the exception it raised."""
    checked = getattr(brownouts, decide)
    decided, second_done = threading.Event(), threading.Event()
    results: dict[str, object] = {}

    def decide_then_wait(window: brownouts.WindowState, now: datetime) -> Any:
        values = checked(window, now)
        if not decided.is_set():
            decided.set()
            second_done.wait(3)  # the second blocks on the windows' lock: wait no more
        return values

    def running(key: str, call: Callable[[], object], then: threading.Event | None) -> None:
        try:
            results[key] = call()
        except Exception as error:  # the test reads which one refused
            results[key] = error
        finally:
            if then is not None:
                then.set()

    monkeypatch.setattr(brownouts, decide, decide_then_wait)
    one = threading.Thread(target=running, args=("first", first, None))
    one.start()
    assert decided.wait(10)
    two = threading.Thread(target=running, args=("second", second, second_done))
    two.start()
    one.join(60)
    two.join(60)
    return results["first"], results["second"]


@pytest.mark.parametrize("change", [brownouts.start_now, brownouts.end_now])
def test_starting_or_ending_a_window_needs_a_reason(
    registry: Registry, plan: Plan, change: Callable[..., object]
) -> None:
    """The audit ledger is the only record of why a window left its schedule: a blank
    --reason is refused, as `cohorts release` and `notify withdraw` refuse one, and the
    window is as it was, with nothing audited."""
    brownouts.schedule(registry, soon(plan), actor="rm")
    with pytest.raises(BadInput, match="say why"):
        change(registry, "drill", actor="rm", reason="  ")
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [("drill", "scheduled")]
    with registry.engine.connect() as connection:
        audited = connection.execute(
            select(Action.action).where(Action.action.in_(["brownout_started", "brownout_ended"]))
        )
        assert audited.all() == []


def test_of_two_stops_at_once_only_the_first_ends_the_window(
    registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person and the brownout-end deployment at once: the second is refused, and the
    window ends once, audited once."""
    brownouts.schedule(registry, soon(plan), actor="rm")
    brownouts.start_now(registry, "drill", actor="rm", reason="rehearsal")
    first, second = _at_once(
        monkeypatch,
        "_end_values",
        lambda: brownouts.end_now(registry, "drill", actor="deployment", reason="planned end"),
        lambda: brownouts.end_now(registry, "drill", actor="rm", reason="login errors"),
    )
    assert isinstance(first, brownouts.WindowState) and first.state == "ended early"
    assert isinstance(second, GuardRefused)
    assert "brown-out drill has already ended early" in str(second)
    with registry.engine.connect() as connection:
        stops = (
            connection.execute(select(Action.actor).where(Action.action == "brownout_ended"))
            .scalars()
            .all()
        )
    assert stops == ["deployment"]


def test_of_two_overlapping_windows_started_at_once_only_one_starts(
    registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two release managers start two windows at once, each window clear of the other
    as it was read: started now, they would overlap. Exactly one starts; the other is
    refused (exit 3), naming the window that holds, and nothing of it is written."""
    now = utc_now().replace(microsecond=0)
    # An hour each, days apart: each started now is clear of the other as scheduled.
    first = Brownout(name="first", starts_at=now + timedelta(days=2), hours=1)
    second = Brownout(name="second", starts_at=now + timedelta(days=4), hours=1)
    brownouts.schedule(registry, plan.model_copy(update={"brownouts": [first, second]}), actor="rm")
    started, refused = _at_once(
        monkeypatch,
        "_start_values",
        lambda: brownouts.start_now(registry, "first", actor="ann", reason="rehearsal"),
        lambda: brownouts.start_now(registry, "second", actor="bob", reason="rehearsal"),
    )
    assert isinstance(started, brownouts.WindowState) and started.state == "active"
    assert isinstance(refused, GuardRefused)
    assert refused.exit_code == 3
    assert "brown-out second started now" in str(refused)
    assert "would overlap first (active" in str(refused)
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("first", "active"),
        ("second", "scheduled"),
    ]
    with registry.engine.connect() as connection:
        starts = connection.execute(
            select(Action.actor).where(Action.action == "brownout_started")
        ).scalars()
        assert list(starts) == ["ann"]


def test_a_window_started_while_a_schedule_was_previewed_is_not_moved(
    registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The schedule read the window as scheduled; `brownout start` began it before the
    schedule wrote: the schedule is refused and the active window stands."""
    drill = soon(plan)
    brownouts.schedule(registry, drill, actor="rm")
    later = drill.brownouts[0].model_copy(
        update={"starts_at": drill.brownouts[0].starts_at + timedelta(days=1)}
    )
    read = brownouts.status

    def started_meanwhile(registry: Registry, at: datetime | None = None) -> Any:
        as_read = read(registry, at)
        monkeypatch.setattr(brownouts, "status", read)
        brownouts.start_now(registry, "drill", actor="oncall", reason="rehearsal")
        return as_read

    monkeypatch.setattr(brownouts, "status", started_meanwhile)
    moving = drill.model_copy(update={"brownouts": [later]})
    with pytest.raises(GuardRefused, match="changed by another run meanwhile"):
        brownouts.schedule(registry, moving, actor="rm")
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [("drill", "active")]


def test_a_window_created_by_another_schedule_meanwhile_is_a_refusal(
    registry: Registry, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = brownouts.status

    def created_meanwhile(registry: Registry, at: datetime | None = None) -> Any:
        as_read = read(registry, at)
        monkeypatch.setattr(brownouts, "status", read)
        brownouts.schedule(registry, plan, actor="other")
        return as_read

    monkeypatch.setattr(brownouts, "status", created_meanwhile)
    with pytest.raises(GuardRefused, match="changed by another run meanwhile"):
        brownouts.schedule(registry, plan, actor="rm")
    with registry.engine.connect() as connection:
        creators = connection.execute(select(BrownoutWindow.created_by)).scalars().all()
    assert creators == ["other", "other"]


class Interrupted(Exception):
    """What kills a run between two batches, here (in life: a crash, a deploy)."""


def _enrolled_at(registry: Registry) -> dict[str, datetime | None]:
    with registry.engine.connect() as connection:
        rows = connection.execute(select(Account.username, Account.elv_enrolled_at)).all()
    return {username: at for username, at in rows}


def test_enroll_all_is_resumable_and_audited_per_batch(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    def interrupt_after_the_first_batch(done: int, total: int) -> None:
        raise Interrupted(f"stopped at {done}/{total}")

    # The first batch (kim, lee) is committed, then the run dies.
    with pytest.raises(Interrupted, match="stopped at 2/3"):
        brownouts.enroll_all(
            registry, plan, actor="rm", batch_size=2, progress=interrupt_after_the_first_batch
        )
    first = _enrolled_at(registry)
    assert first["kim"] is not None and first["lee"] is not None and first["max"] is None
    with registry.engine.connect() as connection:
        [(state, summary)] = connection.execute(
            select(PlanRun.state, PlanRun.summary).where(PlanRun.plan == "elv")
        ).all()
    assert (state, summary) == ("failed", {"enrolled": 2})

    # The rerun takes only who is left, and leaves the others' times alone.
    seen: list[tuple[int, int]] = []
    assert (
        brownouts.enroll_all(
            registry,
            plan,
            actor="rm",
            batch_size=2,
            progress=lambda done, total: seen.append((done, total)),
        )
        == 1
    )
    assert seen == [(1, 1)]
    second = _enrolled_at(registry)
    assert second["kim"] == first["kim"] and second["lee"] == first["lee"]
    assert second["max"] is not None
    assert required(registry, accounts["kim"], utc_now() + timedelta(seconds=1))
    assert not required(registry, accounts["lee"], utc_now())
    assert brownouts.enroll_all(registry, plan, actor="rm") == 0
    with registry.engine.connect() as connection:
        audited = connection.execute(
            select(Action.details).where(Action.action == "elv_enrolled")
        ).scalars()
        counts = sorted((d["first_id"], d["last_id"], d["count"]) for d in audited)
    # Each account audited in exactly one batch: once, across the two runs.
    assert counts == [
        (accounts["kim"], accounts["lee"], 2),
        (accounts["max"], accounts["max"], 1),
    ]


def test_windows_given_with_offsets_are_stored_in_utc_and_stay_unchanged(
    registry: Registry, tmp_path: Path
) -> None:
    text = (ROOT / "plans" / "npm-2022.yaml").read_text()
    text = text.replace("starts_at: 2022-02-16T00:00:00", "starts_at: 2022-02-16T02:00:00+02:00")
    text = text.replace("starts_at: 2022-02-23T00:00:00", "starts_at: 2022-02-22T19:00:00-05:00")
    path = tmp_path / "offsets.yaml"
    path.write_text(text)
    offsets = load_plan(path)
    brownouts.schedule(registry, offsets, actor="rm")
    assert [(w.name, w.starts_at, w.ends_at) for w in brownouts.status(registry)] == [
        ("brownout-1", datetime(2022, 2, 16), datetime(2022, 2, 17)),
        ("brownout-2", datetime(2022, 2, 23), datetime(2022, 2, 24)),
    ]
    assert [what for _, what in brownouts.schedule_preview(registry, offsets)] == [
        "unchanged (ended)",
        "unchanged (ended)",
    ]
    brownouts.schedule(registry, offsets, actor="rm")  # not refused: nothing moves


def test_a_plan_built_in_code_with_an_offset_is_compared_in_utc(
    registry: Registry, plan: Plan
) -> None:
    brownouts.schedule(registry, plan, actor="rm")
    # model_copy skips validation: the comparison itself must normalise.
    shifted = plan.brownouts[0].model_copy(
        update={"starts_at": datetime(2022, 2, 16, 1, tzinfo=timezone(timedelta(hours=1)))}
    )
    aware = plan.model_copy(update={"brownouts": [shifted]})
    assert brownouts.schedule_preview(registry, aware) == [("brownout-1", "unchanged (ended)")]
    assert datetime(2022, 2, 16, tzinfo=UTC) == shifted.starts_at


@postgres_only
def test_enroll_all_whose_run_lock_session_ends_stops_before_its_next_batch(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """PostgreSQL: the elv lock went with its session (a server restart, a pooler, a
    keepalive timeout), silently; another enrolment may be at work: no batch more."""

    def end_the_lock_session(done: int, total: int) -> None:
        end_run_lock_session(registry, "elv")

    with pytest.raises(locks.RunLockLost, match="the elv run lock was lost"):
        brownouts.enroll_all(
            registry, plan, actor="rm", batch_size=2, progress=end_the_lock_session
        )
    enrolled = _enrolled_at(registry)
    assert enrolled["kim"] is not None and enrolled["max"] is None  # the first batch only
    assert brownouts.enroll_all(registry, plan, actor="rm", batch_size=2) == 1


def test_enroll_all_waits_for_the_plans_day_and_refuses_a_plan_without_elv(
    registry: Registry,
    plan: Plan,
    accounts: dict[str, int],
    registry_url: str,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Enrolled ahead of enroll_all_on (2022-03-01), the accounts its heads-up was to
    warn meet login challenges unannounced, and the heads-up never goes (its audience,
    accounts without 2FA nor ELV, is empty); a plan without ELV enrols nobody."""
    from typer.testing import CliRunner

    from rollout.cli import app

    def runs() -> int:
        with registry.engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(PlanRun)).scalar_one()

    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    cli = CliRunner()
    with use_clock(SimulatedClock(datetime(2022, 2, 22, 9))):
        with pytest.raises(GuardRefused, match="enrols every account in ELV on 2022-03-01"):
            brownouts.enroll_all(registry, plan, actor="rm")
        applied = cli.invoke(app, ["elv", "enroll-all", "--apply"])
        assert applied.exit_code == 3 and "pass --early" in applied.stderr
        preview = cli.invoke(app, ["elv", "enroll-all"])
        assert preview.exit_code == 0
        assert "Not due yet: plan npm-2022 enrols every account in ELV on 2022-03-01" in (
            " ".join(preview.stderr.split())
        )
        assert set(_enrolled_at(registry).values()) == {None} and runs() == 0
        without_elv = plan.model_copy(update={"elv": None})
        with (
            use_clock(SimulatedClock(datetime(2022, 3, 1, 9))),
            pytest.raises(GuardRefused, match="has no elv section"),
        ):
            brownouts.enroll_all(registry, without_elv, actor="rm")
        assert set(_enrolled_at(registry).values()) == {None} and runs() == 0
        # The release manager's call, as phase enforce's --early.
        early = cli.invoke(app, ["elv", "enroll-all", "--apply", "--early"])
        assert early.exit_code == 0 and "enrolled 3 accounts" in early.stderr
    assert set(_enrolled_at(registry)) == set(accounts)
    assert None not in _enrolled_at(registry).values()


@pytest.mark.parametrize("batch_size", [0, -1])
def test_enroll_all_refuses_a_batch_size_below_one(
    registry: Registry, plan: Plan, accounts: dict[str, int], batch_size: int
) -> None:
    with pytest.raises(BadInput, match=f"batch size {batch_size}: must be at least 1"):
        brownouts.enroll_all(registry, plan, actor="rm", batch_size=batch_size)
    with registry.engine.connect() as connection:
        assert (
            connection.execute(
                select(func.count())
                .select_from(Account)
                .where(Account.elv_enrolled_at.is_not(None))
            ).scalar_one()
            == 0
        )


def heads_ups(registry: Registry) -> dict[str, tuple[str, str | None, str]]:
    """{username: (state, skip reason, starts_at told)} of the brown-out heads-ups."""
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(
                Account.username,
                Notification.state,
                Notification.skip_reason,
                Notification.context,
            )
            .join(Account, Account.id == Notification.account_id)
            .where(Notification.email == "brownout_heads_up")
        ).all()
    return {u: (state, why, context["starts_at"]) for u, state, why, context in rows}


def test_a_cancelled_brownout_sends_no_heads_up_and_withdraws_the_queued_ones(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """Queued three days ahead, then the window is cancelled: the unsent heads-ups are
    withdrawn, and queueing again adds none (it told every account without 2FA of a
    rehearsal that was not coming)."""
    from rollout.notify.queue import queue_due, queue_preview

    in_five_days = utc_now().replace(microsecond=0) + timedelta(days=5)
    drill = plan.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days)], "elv": None}
    )
    brownouts.schedule(registry, drill, actor="rm")
    heads_up_day = in_five_days.date() - timedelta(days=3)
    with on_the_morning_of(heads_up_day):
        queue_due(registry, drill, heads_up_day, actor="rm")
    told = in_five_days.isoformat()
    assert heads_ups(registry) == {"kim": ("queued", None, told), "max": ("queued", None, told)}

    brownouts.end_now(registry, "drill", actor="rm", reason="cancelled: login service change")
    withdrawn = ("skipped", "withdrawn: brown-out drill ended", told)
    assert heads_ups(registry) == {"kim": withdrawn, "max": withdrawn}
    assert [o.occasion.email for o in queue_preview(registry, drill, heads_up_day)] == []
    with on_the_morning_of(heads_up_day):
        assert queue_due(registry, drill, heads_up_day, actor="rm") == []


def test_a_brownout_heads_up_goes_to_no_account_in_elv_already(
    registry: Registry, plan: Plan, factories: None
) -> None:
    """kim and max have no 2FA, and max opted in to ELV (the trial): every login of his
    meets an emailed code already, so a window of ELV for all changes nothing for him and
    "a rehearsal for when this becomes permanent" is false. He is not in the heads-up's
    audience, as he is not in ELV's own (accounts without 2FA nor ELV); lee uses 2FA."""
    from rollout.notify.queue import queue_due

    AccountFactory(username="kim")
    AccountFactory(username="lee", with_totp=True)
    AccountFactory(username="max", elv_enrolled_at=datetime(2022, 1, 2))
    in_five_days = utc_now().replace(microsecond=0) + timedelta(days=5)
    drill = plan.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days)], "elv": None}
    )
    brownouts.schedule(registry, drill, actor="rm")
    heads_up_day = in_five_days.date() - timedelta(days=3)
    with on_the_morning_of(heads_up_day):
        queue_due(registry, drill, heads_up_day, actor="rm")
    assert heads_ups(registry) == {"kim": ("queued", None, in_five_days.isoformat())}


def test_a_heads_up_gives_the_window_as_scheduled_in_the_registry(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """The plan file moved the window by a day but `brownout schedule` has not run: the
    registry's window is the one that will run, so the heads-up tells its times."""
    from rollout.notify.queue import queue_due

    in_five_days = utc_now().replace(microsecond=0) + timedelta(days=5)
    scheduled = plan.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days)], "elv": None}
    )
    brownouts.schedule(registry, scheduled, actor="rm")
    moved = scheduled.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days + timedelta(days=1))]}
    )
    with on_the_morning_of(in_five_days.date() - timedelta(days=2)):
        queue_due(registry, moved, in_five_days.date() - timedelta(days=2), actor="rm")
    assert {told for _, _, told in heads_ups(registry).values()} == {in_five_days.isoformat()}


def test_a_window_whose_heads_up_went_is_not_moved_unannounced(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """The heads-ups told kim and max the window's times (queued, they hold them too);
    none goes again, so `brownout schedule` of a moved window brought the rehearsal a
    day early unannounced. Refused, naming the way: cancel it, plan another."""
    from rollout.notify.queue import queue_due

    in_five_days = utc_now().replace(microsecond=0) + timedelta(days=5)
    drill = plan.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days)], "elv": None}
    )
    brownouts.schedule(registry, drill, actor="rm")
    earlier = drill.model_copy(
        update={"brownouts": [Brownout(name="drill", starts_at=in_five_days - timedelta(days=1))]}
    )
    # Before any heads-up, the window moves (and back).
    assert brownouts.schedule_preview(registry, earlier)[0][1].startswith("move to")
    heads_up_day = in_five_days.date() - timedelta(days=3)
    with on_the_morning_of(heads_up_day):
        queue_due(registry, drill, heads_up_day, actor="rm")
    [(window_name, what)] = brownouts.schedule_preview(registry, earlier)
    assert window_name == "drill"
    assert what == (
        "refused: its heads-up went (or is queued) to 2 accounts, telling them "
        f"{in_five_days:%Y-%m-%d %H:%M} UTC + 24 h; cancel it (`rollout brownout end drill`) and "
        "plan the new window under another name, which gets a heads-up of its own"
    )
    with pytest.raises(GuardRefused, match="drill: refused: its heads-up went"):
        brownouts.schedule(registry, earlier, actor="rm")
    [window] = brownouts.status(registry)
    assert window.starts_at == in_five_days


def test_enroll_all_moved_earlier_after_its_heads_ups_waits_for_the_day_they_told(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """The heads-ups (sent 2022-02-22) told kim and max "from Tuesday 1 March"; the plan
    then moved enroll_all_on to 25 February, and enrol-all on the 25th met them with
    login challenges before the day they were given. It waits for it (--early to
    enrol anyway), and plan check says so."""
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from rollout.phases.drift import elv_day_told, plan_drift
    from tests.support.outbox import Recording

    elv_only = plan.model_copy(update={"brownouts": [], "phases": plan.phases[:1]})
    with on_the_morning_of(date(2022, 2, 22)):
        queue_due(registry, elv_only, date(2022, 2, 22), actor="rm")
        drain(registry, elv_only, Recording())
    assert elv_day_told(registry) == date(2022, 3, 1)
    assert elv_only.elv is not None
    earlier = elv_only.model_copy(
        update={"elv": elv_only.elv.model_copy(update={"enroll_all_on": date(2022, 2, 25)})}
    )
    _, warnings = plan_drift(registry, earlier)
    assert (
        "elv: the heads-ups sent told accounts they would be enrolled on 2022-03-01, the "
        "plan now says 2022-02-25 (`elv enroll-all` refuses before the date told)"
    ) in warnings
    with (
        use_clock(SimulatedClock(datetime(2022, 2, 25, 9))),
        pytest.raises(GuardRefused, match="told accounts they would be enrolled on 2022-03-01"),
    ):
        brownouts.enroll_all(registry, earlier, actor="rm")
    assert set(_enrolled_at(registry).values()) == {None}
    with use_clock(SimulatedClock(datetime(2022, 3, 1, 9))):
        assert brownouts.enroll_all(registry, earlier, actor="rm") == 3


def test_plan_show_says_what_became_of_a_heads_up_never_sent(
    registry: Registry, plan: Plan
) -> None:
    """A heads-up never queued is "pending" only while it may still go: once its
    brown-out was ended early (or began, or is over) it is "not sent", never pending
    for good. (A mailing whose last day is gone reads "missed": test_enforce.)"""
    from rollout.phases.timeline import step_states

    with use_clock(SimulatedClock(datetime(2022, 2, 1, 6))):
        brownouts.schedule(registry, plan, actor="rm")
    with use_clock(SimulatedClock(datetime(2022, 2, 5, 6))):
        brownouts.end_now(registry, "brownout-1", actor="rm", reason="called off")

    def heads_ups(at: datetime) -> dict[str, str]:
        return {
            s.step.subject: s.state
            for s in step_states(registry, plan, at)
            if s.step.mailing is not None and s.step.mailing.email == "brownout_heads_up"
        }

    assert heads_ups(datetime(2022, 2, 4)) == {"brownout-1": "pending", "brownout-2": "pending"}
    assert heads_ups(datetime(2022, 2, 14)) == {
        "brownout-1": "not sent: brown-out ended early",
        "brownout-2": "pending",
    }
    # Moved a month on in the registry: its heads-up may still go (the queue announces
    # the window's own times) until the window begins.
    with registry.engine.begin() as connection:
        connection.execute(
            BrownoutWindow.__table__.update()
            .where(BrownoutWindow.name == "brownout-2")
            .values(starts_at=datetime(2022, 3, 23), ends_at=datetime(2022, 3, 24))
        )
    assert heads_ups(datetime(2022, 2, 24))["brownout-2"] == "pending"
    assert heads_ups(datetime(2022, 3, 25))["brownout-2"] == "not sent: brown-out ended"


@pytest.mark.parametrize(
    ("scheduled", "begun"),
    [(True, "not sent: brown-out active"), (False, "missed")],
    ids=["window-scheduled", "plan-only"],
)
def test_plan_show_reads_an_afternoon_windows_heads_up_pending_until_the_window_begins(
    registry: Registry, plan: Plan, scheduled: bool, begun: str
) -> None:
    """brownout-1 starts at 14:00 UTC on 02-16 and its heads-up was never queued: on
    that morning `notify queue` still queues it, so it is pending, not missed, until
    the window begins, by the registry's window or, not scheduled, the plan's."""
    from rollout.phases.timeline import step_states
    from tests.support.outbox import AFTERNOON, with_an_afternoon_brownout

    afternoon = with_an_afternoon_brownout(plan)
    if scheduled:
        with use_clock(SimulatedClock(datetime(2022, 2, 1, 6))):
            brownouts.schedule(registry, afternoon, actor="rm")

    def heads_up(at: datetime) -> str:
        [state] = [
            s.state
            for s in step_states(registry, afternoon, at)
            if s.step.key == "heads-up brownout-1"
        ]
        return state

    assert heads_up(datetime(2022, 2, 16, 9)) == "pending"
    assert heads_up(AFTERNOON - timedelta(minutes=1)) == "pending"
    assert heads_up(AFTERNOON) == begun


def test_a_heads_up_of_a_window_moved_later_in_the_registry_is_queued_until_it_begins(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """brownout-2's window, planned for 02-23, runs on 03-23 in the registry (scheduled
    apart from the plan). On 02-24 its heads-up was never queued: `plan show` reads it
    pending, since the window is still ahead, and the day's `notify queue` queues it,
    with the registry's times (it judged it by the plan's day, and it stayed pending
    for a month, never queued)."""
    from rollout.notify.queue import queue_due
    from rollout.phases.timeline import step_states

    with use_clock(SimulatedClock(datetime(2022, 2, 1, 6))):
        brownouts.schedule(registry, plan, actor="rm")
    with registry.engine.begin() as connection:
        connection.execute(
            BrownoutWindow.__table__.update()
            .where(BrownoutWindow.name == "brownout-2")
            .values(starts_at=datetime(2022, 3, 23), ends_at=datetime(2022, 3, 24))
        )
    [shown] = [
        s.state
        for s in step_states(registry, plan, datetime(2022, 2, 24, 6))
        if s.step.key == "heads-up brownout-2"
    ]
    assert shown == "pending"
    with on_the_morning_of(date(2022, 2, 24)):
        queued = {
            o.occasion.step: o for o in queue_due(registry, plan, date(2022, 2, 24), actor="rm")
        }
    assert queued["heads-up brownout-2"].added == 2
    assert {told for _, _, told in heads_ups(registry).values()} == {"2022-03-23T00:00:00"}


def test_a_window_started_early_may_not_overlap_another(registry: Registry, plan: Plan) -> None:
    """Windows never overlap (the plan's rule, which brownout_impact reads them by): the
    second started early while the first runs would; once the first is ended, it may."""
    now = utc_now().replace(microsecond=0)
    first = Brownout(name="first", starts_at=now + timedelta(hours=1))
    second = Brownout(name="second", starts_at=now + timedelta(hours=26))
    brownouts.schedule(registry, plan.model_copy(update={"brownouts": [first, second]}), actor="rm")
    brownouts.start_now(registry, "first", actor="rm", reason="rehearsal")
    with pytest.raises(GuardRefused, match=r"second .*would overlap first"):
        brownouts.change_preview(registry, "second", "start")
    with pytest.raises(GuardRefused, match=r"second .*would overlap first"):
        brownouts.start_now(registry, "second", actor="rm", reason="both at once")
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("first", "active"),
        ("second", "scheduled"),
    ]
    brownouts.end_now(registry, "first", actor="rm", reason="done")
    assert brownouts.start_now(registry, "second", actor="rm", reason="next").state == "active"


def test_a_window_scheduled_over_one_another_plan_made_is_refused(
    registry: Registry, plan: Plan
) -> None:
    """Another plan's window, still in the registry and still to come, would run
    alongside this plan's: scheduling says so and schedules nothing, until the other is
    cancelled (a plan cancels only the windows it scheduled itself)."""
    tomorrow = utc_now().replace(microsecond=0) + timedelta(days=1)
    other = plan.model_copy(
        update={"name": "other", "brownouts": [Brownout(name="drill", starts_at=tomorrow)]}
    )
    brownouts.schedule(registry, other, actor="rm")
    ours = plan.model_copy(
        update={"brownouts": [Brownout(name="drill-2", starts_at=tomorrow + timedelta(hours=2))]}
    )
    [(name, what)] = brownouts.schedule_preview(registry, ours)
    assert name == "drill-2" and what.startswith("refused: would overlap drill (scheduled")
    with pytest.raises(GuardRefused, match="would overlap drill"):
        brownouts.schedule(registry, ours, actor="rm")
    assert [w.name for w in brownouts.status(registry)] == ["drill"]
    brownouts.end_now(registry, "drill", actor="rm", reason="not this campaign's")
    brownouts.schedule(registry, ours, actor="rm")
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("drill", "ended early"),
        ("drill-2", "scheduled"),
    ]


def test_a_window_the_plan_no_longer_names_does_not_start_once_scheduling_follows_the_plan(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """The plan drops one brown-out not begun and renames the one under way. Until
    scheduling follows the plan, both still apply at their times, and `plan check`
    says so; scheduling then cancels the one not begun (previewed, audited: it never
    starts) and leaves the one under way to its end, saying how to stop it now."""
    now = utc_now().replace(microsecond=0)
    running = Brownout(name="running", starts_at=now + timedelta(hours=1))
    dropped = Brownout(name="dropped", starts_at=now + timedelta(days=3))
    brownouts.schedule(
        registry, plan.model_copy(update={"brownouts": [running, dropped]}), actor="rm"
    )
    brownouts.start_now(registry, "running", actor="rm", reason="rehearsal")
    later = Brownout(name="later", starts_at=now + timedelta(days=5))
    edited = plan.model_copy(update={"brownouts": [later]})
    in_dropped = now + timedelta(days=3, hours=2)
    assert required(registry, accounts["kim"], in_dropped)

    _, warnings = drift.plan_drift(registry, edited)
    said = " ".join(w for w in warnings if w.startswith("brown-out"))
    assert "brown-out dropped is scheduled in the registry" in said
    assert (
        "no longer in plan npm-2022: it starts by itself at its time unless the next "
        "daily run cancels it first" in said
    )
    assert "brown-out running is active in the registry" in said
    assert "`rollout brownout end running --reason ... --apply` stops it now" in said

    preview = dict(brownouts.schedule_preview(registry, edited))
    assert preview["dropped"].startswith("cancel: no longer in plan npm-2022")
    assert preview["running"].startswith("left active until")
    assert brownouts.schedule_refusal(list(preview.items())) is None
    brownouts.schedule(registry, edited, actor="rm")

    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("running", "active"),
        ("dropped", "ended early"),
        ("later", "scheduled"),
    ]
    assert not required(registry, accounts["kim"], in_dropped)
    with registry.engine.connect() as connection:
        ended = connection.execute(
            select(Action.subject, Action.reason).where(Action.action == "brownout_ended")
        ).all()
    assert ended == [("brownout:dropped", "cancelled: no longer in plan npm-2022")]
    _, warnings = drift.plan_drift(registry, edited)
    assert [w for w in warnings if "dropped" in w] == []
    # Scheduling again changes nothing more (the one under way is still said).
    assert dict(brownouts.schedule_preview(registry, edited))["later"] == "unchanged (scheduled)"
    assert "dropped" not in dict(brownouts.schedule_preview(registry, edited))


def test_the_daily_run_s_call_off_cancels_only_the_dropped_windows_not_begun(
    registry: Registry, plan: Plan, accounts: dict[str, int]
) -> None:
    """What the daily run does without anyone scheduling the plan: the window the plan
    dropped that has not begun no longer challenges anyone at its time; the plan's own
    window is not created nor moved, the one under way runs on (as `schedule` leaves it),
    and a second call has nothing to do."""
    now = utc_now().replace(microsecond=0)
    running = Brownout(name="running", starts_at=now + timedelta(hours=1))
    dropped = Brownout(name="dropped", starts_at=now + timedelta(days=3))
    kept = Brownout(name="kept", starts_at=now + timedelta(days=6))
    brownouts.schedule(
        registry, plan.model_copy(update={"brownouts": [running, dropped, kept]}), actor="rm"
    )
    brownouts.start_now(registry, "running", actor="rm", reason="rehearsal")
    later = Brownout(name="later", starts_at=now + timedelta(days=9))
    edited = plan.model_copy(update={"brownouts": [kept, later]})
    in_dropped = now + timedelta(days=3, hours=2)
    assert required(registry, accounts["kim"], in_dropped)

    cancelled = brownouts.call_off_dropped_windows(registry, edited, actor="daily")
    assert [(w.name, w.state) for w in cancelled] == [("dropped", "ended early")]
    assert not required(registry, accounts["kim"], in_dropped)
    assert [(w.name, w.state) for w in brownouts.status(registry)] == [
        ("running", "active"),
        ("dropped", "ended early"),
        ("kept", "scheduled"),
    ]
    with registry.engine.connect() as connection:
        ended = connection.execute(
            select(Action.subject, Action.reason, Action.actor).where(
                Action.action == "brownout_ended"
            )
        ).all()
    assert ended == [("brownout:dropped", "cancelled: no longer in plan npm-2022", "daily")]
    assert brownouts.call_off_dropped_windows(registry, edited, actor="daily") == []


def test_plan_check_says_a_window_dated_otherwise_keeps_the_registrys_times(
    registry: Registry, plan: Plan
) -> None:
    now = utc_now().replace(microsecond=0)
    drill = Brownout(name="drill", starts_at=now + timedelta(days=2))
    brownouts.schedule(registry, plan.model_copy(update={"brownouts": [drill]}), actor="rm")
    moved = drill.model_copy(update={"starts_at": now + timedelta(days=4)})
    _, warnings = drift.plan_drift(registry, plan.model_copy(update={"brownouts": [moved]}))
    [said] = [w for w in warnings if w.startswith("brown-out")]
    assert "brown-out drill is scheduled in the registry" in said
    assert "the registry's times apply until `rollout brownout schedule --apply` moves it" in said


def _withdrawn_by_enrolling_early(
    registry: Registry,
    plan: Plan,
    email: str,
    queued_on: date,
    previewed: str,
    monkeypatch: pytest.MonkeyPatch,
    registry_url: str,
) -> None:
    """EMAIL queued on QUEUED_ON (to kim and max), then `elv enroll-all` previewed
    (saying PREVIEWED) and run --early the next morning, and the queue drained: none
    goes, each is skipped as withdrawn with the enrolment."""
    from typer.testing import CliRunner

    from rollout.cli import app
    from rollout.notify.drain import drain
    from rollout.notify.queue import queue_due
    from tests.support.outbox import Recording

    with on_the_morning_of(queued_on):
        queue_due(registry, plan, queued_on, actor="rm")
    with registry.engine.connect() as connection:
        queued = connection.execute(
            select(func.count())
            .select_from(Notification)
            .where(Notification.email == email, Notification.state == "queued")
        ).scalar_one()
    assert queued == 2  # kim and max: lee uses 2FA
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    enrolled_on = queued_on + timedelta(days=1)
    with use_clock(SimulatedClock(datetime.combine(enrolled_on, time(9)))):
        preview = CliRunner().invoke(app, ["elv", "enroll-all"])
        assert preview.exit_code == 0, preview.stderr
        assert previewed in preview.stderr
        assert brownouts.enroll_all(registry, plan, actor="rm", early=True) == 3
        sender = Recording()
        drain(registry, plan, sender)
    assert [m for m in sender.sent if m.email == email] == []
    with registry.engine.connect() as connection:
        states = connection.execute(
            select(Notification.state, Notification.skip_reason, func.count())
            .where(Notification.email == email)
            .group_by(Notification.state, Notification.skip_reason)
        ).all()
    assert states == [("skipped", "withdrawn: every account enrolled in ELV", queued)]


def test_enrolling_early_withdraws_the_elv_heads_ups_queued_and_not_sent(
    registry: Registry,
    plan: Plan,
    accounts: dict[str, int],
    registry_url: str,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queued on 22 February to tell the accounts "from 1 March", the heads-ups had not
    gone when `elv enroll-all --early` enrolled them on the 23rd: sent after it, they
    announced as to come what had been done. Withdrawn with the enrolment (the reason
    kept), as a brown-out's start withdraws its heads-up; none goes."""
    elv_only = plan.model_copy(update={"brownouts": [], "phases": plan.phases[:1]})
    _withdrawn_by_enrolling_early(
        registry,
        elv_only,
        "elv_enrollment",
        date(2022, 2, 22),
        "2 ELV heads-ups not sent yet are withdrawn with it",
        monkeypatch,
        registry_url,
    )
    with registry.engine.connect() as connection:
        withdrawals = connection.execute(
            select(func.count()).select_from(Action).where(Action.action == "emails_withdrawn")
        ).scalar_one()
    assert withdrawals == 1


def test_enrolling_early_withdraws_the_brownout_heads_ups_queued_and_not_sent(
    registry: Registry,
    plan: Plan,
    accounts: dict[str, int],
    registry_url: str,
    rollout_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Queued on 20 February for the window of the 23rd, the brown-out's heads-ups had
    not gone when `elv enroll-all --early` enrolled every account on the 21st: a
    brown-out's heads-up goes to accounts without 2FA nor ELV (its "rehearsal for when
    this becomes permanent" is false for one met by an emailed code at every login), and
    sent after the enrolment it told that to every account it went to. Withdrawn with
    the enrolment, as the ELV heads-ups are, counted by the preview; none goes."""
    first_phase = plan.model_copy(update={"phases": plan.phases[:1]})
    _withdrawn_by_enrolling_early(
        registry,
        first_phase,
        "brownout_heads_up",
        date(2022, 2, 20),
        "2 brown-out heads-ups not sent yet are withdrawn with it",
        monkeypatch,
        registry_url,
    )
