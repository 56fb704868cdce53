"""Package names as the registry accepts them.

The rule follows npm's validate-npm-package-name for *existing* packages: legacy
names with capitals or the characters ``~'!()*`` are real and valid, so only what
the registry never allowed is refused. The same pattern runs inside DuckDB (passed
as a named parameter), so Python and SQL cannot disagree.
"""

from __future__ import annotations

import re

# Characters encodeURIComponent leaves alone; a scope is @scope/ before the name.
_URL_SAFE = r"[A-Za-z0-9\-_.!~*'()]"
PACKAGE_NAME_PATTERN = rf"(@{_URL_SAFE}+/)?[A-Za-z0-9\-!~*'()]{_URL_SAFE}*"
_PACKAGE_NAME = re.compile(PACKAGE_NAME_PATTERN)
_RESERVED = frozenset({"node_modules", "favicon.ico"})


def package_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid package name, or None when it is."""
    if not isinstance(name, str) or name == "":
        return "package name is empty"
    if name != name.strip():
        return f"package name {name!r} has leading or trailing spaces"
    if name.lower() in _RESERVED:
        return f"package name {name!r} is reserved"
    if not _PACKAGE_NAME.fullmatch(name):
        return f"package name {name!r} is not a valid npm package name"
    return None


def is_valid_package_name(name: object) -> bool:
    return package_name_problem(name) is None
