"""The demo's registry as it stood on the story's first day: what the sample dated later
(a factor enrolled or removed, a token made or revoked, a web session started or
revoked) is not in effect before its day, and is on its day."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

from sqlalchemy import select

from rollout.demo.story import replay, rewind
from rollout.registry import Registry
from rollout.registry.models import TfaFactor, Token, WebSession
from tests.factories import AccountFactory, FactorFactory, SessionFactory, TokenFactory

START = date(2022, 1, 1)
BEFORE = datetime(2021, 12, 1, 12)
FEB_2 = datetime(2022, 2, 2, 15)
MAR_3 = datetime(2022, 3, 3, 9)


def live(registry: Registry) -> dict[str, list[tuple[int, object]]]:
    """(account, what) of each factor, token and session in effect now."""
    with registry.engine.connect() as connection:
        return {
            "factors": sorted(
                connection.execute(
                    select(TfaFactor.account_id, TfaFactor.kind).where(
                        TfaFactor.removed_at.is_(None)
                    )
                ).all()
            ),
            "tokens": sorted(
                connection.execute(
                    select(Token.account_id, Token.name).where(Token.revoked_at.is_(None))
                ).all()
            ),
            "sessions": sorted(
                connection.execute(
                    select(WebSession.account_id, WebSession.created_at).where(
                        WebSession.revoked_at.is_(None)
                    )
                ).all()
            ),
        }


def test_the_samples_later_history_is_held_back_and_replayed_at_its_time(
    registry: Registry, factories: None, tmp_path: Path
) -> None:
    gave_up = AccountFactory(username="gave-up")
    late = AccountFactory(username="late")
    FactorFactory(account=gave_up, created_at=BEFORE, removed_at=FEB_2)
    FactorFactory(account=late, kind="webauthn", created_at=FEB_2, removed_at=MAR_3)
    TokenFactory(account=gave_up, name="old", created_at=BEFORE)
    TokenFactory(account=gave_up, name="revoked-later", created_at=BEFORE, revoked_at=FEB_2)
    TokenFactory(account=late, name="made-later", created_at=FEB_2)
    SessionFactory(account=late, created_at=FEB_2)
    SessionFactory(account=gave_up, created_at=BEFORE, revoked_at=MAR_3, revoked_reason="out")

    held = rewind(registry, tmp_path, START)
    before_feb = {
        "factors": [(gave_up.id, "totp")],
        "tokens": [(gave_up.id, "old"), (gave_up.id, "revoked-later")],
        "sessions": [(gave_up.id, BEFORE)],
    }
    assert live(registry) == before_feb

    # Days with nothing dated on them change nothing, nor the hours of a day before
    # what it dates (a job at 14:00 sees nothing of 15:00: its history up to its hour).
    with registry.engine.begin() as connection:
        replay(connection, held, datetime(2022, 2, 2))
        replay(connection, held, FEB_2)
    assert live(registry) == before_feb

    with registry.engine.begin() as connection:
        done = replay(connection, held, datetime(2022, 2, 3))
        again = replay(connection, held, datetime(2022, 2, 3))
    assert [row["name"] for row in done.added["tokens"]] == ["made-later"]
    assert again.added == {"tfa_factors": [], "tokens": [], "web_sessions": []}
    assert live(registry) == {
        "factors": [(late.id, "webauthn")],
        "tokens": [(gave_up.id, "old"), (late.id, "made-later")],
        "sessions": [(gave_up.id, BEFORE), (late.id, FEB_2)],
    }

    # Enforcement revoked the session first: it keeps that revocation, not the sample's.
    with registry.engine.begin() as connection:
        connection.execute(
            WebSession.__table__.update()
            .where(WebSession.account_id == gave_up.id)
            .values(revoked_at=FEB_2, revoked_reason="phase top-100")
        )
        done = replay(connection, held, datetime(2022, 3, 4))
    assert done.ended["web_sessions"] == []
    assert live(registry) == {
        "factors": [],
        "tokens": [(gave_up.id, "old"), (late.id, "made-later")],
        "sessions": [(late.id, FEB_2)],
    }
    with registry.engine.connect() as connection:
        revoked = dict(connection.execute(select(Token.name, Token.revoked_at)).all())
    assert revoked == {"old": None, "revoked-later": FEB_2, "made-later": None}


def test_the_samples_later_logins_and_publishes_are_dropped_and_an_old_story_s_files_too(
    registry: Registry, tmp_path: Path
) -> None:
    """The story writes its own logins and publishes from its first day: the sample's
    from then on would count twice (or before their day), and a previous story's files
    would be read again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rollout.demo.story import STORY_LOGINS, STORY_PUBLISHES

    times = pa.array([BEFORE, FEB_2], pa.timestamp("us", tz="UTC"))
    for folder, story_file in (("logins", STORY_LOGINS), ("publishes", STORY_PUBLISHES)):
        (tmp_path / folder).mkdir()
        pq.write_table(
            pa.table({"occurred_at": times, "username": ["ann", "ben"]}),
            tmp_path / folder / f"{folder}.parquet",
        )
        pq.write_table(pa.table({"occurred_at": times[:1]}), tmp_path / folder / story_file)

    rewind(registry, tmp_path, START)
    for folder in ("logins", "publishes"):
        assert [p.name for p in (tmp_path / folder).iterdir()] == [f"{folder}.parquet"]
        kept = pq.read_table(tmp_path / folder / f"{folder}.parquet")
        assert kept.column("username").to_pylist() == ["ann"]
