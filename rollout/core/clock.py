"""The pipeline's clock: real UTC time, or a simulated calendar.

Every timestamp the pipeline writes (audit rows, flags, revocations, emails, runs)
comes from :func:`utc_now`. The demo runs the reference plan over a simulated
calendar by running each day's jobs inside :func:`use_clock` with the day's time;
nothing else changes, so the demo exercises exactly the code production runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, date, datetime, time, timedelta


def real_now() -> datetime:
    """Naive UTC, as the registry stores it."""
    return datetime.now(UTC).replace(tzinfo=None)


def day_start(day: date) -> datetime:
    """The instant ``day`` begins (its midnight, naive UTC): what "from that day on"
    compares against, ``at >= day_start(day)``."""
    return datetime.combine(day, time())


def day_end(day: date) -> datetime:
    """The instant ``day`` ends (the next day's midnight, naive UTC): what "as the day
    ended" compares against, ``created_at < day_end(day)``."""
    return datetime.combine(day + timedelta(days=1), time())


def naive_utc(moment: datetime) -> datetime:
    """The one normal form of a time in the pipeline: naive, meaning UTC (what the
    registry and the warehouse store). A time with an offset is converted; a naive one
    is taken as UTC already. Comparing two times is only safe after this."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)


_clock: ContextVar[Callable[[], datetime]] = ContextVar("rollout_clock", default=real_now)


def utc_now() -> datetime:
    return _clock.get()()


def require_data_day(day: date, name: str = "as_of") -> None:
    """Refuse (bad input, naming ``name``) a day whose data would be computed and kept
    (metrics, cohorts, the report) when it is after today (UTC, by this clock): it has
    no data yet. Its metrics would then stand as the latest day every default reads, and
    its report claim figures up to a day not come. In the library, not only the CLI:
    a flow run's ``as_of`` (typed in Prefect's UI) reaches it too."""
    from rollout.core.errors import BadInput

    today = utc_now().date()
    if day > today:
        raise BadInput(
            None, None, f"{name}: {day} is after today ({today}, UTC): it has no data yet"
        )


@contextmanager
def use_clock(clock: Callable[[], datetime]) -> Iterator[None]:
    """Run the block with ``clock`` as the time (this thread and context only)."""
    token = _clock.set(clock)
    try:
        yield
    finally:
        _clock.reset(token)


class SimulatedClock:
    """A clock that stands still until moved, and never goes backwards."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def move_to(self, at: datetime) -> None:
        if at < self.at:
            raise ValueError(f"the clock cannot go back from {self.at} to {at}")
        self.at = at
