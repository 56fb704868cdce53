"""Package names as the registry accepts them.

The rule follows npm's validate-npm-package-name for *existing* packages: legacy
names with capitals or the characters ``~'!()*`` are real and valid, so only what
the registry never allowed is refused. The same pattern runs inside DuckDB (passed
as a named parameter), so Python and SQL cannot disagree.
"""

from __future__ import annotations

import hashlib
import re

from rollout.core.controls import quoted
from rollout.core.errors import BadInput

# Characters encodeURIComponent leaves alone; a scope is @scope/ before the name.
_URL_SAFE = r"[A-Za-z0-9\-_.!~*'()]"
PACKAGE_NAME_PATTERN = rf"(@{_URL_SAFE}+/)?[A-Za-z0-9\-!~*'()]{_URL_SAFE}*"
_PACKAGE_NAME = re.compile(PACKAGE_NAME_PATTERN)
_RESERVED = frozenset({"node_modules", "favicon.ico"})


def package_name_problem(name: object) -> str | None:
    """Why ``name`` is not a valid package name, or None when it is: in the words the
    warehouse's checks quarantine a row with (sql/raw/check_*.sql), the name quoted."""
    if not isinstance(name, str) or name == "":
        return "package name is empty"
    if name != name.strip():
        return f"package name {quoted(name)} has leading or trailing spaces"
    if name.lower() in _RESERVED:
        return f"package name {quoted(name)} is reserved"
    if not _PACKAGE_NAME.fullmatch(name):
        return f"package name {quoted(name)} is not a valid npm package name"
    return None


def is_valid_package_name(name: object) -> bool:
    return package_name_problem(name) is None


# --- names that become file names or keys ----------------------------------------------
# Phase, cohort and brown-out names end up in file names (reports/previews/), ledger
# keys and email contexts. A conservative pattern keeps them from naming another
# folder (`..`, `/`), a hidden file, or anything a shell or spreadsheet reads twice.
SAFE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
_SAFE_NAME = re.compile(SAFE_NAME_PATTERN)
SAFE_NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 100"


def is_safe_name(value: object) -> bool:
    return isinstance(value, str) and _SAFE_NAME.fullmatch(value) is not None


def safe_path_component(value: str, what: str = "name") -> str:
    """``value`` itself, if it can be one component of a path; else ``BadInput``.

    Path builders call this on every value they put in a file name, whatever its
    source (plan, command line, database), so none can leave its folder."""
    if not is_safe_name(value):
        raise BadInput(
            None, None, f"{what} {quoted(value)} cannot be used in a file name: {SAFE_NAME_RULE}"
        )
    return value


def file_stem_for(value: str) -> str:
    """A safe file name stem for any text (a username from the registry, say): the
    text itself when safe, else its safe characters plus a hash of the whole, so two
    different values never share a file."""
    if is_safe_name(value):
        return value
    kept = re.sub(r"[^A-Za-z0-9._-]+", "_", value).strip("._-")[:80] or "x"
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{kept}-{digest}"
