"""The text and HTML parts of each email say the same things: a reader of either gets
every sentence, number and link (tests/test_emails.py pins each part on its own)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from rollout.core.plan import Plan
from rollout.notify.render import Rendered
from tests.support.emails import CASE_IDS, CASES, render_example

URL = re.compile(r"https?://[^\s<>\"')]+")
# Where a text part's phrases break: punctuation, quotes, the ends of lines (it wraps).
BREAKS = re.compile(r"[.,:;!?\"\n]")
NUMBER = re.compile(r"\b\d+\b")  # figures, not the 2 of 2FA


class _Visible(HTMLParser):
    """The text a reader sees in the body (not <head>), every link's target, and the
    text outside links (a link's label is what the text part gives as its URL)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.outside_links: list[str] = []
        self.links: set[str] = set()
        self._hidden = 0
        self._in_link = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("head", "style", "script"):
            self._hidden += 1
        if tag == "a":
            self.links.update(v for k, v in attrs if k == "href" and v)
            self._in_link += 1
            self.outside_links.append("\n")
        if tag in ("br", "p", "td", "li", "tr", "div"):
            self.chunks.append("\n")
            self.outside_links.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("head", "style", "script"):
            self._hidden -= 1
        if tag == "a":
            self._in_link -= 1
            self.outside_links.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.chunks.append(data)
            if not self._in_link:
                self.outside_links.append(data)


def _words(text: str) -> str:
    """Phrases' words, space-separated and padded: bullets and rules dropped."""
    tokens = [t for t in text.split() if not re.fullmatch(r"[-*\u2013\u2014]+", t)]
    return f" {' '.join(tokens)} "


def parts(rendered: Rendered) -> tuple[str, str, str, set[str]]:
    """(text body, visible HTML text, the part of it outside links, link targets)."""
    html = _Visible()
    html.feed(rendered.html)
    html.close()
    return rendered.text, "".join(html.chunks), "".join(html.outside_links), html.links


def phrases(text: str) -> list[str]:
    """A part's phrases (URLs out), each as words."""
    found = []
    for piece in BREAKS.split(URL.sub("\n", text)):
        words = _words(piece).strip()
        if words:
            found.append(words)
    return found


def link_introductions(text: str) -> set[str]:
    """The text part's phrases that lead to a URL ("How to enable 2FA:" then the URL):
    in HTML the link's label says it instead."""
    return {
        _words(BREAKS.split(before)[-1]).strip()
        for before in re.findall(r"([^\n]*(?:\n[^\n]*)?):\s*https?://", text)
    }


def lacking(text: str, visible: str, outside_links: str) -> tuple[list[str], list[str]]:
    """(text phrases the HTML lacks, HTML phrases outside links the text lacks)."""
    in_html = _words(BREAKS.sub(" ", URL.sub(" ", visible)))
    in_text = _words(BREAKS.sub(" ", URL.sub(" ", text)))
    introductions = link_introductions(text)
    not_in_html = [p for p in phrases(text) if f" {p} " not in in_html and p not in introductions]
    not_in_text = [p for p in phrases(outside_links) if f" {p} " not in in_text]
    return not_in_html, not_in_text


@pytest.mark.parametrize(("name", "variant"), CASES, ids=CASE_IDS)
def test_the_html_part_says_everything_the_text_part_says(
    name: str, variant: str, plan: Plan
) -> None:
    text, visible, outside_links, links = parts(render_example(name, variant, plan))
    not_in_html, not_in_text = lacking(text, visible, outside_links)
    assert not_in_html == [], f"{name}-{variant}: the HTML part lacks {not_in_html}"
    assert not_in_text == [], f"{name}-{variant}: the text part lacks {not_in_text}"
    text_urls = set(URL.findall(text))
    html_urls = links | set(URL.findall(visible))
    assert text_urls == html_urls, f"{name}-{variant}: links differ"
    text_numbers = sorted(NUMBER.findall(URL.sub(" ", text)))
    html_numbers = sorted(NUMBER.findall(URL.sub(" ", visible)))
    assert text_numbers == html_numbers, f"{name}-{variant}: numbers differ"


def test_the_comparison_sees_a_lost_sentence(plan: Plan) -> None:
    """The check itself: a sentence only one part has is found, either way."""
    rendered = render_example("reminder", "non-compliant", plan)
    extra = "Your packages are safe with us."
    text_only = Rendered(rendered.subject, f"{rendered.text}\n{extra}\n", rendered.html)
    html_only = Rendered(
        rendered.subject, rendered.text, rendered.html.replace("</body>", f"<p>{extra}</p></body>")
    )
    assert lacking(*parts(text_only)[:3]) == (["Your packages are safe with us"], [])
    assert lacking(*parts(html_only)[:3]) == ([], ["Your packages are safe with us"])
