"""Inline SVG charts for the adoption report: no scripts, no fonts, no libraries.

Each chart is a function of plain data that returns one ``<svg>`` element as
``Markup``, ready for an autoescaped Jinja template. Every text and attribute value
is escaped here, its control characters shown as escapes first (org, cohort and
brown-out names are input), and every coordinate
goes through ``_n``, so a NaN or an infinity in the data can never reach the SVG.
A chart with nothing to draw still renders, with a "No data yet" note in it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from markupsafe import Markup, escape

from rollout.core.output import html_text

WIDTH = 960
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"
# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#000000", "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "12 4", "4 2 1 2", "1 2")
TOTP_COLOUR = "#56B4E9"
WEBAUTHN_COLOUR = "#0072B2"
BASELINE_COLOUR = "#9a9a9a"
BROWNOUT_COLOUR = "#D55E00"
FUNNEL_COLOUR = "#0072B2"
TEXT = "#222222"
MUTED = "#666666"
GRID = "#e3e3e3"
# Rough advance of one character of the sans-serif stack, per pixel of font size.
CHAR_WIDTH = 0.6


def _n(value: float) -> str:
    """A coordinate or length: finite, two decimals at most."""
    value = float(value)
    if not math.isfinite(value):
        value = 0.0
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def finite(value: object, default: float = 0.0) -> float:
    """A float from a database value (int, Decimal, float, None), never NaN or inf."""
    if value is None:
        return default
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def text_width(text: str, size: float) -> float:
    return len(text) * size * CHAR_WIDTH


def compact(value: float) -> str:
    """12, 1.2k, 34k, 1.2M: short labels above bars."""
    value = finite(value)
    magnitude = abs(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if magnitude >= limit:
            scaled = value / limit
            return f"{scaled:.1f}{suffix}" if abs(scaled) < 10 else f"{scaled:.0f}{suffix}"
    return f"{value:,.0f}"


def percent(value: float | None) -> str:
    """A share as the report's tables show it: "—" for none (a share of no one)."""
    return "—" if value is None else f"{finite(value) * 100:.1f}%"


def _escaped(text: str) -> Markup:
    """A text or attribute value of a chart: its control characters shown as the report's
    tables show them (``rollout.core.output.html_text``), then escaped."""
    return escape(html_text(text))


class Svg:
    """A tiny SVG writer: elements in order, all values escaped."""

    def __init__(self, chart_id: str, height: float, title: str, description: str) -> None:
        self.chart_id = chart_id
        self.height = height
        self.title = title
        self.description = description
        self._parts: list[str] = []

    @staticmethod
    def _attrs(attrs: dict[str, object]) -> str:
        out = []
        for key, value in attrs.items():
            if value is None:
                continue
            name = key.rstrip("_").replace("_", "-")
            shown = _n(value) if isinstance(value, int | float) else str(value)
            out.append(f' {name}="{_escaped(shown)}"')
        return "".join(out)

    def el(self, tag: str, text: str | None = None, /, **attrs: object) -> None:
        if text is None:
            self._parts.append(f"<{tag}{self._attrs(attrs)}/>")
        else:
            self._parts.append(f"<{tag}{self._attrs(attrs)}>{_escaped(text)}</{tag}>")

    def open(self, tag: str, /, **attrs: object) -> None:
        self._parts.append(f"<{tag}{self._attrs(attrs)}>")

    def close(self, tag: str) -> None:
        self._parts.append(f"</{tag}>")

    def tip(self, text: str) -> None:
        """A tooltip for the enclosing group (``<title>`` as its first child)."""
        self.el("title", text)

    def label(self, x: float, y: float, text: str, *, size: float = 12, **attrs: object) -> None:
        attrs.setdefault("fill", TEXT)
        self.el("text", text, x=x, y=y, font_size=size, **attrs)

    def no_data(self, x: float, y: float, message: str = "No data yet") -> None:
        self.label(x, y, message, size=16, text_anchor="middle", fill=MUTED, class_="no-data")

    def render(self) -> Markup:
        ids = f"{self.chart_id}-title {self.chart_id}-desc"
        head = (
            f'<svg class="chart" id="{escape(self.chart_id)}"'
            f' viewBox="0 0 {WIDTH} {_n(self.height)}" width="{WIDTH}"'
            f' height="{_n(self.height)}" role="img" aria-labelledby="{escape(ids)}"'
            f' font-family="{escape(FONT)}">'
            f'<title id="{escape(self.chart_id)}-title">{_escaped(self.title)}</title>'
            f'<desc id="{escape(self.chart_id)}-desc">{_escaped(self.description)}</desc>'
        )
        return Markup(head + "".join(self._parts) + "</svg>")


def _legend(svg: Svg, items: Sequence[tuple[str, dict[str, object]]], top: float) -> float:
    """Swatches left to right, wrapping; returns the height used."""
    x, y, row_height = 60.0, top + 12, 20.0
    for text, swatch in items:
        width = 30 + text_width(text, 12) + 18
        if x + width > WIDTH - 10 and x > 60:
            x, y = 60.0, y + row_height
        if swatch.get("line"):
            svg.el(
                "line",
                x1=x,
                y1=y - 4,
                x2=x + 22,
                y2=y - 4,
                stroke=swatch["colour"],
                stroke_width=2.5,
                stroke_dasharray=swatch.get("dash") or None,
            )
        else:
            svg.el("rect", x=x + 5, y=y - 11, width=12, height=12, fill=swatch["colour"])
        svg.label(x + 28, y, text)
        x += width
    return y - top + 10


# --- (1) adoption over time -------------------------------------------------------


@dataclass(frozen=True)
class Series:
    name: str
    # (day, share 0..1); None: a day with no one in the population, no share (a gap
    # in its line, not a fall to 0%).
    points: Sequence[tuple[date, float | None]]


@dataclass(frozen=True)
class Milestone:
    on: date
    label: str
    kind: str  # trial | notice | reminder | brownout | elv | enforce
    until: date | None = None  # a span (the ELV trial, a brown-out's day)


_MILESTONE_STYLE: dict[str, dict[str, object]] = {
    "notice": {"stroke": "#555555", "stroke_dasharray": "5 3"},
    "reminder": {"stroke": "#9a9a9a", "stroke_dasharray": "1 3"},
    "brownout": {"stroke": "#a0568a", "stroke_dasharray": ""},
    "elv": {"stroke": "#1b7a5a", "stroke_dasharray": ""},
    "enforce": {"stroke": "#222222", "stroke_dasharray": ""},
    "trial": {"stroke": "#1b7a5a", "stroke_dasharray": "2 2"},
}
_SPAN_FILL = {"trial": "#1b7a5a", "brownout": "#a0568a"}


def _ticks(start: date, end: date) -> list[tuple[date, str]]:
    span = (end - start).days
    ticks: list[tuple[date, str]] = []
    if span > 62:
        step_months = 1 if span <= 400 else 3
        day = date(start.year, start.month, 1)
        if day < start:
            day = _add_months(day, 1)
        while day <= end:
            text = f"{day:%b}" if ticks and day.month != 1 else f"{day:%b %Y}"
            ticks.append((day, text))
            day = _add_months(day, step_months)
    else:
        step = 7 if span > 14 else 1 if span <= 7 else 2
        day = start
        while day <= end:
            ticks.append((day, f"{day:%b} {day.day}"))
            day += timedelta(days=step)
    return ticks


def _add_months(day: date, months: int) -> date:
    month = day.month - 1 + months
    return date(day.year + month // 12, month % 12 + 1, 1)


def adoption_chart(
    series: Sequence[Series], milestones: Sequence[Milestone], start: date, end: date
) -> Markup:
    """Share with 2FA per population (lines), the plan's milestones as labelled lines."""
    if end <= start:
        start, end = start - timedelta(days=1), start + timedelta(days=1)
    left, right = 60.0, WIDTH - 24.0
    days = (end - start).days

    def x_of(day: date) -> float:
        return left + (right - left) * (day - start).days / days

    svg = Svg(
        "chart-adoption",
        0,
        "Share of accounts with 2FA over time",
        "Lines: the daily share of accounts with two-factor authentication, for all "
        "accounts and for each cohort, from "
        f"{start} to {end}. Vertical lines: the plan's milestones. "
        "The data table below the chart has the same figures.",
    )
    legend_items = [
        (
            f"{s.name}: {percent(s.points[-1][1])}" if s.points else s.name,
            {"line": True, "colour": PALETTE[i % len(PALETTE)], "dash": DASHES[i % len(DASHES)]},
        )
        for i, s in enumerate(series)
    ]
    top = 8.0
    if legend_items:
        top += _legend(svg, legend_items, top)

    # Milestone labels in rows above the plot, each in the first row it fits in.
    visible = [m for m in milestones if start <= m.on <= end]
    labelled: dict[date, list[Milestone]] = {}
    for m in visible:
        if m.kind != "reminder":
            labelled.setdefault(m.on, []).append(m)
    row_ends: list[float] = []
    placed: list[tuple[float, int, str, str]] = []  # x, row, text, anchor
    row_of_day: dict[date, int] = {}
    for day in sorted(labelled):
        text = " · ".join(m.label for m in labelled[day])
        x = x_of(day)
        width = text_width(text, 11) + 6
        lo, hi, anchor, tx = x + 3, x + 3 + width, "start", x + 3
        if hi > WIDTH - 4:
            lo, hi, anchor, tx = x - 3 - width, x - 3, "end", x - 3
        row = next((r for r, last in enumerate(row_ends) if last < lo - 4), None)
        if row is None:
            if len(row_ends) < 8:
                row_ends.append(hi)
                row = len(row_ends) - 1
            else:
                row = min(range(len(row_ends)), key=lambda r: row_ends[r])
        row_ends[row] = max(row_ends[row], hi)
        row_of_day[day] = row
        placed.append((tx, row, text, anchor))
    rows = len(row_ends)
    row_height = 15.0
    plot_top = top + rows * row_height + (8 if rows else 0)
    plot_height = 260.0
    bottom = plot_top + plot_height
    svg.height = bottom + 34

    def y_of(share: float) -> float:
        return bottom - plot_height * min(max(finite(share), 0.0), 1.0)

    # Grid and axes.
    for step in range(6):
        share = step / 5
        y = y_of(share)
        svg.el("line", x1=left, y1=y, x2=right, y2=y, stroke=GRID if step else "#999999")
        svg.label(left - 6, y + 4, f"{step * 20}%", size=11, text_anchor="end", fill=MUTED)
    for day, text in _ticks(start, end):
        x = x_of(day)
        svg.el("line", x1=x, y1=bottom, x2=x, y2=bottom + 5, stroke="#999999")
        svg.label(x, bottom + 18, text, size=11, text_anchor="middle", fill=MUTED)

    # Milestones under the data.
    svg.open("g", class_="milestones")
    for m in visible:
        if m.until is not None and m.kind in _SPAN_FILL:
            x0, x1 = x_of(m.on), x_of(min(max(m.until, m.on), end))
            svg.el(
                "rect",
                x=x0,
                y=plot_top,
                width=max(x1 - x0, 2),
                height=plot_height,
                fill=_SPAN_FILL[m.kind],
                fill_opacity=0.08,
            )
    for m in visible:
        style = _MILESTONE_STYLE.get(m.kind, _MILESTONE_STYLE["notice"])
        x = x_of(m.on)
        row = row_of_day.get(m.on)
        y_top = plot_top if row is None else top + row * row_height + 3
        svg.open("g", class_=f"milestone milestone-{m.kind}")
        svg.tip(f"{m.on}: {m.label}")
        svg.el(
            "line",
            x1=x,
            y1=y_top,
            x2=x,
            y2=bottom,
            stroke=style["stroke"],
            stroke_width=1.5 if m.kind in ("enforce", "elv") else 1,
            stroke_dasharray=style["stroke_dasharray"] or None,
        )
        svg.close("g")
    for tx, row, text, anchor in placed:
        svg.label(
            tx,
            top + row * row_height + 12,
            text,
            size=11,
            text_anchor=anchor,
            class_="milestone-label",
            paint_order="stroke",
            stroke="#ffffff",
            stroke_width=3,
        )
    svg.close("g")

    # The data.
    drawn = 0
    for i, s in enumerate(series):
        # One line a run of days with a share; a day with no one breaks it.
        runs: list[list[tuple[date, float]]] = [[]]
        for d, v in s.points:
            if not start <= d <= end:
                continue
            if v is None:
                if runs[-1]:
                    runs.append([])
            else:
                runs[-1].append((d, v))
        runs = [run for run in runs if run]
        if not runs:
            continue
        drawn += 1
        colour = PALETTE[i % len(PALETTE)]
        svg.open("g", class_="series")
        svg.tip(s.name)
        for run in runs:
            path = " ".join(f"{_n(x_of(d))},{_n(y_of(v))}" for d, v in run)
            svg.el(
                "polyline",
                points=path,
                fill="none",
                stroke=colour,
                stroke_width=2.5,
                stroke_linejoin="round",
                stroke_dasharray=DASHES[i % len(DASHES)] or None,
            )
        last_day, last_share = runs[-1][-1]
        svg.el("circle", cx=x_of(last_day), cy=y_of(last_share), r=3.5, fill=colour)
        svg.close("g")
    if not drawn:
        svg.no_data((left + right) / 2, plot_top + plot_height / 2)
    return svg.render()


# --- (2) method mix --------------------------------------------------------------


@dataclass(frozen=True)
class MethodMix:
    population: str
    with_2fa: int
    totp: int
    webauthn: int


def method_mix_chart(rows: Sequence[MethodMix], as_of: date) -> Markup:
    """Per population, the accounts with 2FA split by their strongest method (100 %)."""
    svg = Svg(
        "chart-methods",
        0,
        f"2FA methods on {as_of}",
        "Stacked bars, one per population: of the accounts with 2FA, the share whose "
        "strongest method is a WebAuthn security key and the share using TOTP only. "
        "The data table below the chart has the counts.",
    )
    top = 8 + _legend(
        svg,
        [
            ("WebAuthn (security key)", {"colour": WEBAUTHN_COLOUR}),
            ("TOTP (authenticator app)", {"colour": TOTP_COLOUR}),
        ],
        8,
    )
    left, right, bar, gap = 190.0, WIDTH - 170.0, 26.0, 14.0
    if not rows:
        svg.height = top + 80
        svg.no_data(WIDTH / 2, top + 45)
        return svg.render()
    y = top + 6
    for row in rows:
        svg.open("g", class_="bar")
        total = max(finite(row.totp) + finite(row.webauthn), 0.0)
        svg.tip(
            f"{row.population}: {row.with_2fa:,} with 2FA, WebAuthn {row.webauthn:,}, "
            f"TOTP {row.totp:,}"
        )
        svg.label(left - 8, y + bar / 2 + 4, row.population, text_anchor="end")
        svg.el("rect", x=left, y=y, width=right - left, height=bar, fill="#f2f2f2")
        if total > 0:
            x = left
            for value, colour, ink in (
                (row.webauthn, WEBAUTHN_COLOUR, "#ffffff"),
                (row.totp, TOTP_COLOUR, TEXT),
            ):
                width = (right - left) * finite(value) / total
                if width <= 0:
                    continue
                svg.el("rect", x=x, y=y, width=width, height=bar, fill=colour)
                text = percent(finite(value) / total)
                if width > text_width(text, 12) + 8:
                    svg.label(x + width / 2, y + bar / 2 + 4, text, text_anchor="middle", fill=ink)
                x += width
            note = f"{row.with_2fa:,} with 2FA"
        else:
            note = "none with 2FA"
            svg.label((left + right) / 2, y + bar / 2 + 4, "—", text_anchor="middle", fill=MUTED)
        svg.label(right + 8, y + bar / 2 + 4, note, fill=MUTED)
        svg.close("g")
        y += bar + gap
    svg.height = y + 4
    return svg.render()


# --- (3) brown-out impact --------------------------------------------------------


@dataclass(frozen=True)
class BrownoutBars:
    name: str
    baseline: dict[str, float]
    brownout: dict[str, float]
    # Measures counted so far: the brown-out's enrolment window is still open (and its
    # baseline counted over as many days).
    so_far: frozenset[str] = frozenset()


def brownout_chart(windows: Sequence[BrownoutBars], metrics: Sequence[tuple[str, str]]) -> Markup:
    """One panel per measure (each on its own scale), baseline vs brown-out bars."""
    svg = Svg(
        "chart-brownouts",
        0,
        "Brown-out impact: brown-out window vs the same hours a week (or weeks) before",
        "Grouped bars, one panel per measure (logins, ELV challenges, completed, failed, "
        "abandoned, 2FA enrolments from the window's start to 7 days after its end or the "
        "next brown-out's start), each with its own scale: for each brown-out, the "
        "baseline (grey) and the brown-out window (orange). "
        "The data table below the chart has the figures.",
    )
    top = 8 + _legend(
        svg,
        [
            ("baseline (same hours, a week or more before)", {"colour": BASELINE_COLOUR}),
            ("brown-out window", {"colour": BROWNOUT_COLOUR}),
        ],
        8,
    )
    if not windows:
        svg.height = top + 80
        svg.no_data(WIDTH / 2, top + 45)
        return svg.render()
    columns = 3
    panel_w = (WIDTH - 20) / columns
    panel_h = 205.0
    plot_h = 120.0
    for index, (key, title) in enumerate(metrics):
        px = 10 + (index % columns) * panel_w
        py = top + (index // columns) * panel_h
        svg.open("g", class_="panel")
        svg.label(px + 10, py + 16, title, size=13, font_weight="600")
        peak = max(
            [finite(w.baseline.get(key)) for w in windows]
            + [finite(w.brownout.get(key)) for w in windows]
            + [0.0]
        )
        base_y = py + 46 + plot_h
        inner_l, inner_r = px + 14, px + panel_w - 14
        svg.el("line", x1=inner_l, y1=base_y, x2=inner_r, y2=base_y, stroke="#999999")
        group_w = (inner_r - inner_l) / len(windows)
        bar_w = min(34.0, group_w * 0.32)
        for g, window in enumerate(windows):
            centre = inner_l + group_w * (g + 0.5)
            for offset, value, colour, period in (
                (-bar_w - 2, finite(window.baseline.get(key)), BASELINE_COLOUR, "baseline"),
                (2.0, finite(window.brownout.get(key)), BROWNOUT_COLOUR, "brown-out"),
            ):
                height = plot_h * value / peak if peak > 0 else 0.0
                x = centre + offset
                svg.open("g", class_="bar")
                note = ""
                if key in window.so_far:
                    note = " so far" if period == "brown-out" else " (as many days)"
                svg.tip(f"{title}, {window.name}, {period}: {value:,.0f}{note}")
                svg.el("rect", x=x, y=base_y - height, width=bar_w, height=height, fill=colour)
                svg.label(
                    x + bar_w / 2,
                    base_y - height - 4,
                    compact(value),
                    size=10,
                    text_anchor="middle",
                    fill=MUTED,
                )
                svg.close("g")
            name = window.name
            limit = max(int(group_w / (11 * CHAR_WIDTH)), 4)
            if len(name) > limit:
                name = name[: limit - 1] + "…"
            svg.label(centre, base_y + 15, name, size=11, text_anchor="middle", fill=MUTED)
        svg.close("g")
    svg.height = top + math.ceil(len(metrics) / columns) * panel_h
    return svg.render()


# --- (4) compliance funnel -------------------------------------------------------


@dataclass(frozen=True)
class FunnelPhase:
    name: str
    subtitle: str
    stages: Sequence[tuple[str, int]]
    base: int  # what percentages are of (accounts without 2FA at notice)
    note: str = ""  # shown instead of bars (e.g. notices not sent yet)


def funnel_chart(phases: Sequence[FunnelPhase]) -> Markup:
    """Per phase, horizontal bars from the accounts without 2FA at notice onwards."""
    svg = Svg(
        "chart-funnel",
        0,
        "Compliance funnel per phase",
        "Horizontal bars per phase: accounts without 2FA when the notice went out, "
        "of them notified, of those still without 2FA at enforcement, of those enforced, "
        "and of those enrolled after enforcement; percentages are of the accounts "
        "without 2FA at notice. "
        "The funnel table below the chart has the same figures.",
    )
    if not phases:
        svg.height = 90
        svg.no_data(WIDTH / 2, 50)
        return svg.render()
    left, right, bar, gap = 230.0, WIDTH - 150.0, 18.0, 6.0
    y = 10.0
    for phase in phases:
        svg.open("g", class_="phase")
        svg.label(10, y + 14, phase.name, size=14, font_weight="600")
        svg.label(10 + text_width(phase.name, 14) + 12, y + 14, phase.subtitle, size=12, fill=MUTED)
        y += 26
        if phase.note:
            svg.label(left, y + 12, phase.note, fill=MUTED, class_="no-data")
            y += 30
            svg.close("g")
            continue
        peak = max([finite(v) for _, v in phase.stages] + [0.0])
        for label, value in phase.stages:
            svg.open("g", class_="bar")
            share = f" ({percent(value / phase.base)})" if phase.base > 0 else ""
            svg.tip(f"{phase.name}: {label}: {value:,}{share}")
            svg.label(left - 8, y + bar / 2 + 4, label, text_anchor="end")
            width = (right - left) * finite(value) / peak if peak > 0 else 0.0
            svg.el("rect", x=left, y=y, width=width, height=bar, fill=FUNNEL_COLOUR)
            svg.label(left + width + 6, y + bar / 2 + 4, f"{value:,}{share}", fill=MUTED)
            svg.close("g")
            y += bar + gap
        y += 14
        svg.close("g")
    svg.height = y
    return svg.render()
