"""Jinja2 rendering of an email: subject, plain text and HTML.

HTML is autoescaped (usernames, package and org names are the registry's users'
input); an undefined variable is an error, never an empty string; the subject is
one line whatever a value contains, so nothing can add a header; and no value can
break a line of the plain text (an org's name written by its owner, a member's
username, in an email to someone else): each ``{{ value }}`` is kept on its line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache, lru_cache
from typing import Any

from jinja2 import (
    Environment,
    PackageLoader,
    StrictUndefined,
    Template,
    Undefined,
    select_autoescape,
)
from markupsafe import Markup

from rollout.core.plan import Plan
from rollout.notify.emails import EMAILS, Email, Recipient
from rollout.notify.message import CONTROL_CHARACTERS, header_text


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str


def _defined(value: Any) -> None:
    """Raise the UndefinedError naming the variable: formatting an Undefined with a date
    format would raise a TypeError that names none."""
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _day(value: date | datetime) -> str:
    _defined(value)
    if type(value) is date:  # not datetimes: equal instants in two zones are two days
        return _format_date(value)
    return f"{value:%A} {value.day} {value:%B %Y}"


@lru_cache(maxsize=1024)
def _format_date(value: date) -> str:
    """A plan has a handful of days, each formatted for every email: once is enough."""
    return f"{value:%A} {value.day} {value:%B %Y}"


def _when(value: datetime) -> str:
    _defined(value)
    return f"{_day(value)}, {value:%H:%M} UTC"


def _from_day(value: date) -> str:
    """A day something starts for the recipient (a deadline, ELV for all): the instant
    it starts, in UTC. The plan's days are UTC days and enforcement runs early in one;
    "from Tuesday 1 February 2022" alone gave a maintainer in California a day more."""
    _defined(value)
    return f"{_day(value)}, 00:00 UTC"


# A run of control characters with the whitespace around it: one space, so "a\n  b"
# reads "a b" while a value's own spacing (a padded column) stays.
_BREAKS = re.compile(rf"\s*(?:{CONTROL_CHARACTERS.pattern}\s*)+")


def _in_line(value: Any) -> Any:
    """Every ``{{ value }}`` printed by a template: a string's control characters made
    spaces, so a value can neither start a line of its own in the plain text (a forged
    "SECURITY:" paragraph in an org's name) nor carry a control character into the HTML.
    Markup (an include's output, a macro's) is the templates' own and stays as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return _BREAKS.sub(" ", value)
    return value


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("rollout.notify", "templates"),
        undefined=StrictUndefined,
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        keep_trailing_newline=True,
        # Templates ship with the code: no stat() of three files per email sent.
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_in_line,
    )
    env.filters["day"] = _day
    env.filters["when"] = _when
    env.filters["from_day"] = _from_day
    return env


def one_line(text: str) -> str:
    """Control characters and whitespace (CR and LF included) collapsed: a subject cannot
    spill into headers, nor fail to send for a control character in an org's name."""
    return header_text(text)


def template_names(name: str) -> tuple[str, str, str]:
    return f"{name}.subject.txt", f"{name}.txt", f"{name}.html"


@cache
def _templates(env: Environment, name: str) -> tuple[Template, Template, Template]:
    """An email's three templates, looked up once per environment (templates ship with
    the code; a test may swap the environment)."""
    subject, text, html = (env.get_template(t) for t in template_names(name))
    return subject, text, html


def render(
    email: Email | str, recipient: Recipient, stored: Mapping[str, Any], plan: Plan
) -> Rendered:
    definition = EMAILS[email] if isinstance(email, str) else email
    context = definition.context(recipient, stored, plan)
    subject, text, html = _templates(environment(), definition.name)
    return Rendered(one_line(subject.render(context)), text.render(context), html.render(context))
