"""Control characters shown, never acted on: the one home of the rule that a value
on a terminal, in a message or in a suggested shell command cannot move the cursor,
erase or fake a line, or run. (The lowest layer of the core: errors name files with it;
rollout.core.output builds the consoles on it.)"""

from __future__ import annotations

import re
import shlex

# C0 and C1 controls and DEL (ESC starts the sequences that move the cursor and erase
# lines), the line and paragraph separators, the bidirectional overrides that reorder
# what a line shows, and lone surrogates: the bytes of a file name that is not UTF-8,
# which a terminal stream writes back raw (0x9b is CSI, a C1 control in 8 bits).
_OTHER_CONTROLS = (
    r"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
    r"\ud800-\udfff"
)
# Every one of them, tab and line feed too: what a one-line value (a header, a line of
# an email) may not hold.
CONTROL_CHARACTERS = re.compile(rf"[\t\n{_OTHER_CONTROLS}]")
_CONTROLS_BUT_LINES = re.compile(rf"[{_OTHER_CONTROLS}]")


def control_found(text: str) -> str | None:
    """Where ``text``'s first control character (CONTROL_CHARACTERS) is, as a message
    says it ("U+000A at character 4"); None when it holds none."""
    found = CONTROL_CHARACTERS.search(text)
    if found is None:
        return None
    return f"U+{ord(found.group()):04X} at character {found.start() + 1}"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: object, *, lines: bool = False) -> str:
    """``text``, a value (a name, a path, a cell), with every control character shown
    as its escape (ESC as ``\\x1b``), so nothing it holds can move the cursor, erase
    a line or fake a row; and its own backslashes shown doubled (``\\\\``), so the
    escape of a control character cannot be mistaken for the same four characters
    typed (a username ``\\x1b`` shows as ``\\\\x1b``, one holding ESC as
    ``\\x1b``): two values never show the same. ``lines=True`` keeps line breaks and
    tabs: a message of several lines, not one table cell.

    Apply it once, to the value, where it goes into a message or a cell: a message
    made of the tool's words and values already shown goes through
    :func:`controls_shown` (as every console does), which leaves backslashes be."""
    return controls_shown(str(text).replace("\\", "\\\\"), lines=lines)


def controls_shown(text: object, *, lines: bool = False) -> str:
    """``text``, a whole message (the tool's words, a library's reason), with its
    control characters shown as escapes and nothing else changed: the net under every
    line printed, so what a value held that was not shown with :func:`visible` or
    :func:`quoted` still cannot act on a terminal. It changes nothing of what those
    two wrote, so a value is never shown twice over (``\\\\`` stays ``\\\\``)."""
    return (_CONTROLS_BUT_LINES if lines else CONTROL_CHARACTERS).sub(_escape, str(text))


def quoted(text: object) -> str:
    """``text`` in single quotes, as a name in a message's list or sentence: its own
    quotes and backslashes escaped (``\\'``, ``\\\\``) and its control characters
    shown (:func:`visible`), so a name holding ``, `` or ``); 2 members newly listed (``
    reads as one name, never as more of the sentence around it."""
    return "'" + visible(text).replace("'", "\\'") + "'"


def shell_word(value: object) -> str:
    """``value`` as one shell word for a command a message suggests: what a user pastes
    runs with exactly that value, and nothing in it (``$(...)``, a quote, a line break
    starting a second command) runs too. Quoted as ``shlex.quote`` does, or, when it
    holds a control character, in bash's ``$'...'`` with each one escaped, so the
    suggestion stays on its line."""
    text = str(value)
    if not CONTROL_CHARACTERS.search(text):
        return shlex.quote(text)
    body = CONTROL_CHARACTERS.sub(_ansi_c_escape, text.replace("\\", "\\\\").replace("'", "\\'"))
    return f"$'{body}'"


def _ansi_c_escape(match: re.Match[str]) -> str:
    # In $'...', \xHH is a byte: a C1 control (U+0080-U+009F) must be written \uHHHH.
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        # A byte of a name that is not UTF-8, as Python keeps it: the byte itself.
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"
