"""Package names: npm's rules for existing packages, identical in Python and DuckDB."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.names import PACKAGE_NAME_PATTERN, is_valid_package_name, package_name_problem

VALID = [
    "react",
    "@babel/core",
    "lodash.get",
    "left-pad",
    "JSONStream",
    "Base64",
    "it's",
    "(x)",
    "a" * 300,
    "@types/node",
    "0.0.1",
]
INVALID = [
    "",
    ".hidden",
    "_private",
    "@scope/.x",
    "@scope",
    "a/b",
    "with space",
    " react",
    "café",
    "node_modules",
    "favicon.ico",
    "@/x",
    "a\nb",
]


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name: str) -> None:
    assert package_name_problem(name) is None


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names(name: str) -> None:
    assert not is_valid_package_name(name)


def test_every_shipped_real_name_is_valid() -> None:
    import gzip
    from importlib.resources import files

    data = files("rollout") / "data" / "npm-monthly-downloads.tsv.gz"
    with gzip.open(str(data), "rt") as handle:
        next(handle)
        names = [line.split("\t", 1)[0] for line in handle]
    assert len(names) > 200_000
    assert [n for n in names if not is_valid_package_name(n)] == []


@given(st.text(alphabet=st.sampled_from("aZ09-_.!~*'()@/ é"), max_size=12))
def test_duckdb_and_python_agree(name: str) -> None:
    in_sql = duckdb.execute(
        "select regexp_full_match($name, $pattern) and lower($name) not in "
        "('node_modules', 'favicon.ico')",
        {"name": name, "pattern": PACKAGE_NAME_PATTERN},
    ).fetchall()[0][0]
    assert bool(in_sql) == is_valid_package_name(name) or name == ""
