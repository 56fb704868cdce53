"""The command a phase preview prints to apply it: what a release manager copies, the
count and the list's fingerprint typed back (`phase enforce --apply` needs both)."""

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
