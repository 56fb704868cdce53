"""Emails: golden renderings of every email, template hygiene, strictness, hostile values.

The golden files under ``tests/golden/emails/`` are ``<email>-<variant>.txt`` (the
subject, a blank line, the text body) and ``<email>-<variant>.html``, for each example
recipient an email reaches. They were read and checked by hand: change a template, run

    ROLLOUT_UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_emails.py

and read the diff of the golden files before committing it.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import replace
from datetime import date, timedelta
from email import policy
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
import pytest

from rollout.core.plan import Plan, load_plan
from rollout.notify.emails import EMAILS, Recipient
from rollout.notify.examples import EXAMPLE_RECIPIENTS, example_recipient, example_stored
from rollout.notify.message import DeliveryFailed, Message
from rollout.notify.outbox import SENT_ON
from rollout.notify.render import Rendered, render, template_names
from rollout.notify.senders import FileSender, SendGridSender
from tests.hostile import HEADERS
from tests.support.emails import CASE_IDS, CASES, plan_sending, render_example

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "emails"
TEMPLATES = ROOT / "rollout" / "notify" / "templates"
UPDATE_GOLDEN = os.environ.get("ROLLOUT_UPDATE_GOLDEN") == "1"

# What an account that already uses 2FA must never be told.
WARNINGS = (
    "action needed",
    "does not use 2fa",
    "does not use two-factor",
    "not use 2fa yet",
    "signed out of the website",
    "you were signed out",
    "set up 2fa, then",
)

HOSTILE_USERNAME = "<script>alert(1)</script>\"'&"
HOSTILE_PACKAGES = ('<img src=x onerror="alert(1)">', "@evil/\"quoted\"'pkg'", "a&b<i>")
HOSTILE_ORG = "example-org\r\nBcc: victim@example.com"


def words(text: str) -> str:
    """The text with its line breaks and runs of spaces made single spaces."""
    return " ".join(text.split())


def message_for(name: str, recipient: Recipient, rendered: Rendered) -> Message:
    """What the outbox hands a sender: the username is the To display name."""
    return Message(
        7,
        name,
        recipient.address,
        recipient.username,
        rendered.subject,
        rendered.text,
        rendered.html,
    )


def check_golden(path: Path, actual: str) -> None:
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"{path} is missing: run with ROLLOUT_UPDATE_GOLDEN=1", pytrace=False)
    expected = path.read_text()
    if actual != expected:
        diff = difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=f"{path.relative_to(ROOT)} (golden)",
            tofile=f"{path.name} (rendered now)",
        )
        pytest.fail(
            "rendering differs from the golden file (ROLLOUT_UPDATE_GOLDEN=1 rewrites it):\n"
            + "".join(diff),
            pytrace=False,
        )


class _Tags(HTMLParser):
    """Collects start tags and the href of every link."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "a":
            self.hrefs += [value or "" for key, value in attrs if key == "href"]


def parse_html(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    parser.close()
    return parser


# --- golden files -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), CASES, ids=CASE_IDS)
def test_rendering_matches_the_golden_files(name: str, variant: str, plan: Plan) -> None:
    rendered = render_example(name, variant, plan)
    check_golden(GOLDEN / f"{name}-{variant}.txt", f"{rendered.subject}\n\n{rendered.text}")
    check_golden(GOLDEN / f"{name}-{variant}.html", rendered.html)


def test_every_golden_file_belongs_to_an_email_and_recipient_it_reaches() -> None:
    expected = {f"{case}{suffix}" for case in CASE_IDS for suffix in (".txt", ".html")}
    stale = sorted(p.name for p in GOLDEN.glob("*") if p.name not in expected)
    if UPDATE_GOLDEN:
        for name in stale:
            (GOLDEN / name).unlink()
        return
    assert not stale, f"golden files for no email/recipient (delete them): {stale}"


def test_the_examples_cover_a_compliant_and_a_non_compliant_recipient() -> None:
    assert {r.compliant for r in EXAMPLE_RECIPIENTS.values()} == {True, False}
    adapted = [name for name, e in EMAILS.items() if e.when_compliant == "adapt"]
    assert {f"{name}-compliant" for name in adapted} <= set(CASE_IDS)


# --- wording ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", [n for n, v in CASES if v == "compliant"], ids=lambda name: f"{name}-compliant"
)
def test_a_compliant_recipient_is_never_warned(name: str, plan: Plan) -> None:
    rendered = render_example(name, "compliant", plan)
    for part in (rendered.subject, rendered.text, rendered.html):
        lowered = words(part).lower()
        assert not [w for w in WARNINGS if w in lowered]


def test_the_phase_notice_says_what_why_by_when_and_how(plan: Plan) -> None:
    recipient = EXAMPLE_RECIPIENTS["non-compliant"]
    rendered = render_example("phase_notice", "non-compliant", plan)
    phase = plan.phases[0]
    deadline = f"{phase.enforce_on:%A} {phase.enforce_on.day} {phase.enforce_on:%B %Y}"
    assert deadline in rendered.subject
    for body in (words(rendered.text), words(rendered.html)):
        assert "must use two-factor authentication (2FA)" in body  # what
        assert plan.cohort(phase.cohort).description in body  # why this account
        assert all(package in body for package in recipient.packages)
        assert deadline in body  # by when
        assert plan.notifications.help_url in body  # how
        assert "named automation token" in body  # CI publishing
        assert plan.notifications.tokens_url in body


def test_the_compliant_phase_notice_thanks_instead_of_warning(plan: Plan) -> None:
    rendered = render_example("phase_notice", "compliant", plan)
    assert rendered.subject.startswith("Thank you")
    for body in (words(rendered.text), words(rendered.html)):
        assert "already uses a security key" in body  # the recipient's method, in words
        assert "nothing for you to do" in body


def test_the_reminder_says_how_many_days_are_left(plan: Plan) -> None:
    stored = example_stored("reminder", plan)
    recipient = EXAMPLE_RECIPIENTS["non-compliant"]
    assert f"in {stored['days_before']} days" in render("reminder", recipient, stored, plan).subject


@pytest.mark.parametrize("phase", ["top-100", "publishers"], ids=["2fa-wording", "campaign"])
def test_a_reminder_the_day_before_its_deadline_says_within_24_hours(phase: str) -> None:
    """A 1-day reminder goes on the day before the deadline, at whatever hour the daily
    flow sends it (09:00 UTC): the deadline, 00:00 UTC the next day, is 15 hours away.
    "In 1 day" said more time than there was (and "tomorrow" is today in California):
    "within 24 hours" is true whenever that day it goes, in the subject, text and HTML."""
    plan = load_plan(
        ROOT / "plans" / ("npm-2022.yaml" if phase == "top-100" else "github-2023.yaml")
    )
    deadline = plan.phase(phase).enforce_on
    the_day_before = (deadline - timedelta(days=1)).isoformat()
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], deadline=deadline)
    stored = {"phase": phase, "days_before": 1, "queued_on": the_day_before}
    rendered = render("reminder", recipient, {**stored, SENT_ON: the_day_before}, plan)
    assert rendered.subject.endswith("within 24 hours")
    assert f"Within 24 hours, from {deadline:%A} {deadline.day}" in words(rendered.text)
    assert f"Within 24 hours</strong>, from {deadline:%A} {deadline.day}" in rendered.html
    for part in (rendered.subject, rendered.text, rendered.html):
        assert not re.search(r"\b(?:in|In) (?:<strong>)?1 day", part)


@pytest.mark.parametrize("phase", ["top-100", "publishers"], ids=["2fa-wording", "campaign"])
def test_a_reminder_queued_late_and_sent_after_its_deadline_says_since(phase: str) -> None:
    """The 3-day reminder of a day caught up with ``notify queue --late`` after the
    deadline (the release manager asked for it, knowing what it says): it counted "in
    -2 days" (or "in 0 days" on the day); it says the requirement applies since then."""
    plan = load_plan(
        ROOT / "plans" / ("npm-2022.yaml" if phase == "top-100" else "github-2023.yaml")
    )
    deadline = plan.phase(phase).enforce_on
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], deadline=deadline)
    queued_on = (deadline - timedelta(days=3)).isoformat()
    for sent_on in (deadline, deadline + timedelta(days=2)):
        stored = {"phase": phase, "days_before": 3, "queued_on": queued_on, "queued_late": True}
        rendered = render("reminder", recipient, {**stored, SENT_ON: sent_on.isoformat()}, plan)
        day = f"{deadline:%A} {deadline.day} {deadline:%B %Y}"
        assert rendered.subject.endswith(f"since {day}")
        assert f"Since {day}, 00:00 UTC" in words(rendered.text)
        assert f"Since <strong>{day}, 00:00 UTC</strong>" in rendered.html
        for part in (rendered.subject, rendered.text, rendered.html):
            assert not re.search(r"\b(?:in|In) (?:<strong>)?-?[0-9]+ days?", part)
            # Nor "if it still does not on that day" of a day gone.
            assert "on that day" not in words(part).lower()
        for part in (words(rendered.text), words(re.sub(r"<[^>]+>", "", rendered.html))):
            assert "Once the registry enforces it, " in part


@pytest.mark.parametrize(
    ("plan_file", "phase", "variant"),
    [
        ("npm-2022.yaml", "top-100", "non-compliant"),
        ("npm-2022.yaml", "top-100", "compliant"),
        ("npm-2025-tokens.yaml", "classic-tokens", "non-compliant"),
        ("npm-2025-tokens.yaml", "totp-closed", "non-compliant"),
    ],
    ids=["2fa-wording", "2fa-wording-compliant", "campaign", "campaign-recommends"],
)
@pytest.mark.parametrize(
    ("sent", "passed"),
    [(-1, False), (0, True), (2, True)],
    ids=["the-day-before", "the-day-itself", "the-day-after"],
)
def test_a_notice_queued_late_and_sent_on_or_after_its_deadline_says_since_in_every_line(
    plan_file: str, phase: str, variant: str, sent: int, passed: bool
) -> None:
    """A phase's notice of a day caught up with ``notify queue --late`` (the release
    manager asked for it) and sent on or after the phase's deadline: its subject said
    "will be required from" and "action needed by" that day, its body "from" it, and
    "on that day, if it still does not": every line of a day still to come. It says
    what its late reminder says: "since", "once the registry enforces it"."""
    plan = load_plan(ROOT / "plans" / plan_file)
    deadline = plan.phase(phase).enforce_on
    recipient = example_recipient(variant, "phase_notice", plan.phase(phase))
    stored = {
        "phase": phase,
        "queued_on": (deadline - timedelta(days=28)).isoformat(),
        "queued_late": True,
        SENT_ON: (deadline + timedelta(days=sent)).isoformat(),
    }
    rendered = render("phase_notice", recipient, stored, plan)
    day = f"{deadline:%A} {deadline.day} {deadline:%B %Y}"
    text, html = words(rendered.text), words(re.sub(r"<[^>]+>", "", rendered.html))
    for part in (text, html):
        assert (f"Since {day}, 00:00 UTC" in part or f"since {day}, 00:00 UTC" in part) is passed

    def ahead(part: str) -> bool:
        said = part.lower()
        return any(
            words in said
            for words in (
                f"from {day.lower()}",
                "on that day",
                "action needed by",
                "will be required",
                "must use",
            )
        )

    for part in (rendered.subject, text, html):
        assert not (passed and ahead(part)), part
    assert ahead(text) is not passed and ahead(html) is not passed


@pytest.mark.parametrize("snoozed", [False, True], ids=["own-deadline", "snoozed"])
def test_a_reminder_sent_after_an_own_deadline_offers_no_postponing_it(snoozed: bool) -> None:
    """github-2023's publishers have deadlines of their own, which a request may
    postpone until the day before (from the day on the request is refused: "the request
    came after your deadline had passed"). A reminder queued ``--late`` and sent after it says
    the requirement applies since that day; it said the day "is" the account's deadline
    and offered to postpone it, a request bound to be refused."""
    plan = load_plan(ROOT / "plans" / "github-2023.yaml")
    deadline = plan.phase("publishers").enforce_on
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], deadline=deadline, snoozed=snoozed)
    stored = {
        "phase": "publishers",
        "days_before": 3,
        "queued_on": (deadline - timedelta(days=3)).isoformat(),
        "queued_late": True,
        SENT_ON: (deadline + timedelta(days=2)).isoformat(),
    }
    rendered = render("reminder", recipient, stored, plan)
    day = f"{deadline:%A} {deadline.day} {deadline:%B %Y}, 00:00 UTC"
    for part in (words(rendered.text), words(re.sub(r"<[^>]+>", "", rendered.html))):
        assert f"{day} was your account's own deadline" in part
        assert "is your account's own deadline" not in part
        assert "postpone it" not in part and "postponed again" not in part
    assert plan.notifications.snooze_url not in rendered.text + rendered.html


def test_a_reminder_caught_up_late_counts_the_days_from_when_it_was_queued(plan: Plan) -> None:
    """top-100 is enforced on 2022-02-01: its 14-day reminder, queued on 2022-01-20
    (the queue missed the 18th), says 12 days, not 14."""
    recipient = EXAMPLE_RECIPIENTS["non-compliant"]
    stored = {"phase": "top-100", "days_before": 14, "queued_on": "2022-01-20"}
    late = render("reminder", recipient, stored, plan)
    assert (
        "in 12 days" in late.subject
        and "In 12 days, from Tuesday 1 February 2022, 00:00 UTC" in words(late.text)
    )
    assert "14 days" not in late.subject + late.text + late.html


def test_a_reminder_sent_after_its_day_counts_the_days_from_when_it_goes(plan: Plan) -> None:
    """The 3-day reminder of top-100 (enforced 2022-02-01), queued for 2022-01-29 and
    sent the next day (the sender was down): 2 days left, as the drain renders it."""
    recipient = EXAMPLE_RECIPIENTS["non-compliant"]
    stored = {"phase": "top-100", "days_before": 3, "queued_on": "2022-01-29"}
    assert "in 3 days" in render("reminder", recipient, stored, plan).subject
    late = render("reminder", recipient, {**stored, SENT_ON: "2022-01-30"}, plan)
    assert (
        "in 2 days" in late.subject
        and "In 2 days, from Tuesday 1 February 2022, 00:00 UTC" in words(late.text)
    )
    assert "3 days" not in late.subject + late.text + late.html
    # Sent on the day it was queued for (the drain always says its day): as queued.
    same = render("reminder", recipient, {**stored, SENT_ON: "2022-01-29"}, plan)
    assert "in 3 days" in same.subject


# A day an email names: "Tuesday 1 February 2022".
_A_DAY = re.compile(r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day \d{1,2} [A-Z][a-z]+ \d{4}")


@pytest.mark.parametrize(
    ("name", "variant"),
    [c for c in CASES if c[0] != "phase_summary"],
    ids=[i for c, i in zip(CASES, CASE_IDS, strict=True) if c[0] != "phase_summary"],
)
def test_every_day_a_maintainer_is_told_is_an_instant_in_utc(
    name: str, variant: str, plan: Plan
) -> None:
    """A deadline, a snooze's new one, the day ELV starts, a brown-out: each is a UTC
    day, and enforcement runs early in it (02:30 UTC). "From Tuesday 1 February 2022"
    read in California gave a day more than there was; the email names the instant."""
    rendered = render_example(name, variant, plan)
    for part in (rendered.subject, words(rendered.text), words(rendered.html)):
        for found in _A_DAY.finditer(part):
            assert re.match(r", \d\d:\d\d UTC", part[found.end() :]), (
                f"{name}: {found.group()!r} without a time in UTC: {part[found.start() :][:80]!r}"
            )


def test_an_own_deadline_and_a_snoozed_one_are_named_in_utc() -> None:
    plan = plan_sending("snooze_reply", load_plan(ROOT / "plans" / "npm-2022.yaml"))
    recipient = replace(
        EXAMPLE_RECIPIENTS["non-compliant"], deadline=date(2023, 5, 4), snoozed=True
    )
    for email in ("phase_notice", "reminder", "enforcement_notice"):
        rendered = render(email, recipient, example_stored(email, plan), plan)
        for part in (rendered.text, rendered.html):
            assert "Thursday 4 May 2023, 00:00 UTC" in words(part), email
    reply = render_example("snooze_reply", "non-compliant", plan)
    assert reply.subject == "Your deadline was postponed to Thursday 4 May 2023, 00:00 UTC"


@pytest.mark.parametrize(
    ("sent", "passed"),
    [(-1, False), (0, True), (2, True)],
    ids=["the-day-before", "the-day-itself", "the-day-after"],
)
def test_a_granted_snooze_reply_sent_once_its_new_deadline_came_says_it_has_passed(
    sent: int, passed: bool
) -> None:
    """A grant to 4 May, answered by a send held up until that day or later (an outage
    of the sender): the reply said the deadline "is now" 4 May, then that what it asks
    applies "since then" and "now". Snooze replies go however late (the answer is owed,
    as a refusal's is): it says the new deadline was that day, and that it has passed."""
    plan = plan_sending("snooze_reply", load_plan(ROOT / "plans" / "npm-2022.yaml"))
    deadline = date(2023, 5, 4)
    stored = {
        "phase": "publishers",
        "granted": True,
        "days": 7,
        "deadline": deadline.isoformat(),
        "reason": "",
        "queued_on": "2023-04-26",
        SENT_ON: (deadline + timedelta(days=sent)).isoformat(),
    }
    rendered = render("snooze_reply", EXAMPLE_RECIPIENTS["non-compliant"], stored, plan)
    day = "Thursday 4 May 2023, 00:00 UTC"
    for part in (words(rendered.text), words(re.sub(r"<[^>]+>", "", rendered.html))):
        if passed:
            assert f"We granted it: your account's own deadline was postponed to {day}, " in part
            assert "and that day has passed" in part
            assert "is now" not in part and "by then" not in part
            assert "This applies to your account now" in part
        else:
            assert f"We granted it: your account's own deadline is now {day}." in part
            assert "has passed" not in part and "by then" in part


def test_an_org_summary_with_one_removed_member_is_grammatical(plan: Plan) -> None:
    owner = EXAMPLE_RECIPIENTS["compliant"]
    rendered = render("org_enforcement_summary", owner, {"org": "o", "removed": ["sam"]}, plan)
    assert "1 member removed" in rendered.subject
    assert "1 members" not in rendered.subject + rendered.text + rendered.html


def test_a_phase_summary_with_one_flagged_account_is_grammatical(plan: Plan) -> None:
    manager = EXAMPLE_RECIPIENTS["compliant"]
    stored = {**example_stored("phase_summary", plan), "counts": {"accounts_flagged": 1}}
    subject = render("phase_summary", manager, stored, plan).subject
    assert "1 account now required" in subject


def test_an_invitation_links_to_where_the_account_accepts_it(plan: Plan) -> None:
    """The plan's invitations page, asked for the org: the maintainer follows the link
    rather than looking for "your account's organizations page"."""
    n = plan.notifications.model_copy(
        update={"invitations_url": "https://www.registry.example/settings/invitations"}
    )
    plan = plan.model_copy(update={"notifications": n})
    invited = EXAMPLE_RECIPIENTS["non-compliant"]

    rendered = render("org_invitation", invited, example_stored("org_invitation", plan), plan)

    link = "https://www.registry.example/settings/invitations?org=example-org"
    assert "Accept the invitation on the registry's website before" in words(rendered.text)
    assert f"\n  {link}\n" in rendered.text
    assert link in parse_html(rendered.html).hrefs


@pytest.mark.parametrize(
    ("invitations_url", "link"),
    [
        (
            "https://r.example/invitations?tab=orgs",
            "https://r.example/invitations?tab=orgs&org=example-org",
        ),
        (
            "https://r.example/invitations?org=&tab=orgs",
            "https://r.example/invitations?tab=orgs&org=example-org",
        ),
        (
            "https://r.example/invitations?org=other",
            "https://r.example/invitations?org=example-org",
        ),
    ],
)
def test_an_invitation_link_names_the_org_once_whatever_the_page_s_query(
    plan: Plan, invitations_url: str, link: str
) -> None:
    """The page's own query is kept; an ``org`` it already had gives way to the
    invitation's org, named once (twice, a page reads either)."""
    n = plan.notifications.model_copy(update={"invitations_url": invitations_url})
    plan = plan.model_copy(update={"notifications": n})
    stored = example_stored("org_invitation", plan)
    rendered = render("org_invitation", EXAMPLE_RECIPIENTS["non-compliant"], stored, plan)
    assert f"\n  {link}\n" in rendered.text
    assert link in parse_html(rendered.html).hrefs


def test_an_invitation_says_the_org_requires_2fa_of_whoever_accepts_it(plan: Plan) -> None:
    """The org invites back members its 2FA enforcement removed: one without 2FA when
    the email goes (the factor removed since the preview) is told to set it up again
    before accepting, with the help link, in both parts; one with it, to keep it on."""
    stored = example_stored("org_invitation", plan)
    without = render("org_invitation", EXAMPLE_RECIPIENTS["non-compliant"], stored, plan)
    help_url = plan.notifications.help_url
    for part in (words(without.text), words(re.sub(r"<[^>]+>", "", without.html))):
        assert "example-org requires two-factor authentication (2FA) of every member" in part
        assert "Your account has no 2FA now: set it up again before you accept" in part
    assert f"\n  {help_url}\n" in without.text
    assert help_url in parse_html(without.html).hrefs

    kept = render("org_invitation", EXAMPLE_RECIPIENTS["compliant"], stored, plan)
    for part in (words(kept.text), words(re.sub(r"<[^>]+>", "", kept.html))):
        assert "example-org requires two-factor authentication (2FA) of every member" in part
        assert "keep it on" in part and "set it up again" not in part


# Names an org's owner may choose, each breaking a link a different way if used raw.
LINK_BREAKERS = [
    'acme" onclick="alert(1)',
    "<b>acme</b>",
    "acme\r\nBcc: victim@example.com",
    "acme&org=other#top",
    "../../login?next=https://evil.example",
    "acme tëam 組織",
    "acme\u202ereversed",
]


@pytest.mark.parametrize("org", LINK_BREAKERS)
def test_an_org_s_name_stays_data_in_the_invitation_s_link(org: str, plan: Plan) -> None:
    """Percent-encoded whole: one link in each part, to the plan's page, whose one org
    parameter reads back as the name (no attribute, header, parameter or path of its
    own), the same in the text and the HTML."""
    stored = {**example_stored("org_invitation", plan), "org": org}

    rendered = render("org_invitation", EXAMPLE_RECIPIENTS["compliant"], stored, plan)

    base = plan.notifications.invitations_url
    [href] = [h for h in parse_html(rendered.html).hrefs if h.startswith(base)]
    [in_text] = [line.strip() for line in rendered.text.splitlines() if base in line]
    assert href == in_text
    assert re.fullmatch(r"[A-Za-z0-9%._~:/?=&-]+", href), href
    parts = urlsplit(href)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == base
    assert parse_qs(parts.query) == {"org": [org]}
    assert parts.fragment == ""


# --- templates and declarations ---------------------------------------------------------


@pytest.mark.parametrize("name", list(EMAILS))
def test_every_email_has_its_three_templates_and_a_summary(name: str) -> None:
    definition = EMAILS[name]
    assert definition.name == name
    assert definition.summary.strip()
    assert definition.when_compliant in ("adapt", "skip")
    missing = [t for t in template_names(name) if not (TEMPLATES / t).is_file()]
    assert not missing


def test_every_template_belongs_to_a_declared_email_or_is_a_partial() -> None:
    declared = {t for name in EMAILS for t in template_names(name)}
    files = {p.name for p in TEMPLATES.iterdir() if p.is_file()}
    orphans = sorted(f for f in files - declared if not f.startswith("_"))
    assert not orphans, f"templates of no declared email: {orphans}"


# --- strictness -------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["username", "help_url", "deadline", "packages"])
def test_a_variable_missing_from_the_context_is_an_error_not_blank(
    missing: str, plan: Plan
) -> None:
    real = EMAILS["phase_notice"]

    def without(r: Recipient, stored: Any, p: Plan) -> dict[str, Any]:
        context = real.context(r, stored, p)
        del context[missing]
        return context

    broken = replace(real, context=without)
    recipient = EXAMPLE_RECIPIENTS["non-compliant"]
    with pytest.raises(jinja2.UndefinedError, match=missing):
        render(broken, recipient, example_stored("phase_notice", plan), plan)


def test_a_variable_used_only_in_the_compliant_branch_is_still_required(plan: Plan) -> None:
    real = EMAILS["enforcement_notice"]

    def without_method(r: Recipient, stored: Any, p: Plan) -> dict[str, Any]:
        return {k: v for k, v in real.context(r, stored, p).items() if k != "method"}

    broken = replace(real, context=without_method)
    compliant = EXAMPLE_RECIPIENTS["compliant"]
    with pytest.raises(jinja2.UndefinedError, match="method"):
        render(broken, compliant, example_stored("enforcement_notice", plan), plan)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("phase_notice", "phase"),
        ("reminder", "days_before"),
        ("brownout_heads_up", "starts_at"),
        ("elv_enrollment", "enrolled_on"),
        ("org_removal_notice", "org"),
    ],
)
def test_a_stored_context_missing_a_key_does_not_render(name: str, key: str, plan: Plan) -> None:
    plan = plan_sending(name, plan)
    stored = {k: v for k, v in example_stored(name, plan).items() if k != key}
    with pytest.raises((KeyError, jinja2.UndefinedError)):
        render(name, EXAMPLE_RECIPIENTS["non-compliant"], stored, plan)


# --- hostile values ---------------------------------------------------------------------


def hostile_stored(name: str, plan: Plan) -> dict[str, Any]:
    stored = example_stored(name, plan)
    if "org" in stored:
        stored["org"] = HOSTILE_ORG
    if "removed" in stored:
        stored["removed"] = [HOSTILE_USERNAME, *HOSTILE_PACKAGES]
    return stored


HOSTILE = Recipient(
    3, HOSTILE_USERNAME, "mallory@example.com", True, None, packages=HOSTILE_PACKAGES
)


@pytest.mark.parametrize("name", list(EMAILS))
def test_hostile_values_are_escaped_in_html_and_kept_out_of_the_subject_line(
    name: str, plan: Plan
) -> None:
    plan = plan_sending(name, plan)
    rendered = render(name, HOSTILE, hostile_stored(name, plan), plan)

    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    assert "<script" not in rendered.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<img" not in rendered.html and "<i>" not in rendered.html
    # Nothing the values contain opened a tag: the markup is the templates' own.
    template_only = render(
        name, EXAMPLE_RECIPIENTS["non-compliant"], example_stored(name, plan), plan
    )
    assert set(parse_html(rendered.html).tags) == set(parse_html(template_only.html).tags)
    if EMAILS[name].needs_packages:
        assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;" in rendered.html
        assert "@evil/&#34;quoted&#34;&#39;pkg&#39;" in rendered.html
    if "org" in example_stored(name, plan):
        assert "Bcc: victim@example.com" in rendered.subject  # folded into the words
        assert "\r\nBcc" not in rendered.subject


FORGED = "\n\nSECURITY: your 2FA was reset, enrol again at https://evil.example\u2028\r\n"


@pytest.mark.parametrize("name", list(EMAILS))
def test_no_value_starts_a_line_of_its_own_in_the_text_part(name: str, plan: Plan) -> None:
    """An org's name is its owner's choice, a removed member's username is that member's:
    in an email to someone else, neither may write lines of its own."""
    plan = plan_sending(name, plan)
    stored = example_stored(name, plan)
    for key in ("org", "team", "invited_by"):
        if key in stored:
            stored[key] = f"{stored[key]}{FORGED}"
    if "removed" in stored:
        stored["removed"] = [f"sam{FORGED}", "lee"]
    recipient = replace(
        EXAMPLE_RECIPIENTS["non-compliant"],
        username=f"alex{FORGED}",
        packages=(f"left-pad{FORGED}", "react"),
    )
    rendered = render(name, recipient, stored, plan)
    assert "SECURITY: your 2FA" in rendered.text, "the value was printed"
    for line in rendered.text.splitlines():
        assert not line.startswith("SECURITY"), line
    assert "\u2028" not in rendered.text + rendered.html
    assert "\r" not in rendered.text + rendered.html


# A value of its owner's choosing, long (a username, an org's or team's name: any one
# line of text), each marked so its line can be found.
LONG = "-a-long-name-of-its-owner-s-choosing-that-goes-on-and-on-and-on"


@pytest.mark.parametrize("name", list(EMAILS))
def test_a_sentence_holding_a_value_of_any_length_is_one_line_of_the_text_part(
    name: str, plan: Plan
) -> None:
    """A value its owner chose (the recipient's username, an org's, a team's, an
    inviter's name) sat inside a hard-wrapped sentence: long, it made the line as
    long and the next one short, and the client wrapped the long one again ("...
    invites you back into its" / "team ..."). Each sentence holding one is a line of
    its own, from its start to its end (the client wraps it), as those holding a
    cohort's description are."""
    plan = plan_sending(name, plan)
    stored = example_stored(name, plan)
    for key in ("org", "team", "invited_by"):
        if key in stored:
            stored[key] = f"{key}{LONG}"
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], username=f"username{LONG}")
    text = render(name, recipient, stored, plan).text
    lines = text.splitlines()
    found = 0
    for n, line in enumerate(lines):
        if LONG not in line or line.startswith("  "):
            continue  # a list item or link: a line of its own already
        found += 1
        before = lines[n - 1].rstrip() if n else ""
        assert before in ("", "--") or before.endswith((".", ":", "!")), (before, line)
        assert line.rstrip().endswith((".", ",", ":", "!")), line
    assert found, text


def assert_one_recipient_and_no_injected_header(mime: Any, subject: str) -> None:
    assert len(mime.get_all("To")) == 1
    assert [a.addr_spec for a in mime["To"].addresses] == ["mallory@example.com"]
    assert mime["To"].addresses[0].display_name == HOSTILE_USERNAME
    for header in ("Bcc", "Cc", "Reply-To"):
        assert mime.get_all(header) is None
    assert mime.get_all("Subject") == [subject]


@pytest.mark.parametrize("name", list(EMAILS))
def test_hostile_values_add_no_header_or_recipient_to_an_eml(
    name: str, plan: Plan, tmp_path: Path
) -> None:
    plan = plan_sending(name, plan)
    rendered = render(name, HOSTILE, hostile_stored(name, plan), plan)
    message = message_for(name, HOSTILE, rendered)
    sender = FileSender(tmp_path)

    assert_one_recipient_and_no_injected_header(sender.build(message), rendered.subject)
    # And read back from the bytes the file outbox writes.
    sender.send(message)
    eml = BytesParser(policy=policy.default).parsebytes(sender.path_for(message).read_bytes())
    assert_one_recipient_and_no_injected_header(eml, rendered.subject)
    [html] = [part for part in eml.walk() if part.get_content_type() == "text/html"]
    # The same HTML, line endings aside (a CR/LF in a value is a line break in MIME).
    assert html.get_content().splitlines() == rendered.html.splitlines()


@pytest.mark.parametrize("name", list(EMAILS))
def test_hostile_values_add_no_recipient_to_a_sendgrid_request(name: str, plan: Plan) -> None:
    plan = plan_sending(name, plan)
    rendered = render(name, HOSTILE, hostile_stored(name, plan), plan)
    sender = SendGridSender("SG.test-key-not-real.abcdefgh", "http://127.0.0.1:9")

    body = sender.request_body(message_for(name, HOSTILE, rendered))

    [personalization] = body["personalizations"]
    assert personalization["to"] == [{"email": "mallory@example.com", "name": HOSTILE_USERNAME}]
    assert not {"cc", "bcc", "headers"} & set(personalization)
    assert not {"headers", "reply_to", "reply_to_list"} & set(body)
    assert body["subject"] == rendered.subject
    assert "\r" not in body["subject"] and "\n" not in body["subject"]


CRLF_NAMES = [
    "sam\r\nBcc: victim@example.com",
    "sam\nBcc: victim@example.com",
    "sam\rBcc: victim@example.com",
]


@pytest.mark.parametrize("username", CRLF_NAMES, ids=["crlf", "lf", "cr"])
def test_a_username_with_a_line_break_is_refused_or_adds_no_header_to_an_eml(
    username: str, plan: Plan, tmp_path: Path
) -> None:
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], username=username)
    rendered = render("phase_notice", recipient, example_stored("phase_notice", plan), plan)
    sender = FileSender(tmp_path)
    try:
        sender.send(message_for("phase_notice", recipient, rendered))
    except DeliveryFailed as refused:
        assert refused.permanent
        assert not list(tmp_path.glob("*.eml"))
        return
    [eml] = tmp_path.glob("*.eml")
    parsed = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert len(parsed.get_all("To")) == 1
    assert [a.addr_spec for a in parsed["To"].addresses] == [recipient.address]
    assert parsed.get_all("Bcc") is None


@pytest.mark.parametrize("username", CRLF_NAMES, ids=["crlf", "lf", "cr"])
def test_a_username_with_a_line_break_is_refused_or_adds_no_sendgrid_recipient(
    username: str, plan: Plan
) -> None:
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], username=username)
    rendered = render("phase_notice", recipient, example_stored("phase_notice", plan), plan)
    sender = SendGridSender("SG.test-key-not-real.abcdefgh", "http://127.0.0.1:9")
    try:
        body = sender.request_body(message_for("phase_notice", recipient, rendered))
    except DeliveryFailed as refused:
        assert refused.permanent
        return
    [personalization] = body["personalizations"]
    assert [to["email"] for to in personalization["to"]] == [recipient.address]
    assert not {"cc", "bcc", "headers"} & set(personalization)
    assert "headers" not in body


@pytest.mark.parametrize("username", HEADERS)
@pytest.mark.parametrize("name", ["enforcement_notice", "org_removal_notice"])
def test_a_control_character_in_a_name_still_sends_every_email(
    name: str, username: str, plan: Plan, tmp_path: Path
) -> None:
    """A username or org with CR/LF, ESC or a bidi override: the email goes out, to the
    address alone, with a one-line subject free of control characters (and parts free
    of the value's: no line of its own, nothing shown reversed), and adds no header."""
    plan = plan_sending(name, plan)
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], username=username)
    stored = example_stored(name, plan)
    if "org" in stored:
        stored["org"] = f"org {username}"
    rendered = render(name, recipient, stored, plan)
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", rendered.subject)
    for part in (rendered.text, rendered.html):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", part)
    message = message_for(name, recipient, rendered)
    sender = FileSender(tmp_path)

    sender.send(message)

    eml = BytesParser(policy=policy.default).parsebytes(sender.path_for(message).read_bytes())
    [to] = eml["To"].addresses
    assert (to.addr_spec, to.display_name) == (recipient.address, "")
    assert eml["Subject"] == rendered.subject
    for header in ("Bcc", "Cc", "X-Injected"):
        assert eml.get_all(header) is None
    body = SendGridSender("SG.test-key-not-real.abcdefgh").request_body(message)
    assert body["personalizations"][0]["to"] == [{"email": recipient.address}]


# --- text and HTML parts ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), CASES, ids=CASE_IDS)
def test_the_text_part_has_no_html_and_the_html_part_is_a_full_document(
    name: str, variant: str, plan: Plan
) -> None:
    plan = plan_sending(name, plan)
    rendered = render_example(name, variant, plan)
    # Maintainers are pointed at the 2FA help; release managers at the day's report.
    n = plan.notifications
    enforced_on = example_stored(name, plan).get("enforced_on")
    help_url = f"{n.report_url}/{enforced_on}/adoption.html" if enforced_on else n.help_url

    assert not re.search(r"</?[A-Za-z][^>]*>|&(?:lt|gt|amp|#\d+);", rendered.text)
    assert help_url in rendered.text

    assert rendered.html.startswith("<!DOCTYPE html>\n<html")
    assert rendered.html.rstrip().endswith("</html>")
    tags = parse_html(rendered.html)
    assert {"html", "head", "title", "body"} <= set(tags.tags)
    assert help_url in tags.hrefs
    # Every link is a real address, never an unrendered or empty one.
    assert all(href.startswith("https://") for href in tags.hrefs)


@pytest.mark.parametrize(("name", "variant"), CASES, ids=CASE_IDS)
def test_the_subject_is_one_nonempty_line(name: str, variant: str, plan: Plan) -> None:
    subject = render_example(name, variant, plan).subject
    assert subject and subject == subject.strip()
    assert "\n" not in subject and "\r" not in subject and "  " not in subject


@pytest.mark.parametrize("name", ["phase_notice", "reminder"])
def test_an_account_an_earlier_phase_required_is_not_told_it_will_be(name: str, plan: Plan) -> None:
    """npm 2022: top-100 accounts still without 2FA were sent high-impact's notice and
    reminders saying 2FA "will be required" and "you will be signed out", three months
    after both happened. They are told it is required already, and what to do."""
    plan = plan_sending(name, plan)
    owing = replace(EXAMPLE_RECIPIENTS["non-compliant"], tfa_required=True)
    rendered = render(name, owing, example_stored(name, plan), plan)
    text, html = " ".join(rendered.text.split()), " ".join(rendered.html.split())
    for part in (text, html):
        assert "The registry already requires it of your account" in part
        assert "signed out" not in part and "if it still does not" not in part
    assert "already required of your account" in rendered.subject
    # Not yet required: told what will happen, as before.
    fresh = render(name, EXAMPLE_RECIPIENTS["non-compliant"], example_stored(name, plan), plan)
    assert "signed out" in fresh.text and "already requires" not in fresh.text


def test_an_own_deadline_one_day_after_the_notice_says_1_day(plan: Plan) -> None:
    """days_after_notice and snooze_days may be 1: the campaign emails say "1 day"."""
    github = plan_sending("snooze_reply", plan)
    one_day = github.model_copy(
        update={
            "phases": [
                p
                if p.deadline is None
                else p.model_copy(
                    update={
                        "deadline": p.deadline.model_copy(
                            update={"days_after_notice": 1, "snooze_days": 1}
                        )
                    }
                )
                for p in github.phases
            ]
        }
    )
    recipient = replace(EXAMPLE_RECIPIENTS["non-compliant"], deadline=date(2023, 5, 4))
    for email in ("phase_notice", "reminder"):
        rendered = render(email, recipient, example_stored(email, one_day), one_day)
        for part in (rendered.text, rendered.html):
            said = words(part)
            assert "1 day from the day we first wrote to you" in said, email
            assert "postpone it once, by up to 1 day" in said, email
            assert "1 days" not in said, email


@pytest.mark.parametrize(
    ("report_url", "link"),
    [
        # A published folder read through a signed address (a storage token in the query):
        # the day's path goes into the path, the token stays the query.
        (
            "https://store.example/reports?sv=2024&sig=a%2Bb",
            "https://store.example/reports/2022-02-03/adoption.html?sv=2024&sig=a%2Bb",
        ),
        (
            "https://rollout.example/reports/#top",
            "https://rollout.example/reports/2022-02-03/adoption.html#top",
        ),
        ("https://rollout.example", "https://rollout.example/2022-02-03/adoption.html"),
    ],
)
def test_the_summary_links_to_the_day_s_report_under_any_report_url(
    report_url: str, link: str, plan: Plan
) -> None:
    """The day's report is under the plan's report_url, whatever its address holds: its
    query and fragment stay as they are, never swallowing the day's path (a link to the
    reports folder, or a query the server reads as another token)."""
    plan = plan_sending("phase_summary", plan)
    n = plan.notifications.model_copy(update={"report_url": report_url})
    plan = plan.model_copy(update={"notifications": n})
    stored = {**example_stored("phase_summary", plan), "enforced_on": "2022-02-03"}

    rendered = render("phase_summary", EXAMPLE_RECIPIENTS["compliant"], stored, plan)

    assert f": {link}\n" in rendered.text
    assert link.replace("&", "&amp;") in rendered.html
    assert link in parse_html(rendered.html).hrefs
