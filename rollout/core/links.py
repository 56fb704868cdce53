"""The addresses the pipeline's emails link to, built in one place from the plan's URLs.

A value from the registry (an org's name) goes into a link percent-encoded, every
character that is not a letter, digit or ``-._~``: a quote, ``<``, ``&``, a new line or
a non-ASCII letter stays data in the link whatever the part (text, HTML) shows it in.
"""

from __future__ import annotations

from datetime import date
from pathlib import PurePosixPath
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

# The report of a day: ``<reports>/<YYYY-MM-DD>/adoption.html`` (rollout.report writes
# it there, and the release managers' summary links to it under ``report_url``).
REPORT_HTML = "adoption.html"


def report_folder(as_of: date) -> PurePosixPath:
    """The report of ``as_of``'s folder, relative to the reports folder (or URL)."""
    return PurePosixPath(as_of.isoformat())


def report_link(report_url: str, as_of: date) -> str:
    """The address of the report of ``as_of`` under the plan's ``report_url``: the day's
    path joined to the address's path, its query (a signed address's token) and fragment
    kept after it. Appended to the whole address, the path went into the query or the
    fragment, and the link led to the reports folder, or nowhere."""
    parts = urlsplit(report_url)
    path = f"{parts.path.rstrip('/')}/{report_folder(as_of) / REPORT_HTML}"
    return urlunsplit(parts._replace(path=path))


def with_query(url: str, **values: str) -> str:
    """``url`` with ``values`` set in its query, each percent-encoded whole: a key the
    address had already (an invitations page given as ``...?org=``) takes the value
    given, once, rather than appearing twice, which a page reads as either."""
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in values]
    query = kept + list(values.items())
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote, safe="")))


def invitation_link(invitations_url: str, org: str) -> str:
    """Where an account accepts ``org``'s invitation: the plan's ``invitations_url``,
    asked for that org."""
    return with_query(invitations_url, org=org)
