"""A crowd of maintainers for load tests: ``count`` accounts without 2FA, each with a
verified address and three packages, all in one cohort since the day before the
reference plan's first notices, so ``queue_due`` on 2022-01-04 queues one phase notice
each. The notify benchmarks and the sharded-send end-to-end test fill their registries
with it."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import insert

from rollout.registry.engine import make_engine
from rollout.registry.models import Account, CohortMembership

NOTICE_DAY = date(2022, 1, 4)  # the reference plan's top-100 notices go out


def add_crowd(url: str, count: int, cohort: str = "top-100") -> None:
    """Add the crowd (usernames ``maintainer-NNNNNN``) to the registry at ``url``, which
    must be at the newest schema."""
    engine = make_engine(url)
    created = datetime(2021, 6, 1)
    qualified = date(2022, 1, 3)
    try:
        with engine.begin() as connection:
            ids = connection.scalars(
                insert(Account).returning(Account.id, sort_by_parameter_order=True),
                [
                    {
                        "username": f"maintainer-{i:06d}",
                        "email": f"maintainer-{i:06d}@example.com",
                        "email_verified": True,
                        "created_at": created,
                    }
                    for i in range(count)
                ],
            ).all()
            connection.execute(
                insert(CohortMembership),
                [
                    {
                        "cohort": cohort,
                        "account_id": i,
                        "packages": [f"pkg-{i}", f"pkg-{i}-cli", "shared-core"],
                        "first_qualified_on": qualified,
                        "last_qualified_on": qualified,
                    }
                    for i in ids
                ],
            )
    finally:
        engine.dispose()
