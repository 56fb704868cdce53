"""What the registry knows of a token (revision 0009): its kind (npm's classic
read_only, publish and automation, and granular), whether it can publish and whether it
publishes without a second factor, its scopes and its expiry; and the sample's tokens
over time, as npm's campaigns found them."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from rollout import warehouse
from rollout.demo.sample import (
    CLASSIC_CREATION_ENDS,
    GRANULAR_SINCE,
    SHORT_WRITE_TOKENS_SINCE,
    TRUSTED_PUBLISHING_SINCE,
    generate_sample,
)
from rollout.registry import Registry
from rollout.registry.engine import session_scope
from rollout.registry.models import Token
from rollout.warehouse import ingest
from rollout.warehouse.extract import extract_registry
from tests.factories import AccountFactory, TokenFactory, bound_to

T0 = datetime(2025, 9, 1)


def test_a_classic_token_can_do_what_its_kind_does(registry: Registry) -> None:
    with bound_to(registry.engine):
        account = AccountFactory()
    with session_scope(registry.engine) as session:
        for kind in ("automation", "publish", "read_only"):
            session.add(Token(account_id=account.id, name=kind, kind=kind, created_at=T0))
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(Token.kind, Token.writes, Token.bypass_2fa).order_by(Token.kind)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("automation", True, True),
        ("publish", True, False),
        ("read_only", False, False),
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "read_only", "writes": True},
        {"kind": "read_only", "bypass_2fa": True},
        {"kind": "publish", "bypass_2fa": True},
        {"kind": "automation", "bypass_2fa": False},
        {"kind": "granular", "expires_at": T0},
        {"kind": "granular", "expires_at": T0 - timedelta(days=1)},
        {"kind": "fine-grained"},
    ],
    ids=str,
)
def test_a_token_that_claims_what_its_kind_cannot_is_refused(
    registry: Registry, fields: dict[str, object]
) -> None:
    with bound_to(registry.engine):
        account = AccountFactory()
    with pytest.raises(IntegrityError), session_scope(registry.engine) as session:
        session.add(Token(account_id=account.id, name="t", created_at=T0, **fields))


def test_a_granular_token_says_what_it_can_do(registry: Registry) -> None:
    with bound_to(registry.engine):
        TokenFactory(granular=True, created_at=T0, bypass_2fa=True, scopes=["pkg:left-pad"])
        TokenFactory(granular=True, created_at=T0, writes=False, expires_at=T0 + timedelta(7))
    with registry.engine.connect() as connection:
        rows = connection.execute(
            select(Token.writes, Token.bypass_2fa, Token.scopes, Token.expires_at).order_by(
                Token.id
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (True, True, ["pkg:left-pad"], T0 + timedelta(days=90)),
        (False, False, None, T0 + timedelta(days=7)),
    ]


@pytest.fixture(scope="module")
def sample_2025(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sample up to the end of npm's 2025 token campaign, its publish events
    loaded (every row valid: a quarantine limit of 0) and the registry extracted."""
    from rollout.registry.engine import make_engine
    from rollout.registry.migrate import upgrade

    folder = tmp_path_factory.mktemp("tokens")
    url = f"sqlite:///{folder / 'registry.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    with Registry(url) as registry:
        generate_sample(
            "small", 7, registry=registry, landing_dir=folder / "landing", end=date(2025, 12, 9)
        )
        with warehouse.open_warehouse(folder / "warehouse.duckdb") as con:
            report = ingest.ingest(con, [folder / "landing" / "publishes"], quarantine_limit=0.0)
            assert [f.status for f in report.files] == ["loaded"], report.files
            extract_registry(con, registry, ("accounts", "tfa_factors", "tokens"))
    return folder / "warehouse.duckdb"


def _one(database: Path, query: str, **params: object) -> tuple[object, ...]:
    with warehouse.open_warehouse(database, read_only=True) as con:
        return con.execute(query, params).fetchone() or ()


def test_the_sample_s_tokens_follow_npm_s_calendar(sample_2025: Path) -> None:
    tokens = "registry.tokens"
    (first_granular,) = _one(
        sample_2025, f"select min(created_at) from {tokens} where kind = 'granular'"
    )
    assert first_granular >= GRANULAR_SINCE
    # From 2025-11-05 no classic token can be made.
    assert (
        _one(
            sample_2025,
            f"select count(*) filter (where kind <> 'granular'), count(*) from {tokens} "
            "where created_at >= $since",
            since=CLASSIC_CREATION_ENDS,
        )[0]
        == 0
    )
    # Write tokens made since 2025-10-13 last 7 days by default, 90 at most.
    lifetimes = _one(
        sample_2025,
        "select list(distinct date_diff('day', created_at, expires_at) order by 1) "
        f"from {tokens} where kind = 'granular' and writes and created_at >= $since",
        since=SHORT_WRITE_TOKENS_SINCE,
    )[0]
    assert sorted(lifetimes) == [7, 90]
    # Classic tokens never expire; granular ones always do; none is used after it expired.
    assert _one(
        sample_2025,
        f"select count(*) from {tokens} where (kind = 'granular') <> (expires_at is not null) "
        "or last_used_at > expires_at",
    ) == (0,)


def test_most_publishing_tokens_were_classic_when_npm_s_2025_campaign_began(
    sample_2025: Path,
) -> None:
    classic, granular, bypassing = _one(
        sample_2025,
        "select count(*) filter (where kind <> 'granular'), "
        "count(*) filter (where kind = 'granular'), count(*) filter (where bypass_2fa) "
        "from registry.tokens where writes and created_at < $day "
        "and (revoked_at is null or revoked_at >= $day) "
        "and (expires_at is null or expires_at > $day)",
        day=datetime(2025, 9, 22),
    )
    assert classic > granular > 0 and bypassing > 0


def test_the_warehouse_gets_a_token_s_capabilities_with_their_types(sample_2025: Path) -> None:
    with warehouse.open_warehouse(sample_2025, read_only=True) as con:
        types = dict(
            con.execute(
                "select column_name, data_type from information_schema.columns "
                "where table_schema = 'registry' and table_name = 'tokens'"
            ).fetchall()
        )
    assert types["writes"] == "BOOLEAN" and types["bypass_2fa"] == "BOOLEAN"
    assert types["expires_at"] == "TIMESTAMP"
    assert "scopes" in types


def test_the_sample_s_publishes_go_through_tokens_the_account_held_then(sample_2025: Path) -> None:
    unexplained, token_publishes = _one(
        sample_2025,
        """
        select
            count(*) filter (where not exists (
                select 1 from registry.tokens as t
                where t.account_id = a.id and t.kind = p.token_kind and t.writes
                    and t.created_at <= p.occurred_at
                    and (t.revoked_at is null or t.revoked_at >= p.occurred_at)
                    and (t.expires_at is null or t.expires_at >= p.occurred_at)
            )),
            count(*)
        from stg_publishes as p
        inner join registry.accounts as a on a.username = p.username
        where p.via = 'token'
        """,
    )
    assert token_publishes > 0 and unexplained == 0


def test_the_sample_s_publishes_prove_only_factors_that_existed(sample_2025: Path) -> None:
    counts = _one(
        sample_2025,
        """
        select
            count(*) filter (where via = 'trusted'),
            count(*) filter (where via = 'trusted' and occurred_at < $trusted_since),
            count(*) filter (where token_kind = 'automation' and second_factor <> 'none'),
            count(*) filter (where second_factor <> 'none' and not exists (
                select 1 from registry.tfa_factors as f
                inner join registry.accounts as a on a.id = f.account_id
                where a.username = p.username and f.kind = p.second_factor
            ))
        from stg_publishes as p
        """,
        trusted_since=TRUSTED_PUBLISHING_SINCE,
    )
    assert counts[0] > 0 and counts[1:] == (0, 0, 0)
