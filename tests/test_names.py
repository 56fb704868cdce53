"""Package names: npm's rules for existing packages, identical in Python and DuckDB."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollout.errors import BadInput
from rollout.names import (
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
