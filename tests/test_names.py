"""Package names: npm's rules for existing packages, identical in Python and DuckDB."""

from __future__ import annotations

import functools
from datetime import date

import duckdb
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rollout import warehouse
from rollout.core.counts import EXPONENT_PATTERN, WHOLE_COUNT_PATTERN
from rollout.core.errors import BadInput
from rollout.core.names import (
    PACKAGE_NAME_PATTERN,
    file_stem_for,
    is_safe_name,
    is_valid_package_name,
    package_name_problem,
    safe_path_component,
)

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

    data = files("rollout.demo") / "data" / "npm-monthly-downloads.tsv.gz"
    with gzip.open(str(data), "rt") as handle:
        next(handle)
        names = [line.split("\t", 1)[0] for line in handle]
    assert len(names) > 200_000
    assert [n for n in names if not is_valid_package_name(n)] == []


@functools.cache
def _check_warehouse() -> duckdb.DuckDBPyConnection:
    """One in-memory warehouse for all draws: the checks only read it."""
    return warehouse.connect(":memory:")


def _problem_the_downloads_check_finds(name: str) -> str | None:
    """What sql/raw/check_downloads.sql, as ingest runs it, says of a row of this
    package with a good day and count."""
    con = _check_warehouse()
    con.execute(
        "create or replace temp table incoming as select 1::bigint as ordinal, "
        "1::bigint as line, $name::varchar as package, null::varchar as package_raw, "
        "null::varchar as day_raw, "
        "date '2022-01-10' as day, null::varchar as downloads_raw, 5::bigint as downloads",
        {"name": name},
    )
    day = date(2022, 1, 10)
    warehouse.run(
        con,
        "raw/check_downloads",
        {
            "name_pattern": PACKAGE_NAME_PATTERN,
            "whole_pattern": WHOLE_COUNT_PATTERN,
            "exponent_pattern": EXPONENT_PATTERN,
            "today": date(2022, 2, 1),
            "earliest": date(2000, 1, 1),
            "min_day": day,
            "max_day": day,
            "overlaps": False,
            "own_files": [],
            "may_be_in_order": False,
        },
    )
    rows = con.execute("select problem from flagged").fetchall()
    return rows[0][0] if rows else None


def _problem_the_manifests_check_finds(name: str) -> str | None:
    """What sql/raw/check_manifests.sql says of a manifest of this name, otherwise good."""
    con = _check_warehouse()
    con.execute(
        "create or replace temp table incoming as select 1::bigint as ordinal, "
        "1::bigint as line, $name::varchar as name, '1.0.0' as version, "
        "['someone'] as maintainers, false as maintainers_malformed, "
        "false as dependencies_malformed, false as devDependencies_malformed, "
        "false as peerDependencies_malformed, false as dependencies_repeats, "
        "false as devDependencies_repeats, false as peerDependencies_repeats, "
        "[]::varchar[] as self_dependency_kinds",
        {"name": name},
    )
    con.execute(
        "create or replace temp view incoming_dependencies as select 1::bigint as ordinal, "
        "null::varchar as dependency, null::varchar as range, 'prod' as kind where false"
    )
    warehouse.run(con, "raw/check_manifests", {"name_pattern": PACKAGE_NAME_PATTERN})
    rows = con.execute("select problem from flagged").fetchall()
    return rows[0][0] if rows else None


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ09-_.!~*'()@/ é"), max_size=12))
@example("")
@example("node_modules")
@example("FAVICON.ICO")
@example("@scope/pkg")
def test_duckdb_and_python_agree(name: str) -> None:
    """The checks ingest runs (their own SQL, not a copy of its condition) accept a
    name exactly when rollout.core.names does."""
    valid = is_valid_package_name(name)
    for problem in (
        _problem_the_downloads_check_finds(name),
        _problem_the_manifests_check_finds(name),
    ):
        assert (problem is None) == valid, (name, problem)
        if not valid:
            assert problem is not None and "name" in problem


# --- names that become file names ---------------------------------------------------

UNSAFE_COMPONENTS = ["../../x", "..", ".", "", "a/b", "a\\b", ".hidden", "-rf", "x\n", "a" * 101]


@pytest.mark.parametrize("name", ["top-100", "brownout-1", "High.Impact_2", "a" * 100])
def test_a_safe_name_is_its_own_path_component(name: str) -> None:
    assert safe_path_component(name) == name
    assert file_stem_for(name) == name


@pytest.mark.parametrize("name", UNSAFE_COMPONENTS)
def test_a_path_component_that_could_leave_its_folder_is_refused(name: str) -> None:
    with pytest.raises(BadInput, match=r"phase .* cannot be used in a file name"):
        safe_path_component(name, "phase")


@given(st.text(max_size=300))
def test_any_text_maps_to_a_safe_distinct_file_stem(text: str) -> None:
    stem = file_stem_for(text)
    assert is_safe_name(stem)
    assert stem == text or stem != file_stem_for(text + "/")


def test_a_package_name_s_problem_names_it_quoted_as_the_warehouse_checks_do() -> None:
    """Python's reason and the quarantine's (sql/raw/check_downloads.sql) name a package
    the one way (rollout.core.controls.quoted): as repr had it, a name holding a ``'``
    was in double quotes here and in single ones there."""
    assert package_name_problem("it's bad") == (
        "package name 'it\\'s bad' is not a valid npm package name"
    )
    assert package_name_problem(" it's") == "package name ' it\\'s' has leading or trailing spaces"
