"""Every shipped plan besides the reference one told as a story (`make demo PLAN=...`) on
the tiny sample fitted to it: its own calendar, maintainers responding (enrolling,
replacing tokens, snoozing their deadlines), each phase enforced, the report written."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select, text

from rollout.core.config import load_settings
from rollout.demo.story import STORY_PUBLISHES
from rollout.phases import enforce
from rollout.registry import Registry
from rollout.registry.models import Account, Token
from tests.support.stories import play_fitted_story

OTHER_PLANS = sorted(
    path
    for path in (Path(__file__).resolve().parent.parent / "plans").glob("*.yaml")
    if path.stem != "npm-2022"
)


# Every plan on both backends. The long ones cost 40-90 s each: pypi-2023 spans two
# years of days over a 900-day download history.
STORY_CASES = [
    pytest.param(backend, path, id=f"{backend}-{path.stem}", marks=marks)
    for path in OTHER_PLANS
    for backend, marks in (("sqlite", ()), ("postgresql", pytest.mark.postgres))
]


@pytest.mark.parametrize(("backend", "path"), STORY_CASES)
def test_every_shipped_plan_tells_its_story_on_a_sample_fitted_to_it(
    backend: str,
    path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """`make demo PLAN=...`: the sample's download history fitted to the plan's cohort
    days, the plan played over its own calendar, maintainers responding; each phase is
    enforced, and what a token phase forbids is gone from its cohort by the end.
    Metrics every 4 weeks (and on each cohort day): plans span years."""
    registry_url = (
        f"sqlite:///{tmp_path / 'registry.db'}"
        if backend == "sqlite"
        else request.getfixturevalue("postgres_schema_url")
    )
    from rollout.core.plan import load_plan
    from rollout.demo.story import sample_window

    monkeypatch.setenv("ROLLOUT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROLLOUT_REGISTRY_URL", registry_url)
    settings = load_settings()
    plan = load_plan(path)
    end, _ = sample_window(plan)
    assert end == max(p.cohort_as_of for p in plan.phases)
    report = play_fitted_story(settings, plan)
    assert set(report.enforced) == {p.name for p in plan.phases}
    with Registry(settings.registry_url) as registry:
        for phase in plan.phases:
            did = report.enforced[phase.name] + report.tokens_revoked.get(phase.name, 0)
            if phase.does("revoke_tokens"):
                # Revoked by enforcement, or replaced by their maintainers before it.
                assert did + report.tokens_replaced > 0, phase.name
                assert enforce.preview_phase(registry, plan, phase).token_count == 0
            else:
                assert did > 0, phase.name
        # A revoked or expired token works no more, and one made later in the day not
        # yet: no use of one is recorded outside its life, and no publish through it.
        with registry.engine.connect() as connection:
            used_dead = connection.execute(
                text(
                    "select count(*) from tokens where last_used_at > revoked_at "
                    "or last_used_at > expires_at or last_used_at < created_at"
                )
            ).scalar_one()
            lives: dict[tuple[str, str], list[tuple[Any, Any, Any]]] = {}
            for username, kind, made, revoked, expires in connection.execute(
                select(
                    Account.username,
                    Token.kind,
                    Token.created_at,
                    Token.revoked_at,
                    Token.expires_at,
                ).join(Account, Account.id == Token.account_id)
            ):
                lives.setdefault((username, kind), []).append((made, revoked, expires))
        assert used_dead == 0
        publishes = pq.read_table(settings.landing_dir / "publishes" / STORY_PUBLISHES)
        for at, username, kind in zip(
            publishes.column("occurred_at").cast(pa.timestamp("us")).to_pylist(),
            publishes.column("username").to_pylist(),
            publishes.column("token_kind").to_pylist(),
            strict=True,
        ):
            assert any(
                made <= at and all(end is None or end > at for end in (revoked, expires))
                for made, revoked, expires in lives.get((username, kind), [])
            ), (at, username, kind)
        # Each snooze granted is answered by one email (snooze_reply), sent or on its way.
        with registry.engine.connect() as connection:
            granted, answered, sent = connection.execute(
                text(
                    "select (select count(*) from deadline_snoozes), count(*), "
                    "count(*) filter (where state = 'sent') from notifications "
                    "where email = 'snooze_reply' and occasion = 'granted'"
                )
            ).one()
        assert granted == answered == report.snoozed
        assert sent > 0 or not report.snoozed
    assert report.emails["sent"] > 0 and report.files is not None
    assert report.files.html.is_file()
    if any(p.deadline is not None for p in plan.phases):
        assert report.snoozed > 0
        with report.files.csvs["deadline_survival"].open() as handle:
            curve = list(csv.DictReader(handle))
        assert curve and float(curve[-1]["share_still_without"]) < 1
        # Who no deadline reaches (never sent the notice) is said, when there is anyone.
        with report.files.csvs["compliance_funnel"].open() as handle:
            unreached = sum(int(r["never_noticed"]) for r in csv.DictReader(handle))
        said = "were never sent the notice" in report.files.html.read_text()
        assert said == (unreached > 0)
    if any(p.does("revoke_tokens") and p.requires.no_classic_tokens for p in plan.phases):
        assert report.tokens_replaced > 0
    # Maintainers go on publishing through their tokens: the report's last 30 days show
    # it (the sample's own publishes end where the story begins).
    assert report.publishes > 0
    with report.files.csvs["publishes_daily"].open() as handle:
        recent = [r for r in csv.DictReader(handle) if r["via"] == "token"]
    assert sum(int(r["publishes"]) for r in recent) > 0
    assert "No publish events in the 30 days" not in report.files.html.read_text()
