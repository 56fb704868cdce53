"""The command a phase preview prints to apply it: what a release manager copies, the
count and the list's fingerprint typed back (`phase enforce --apply` needs both); and the
names a refusal lists as changed since a preview, read back."""

from __future__ import annotations

import re

TO_APPLY = re.compile(
    r"To apply: rollout (phase enforce \S+ --apply .*?--expect-list [0-9a-f]{12})"
)


def to_apply(preview_stderr: str) -> list[str]:
    """The preview's command to apply, as arguments after ``rollout``."""
    said = " ".join(preview_stderr.split())
    found = TO_APPLY.search(said)
    assert found, f"no command to apply in: {said}"
    return found[1].split()


_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'(?:, |$)")
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)")


def names_read_back(listed: str) -> list[str]:
    """The names in a message's list (``'bob', 'o\\'neil'``), read back as a reader does:
    each quoted, ``\\'`` and ``\\\\`` its own quote and backslash, ``\\x1b`` and
    ``\\u202e`` a control character (rollout.core.controls.quoted)."""
    return [
        _ESCAPE.sub(lambda m: chr(int(m[1][1:], 16)) if len(m[1]) > 1 else m[1], name)
        for name in _QUOTED.findall(listed)
    ]
