"""The SQL golden cases: every folder ``golden/<model>/<case>/`` is a test, run by the
one harness in golden_harness.py (the layout is described there; golden/README.md
says how to add a case). The expected outputs were worked out by hand: there is no
mode that rewrites them from what the code gives.
"""

from __future__ import annotations

import duckdb
import pytest

from rollout.core.plan import CohortRule, load_plan

from .golden_harness import (
    GOLDEN_DIR,
    MODELS,
    REFERENCE_PLAN,
    Case,
    all_cases,
    case_folders,
    case_params,
    check_case,
    load_case,
    model_folders,
)

# The cases each model had when the harnesses were merged into one: fewer means a case
# folder was lost on the way.
AT_LEAST = {"package_metrics": 9, "adoption": 5, "cohort_diff": 2, "duplicate_sends": 1}


@pytest.mark.parametrize("case", case_params())
def test_golden_case(case: Case, fresh_warehouse: duckdb.DuckDBPyConnection) -> None:
    check_case(fresh_warehouse, case)


def test_every_folder_is_a_model_or_a_case() -> None:
    """A folder without case.yaml would silently be no test at all."""
    models = [p.name for p in model_folders()]
    assert sorted(models) == sorted(MODELS)
    for model in model_folders():
        folders = sorted(p.name for p in model.iterdir() if p.is_dir())
        assert folders == [p.name for p in case_folders(model)], model.name
        assert len(folders) >= AT_LEAST[model.name], model.name


def test_every_output_is_checked_by_a_case() -> None:
    checked = {(case.model, p.stem) for case in all_cases() for p in case.expected_files()}
    for name, model in MODELS.items():
        unchecked = sorted(o for o in model.outputs if (name, o) not in checked)
        assert not unchecked, f"{name}: no golden case checks {unchecked}"


def test_thresholds_case_uses_the_reference_high_impact_rule() -> None:
    case = load_case(GOLDEN_DIR / "package_metrics" / "thresholds")
    reference = load_plan(REFERENCE_PLAN).cohort("high-impact")
    assert CohortRule(**case.parameters["rule"]) == reference.model_copy(update={"description": ""})
