"""The adoption report from hand-made marts (docs/adoption-marts.md is the contract).

The marts are created with the contract's columns and rows made by hand (in
tests/support/reports.py, shared with tests/test_report_browser.py), so these tests
pin the report, not the SQL that builds the marts.
"""

from __future__ import annotations

import csv
import re
from datetime import date, datetime
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

from rollout.core.errors import RolloutError
from rollout.core.output import FORMULA_PREFIXES
from rollout.core.plan import Phase, Plan
from rollout.report.reporting import (
    ReportFiles,
    build_report,
    plan_milestones,
)
from rollout.report.spec import report_spec
from rollout.warehouse import open_warehouse
from tests.hostile import FORMULAS, HEADERS, MARKUP, TERMINAL
from tests.support.reports import (
    AS_OF,
    CSV_HOSTILE_ORG,
    HOSTILE_ORG,
    adoption_rows,
    create_marts,
    fill_marts,
    make_warehouse,
    run_report,
)

# The report's definition as shipped (reports/adoption.yml, sql/marts/*.yml).
MARTS = report_spec().marts
FUNNEL_STAGES = report_spec().funnel_stages


@pytest.fixture
def report(tmp_path: Path, plan: Plan) -> ReportFiles:
    return run_report(tmp_path, plan)


@pytest.fixture
def empty_report(tmp_path: Path, plan: Plan) -> ReportFiles:
    return run_report(tmp_path, plan, empty=True)


class _Loads(HTMLParser):
    """Every tag and every attribute that could make a browser fetch something."""

    FETCHING_TAGS = frozenset(
        [
            "script",
            "link",
            "img",
            "iframe",
            "frame",
            "object",
            "embed",
            "audio",
            "video",
            "source",
            "track",
            "base",
            "image",
            "use",
            "feimage",
            "picture",
            "portal",
        ]
    )
    URL_ATTRIBUTES = frozenset(
        [
            "src",
            "href",
            "srcset",
            "poster",
            "data",
            "action",
            "formaction",
            "xlink:href",
            "background",
            "ping",
            "manifest",
            "codebase",
            "cite",
            "longdesc",
        ]
    )

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.urls: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES:
                self.urls.append((tag, name, value or ""))


def loads_of(html: str) -> _Loads:
    parser = _Loads()
    parser.feed(html)
    parser.close()
    return parser


def table_blocks(markdown: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    current: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


NAN_IN_ATTRIBUTE = re.compile(r'="[^"]*\b(nan|inf|infinity)\b[^"]*"', re.I)


# --- files -----------------------------------------------------------------------


def test_the_report_is_written_where_the_contract_says(report: ReportFiles, tmp_path: Path) -> None:
    assert report.out_dir == tmp_path / "reports" / "2022-05-31"
    assert report.html == report.out_dir / "adoption.html"
    assert report.markdown == report.out_dir / "adoption.md"
    assert set(report.csvs) == set(MARTS)
    for path in report.paths:
        assert path.is_file() and path.stat().st_size > 0, path
    assert sorted(p.name for p in report.out_dir.iterdir()) == sorted(
        ["adoption.html", "adoption.md", *(f"{t}.csv" for t in MARTS)]
    )
    # Readable as any file this process makes (the group too, as the umask says), less
    # every bit for others: the report names accounts (rollout.core.files).
    plain = report.out_dir.parent / "plain"
    plain.write_text("")
    for path in report.paths:
        assert path.stat().st_mode == plain.stat().st_mode & ~0o007, path


def test_the_headline_figures(report: ReportFiles, plan: Plan) -> None:
    everyone = report.all_accounts
    assert everyone is not None
    assert report.data_through == AS_OF
    rows = [r for r in adoption_rows(plan, AS_OF) if r[1] == "all"]
    last, week_ago = rows[-1], rows[-8]
    assert (everyone.accounts, everyone.with_2fa) == (last[2], last[3])
    assert everyone.share == pytest.approx(last[3] / last[2])
    assert everyone.change_7d == pytest.approx(last[6] - week_ago[6])
    assert everyone.enrolled_last_7d == sum(r[7] for r in rows[-7:])
    assert [p.population for p in report.populations] == [
        "all",
        "cohort:top-100",
        "cohort:high-impact",
    ]
    # Both phases are enforced by 2022-05-31.
    assert report.still_without_2fa == {"top-100": 10, "high-impact": 500}


# --- HTML ------------------------------------------------------------------------


def test_the_html_has_four_accessible_charts(report: ReportFiles) -> None:
    html = report.html.read_text()
    assert html.count("<svg") == 4
    charts = re.findall(r"<svg\b[^>]*>", html)
    for tag in charts:
        assert 'role="img"' in tag and "aria-labelledby=" in tag, tag
    ids = re.findall(r'<svg\b[^>]*\bid="([^"]+)"', html)
    assert ids == ["chart-adoption", "chart-methods", "chart-brownouts", "chart-funnel"]
    for chart_id in ids:
        assert f'<title id="{chart_id}-title">' in html
        assert f'<desc id="{chart_id}-desc">' in html
    # Each chart has a data table in the page.
    for table in ("adoption", "methods", "brownouts", "funnel"):
        assert f'<table id="table-{table}">' in html
    for table in ("reach", "orgs", "tokens", "ledger", "milestones", "headline"):
        assert f'<table id="table-{table}">' in html
    assert "No data yet" not in html
    assert not NAN_IN_ATTRIBUTE.search(html)


def test_the_adoption_chart_marks_the_plans_milestones(report: ReportFiles, plan: Plan) -> None:
    html = report.html.read_text()
    adoption = re.search(r'<svg\b[^>]*id="chart-adoption".*?</svg>', html, re.S)
    assert adoption is not None
    labels = " ".join(re.findall(r'class="milestone-label"[^>]*>([^<]*)<', adoption.group(0)))
    for expected in (
        "ELV trial",
        "top-100 notices",
        "top-100 enforced",
        "brownout-1",
        "brownout-2",
        "ELV for all",
        "high-impact notices",
        "high-impact enforced",
    ):
        assert expected in labels, (expected, labels)
    # Every milestone of the plan (reminders too) has its line, with the date in a tooltip.
    for milestone in plan_milestones(plan):
        assert f"<title>{milestone.on}: {milestone.label}</title>" in adoption.group(0)
    # One line a population, in the legend with its last share.
    assert adoption.group(0).count("<polyline") == 3
    assert "All accounts: " in adoption.group(0)


def test_the_html_loads_nothing(report: ReportFiles) -> None:
    html = report.html.read_text()
    found = loads_of(html)
    assert not set(found.tags) & _Loads.FETCHING_TAGS
    assert all(name == "href" and value.startswith("#") for _, name, value in found.urls), (
        found.urls
    )
    assert "<script" not in html.lower()
    assert "http://" not in html and "https://" not in html
    assert "url(" not in html and "@import" not in html
    assert "default-src 'none'" in html  # the CSP: a browser refuses any fetch anyway


def test_user_input_is_escaped_in_the_html(report: ReportFiles) -> None:
    html = report.html.read_text()
    assert HOSTILE_ORG not in html
    assert "&lt;b&gt;x&lt;/b&gt;&amp;&#34;" in html
    assert "<script>alert" not in html
    assert "email &lt;script&gt;alert(1)&lt;/script&gt; sent" in html


def test_a_control_character_in_a_name_shows_as_its_escape_in_the_html_as_in_the_markdown(
    tmp_path: Path, plan: Plan
) -> None:
    """A right-to-left override (or an isolate, ESC, NUL) in an org's or a brown-out's
    name would reorder or hide what the page shows: it shows as its escape, as on a
    terminal and in the Markdown."""
    names = [*TERMINAL, *HEADERS]
    with open_warehouse(make_warehouse(tmp_path, plan)) as con:
        con.executemany(
            "insert into adoption_by_org values (?, ?, ?, ?, ?, ?, ?)",
            [(name, 1000 + i, 1, 0.0, 1, 0, None) for i, name in enumerate(names)],
        )
        con.execute(
            "insert into brownout_impact values ('brown\u202eout', 'brownout', '2022-02-16', "
            "'2022-02-17', 10, 5, 1, 1, 1, 1, null, null)"
        )
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    html = files.html.read_text()
    controls = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
    assert not controls.search(html), controls.findall(html)
    assert "right\\u202eto-left" in html
    assert "acme\\u202e\\u2066moc.elgoog//:sptth ta nigol\\u2069" in html
    assert "\\x1b[2K\\x1b[1Amallory" in html
    brownouts = re.search(r'<svg[^>]*id="chart-brownouts".*?</svg>', html, re.S)
    assert brownouts is not None and "brown\\u202eout" in brownouts.group(0)
    rendered = MarkdownIt("commonmark").enable("table").render(files.markdown.read_text())
    assert not controls.search(rendered)
    assert "right\\u202eto-left" in rendered


def test_only_the_largest_orgs_are_in_the_page(report: ReportFiles) -> None:
    html = report.html.read_text()
    table = re.search(r'<table id="table-orgs">.*?</table>', html, re.S)
    assert table is not None
    assert table.group(0).count('<th scope="row">') == 20
    # Ordered by members: the two hand-made large orgs first, then org-00 (40 members).
    rows = re.findall(r'<th scope="row">(.*?)</th>', table.group(0), re.S)
    assert rows[:3] == [
        "&lt;b&gt;x&lt;/b&gt;&amp;&#34;",
        # Its line break shown, as the terminal and the Markdown show it: not a space.
        "comma, &#34;quote&#34;\\x0aand a new line",
        "org-00",
    ]
    assert "32 orgs; 2 enforce 2FA" in html


# --- Markdown --------------------------------------------------------------------


def test_the_markdown_tells_the_same_story(report: ReportFiles) -> None:
    markdown = report.markdown.read_text()
    assert len(markdown.encode()) < 1_000_000
    assert markdown.startswith("# 2FA adoption: plan npm-2022, as of 2022-05-31\n")
    header = (
        "| population | accounts | with 2FA | share | change, 7 days | change, 30 days "
        "| enrolled, last 7 days |"
    )
    assert header in markdown
    everyone = report.all_accounts
    assert everyone is not None
    assert (
        f"| All accounts | {everyone.accounts:,} | {everyone.with_2fa:,} | "
        f"{everyone.share * 100:.1f}% |" in markdown
    )
    for heading in (
        "## Adoption over time",
        "## 2FA methods",
        "## Brown-out impact",
        "## Compliance funnel",
        "## Reach of the warnings",
        "## Orgs",
        "## Token readiness",
        "## Publishing",
        "## Actions taken",
        "## Milestones",
    ):
        assert f"\n{heading}\n" in markdown
    row = (
        "| top-100 | top-100 | 2022-01-04 | 2022-02-01 | 250 | 100 | 100 | 30 | 45 | 70 | 75 "
        "| 25 | 25 | 40 | 0 | 15 | 10 | 27 | 10 | 25 |"
    )
    assert row in markdown


class _Tables(HTMLParser):
    """Each table's rows, each row its cells' text (a header row first)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def tables_of(html: str) -> list[list[list[str]]]:
    parser = _Tables()
    parser.feed(html)
    parser.close()
    return parser.tables


def markdown_as_html(markdown: str) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)


def test_the_markdown_carries_every_column_and_value_of_the_html_tables(
    report: ReportFiles,
) -> None:
    """Like an email's text and HTML parts: each table has the same columns in both, and
    each row the Markdown keeps (it keeps the top rows of the long ones) reads as in the
    page, the funnel's before enforcement and its per-account phases' note included."""
    html, markdown = report.html.read_text(), report.markdown.read_text()
    in_html, in_markdown = tables_of(html), tables_of(markdown_as_html(markdown))

    assert len(in_html) == len(in_markdown)
    for page, md in zip(in_html, in_markdown, strict=True):
        assert md[0] == page[0], f"columns differ: {page[0]} in the HTML, {md[0]} in Markdown"
        missing = [row for row in md[1:] if row not in page[1:]]
        assert missing == [], f"table {page[0][0]}: rows unlike the HTML's: {missing}"
    [funnel] = [t for t in in_markdown if t[0][:2] == ["phase", "cohort"]]
    assert "before enforcement" in funnel[0]
    note = re.search(r"<p>(Notified, still without 2FA at enforcement[^<]*)</p>", html)
    assert note is not None
    assert " ".join(unescape(note[1]).split()) in " ".join(markdown.split())


def test_a_phase_whose_notices_are_to_come_says_so_in_words_in_both(
    tmp_path: Path, plan: Plan
) -> None:
    """Not a grey row alone: the page says what the Markdown says."""
    with open_warehouse(make_warehouse(tmp_path, plan), read_only=True) as con:
        files = build_report(con, plan, date(2022, 2, 10), tmp_path / "out")
    html = tables_of(files.html.read_text())
    markdown = tables_of(markdown_as_html(files.markdown.read_text()))
    for tables in (html, markdown):
        phases = [row[0] for t in tables if t[0][0] == "phase" for row in t[1:]]
        assert "high-impact (notices not sent yet)" in phases


def test_token_readiness_says_a_past_day_undercounts_its_uses(report: ReportFiles) -> None:
    """A token keeps only its last use: a past day's report cannot see uses since."""
    for text in (report.markdown.read_text(), report.html.read_text()):
        assert "so these figures are exact only on the day itself" in " ".join(text.split())


def test_markdown_tables_are_well_formed(report: ReportFiles) -> None:
    blocks = table_blocks(report.markdown.read_text())
    assert len(blocks) == 12
    for block in blocks:
        widths = {len(cells(line)) for line in block}
        assert len(widths) == 1, block
        assert all(re.fullmatch(r"-{3,}:?", c) for c in cells(block[1])), block[1]
    orgs = next(b for b in blocks if b[0].startswith("| org |"))
    assert len(orgs) == 2 + 20


def test_user_input_is_escaped_in_the_markdown(report: ReportFiles) -> None:
    markdown = report.markdown.read_text()
    assert "<b>" not in markdown and "<script" not in markdown
    assert '| &lt;b&gt;x&lt;/b&gt;&amp;" | 500 |' in markdown
    # A new line in a name would end the table row: it shows as \\x0a (rendered \x0a).
    assert '| comma, "quote"\\\\x0aand a new line | 450 |' in markdown
    assert "email &lt;script&gt;alert\\(1\\)&lt;/script&gt; sent" in markdown


# --- CSV -------------------------------------------------------------------------


def test_every_mart_round_trips_through_its_csv(report: ReportFiles, tmp_path: Path) -> None:
    with open_warehouse(tmp_path / "warehouse.duckdb", read_only=True) as con:
        for table, columns in MARTS.items():
            path = report.csvs[table]
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle))
            assert tuple(rows[0]) == columns, table
            count = con.execute(f"select count(*) from {table}").fetchall()[0][0]
            assert len(rows) - 1 == count, table
            types = dict(
                con.execute(f"select column_name, column_type from (describe {table})").fetchall()
            )
            spec = "{" + ", ".join(f"'{c}': '{types[c]}'" for c in columns) + "}"
            con.execute(
                f"create temp table back as select * from read_csv('{path}', header = true, "
                f"columns = {spec}, quote = '\"', escape = '\"')"
            )
            for a, b in ((table, "back"), ("back", table)):
                difference = con.execute(
                    f"select count(*) from (select * from {a} except all select * from {b})"
                ).fetchall()[0][0]
                assert difference == 0, (table, a, b)
            con.execute("drop table back")
    with report.csvs["adoption_by_org"].open(newline="") as handle:
        orgs = [row["org"] for row in csv.DictReader(handle)]
    assert orgs[:2] == [HOSTILE_ORG, CSV_HOSTILE_ORG]
    assert len(orgs) == 32


def test_no_csv_cell_runs_as_a_formula_and_numbers_stay_numbers(tmp_path: Path, plan: Plan) -> None:
    warehouse = make_warehouse(tmp_path, plan)
    with open_warehouse(warehouse) as con:
        con.executemany(
            "insert into adoption_by_org values (?, ?, ?, ?, ?, ?, ?)",
            [(name, 1000 + i, 1, 0.0, 1, 0, None) for i, name in enumerate(FORMULAS)],
        )
        con.execute("insert into time_to_comply values ('=phase', -3, 1)")
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    with files.csvs["adoption_by_org"].open(newline="") as handle:
        orgs = [row["org"] for row in csv.DictReader(handle)]
    # The largest first: the hostile ones, each shown as text with a leading quote.
    assert orgs[: len(FORMULAS)] == ["'" + name for name in reversed(FORMULAS)]
    with files.csvs["time_to_comply"].open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"phase": "'=phase", "days_after_notice": "-3", "accounts": "1"} in rows
    for path in files.csvs.values():
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                for cell in row.values():
                    if cell.startswith(FORMULA_PREFIXES):
                        float(cell)  # only a number may start with - or +


def test_a_name_makes_no_link_or_markup_in_the_markdown(tmp_path: Path, plan: Plan) -> None:
    with open_warehouse(make_warehouse(tmp_path, plan)) as con:
        con.executemany(
            "insert into adoption_by_org values (?, ?, ?, ?, ?, ?, ?)",
            [(name, 1000 + i, 1, 0.0, 1, 0, None) for i, name in enumerate(MARKUP)],
        )
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    markdown = files.markdown.read_text()
    assert "https://evil" not in markdown and "www.evil" not in markdown  # no autolink
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    for tag in ("<a ", "<img", "<script", "<code", "<em", "<del", "<blockquote"):
        assert tag not in rendered, tag
    orgs = next(b for b in table_blocks(markdown) if b[0].startswith("| org |"))
    assert len({len(cells(line)) for line in orgs}) == 1


def test_a_phase_asking_more_than_2fa_is_headlined_by_the_accounts_it_acted_on(
    tmp_path: Path, plan: Plan
) -> None:
    """A token phase's accounts may well use 2FA: "still without 2FA" would say nothing
    of it. Its line counts the accounts it acted on (required), with what it asks."""
    top = plan.phase("top-100")
    tokens = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "none", "no_classic_tokens": True},
            "effects": ["revoke_tokens"],
        }
    )
    token_plan = plan.model_copy(update={"phases": [tokens, *plan.phases[1:]]})
    with open_warehouse(make_warehouse(tmp_path, token_plan)) as con:
        files = build_report(con, token_plan, AS_OF, tmp_path / "out")
    markdown = files.markdown.read_text()
    # Acted on as they fell short then: some may meet it since (the count is of the past).
    assert (
        "- Phase top-100 (enforced 2022-02-01): 27 accounts acted on as they fell short of "
        "what it asks (no classic tokens); some may meet it since." in markdown
    )
    assert "- Phase high-impact (enforced 2022-05-03): 500 accounts still without 2FA." in markdown
    html = files.html.read_text()
    assert (
        "accounts phase top-100 acted on as they fell short of what it asks (no classic "
        "tokens; enforced 2022-02-01)" in html
    )
    # Its funnel has no 2FA stages: they would count 2FA it never asked for ("enforced"
    # as the accounts without 2FA it happened to act on). It keeps its accounts acted on.
    funnel = next(b for b in table_blocks(markdown) if b[0].startswith("| phase | cohort |"))
    top_row = cells(next(line for line in funnel if line.startswith("| top-100 |")))
    assert top_row[5:13] == ["—"] * 8 and top_row[15:17] == ["—"] * 2
    assert top_row[17] == "27" and top_row[18] == "—"
    high = cells(next(line for line in funnel if line.startswith("| high-impact |")))
    assert "—" not in high[5:17]
    assert "asks no 2FA: see required by the phase, and token readiness" in html


def test_a_token_phase_s_funnel_counts_the_tokens_it_revoked(tmp_path: Path, plan: Plan) -> None:
    """A token phase (npm-2025-tokens' classic-tokens revoked 70 tokens) showed no
    revocation anywhere: the funnel counted sessions_revoked alone, 0 for a phase that
    signs nobody out. Its tokens revoked are in the HTML, the Markdown and the CSV."""
    top = plan.phase("top-100")
    tokens = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "none", "no_classic_tokens": True},
            "effects": ["revoke_tokens"],
        }
    )
    token_plan = plan.model_copy(update={"phases": [tokens, *plan.phases[1:]]})
    with open_warehouse(make_warehouse(tmp_path, token_plan)) as con:
        con.execute(
            "update compliance_funnel set sessions_revoked = 0, tokens_revoked = 1234 "
            "where phase = 'top-100'"
        )
        files = build_report(con, token_plan, AS_OF, tmp_path / "out")
    funnel = next(
        b for b in table_blocks(files.markdown.read_text()) if b[0].startswith("| phase |")
    )
    header = cells(funnel[0])
    top_row = cells(next(line for line in funnel if line.startswith("| top-100 |")))
    high = cells(next(line for line in funnel if line.startswith("| high-impact |")))
    revoked = (header.index("sessions revoked"), header.index("tokens revoked"))
    assert [top_row[i] for i in revoked] == ["0", "1,234"]
    assert [high[i] for i in revoked] == ["1,500", "0"]
    table = re.search(r'<table id="table-funnel">.*?</table>', files.html.read_text(), re.S)
    assert table is not None
    head = re.findall(r'<th scope="col"[^>]*>([^<]*)</th>', table.group(0))
    assert head[head.index("sessions revoked") + 1] == "tokens revoked"
    top_html = re.search(r'<th scope="row">top-100</th>(.*?)</tr>', table.group(0), re.S)
    assert top_html is not None
    values = re.findall(r"<td[^>]*>([^<]*)</td>", top_html.group(1))
    # The row's cells after its th: cohort, notice, enforcement, then the counts.
    assert values[head.index("tokens revoked") - 1] == "1,234"
    with files.csvs["compliance_funnel"].open() as handle:
        rows = {r["phase"]: r for r in csv.DictReader(handle)}
    assert (rows["top-100"]["sessions_revoked"], rows["top-100"]["tokens_revoked"]) == ("0", "1234")


def test_a_security_key_phase_s_funnel_says_its_2fa_is_a_security_key(
    tmp_path: Path, plan: Plan
) -> None:
    """compliance_funnel counts a security key alone for a phishing_resistant phase: its
    "still without 2FA" (npm-2025-tokens: 198) counted TOTP users too, beside a headline
    of 128 cohort accounts without 2FA, with nothing to say the two differ."""
    top = plan.phase("top-100")
    keys = Phase.model_validate(
        {**top.model_dump(), "requires": {"two_factor": "phishing_resistant"}}
    )
    key_plan = plan.model_copy(update={"phases": [keys, *plan.phases[1:]]})
    with open_warehouse(make_warehouse(tmp_path, key_plan)) as con:
        files = build_report(con, key_plan, AS_OF, tmp_path / "out")
    markdown = files.markdown.read_text()
    funnel = next(b for b in table_blocks(markdown) if b[0].startswith("| phase | cohort |"))
    assert any(line.startswith("| top-100 (2FA: a security key) |") for line in funnel)
    assert any(line.startswith("| high-impact |") for line in funnel)
    said = "is a security key (WebAuthn): an account with TOTP alone counts as without it"
    assert said in markdown
    html = files.html.read_text()
    assert '<th scope="row">top-100 (2FA: a security key)</th>' in html
    assert '<th scope="row">high-impact</th>' in html
    assert said in html
    assert "cohort top-100, notice 2022-01-04, enforcement 2022-02-01, 2FA counted: a " in html
    # An any-factor plan's report says nothing of security keys in its funnel.
    plain = run_report(tmp_path / "plain", plan)
    for text in (plain.markdown.read_text(), plain.html.read_text()):
        assert "(2FA: a security key)" not in text and said not in text


def test_a_plan_requiring_no_2fa_is_not_said_to_require_2fa_of_anyone(
    tmp_path: Path, plan: Plan
) -> None:
    """required and never_reached_enforced count every account a phase applies to: a
    token phase's holders of classic tokens, a warn phase's accounts shown the banner.
    Of a plan whose top-100 phase revokes tokens (then rolled back) and whose
    high-impact phase only warns, the report must not say either phase requires 2FA of
    its accounts, that they were required to use 2FA, or locked out: neither did so."""
    top, high = plan.phases
    tokens = Phase.model_validate(
        {
            **top.model_dump(),
            "requires": {"two_factor": "none", "no_classic_tokens": True},
            "effects": ["revoke_tokens"],
        }
    )
    banner = Phase.model_validate({**high.model_dump(), "effects": ["warn"]})
    shaped = plan.model_copy(update={"phases": [tokens, banner]})
    with open_warehouse(make_warehouse(tmp_path, shaped)) as con:
        con.execute(
            "update compliance_funnel set rolled_back_at = timestamp '2022-02-02 10:00' "
            "where phase = 'top-100'"
        )
        files = build_report(con, shaped, AS_OF, tmp_path / "out")
    for text in (files.markdown.read_text(), files.html.read_text()):
        for claim in ("requires 2FA of", "required to use 2FA", "locked out"):
            assert claim not in text, claim
    markdown = files.markdown.read_text()
    assert "- Phase top-100 (enforcement 2022-02-01): rolled back 2022-02-02 10:00 UTC; " in (
        markdown
    )


def test_extra_columns_follow_the_contracts(tmp_path: Path, plan: Plan) -> None:
    warehouse = make_warehouse(tmp_path, plan)
    with open_warehouse(warehouse) as con:
        con.execute("alter table token_readiness add column note varchar")
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    header = files.csvs["token_readiness"].read_text().splitlines()[0]
    assert header == ",".join((*MARTS["token_readiness"], "note"))


# --- edge cases ------------------------------------------------------------------


def test_empty_marts_make_a_valid_report(empty_report: ReportFiles) -> None:
    html = empty_report.html.read_text()
    assert html.count("<svg") == 4
    assert html.count("No data yet") >= 4
    assert not NAN_IN_ATTRIBUTE.search(html)
    assert "<script" not in html
    # Even without data, the adoption chart's axis shows the plan's milestones.
    assert "ELV for all" in html
    markdown = empty_report.markdown.read_text()
    assert "_No adoption data yet._" in markdown
    for block in table_blocks(markdown):
        assert len({len(cells(line)) for line in block}) == 1
    for table, path in empty_report.csvs.items():
        assert path.read_text().splitlines() == [",".join(MARTS[table])]
    assert empty_report.all_accounts is None
    assert empty_report.data_through is None
    assert empty_report.still_without_2fa == {}


def test_a_plan_without_brownouts_says_so_not_no_data_yet(tmp_path: Path, plan: Plan) -> None:
    """github-2023, pypi-2023, rubygems-2022 and npm-2025-tokens hold no brown-out: their
    reports read "No data yet: no brown-out has been measured" under an empty chart,
    as if one were to come."""
    calm = plan.model_copy(update={"brownouts": [], "name": "calm_plan"})
    with open_warehouse(make_warehouse(tmp_path, calm)) as con:
        con.execute("delete from brownout_impact")
        files = build_report(con, calm, AS_OF, tmp_path / "out")
    markdown = files.markdown.read_text()
    brownouts = markdown.split("## Brown-out impact")[1].split("\n## ")[0]
    assert brownouts.strip() == "_Plan calm\\_plan holds no brown-outs._"
    html = files.html.read_text()
    section = html.split('<section id="brownouts"')[1].split("</section>")[0]
    assert "Plan calm_plan holds no brown-outs." in section
    assert "<svg" not in section and "No data yet" not in section
    # A plan that holds brown-outs, none measured yet, still says no data yet.
    empty = run_report(tmp_path / "empty", plan, empty=True)
    assert "_No data yet: no brown-out has been measured._" in empty.markdown.read_text()
    assert "No data yet: no brown-out has been measured." in empty.html.read_text()


def test_brownouts_measured_under_an_earlier_plan_are_shown_all_the_same(
    tmp_path: Path, plan: Plan
) -> None:
    calm = plan.model_copy(update={"brownouts": []})
    files = run_report(tmp_path, calm)
    assert "holds no brown-outs" not in files.markdown.read_text()
    assert "brownout-1" in files.html.read_text().split('<section id="brownouts"')[1]


def test_degenerate_values_never_reach_the_svg(tmp_path: Path, plan: Plan) -> None:
    """No accounts (share 0/0), NaN and NULL shares, one single day, zero brown-outs."""
    path = tmp_path / "warehouse.duckdb"
    with open_warehouse(path) as con:
        create_marts(con)
        con.execute(
            "insert into adoption_daily values "
            "('2022-05-31', 'all', 0, 0, 0, 0, 'nan'::double, 0), "
            "('2022-05-31', 'cohort:top-100', 10, 5, null, null, null, null), "
            "('2022-05-31', 'cohort:odd', 10, 5, 5, 0, 'inf'::double, 1)"
        )
        con.execute(
            "insert into brownout_impact values "
            "('brownout-1', 'brownout', '2022-02-16', '2022-02-17', 0, 0, 0, 0, 0, 0, "
            "null, null)"
        )
        con.execute(
            "insert into compliance_funnel values ('top-100', 'top-100', '2022-01-04', "
            "'2022-02-01', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, null)"
        )
        con.execute("insert into adoption_by_org values (null, null, null, 'nan', 0, 0, null)")
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    html = files.html.read_text()
    assert html.count("<svg") == 4
    assert not NAN_IN_ATTRIBUTE.search(html)
    assert "nan%" not in html.lower()
    shares = {p.population: p.share for p in files.populations}
    # No accounts: no share ("—"), not 0%.
    assert shares == {"all": None, "cohort:top-100": 0.5, "cohort:odd": 0.5}


def test_a_cohort_starts_with_its_first_member_not_at_0_percent(tmp_path: Path, plan: Plan) -> None:
    """Before its first build a cohort has no accounts: its rows said 0%, the headline
    "+48.8 pp in 30 days" against such a day, and the demo "0% -> 80%". Its changes,
    line and rows start with its first member."""
    from datetime import timedelta

    path = tmp_path / "warehouse.duckdb"
    first = AS_OF - timedelta(days=20)  # top-100's first build
    rows = []
    for n in range(40):
        day = AS_OF - timedelta(days=39 - n)
        rows.append(f"('{day}', 'all', 100, 50, 50, 0, 0.5, 0)")
        built = day >= first
        share = 0.3 + 0.01 * (day - first).days if built else 0.0
        members = 10 if built else 0
        rows.append(f"('{day}', 'cohort:top-100', {members}, 0, 0, 0, {share}, 0)")
    with open_warehouse(path) as con:
        create_marts(con)
        con.execute("insert into adoption_daily values " + ", ".join(rows))
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    figures = {p.population: p for p in files.populations}
    assert set(figures) == {"all", "cohort:top-100"}
    top = figures["cohort:top-100"]
    assert top.change_30d is None  # 30 days before, it had no one
    assert top.change_7d == pytest.approx(0.07)
    markdown = files.markdown.read_text()
    # The weekly table: "—" before its first member (it said 0.0%), then its shares.
    assert "| 2022-05-10 | 50.0% | — |" in markdown
    assert "| 2022-05-17 | 50.0% | 36.0% |" in markdown


def _report_with_high_impact(
    tmp_path: Path, plan: Plan, as_of: date, *, built: bool
) -> tuple[ReportFiles, str, str]:
    """A report of ``as_of`` whose top-100 has 10 accounts and whose high-impact was
    built with nobody in it (rows of 0 accounts, a token_readiness row of 0
    maintainers) or not built at all (no rows: adoption_daily has none before a build)."""
    from datetime import timedelta

    rows = []
    for n in range(40):
        day = as_of - timedelta(days=39 - n)
        rows.append(f"('{day}', 'all', 100, 50, 50, 0, 0.5, 0)")
        rows.append(f"('{day}', 'cohort:top-100', 10, 5, 4, 1, 0.5, 0)")
        if built:
            rows.append(f"('{day}', 'cohort:high-impact', 0, 0, 0, 0, 0.0, 0)")
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        create_marts(con)
        con.execute("insert into adoption_daily values " + ", ".join(rows))
        con.execute(
            "insert into token_readiness values ('top-100', 10, 1, 1, 2, 8, 3, 1, 1, 3, null, null)"
        )
        if built:
            con.execute(
                "insert into token_readiness values "
                "('high-impact', 0, 0, 0, 0, 0, 0, 0, 0, 0, null, null)"
            )
        files = build_report(con, plan, as_of, tmp_path / "out")
    return files, files.html.read_text(), files.markdown.read_text()


def test_a_cohort_built_with_nobody_in_it_has_0_accounts_in_every_section(
    tmp_path: Path, plan: Plan
) -> None:
    """A plan whose high-impact rule no package meets, built on its day: the headline,
    methods and token sections left it out (the funnel and milestones had it). It is a
    cohort of 0 accounts, with no share ("—", not 0% nor nan%) and words for its empty
    line, in the HTML, the Markdown and the CSV alike."""
    files, html, markdown = _report_with_high_impact(tmp_path, plan, AS_OF, built=True)
    figures = {p.population: p for p in files.populations}
    assert list(figures) == ["all", "cohort:top-100", "cohort:high-impact"]
    empty = figures["cohort:high-impact"]
    assert (empty.accounts, empty.with_2fa, empty.share, empty.change_7d) == (0, 0, None, None)
    assert empty.selected_no_one
    for text in (html, markdown):
        assert "nan" not in text.lower()
    tables = table_blocks(markdown)
    headline, methods = tables[0], tables[2]
    assert "| Cohort high-impact (built: selected no one) | 0 | 0 | — | — | — | 0 |" in headline
    assert "| Cohort high-impact (built: selected no one) | 0 | 0 | 0 | — |" in methods
    assert "| high-impact (no maintainers) | 0 | 0 | 0 | 0 | 0 | — | 0 | 0 | 0 | — |" in markdown
    assert "Cohort high-impact has no column: its build selected no one." in markdown
    page = unescape(re.sub(r"<[^>]+>", " ", html))
    assert "Cohort high-impact: built, its build selected no one" in " ".join(page.split())
    assert "Cohort high-impact has no line: its build selected no one." in html
    # The HTML's tables hold what the Markdown's do.
    html_tables = tables_of(html)
    assert any(
        row[:4] == ["Cohort high-impact (built: selected no one)", "0", "0", "—"]
        for table in html_tables
        for row in table
    )
    assert any(
        row[0] == "high-impact (no maintainers)" and row[6] == "—"
        for table in html_tables
        for row in table
    )
    with files.csvs["token_readiness"].open(newline="") as f:
        empty = ["high-impact", "0", "0", "0", "0", "0", "0", "0", "0", "0", "", ""]
        assert empty in list(csv.reader(f))


def said_in_every_section(html: str, markdown: str, cohort: str, said: str) -> None:
    """``said`` stands for ``cohort``'s figures in each section that lists cohorts: the
    headline, methods and token tables (Markdown and HTML), and under the chart."""
    headline, _, methods = table_blocks(markdown)[:3]
    assert f"| Cohort {cohort} | {said} | — | — | — | — | — |" in headline
    assert f"| Cohort {cohort} | {said} | — | — | — |" in methods
    assert f"| {cohort} | {said} | — | — | — | — | — | — | — | — | — |" in markdown
    assert f"Cohort {cohort} has no column: {said}." in markdown
    assert f"Cohort {cohort} has no line: {said}." in html
    rows = [row for table in tables_of(html) for row in table]
    assert [f"Cohort {cohort}", said] in rows
    assert [cohort, said] in rows


def test_a_cohort_not_built_yet_says_so_not_0(tmp_path: Path, plan: Plan) -> None:
    """A report before high-impact's first build (2022-03-14, its phase's cohort_as_of)
    says it is not built yet, and when it will be, in each section that lists cohorts:
    not 0 accounts, and not silence."""
    files, html, markdown = _report_with_high_impact(tmp_path, plan, date(2022, 2, 1), built=False)
    assert [p.population for p in files.populations] == ["all", "cohort:top-100"]
    said = "not built yet (first build 2022-03-14)"
    said_in_every_section(html, markdown, "high-impact", said)
    assert "nan" not in (html + markdown).lower()


def test_a_cohort_no_phase_names_not_built_yet_says_when_it_will_be(
    tmp_path: Path, plan: Plan
) -> None:
    """A cohort no phase names (`plan check` warns of it; analysts may track one) has no
    first-build day of the plan: every cohort build makes it, from the next. The report
    said "not built yet" with no date, as if it waited on a day to come; it says that
    the next cohort build makes it, in every section that lists cohorts."""
    tracked = plan.model_copy(update={"phases": [plan.phase("top-100")]})
    files, html, markdown = _report_with_high_impact(
        tmp_path, tracked, date(2022, 2, 1), built=False
    )
    assert [p.population for p in files.populations] == ["all", "cohort:top-100"]
    said = "not built yet (named by no phase: the next cohort build makes it)"
    said_in_every_section(html, markdown, "high-impact", said)


def test_a_missing_mart_is_named(tmp_path: Path, plan: Plan) -> None:
    warehouse = make_warehouse(tmp_path, plan)
    with open_warehouse(warehouse) as con:
        con.execute("drop table token_readiness")
        con.execute("alter table ledger_activity drop column count")
        with pytest.raises(
            RolloutError, match=r"token_readiness is missing.*ledger_activity lacks count"
        ):
            build_report(con, plan, AS_OF, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_failed_build_leaves_the_previous_report_whole(
    report: ReportFiles, tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {p.name: p.read_bytes() for p in report.out_dir.iterdir()}
    import rollout.report.reporting as reporting

    real_copy = reporting._copy_csv
    copied: list[str] = []

    def crash_on_the_fourth(con, table, columns, path):  # type: ignore[no-untyped-def]
        if len(copied) == 3:
            raise OSError("disk full")
        copied.append(table)
        real_copy(con, table, columns, path)

    monkeypatch.setattr(reporting, "_copy_csv", crash_on_the_fourth)
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        con.execute("update adoption_daily set accounts = accounts + 1")
        with pytest.raises(OSError, match="disk full"):
            build_report(con, plan, AS_OF, report.out_dir)
    after = {p.name: p.read_bytes() for p in report.out_dir.iterdir()}
    assert after == before  # no temporary file left, nothing half-replaced


def test_a_stop_while_the_files_move_into_place_waits_for_the_last(
    report: ReportFiles, tmp_path: Path, plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after the first file is in place: the rest follow before it is acted
    on, so the report is never a new CSV beside an old page."""
    import os
    import signal

    import rollout.report.reporting as reporting
    from rollout.core.stopping import Stopped

    real_replace = os.replace
    moved: list[str] = []

    def signalled_after_the_first(source: str, target: Path) -> None:
        real_replace(source, target)
        moved.append(Path(target).name)
        if len(moved) == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    before = {p.name: p.read_bytes() for p in report.out_dir.iterdir()}
    monkeypatch.setattr(reporting.os, "replace", signalled_after_the_first)
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        con.execute("update adoption_daily set accounts = accounts + 1")
        with pytest.raises(Stopped) as stopped:
            build_report(con, plan, AS_OF, report.out_dir)
    assert stopped.value.signum == signal.SIGTERM
    after = {p.name: p.read_bytes() for p in report.out_dir.iterdir()}
    assert set(after) == set(before) and len(moved) == len(before)
    assert all(after[name] != before[name] for name in ("adoption.html", "adoption_daily.csv"))


def test_what_a_killed_report_left_beside_its_files_goes_with_the_next(
    report: ReportFiles, tmp_path: Path, plan: Plan
) -> None:
    left = report.out_dir / ".adoption.html.0123456789abcdef.tmp"
    left.write_text("<html>half")
    with open_warehouse(tmp_path / "warehouse.duckdb", read_only=True) as con:
        build_report(con, plan, AS_OF, report.out_dir)
    assert not left.exists()
    assert not list(report.out_dir.glob(".*"))


def test_the_same_marts_make_the_same_files(
    report: ReportFiles, tmp_path: Path, plan: Plan
) -> None:
    with open_warehouse(tmp_path / "warehouse.duckdb", read_only=True) as con:
        again = build_report(con, plan, AS_OF, tmp_path / "again")
    for first, second in zip(report.paths, again.paths, strict=True):
        assert first.read_bytes() == second.read_bytes(), first.name


def _with_top_100_not_enforced(
    tmp_path: Path, plan: Plan, rolled_back_at: str | None = None
) -> ReportFiles:
    """The report with phase top-100 requiring nobody: never enforced, or rolled back."""
    path = make_warehouse(tmp_path, plan)
    with open_warehouse(path) as con:
        con.execute(
            "update compliance_funnel set enforced = 0, enrolled_after_enforcement = 0, "
            "required = 0, rolled_back_at = $at where phase = 'top-100'",
            {"at": rolled_back_at},
        )
        return build_report(con, plan, AS_OF, tmp_path / "out")


def _headline_cards(files: ReportFiles) -> str:
    headline = re.search(r'<h2 id="headline-h">.*?</section>', files.html.read_text(), re.S)
    assert headline is not None
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", headline.group(0)))


def test_a_rolled_back_phase_is_marked_rolled_back_not_still_without_2fa(
    tmp_path: Path, plan: Plan
) -> None:
    files = _with_top_100_not_enforced(tmp_path, plan, rolled_back_at="2022-02-03 10:15")
    assert files.still_without_2fa == {"high-impact": 500}
    assert files.rolled_back == {"top-100": datetime(2022, 2, 3, 10, 15)}
    markdown = files.markdown.read_text()
    assert "- Phase top-100 (enforcement 2022-02-01): rolled back 2022-02-03 10:15 UTC;" in markdown
    assert "Phase top-100 (enforced 2022-02-01)" not in markdown
    assert "- Phase high-impact (enforced 2022-05-03): 500 accounts still without 2FA." in markdown
    cards = _headline_cards(files)
    assert "rolled back phase top-100 on 2022-02-03 10:15" in cards
    assert "accounts of phase top-100 still without 2FA" not in cards
    assert "accounts of phase high-impact still without 2FA" in cards


def test_a_phase_past_its_date_that_nobody_enforced_is_not_called_enforced(
    tmp_path: Path, plan: Plan
) -> None:
    """The headline read "enforced 2022-02-01" from the plan's date alone."""
    files = _with_top_100_not_enforced(tmp_path, plan)
    assert files.still_without_2fa == {"high-impact": 500}
    assert "Phase top-100 (enforced" not in files.markdown.read_text()
    assert "accounts of phase top-100 still without 2FA" not in _headline_cards(files)


def test_the_markdown_marks_a_phase_whose_notices_are_not_out_yet(
    tmp_path: Path, plan: Plan
) -> None:
    """A row of zeros read as a phase that reached no one (the HTML says so too, beside
    greying its row)."""
    path = make_warehouse(tmp_path, plan)
    with open_warehouse(path, read_only=True) as con:
        files = build_report(con, plan, date(2022, 1, 2), tmp_path / "early")
    markdown = files.markdown.read_text()
    assert "| top-100 (notices not sent yet) | top-100 | 2022-01-04 |" in markdown
    assert markdown.count("(notices not sent yet)") >= 2  # the funnel and the reach
    # Brown-outs still ahead are not held yet: no zeros measured, and no bars.
    rows = [line for line in markdown.splitlines() if "(not held yet)" in line]
    assert rows and all(" 0 |" not in row and "—" in row for row in rows)
    assert "(not held yet)" in files.html.read_text()


def _brownout_rows(markdown: str) -> list[list[str]]:
    """The brown-out table's rows, cells split, its header first."""
    [block] = [b for b in table_blocks(markdown) if b[0].startswith("| brown-out |")]
    return [cells(line) for line in block if not line.startswith("| ---")]


def test_the_brownout_table_says_over_what_enrolments_are_counted(report: ReportFiles) -> None:
    """Enrolments run from each window's start to its enrolments_until: the column
    beside them gives it, and the rows follow the brown-outs in the order they were
    held, although brown-out 2's baseline (three weeks back) is the earliest span."""
    header, *rows = _brownout_rows(report.markdown.read_text())
    assert header[-3:] == [
        "2FA enrolments, from the start",
        "enrolments until (UTC)",
        "ELV completed share",
    ]
    assert [(r[0], r[1], r[2], r[-3], r[-2]) for r in rows] == [
        ("brownout-1", "baseline", "2022-02-09 00:00", "5,600", "2022-02-16 00:00"),
        ("brownout-1", "brownout", "2022-02-16 00:00", "21,400", "2022-02-23 00:00"),
        ("brownout-2", "baseline", "2022-02-02 00:00", "6,100", "2022-02-10 00:00"),
        ("brownout-2", "brownout", "2022-02-23 00:00", "14,800", "2022-03-03 00:00"),
    ]
    with report.csvs["brownout_impact"].open(newline="") as handle:
        order = [(r["brownout"], r["period"]) for r in csv.DictReader(handle)]
    assert order == [(r[0], r[1]) for r in rows]
    html = report.html.read_text()
    assert '<th scope="col">enrolments until (UTC)</th>' in html
    assert "7 days after its end, or to the next brown-out" in html
    assert "(so far)" not in html


def test_a_brownout_under_way_on_the_report_s_day_is_not_measured_as_held(
    tmp_path: Path, plan: Plan
) -> None:
    """The daily report of 2022-02-23 (written at 10:00) meets brown-out 2 under way: the
    mart counts up to the start of the day, so it has nothing of it yet, and its zeros
    are no rehearsal nobody met; the next day's report has its 24 hours."""
    path = make_warehouse(tmp_path, plan)
    with open_warehouse(path) as con:
        con.execute(
            "update brownout_impact set logins = 0, elv_challenges = 0, elv_completed = 0, "
            "elv_failed = 0, elv_abandoned = 0, enrolments = 0, enrolments_complete = false, "
            "enrolments_until = starts_at where brownout = 'brownout-2'"
        )
        files = build_report(con, plan, date(2022, 2, 23), tmp_path / "during")
    rows = {(r[0], r[1]): r for r in _brownout_rows(files.markdown.read_text())[1:]}
    under_way = rows["brownout-2 (under way: counted from the next day)", "brownout"]
    assert under_way[4:-2] == ["—"] * (len(under_way) - 6)
    assert rows["brownout-1", "brownout"][4] == "1,150,000"
    assert "brownout-2 (under way: counted from the next day)" in files.html.read_text()


def test_an_enrolment_window_still_open_is_counted_so_far(tmp_path: Path, plan: Plan) -> None:
    """On 2022-02-26 brown-out 2's window (to 03-03) is open: its enrolments are marked
    as counted so far, its baseline's as counted over as many days; brown-out 1's
    window is over and unmarked."""
    path = make_warehouse(tmp_path, plan)
    with open_warehouse(path) as con:
        con.execute(
            "update brownout_impact set enrolments_complete = false, enrolments_until = "
            "case period when 'brownout' then timestamp '2022-02-27' "
            "else timestamp '2022-02-06' end where brownout = 'brownout-2'"
        )
        files = build_report(con, plan, date(2022, 2, 26), tmp_path / "open")
    rows = {(r[0], r[1]): r for r in _brownout_rows(files.markdown.read_text())[1:]}
    assert rows["brownout-2", "brownout"][-2] == "2022-02-27 00:00 (so far)"
    assert rows["brownout-2", "baseline"][-2] == "2022-02-06 00:00 (as many days)"
    assert rows["brownout-1", "brownout"][-2] == "2022-02-23 00:00"
    assert rows["brownout-1", "baseline"][-2] == "2022-02-16 00:00"
    html = files.html.read_text()
    assert '<td class="date">2022-02-27 00:00 (so far)</td>' in html
    chart = re.search(r'<svg\b[^>]*id="chart-brownouts".*?</svg>', html, re.S)
    assert chart is not None
    tips = re.findall(r"<title>([^<]*)</title>", chart.group(0))
    assert "2FA enrolments, from the start, brownout-2, brown-out: 14,800 so far" in tips
    assert "2FA enrolments, from the start, brownout-2, baseline: 6,100 (as many days)" in tips
    assert "2FA enrolments, from the start, brownout-1, brown-out: 21,400" in tips
    assert "Logins, brownout-2, brown-out: 1,180,000" in tips


def test_an_enrolment_span_not_over_reads_not_yet_not_a_count_so_far(
    tmp_path: Path, plan: Plan
) -> None:
    """compliance_funnel leaves a span (within 7, 14, 30 days of the notice, before
    enforcement) empty until the day it ends is the report's day or earlier. On 03-24
    high-impact's 7 days (to 03-22) are over, its 14 and 30 days and its enforcement
    (05-03) are not: they read not yet, the CSV's cells stay empty, and the page says
    why. A count so far would read as the whole span's."""
    with open_warehouse(make_warehouse(tmp_path, plan)) as con:
        con.execute(
            "update compliance_funnel set enrolled_14d = null, enrolled_30d = null, "
            "enrolled_by_enforcement = null, without_2fa_at_enforcement = 0, enforced = 0, "
            "enrolled_after_enforcement = 0 where phase = 'high-impact'"
        )
        files = build_report(con, plan, date(2022, 3, 24), tmp_path / "out")
    markdown = files.markdown.read_text()
    assert (
        "| high-impact | high-impact | 2022-03-15 | 2022-05-03 | 8,000 | 5,600 | 5,550 | 1,200 "
        "| not yet | not yet | not yet | 0 | 0 | 1,500 | 0 | 0 |"
    ) in markdown
    assert "| top-100 | top-100 | 2022-01-04 | 2022-02-01 | 250 | 100 | 100 | 30 | 45 | 70 |" in (
        markdown
    )
    said = "Such a span not over when 2022-03-24 began reads not yet"
    assert said in markdown
    html = files.html.read_text()
    section = html[html.index('<section id="funnel"') : html.index('<section id="reach"')]
    row = re.search(r'<tr><th scope="row">high-impact</th>.*?</tr>', section)
    assert row is not None
    cells_ = re.findall(r'<td class="num">([^<]*)</td>', row.group(0))
    # accounts, without 2FA, notified, then the four spans: 7 days over, the rest not.
    assert cells_[:7] == ["8,000", "5,600", "5,550", "1,200", "not yet", "not yet", "not yet"]
    assert "Such a span not over when 2022-03-24 began reads not yet" in " ".join(section.split())
    with files.csvs["compliance_funnel"].open() as handle:
        [top, high] = list(csv.DictReader(handle))
    assert (top["enrolled_30d"], top["enrolled_by_enforcement"]) == ("70", "75")
    spans = ("enrolled_7d", "enrolled_14d", "enrolled_30d", "enrolled_by_enforcement")
    assert [high[c] for c in spans] == ["1200", "", "", ""]


def test_spans_all_over_say_nothing_of_not_yet(report: ReportFiles) -> None:
    for text in (report.markdown.read_text(), report.html.read_text()):
        assert "not yet" not in text.replace("(notices not sent yet)", "")


def test_the_deadline_is_read_at_the_start_of_its_day_as_enforcement_reads_it(
    tmp_path: Path,
) -> None:
    """deadline_survival's day N is the start of notice day + N, so an account's
    deadline (notice day + 45 for github-2023) is day 45, marked there, and the report
    says how it is read: one enrolling on its deadline day is still without there, as
    in the funnel's still without 2FA at enforcement."""
    from rollout.core.plan import load_plan

    plan = load_plan(Path(__file__).resolve().parent.parent / "plans" / "github-2023.yaml")
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        create_marts(con)
        con.executemany(
            "insert into deadline_survival values ('publishers', ?, 10, ?, 0, ?)",
            [(n, 10 - n // 5, (10 - n // 5) / 10) for n in range(0, 47)],
        )
        files = build_report(con, plan, date(2023, 5, 1), tmp_path / "out")
    markdown = files.markdown.read_text()
    assert "| 45 | deadline | 10 | 1 | 10.0% | 0 |" in markdown
    said = (
        "the share still without it at the start of each day since their notice (day 0 "
        "is the notice's UTC day). The deadline is day 45 at its start, as enforcement "
        "reads it: an account enrolling on its deadline day is still without it there. "
        "The snoozed among them (last column) have a later deadline of their own, at "
        "which the funnel's still without 2FA at enforcement judges them."
    )
    assert said in " ".join(markdown.split())
    html = files.html.read_text()
    assert said in " ".join(html.split())
    assert "still not compliant at the start of each day since notice" in html


def test_each_bar_of_the_funnel_counts_some_of_the_bar_before(report: ReportFiles) -> None:
    """The funnel chart's bars are a chain: no stage over 100% of the one above it."""
    html = report.html.read_text()
    chart = re.search(r'<svg\b[^>]*id="chart-funnel".*?</svg>', html, re.S)
    assert chart is not None
    bars: dict[str, list[tuple[str, int]]] = {}
    for phase, label, value in re.findall(r"<title>([^:<]+): ([^:<]+): ([\d,]+)", chart.group(0)):
        bars.setdefault(phase, []).append((label, int(value.replace(",", ""))))
    assert set(bars) == {"top-100", "high-impact"}
    for phase, stages in bars.items():
        assert [label for label, _ in stages] == [label for _, label in FUNNEL_STAGES], phase
        values = [value for _, value in stages]
        assert values == sorted(values, reverse=True), phase


def test_the_reach_of_the_warnings_per_phase(report: ReportFiles) -> None:
    html = report.html.read_text()
    assert '<li><a href="#reach">Reach of the warnings</a></li>' in html
    section = html[html.index('<section id="reach"') : html.index('<section id="orgs"')]
    rows = re.findall(
        r'<tr><th scope="row">([^<]+)</th>((?:<td class="num">[\d,]+</td>)+)</tr>', section
    )
    # In the plan's order, not the mart's (by name).
    assert [(phase, re.findall(r">([\d,]+)<", counts)) for phase, counts in rows] == [
        ("top-100", ["100", "96", "2", "1", "1", "1", "7", "4", "0"]),
        ("high-impact", ["5,550", "5,380", "95", "40", "25", "30", "220", "130", "12"]),
    ]
    # Skipped as too late (tried, and never sent: its last day gone) has a column of its
    # own, apart from an account no warning was ever tried for.
    assert '<th scope="col" class="num">too late</th>' in section
    assert "the send came after its last day" in section
    markdown = report.markdown.read_text()
    assert (
        "| phase | notified | delivered | bounced | dropped | suppressed | too late "
        "| never reached | of them enforced | deleted since |"
    ) in markdown
    assert "| high-impact | 5,550 | 5,380 | 95 | 40 | 25 | 30 | 220 | 130 | 12 |" in markdown
    assert "the send came after its last day" in markdown


def test_a_phase_name_in_the_reach_table_is_text(tmp_path: Path, plan: Plan) -> None:
    with open_warehouse(make_warehouse(tmp_path, plan)) as con:
        con.executemany(
            "insert into notice_reach values (?, 'c', 1, 1, 0, 0, 0, 0, 0, 0, 0)",
            [(name,) for name in MARKUP],
        )
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    html = files.html.read_text()
    section = html[html.index('<section id="reach"') : html.index('<section id="orgs"')]
    assert "<script" not in section and "<img" not in section
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in section
    markdown = files.markdown.read_text()
    rendered = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown)
    for tag in ("<a ", "<img", "<script", "<code", "<em", "<del", "<blockquote"):
        assert tag not in rendered, tag
    reach = next(b for b in table_blocks(markdown) if b[0].startswith("| phase | notified |"))
    assert len(reach) == 2 + 2 + len(MARKUP)
    assert len({len(cells(line)) for line in reach}) == 1


def test_without_reach_rows_the_section_says_so(empty_report: ReportFiles) -> None:
    html = empty_report.html.read_text()
    section = html[html.index('<section id="reach"') : html.index('<section id="orgs"')]
    assert '<p class="note">No data yet.</p>' in section and "<table" not in section
    markdown = empty_report.markdown.read_text()
    assert "## Reach of the warnings\n\n_No data yet._\n" in markdown


def test_an_earlier_as_of_reports_up_to_that_day(
    report: ReportFiles, tmp_path: Path, plan: Plan
) -> None:
    with open_warehouse(tmp_path / "warehouse.duckdb", read_only=True) as con:
        files = build_report(con, plan, date(2022, 2, 20), tmp_path / "early")
    assert files.data_through == date(2022, 2, 20)
    assert files.still_without_2fa == {"top-100": 10}
    html = files.html.read_text()
    adoption = re.search(r'<svg\b[^>]*id="chart-adoption".*?</svg>', html, re.S)
    assert adoption is not None
    assert "brownout-1" in adoption.group(0) and "high-impact enforced" not in adoption.group(0)
    assert "notices go out on 2022-03-15" in html  # the high-impact funnel, not started


def test_npm_scale(tmp_path: Path, plan: Plan) -> None:
    """~150 days x 3 populations and 100,000 orgs: all orgs in the CSV, 20 in the page."""
    path = tmp_path / "warehouse.duckdb"
    with open_warehouse(path) as con:
        fill_marts(con, plan)
        con.execute(
            "insert into adoption_by_org select 'scale-' || i, 1 + i % 37, i % 11, "
            "(i % 11) / (1 + i % 37), 1, 0, null from range(100000) t(i)"
        )
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    assert files.html.stat().st_size < 1_000_000
    assert files.markdown.stat().st_size < 200_000
    with files.csvs["adoption_by_org"].open(newline="") as handle:
        assert sum(1 for _ in csv.reader(handle)) == 1 + 100_032


def test_publishing_shows_the_window_s_publishes_by_method(report: ReportFiles) -> None:
    html = report.html.read_text()
    section = html[html.index('<section id="publishing"') : html.index('<section id="ledger"')]
    assert "How the 600 publishes of the 30 days to 2022-05-31" in section
    assert "75.0% went through a token with no second factor" in section
    rows = re.findall(
        r'<tr><th scope="row">([^<]+)</th><td>(\w+)</td><td class="num">([\d,]+)</td>'
        r'<td class="num">([\d.]+%)</td></tr>',
        section,
    )
    assert rows == [
        ("automation token", "none", "300", "50.0%"),
        ("granular token", "none", "150", "25.0%"),
        ("a logged-in session", "webauthn", "90", "15.0%"),
        ("trusted publishing", "none", "60", "10.0%"),
    ]
    markdown = report.markdown.read_text()
    assert "| automation token | none | 300 | 50.0% |" in markdown


def test_publishing_over_time_shows_each_weeks_publishes_by_method(report: ReportFiles) -> None:
    markdown = report.markdown.read_text()
    assert (
        "| week to | automation token | granular token | a logged-in session | "
        "trusted publishing | through a token without 2FA |"
    ) in markdown
    # The 7 days ending 05-31: 150 through granular tokens without a second factor of 300.
    assert "| 2022-05-31 | 0 | 150 | 90 | 60 | 50.0% |" in markdown
    assert "| 2022-05-03 | 1,299 | 0 | 0 | 0 | 100.0% |" in markdown
    assert "| 2022-04-12 | 0 | 0 | 0 | 0 | — |" in markdown
    html = report.html.read_text()
    assert html.count('<table id="table-publishing-weeks">') == 1


def test_the_survival_curve_of_per_account_deadlines_shows_weeks_and_deadlines(
    tmp_path: Path,
) -> None:
    import duckdb

    from rollout.core.plan import load_plan
    from rollout.report.reporting import _deadlines

    plan = load_plan(Path(__file__).resolve().parent.parent / "plans" / "github-2023.yaml")
    con = duckdb.connect()
    create_marts(con)
    con.executemany(
        "insert into deadline_survival values ('publishers', ?, ?, ?, ?, ?)",
        [(n, 100, 100 - 2 * n, 3 if n >= 40 else 0, (100 - 2 * n) / 100) for n in range(0, 49)],
    )
    [curve] = _deadlines(con, plan)
    assert (curve["phase"], curve["days_after_notice"], curve["snooze_days"]) == (
        "publishers",
        45,
        7,
    )
    shown = [(r["days"], r["marks"], r["still_without"], r["snoozed"]) for r in curve["rows"]]
    # Every week, the deadline (45), and the last day reached (48); the snoozed deadline
    # (52) is not reached yet.
    assert shown == [
        (0, "", 100, 0),
        (7, "", 86, 0),
        (14, "", 72, 0),
        (21, "", 58, 0),
        (28, "", 44, 0),
        (35, "", 30, 0),
        (42, "", 16, 3),
        (45, "deadline", 10, 3),
        (48, "", 4, 3),
    ]
    assert curve["rows"][-1]["share"] == 0.04
    assert (curve["still_without"], curve["never_noticed"]) == (0, 0)  # no funnel row yet


def test_the_accounts_a_per_account_deadline_never_reaches_are_counted_apart(
    tmp_path: Path,
) -> None:
    """GitHub's shape: an account never sent its notice (an unverified address) has
    no deadline, so no enforcement acts on it; the curve, which starts at each notice,
    cannot show it. The deadlines section says how many of those still short they are."""
    import duckdb

    from rollout.core.plan import load_plan
    from rollout.report.reporting import _deadlines

    plan = load_plan(Path(__file__).resolve().parent.parent / "plans" / "github-2023.yaml")
    con = duckdb.connect()
    create_marts(con)
    con.execute("insert into deadline_survival values ('publishers', 0, 10, 10, 0, 1.0)")
    columns = [
        c
        for (c,) in con.execute(
            "select name from pragma_table_info('compliance_funnel')"
        ).fetchall()
    ]
    values = {c: 0 for c in columns} | {
        "phase": "publishers",
        "cohort": "publishers",
        "notice_on": "2023-03-13",
        "enforce_on": "2023-04-27",
        "still_without": 902,
        "never_noticed": 388,
        "rolled_back_at": None,
    }
    con.execute(
        f"insert into compliance_funnel ({', '.join(columns)}) "
        f"values ({', '.join('?' for _ in columns)})",
        [values[c] for c in columns],
    )
    [curve] = _deadlines(con, plan)
    assert (curve["still_without"], curve["never_noticed"]) == (902, 388)


def test_without_publish_events_the_section_says_so(tmp_path: Path, plan: Plan) -> None:
    report = run_report(tmp_path, plan, empty=True)
    assert "No publish events in the 30 days to 2022-05-31" in report.html.read_text()


def test_a_per_account_deadline_phase_is_enforced_at_each_account_s_own_deadline(
    tmp_path: Path,
) -> None:
    """github-2023's publishers: each account has 45 days from its own notice (7 more if
    it snoozed), notices until 2023-11-16. The report said "enforced 2023-04-27" and
    "enforcement 2023-04-27", the first of its own deadlines (the last is 2024-01-07),
    as if the phase had one date. It names the span of own deadlines, and says the
    funnel judges each account at its own."""
    from rollout.core.plan import load_plan

    gh = load_plan(Path(__file__).resolve().parent.parent / "plans" / "github-2023.yaml")
    as_of = date(2023, 6, 1)
    with open_warehouse(make_warehouse(tmp_path, gh, empty=True)) as con:
        con.execute(
            "insert into adoption_daily values ('2023-06-01', 'all', 1000, 400, 300, 100, 0.4, 2)"
        )
        columns = [
            c
            for (c,) in con.execute(
                "select name from pragma_table_info('compliance_funnel')"
            ).fetchall()
        ]
        values = {c: 0 for c in columns} | {
            "phase": "publishers",
            "cohort": "publishers",
            "notice_on": "2023-03-13",
            "enforce_on": "2023-04-27",
            "accounts": 362,
            "without_2fa_at_notice": 314,
            "notified": 295,
            "without_2fa_at_enforcement": 135,
            "enforced": 135,
            "still_without": 47,
            "required": 135,
            "rolled_back_at": None,
        }
        con.execute(
            f"insert into compliance_funnel ({', '.join(columns)}) "
            f"values ({', '.join('?' for _ in columns)})",
            [values[c] for c in columns],
        )
        files = build_report(con, gh, as_of, tmp_path / "out")
    markdown = files.markdown.read_text()
    html = files.html.read_text()
    for text in (markdown, re.sub(r"<[^>]+>", "", html)):
        assert "enforced 2023-04-27" not in text
        assert "enforcement 2023-04-27" not in text
    said = "enforced at each account's own deadline, 2023-04-27 to 2024-01-07"
    assert f"- Phase publishers ({said}): 47 accounts still without 2FA." in markdown
    cards = unescape(_headline_cards(files))
    assert f"accounts of phase publishers still without 2FA ({said})" in cards
    funnel = next(b for b in table_blocks(markdown) if b[0].startswith("| phase | cohort |"))
    row = cells(next(line for line in funnel if line.startswith("| publishers |")))
    assert row[3] == "own deadlines 2023-04-27 to 2024-01-07"
    assert '<td class="date">own deadlines 2023-04-27 to 2024-01-07</td>' in html
    assert "cohort publishers, notice 2023-03-13, enforcement own deadlines 2023-04-27 to " in html
    judged = "judge each account at its own deadline once that has come"
    assert judged in markdown and judged in html
    assert "45 days after its notice (up to 7 more if it snoozed)" in markdown
    # Its notices, reminders and enforcement run daily: under way on 06-01, not done.
    assert (
        "| 2023-04-27 to 2024-01-07 | publishers enforced, daily: each account on its own "
        "day | under way |"
    ) in markdown
    assert (
        "| 2023-03-13 to 2023-11-16 | publishers notices, daily: each account on its own "
        "day | under way |"
    ) in markdown
    # A phase of one date keeps its date, and says nothing of own deadlines.
    plain = run_report(
        tmp_path / "plain",
        load_plan(Path(__file__).resolve().parent.parent / "plans" / "npm-2022.yaml"),
    )
    assert "- Phase top-100 (enforced 2022-02-01)" in plain.markdown.read_text()
    assert judged not in plain.markdown.read_text() and judged not in plain.html.read_text()


def test_a_share_of_no_one_is_shown_as_a_dash_in_every_table_and_on_the_chart(
    tmp_path: Path, plan: Plan
) -> None:
    """One rule for a share whose whole is empty: no share ("—"), never 0%. A cohort
    whose members all left (a rebuild that kept no one) and an org whose members were
    all removed said 0.0% in the daily tables, the chart's legend and the org table,
    while the headline said "—" for the same day."""
    from datetime import timedelta

    rows = []
    for n in range(40):
        day = AS_OF - timedelta(days=39 - n)
        members = 10 if n < 30 else 0  # everyone left 10 days ago
        rows.append(f"('{day}', 'all', 100, 50, 50, 0, 0.5, 0)")
        rows.append(f"('{day}', 'cohort:top-100', {members}, 0, 0, 0, 0.0, 0)")
    with open_warehouse(tmp_path / "warehouse.duckdb") as con:
        create_marts(con)
        con.execute("insert into adoption_daily values " + ", ".join(rows))
        con.execute("insert into adoption_by_org values ('emptied', 0, 0, 0.0, 0, 0, null)")
        files = build_report(con, plan, AS_OF, tmp_path / "out")
    top = next(p for p in files.populations if p.population == "cohort:top-100")
    assert (top.accounts, top.share, top.change_7d) == (0, None, None)
    markdown, html = files.markdown.read_text(), files.html.read_text()
    assert f"| {AS_OF} | 50.0% | — |" in markdown
    assert f"| {AS_OF - timedelta(days=7)} | 50.0% | — |" in markdown
    assert f"| {AS_OF - timedelta(days=14)} | 50.0% | 0.0% |" in markdown
    assert "| emptied | 0 | 0 | — | 0 | 0 | — |" in markdown
    daily = next(t for t in tables_of(html) if t and t[0][:1] == ["day"])
    assert [str(AS_OF), "50.0%", "—"] in daily
    assert ["emptied", "0", "0", "—", "0", "0", "—"] in [
        row for table in tables_of(html) for row in table
    ]
    legend = html.split('id="chart-adoption"')[1].split("</svg>")[0]
    assert "Cohort top-100: —" in legend and "Cohort top-100: 0.0%" not in legend
