"""A saved phase preview with hostile usernames and emails: the CSV a release manager
opens in a spreadsheet and the Markdown they approve in Prefect show them as text."""

from __future__ import annotations

import csv
import dataclasses
import html
import re
from datetime import datetime
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from rollout.core.output import FORMULA_PREFIXES
from rollout.core.plan import Plan
from rollout.phases.previews import (
    PhasePreview,
    SavedPreview,
    Target,
    changed_since,
    preview_markdown,
    save_preview,
)

from .hostile import EVERYTHING, FORMULAS, PROSE, TERMINAL
from .support.previews import names_read_back

MARKDOWN = MarkdownIt("commonmark").enable(["table", "strikethrough"])


def hostile_preview() -> PhasePreview:
    targets = [
        Target(i + 1, name, f"{name}@example.com", datetime(2022, 1, 2), i, False)
        for i, name in enumerate(EVERYTHING)
    ]
    # Each never reached, the receiving server's bounce reason hostile too.
    return PhasePreview(
        "top-100",
        "top-100",
        targets,
        3,
        ["=cmd|' /C calc'!A0", "<b>x</b>"],
        unreached={t.account_id: f"bounced: {t.username}" for t in targets},
        max_unreached_share=0.05,
    )


def saved(plan: Plan, tmp_path: Path) -> SavedPreview:
    return save_preview(plan, hostile_preview(), tmp_path, actor="rm")


def test_the_preview_csv_runs_no_formula(plan: Plan, tmp_path: Path) -> None:
    preview = saved(plan, tmp_path)
    with preview.csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(EVERYTHING)  # no value broke a row
    for row, name in zip(rows, EVERYTHING, strict=True):
        for column in ("username", "email"):
            assert not row[column].startswith(FORMULA_PREFIXES), row[column]
        assert row["username"] in (name, "'" + name)
    assert [r["username"] for r in rows[: len(FORMULAS)]] == ["'" + f for f in FORMULAS]
    assert rows[0]["live_sessions"] == "0"


def test_the_preview_markdown_shows_names_as_text(plan: Plan, tmp_path: Path) -> None:
    markdown = preview_markdown(saved(plan, tmp_path))
    html = MARKDOWN.render(markdown)
    # Only the tool's own markup: headings, paragraphs, tables and its bold count.
    tags = set(re.findall(r"</?([A-Za-z][A-Za-z0-9]*)", html))
    assert tags <= {"h1", "h2", "p", "table", "thead", "tbody", "tr", "th", "td", "strong", "code"}
    assert "<script" not in html and "<img" not in html and "<a " not in html
    assert "\x1b" not in markdown
    # One table row per account, in the list and among the never reached: no name ended
    # its row or added one.
    rows = [line for line in markdown.splitlines() if line.startswith("| ") and "@" in line]
    assert len(rows) == 2 * len(EVERYTHING)
    counts, whys = 1 + 7, 1 + 1  # the counts' table; the never reached by why (all bounced)
    assert html.count("<tr>") == counts + whys + 2 * (1 + len(EVERYTHING))
    assert f"(--accept-unreached {len(EVERYTHING)})" in markdown
    assert "Exempted: '=cmd\\|\\\\' /C calc\\\\'\\!A0', '&lt;b&gt;x&lt;/b&gt;'" in markdown


@pytest.mark.parametrize("name", PROSE + TERMINAL)
def test_the_preview_markdown_names_each_exempted_account_as_one_name(
    plan: Plan, tmp_path: Path, name: str
) -> None:
    """The saved preview's `Exempted:` line quotes each name, as the console does: a
    username ``bo, di`` joined with ``, `` read as two people exempted, and one holding
    a line break read as another with a space. Each, rendered, reads back exactly."""
    exempted = [name, "bob"]
    preview = dataclasses.replace(hostile_preview(), exempted=exempted)
    markdown = preview_markdown(save_preview(plan, preview, tmp_path, actor="rm"))

    [line] = [line for line in markdown.splitlines() if line.startswith("Exempted: ")]
    said = re.fullmatch(r"<p>Exempted: (.*)</p>\n", MARKDOWN.render(line))
    assert said, MARKDOWN.render(line)
    assert names_read_back(html.unescape(said[1])) == exempted


@pytest.mark.parametrize("name", PROSE + TERMINAL)
def test_a_refusal_names_a_hostile_username_as_one_name(
    plan: Plan, tmp_path: Path, name: str
) -> None:
    """Since the preview, bob left the list and an account named as prose joined it
    (``bo); 2 accounts newly listed (eve``, ``di and 40 more``, ``bo, di``): the
    refusal names each as one quoted name, which reads back as exactly the username,
    and the sentence around it stays the tool's (one account either way)."""
    bob = Target(1, "bob", "bob@example.com", None, 0, False)
    hostile = Target(2, name, "x@example.com", None, 0, False)
    then = PhasePreview("top-100", "top-100", [bob], 0, [])
    record = save_preview(plan, then, tmp_path, actor="rm")
    now = dataclasses.replace(then, targets=[hostile])

    said = changed_since(tmp_path, now, then.fingerprint)

    assert said is not None and "\x1b" not in said and "\n" not in said
    gone, new = re.fullmatch(
        rf"since the preview of .* UTC \({re.escape(record.csv_path.name)}\): "
        r"1 account no longer listed \((.*)\); 1 account newly listed \((.*)\)",
        said,
    ).groups()
    assert names_read_back(gone) == ["bob"]
    assert names_read_back(new) == [name]


@pytest.mark.parametrize("edit", ["an extra cell", "cut short"])
def test_a_refusal_stands_on_its_own_when_the_previews_list_was_edited(
    plan: Plan, tmp_path: Path, edit: str
) -> None:
    """A preview's CSV with a row of more cells than its header, or of fewer (edited by
    hand, cut short): saying who changed since raised AttributeError, a traceback in
    place of the refusal. It says nothing, as for any list it cannot read."""
    bob = Target(1, "bob", "bob@example.com", None, 0, False)
    then = PhasePreview("top-100", "top-100", [bob], 0, [])
    record = save_preview(plan, then, tmp_path, actor="rm")
    lines = record.csv_path.read_text(encoding="utf-8").splitlines()
    lines[1] = lines[1] + ",extra" if edit == "an extra cell" else lines[1].split(",")[0]
    record.csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    now = dataclasses.replace(then, targets=[])

    assert changed_since(tmp_path, now, then.fingerprint) is None
