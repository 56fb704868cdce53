"""The reference plan as the npm-scale benches play it.

The npm sample's downloads end on 2022-01-31, and a cohort is fixed from its phase's
``cohort_as_of`` (a build before that day leaves it out: rollout.cohorts), so
high-impact's day, 2022-03-14, has no metrics in the sample. The benches build every
cohort of the plan on the days the sample covers, so they play the plan with each
``cohort_as_of`` brought forward to the last day the downloads' weekly window covers,
validated as any plan is; every other date is the plan's own.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "plans" / "npm-2022.yaml"


def fitted_plan(cohorts_by: date, path: Path = PLAN) -> Any:
    """``path``'s plan with no phase's cohort fixed later than ``cohorts_by``."""
    from rollout.core.plan import Plan, load_plan, plan_problems

    data = load_plan(path).model_dump()
    for phase in data["phases"]:
        phase["cohort_as_of"] = min(phase["cohort_as_of"], cohorts_by)
    plan = Plan.model_validate(data)
    if problems := plan_problems(plan):
        raise SystemExit(f"FAIL: the plan fitted to {cohorts_by} is not valid: {problems}")
    return plan
