"""prefect.yaml names real flows with real parameters, and schedules the daily run.

No Prefect server: the entrypoints are imported from their files, as a worker does.
"""

from __future__ import annotations

import atexit
import importlib.util
import inspect
import os
import shutil
import sys
import tempfile
from datetime import date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from rollout.core.plan import Plan

# Importing prefect creates PREFECT_HOME: not ~/.prefect (tests/flows/conftest.py sets
# its own first when the flow tests run too).
if "PREFECT_HOME" not in os.environ and "prefect" not in sys.modules:
    os.environ["PREFECT_HOME"] = _home = tempfile.mkdtemp(prefix="rollout-prefect-")
    atexit.register(shutil.rmtree, _home, True)
os.environ.setdefault("DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parent.parent
CONFIG = yaml.safe_load((ROOT / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in CONFIG["deployments"]}


def load_entrypoint(entrypoint: str) -> Any:
    """The object an entrypoint ``path.py:function`` names, imported from the file."""
    path, _, function = entrypoint.partition(":")
    file = ROOT / path
    assert file.is_file(), f"{entrypoint}: no file {file}"
    name = f"_prefect_yaml_{file.stem}"
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))  # as the worker does: the project folder is importable
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT))
    assert hasattr(module, function), f"{entrypoint}: {path} has no {function}"
    return getattr(module, function)


def test_the_file_is_what_prefect_deploy_reads() -> None:
    # prefect deploy skips a file that fails this model with only a warning.
    from prefect.cli.deploy._models import PrefectYamlModel

    model = PrefectYamlModel.model_validate(CONFIG)
    assert model.name == "rollout"
    assert {d.name for d in model.deployments} == {
        "daily",
        "metrics",
        "cohorts",
        "phase-preview",
        "phase-enforce",
        "brownout-start",
        "brownout-end",
        "elv-enroll-all",
        "notify",
        "notify-shard",
        "report",
    }


def test_no_build_or_push_steps() -> None:
    # Nothing needs the network: the worker runs the flows from this checkout.
    assert not CONFIG.get("build") and not CONFIG.get("push")
    for deployment in CONFIG["deployments"]:
        assert not deployment.get("build") and not deployment.get("push")
    [step] = CONFIG["pull"]
    assert list(step) == ["prefect.deployments.steps.set_working_directory"]


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_the_entrypoint_is_a_flow_with_the_parameters_given(name: str) -> None:
    from prefect import Flow

    deployment = DEPLOYMENTS[name]
    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow), f"{deployment['entrypoint']} is not a Prefect flow"
    assert flow.name == name
    accepted = inspect.signature(flow.fn).parameters
    unknown = set(deployment.get("parameters") or {}) - set(accepted)
    assert not unknown, f"{name}: parameters {unknown} are not parameters of the flow"
    # The values pass the flow's own parameter validation, as at run time, with
    # each schedule's own parameters on top.
    base = dict(deployment.get("parameters") or {})
    for schedule in deployment.get("schedules") or [{}]:
        flow.validate_parameters({**base, **schedule.get("parameters", {})})
    assert deployment["work_pool"]["name"] == "rollout-process"
    assert deployment.get("description", "").strip()
    assert "rollout" in deployment.get("tags", [])


def test_only_the_notify_shards_may_run_on_a_machine_without_the_rollout_home() -> None:
    """Workers on other machines poll the notify-shards queue alone (runbook section 6):
    every other deployment reads or writes ROLLOUT_HOME (the warehouse, the previews'
    CSVs, the reports, the file outbox) and stays on the default queue, which only the
    worker of that host polls."""
    queues = {name: d["work_pool"].get("work_queue_name") for name, d in DEPLOYMENTS.items()}
    assert queues.pop("notify-shard") == "notify-shards"
    assert set(queues.values()) == {None}  # the pool's default queue


@pytest.mark.parametrize(
    ("name", "when"), [("daily", "30 2 * * *"), ("notify", "0 9 * * *"), ("report", "0 10 * * *")]
)
def test_the_daily_deployments_run_on_a_utc_cron_schedule(name: str, when: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule

    [schedule] = DEPLOYMENTS[name]["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert cron.cron == when
    assert cron.timezone == "UTC"
    assert schedule.get("active", True)


@pytest.mark.parametrize("name", ["metrics", "cohorts", "phase-preview", "phase-enforce"])
def test_the_single_step_deployments_are_manual(name: str) -> None:
    assert not DEPLOYMENTS[name].get("schedules")


def _one_off_runs(name: str) -> dict[str, datetime]:
    """{parameters: when} for a deployment whose schedules each run exactly once."""
    from prefect.client.schemas.schedules import RRuleSchedule

    runs = {}
    for schedule in DEPLOYMENTS[name]["schedules"]:
        rule = RRuleSchedule(rrule=schedule["rrule"], timezone=schedule["timezone"])
        [when] = list(rule.to_rrule())  # COUNT=1: one run, not a repeating one
        # The plan keeps naive UTC times.
        runs[schedule.get("parameters", {}).get("name", "")] = when.replace(tzinfo=None)
        assert when.utcoffset().total_seconds() == 0
    return runs


def test_brownouts_and_elv_enrollment_run_at_the_plans_times(plan: Plan) -> None:
    assert _one_off_runs("brownout-start") == {b.name: b.starts_at for b in plan.brownouts}
    assert _one_off_runs("brownout-end") == {b.name: b.ends_at for b in plan.brownouts}
    assert _one_off_runs("elv-enroll-all") == {"": datetime.combine(plan.elv.enroll_all_on, time())}
    for name in ("brownout-start", "brownout-end", "elv-enroll-all"):
        assert all(s["timezone"] == "UTC" for s in DEPLOYMENTS[name]["schedules"])


def test_the_project_dir_is_fixed_at_deploy_time_only_when_set_there(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What prefect.yaml's comment says: `prefect deploy` applies its own environment to
    # the pull steps (prefect/cli/deploy/_core.py) and keeps a placeholder it cannot
    # fill for the worker's environment at run time.
    from prefect.utilities.templating import apply_values

    pull, step = CONFIG["pull"], "prefect.deployments.steps.set_working_directory"
    monkeypatch.setenv("ROLLOUT_PROJECT_DIR", "/srv/deploying-shell")
    [deployed] = apply_values(pull, {}, remove_notset=False)
    assert deployed[step]["directory"] == "/srv/deploying-shell"

    monkeypatch.delenv("ROLLOUT_PROJECT_DIR")
    [deployed] = apply_values(pull, {}, remove_notset=False)
    assert deployed[step]["directory"] == "{{ $ROLLOUT_PROJECT_DIR }}"
    # ...which the pull step resolves from the worker's environment when a run starts.
    monkeypatch.setenv("ROLLOUT_PROJECT_DIR", "/srv/worker")
    assert apply_values(deployed[step], dict(os.environ))["directory"] == "/srv/worker"


def _day_parameters() -> list[tuple[str, str]]:
    """Every (deployment, parameter) whose flow takes a day."""
    found = []
    for name in sorted(DEPLOYMENTS):
        flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
        for parameter in inspect.signature(flow.fn, eval_str=True).parameters.values():
            if date in _types_in(parameter.annotation):
                found.append((name, parameter.name))
    return found


def _types_in(annotation: Any) -> set[Any]:
    from typing import get_args

    parts = get_args(annotation)
    return {annotation} if not parts else {t for part in parts for t in _types_in(part)}


def test_some_deployments_take_a_day() -> None:
    assert {"daily", "metrics", "cohorts", "notify", "report"} <= {n for n, _ in _day_parameters()}


@pytest.mark.parametrize(("name", "parameter"), _day_parameters())
@pytest.mark.parametrize(
    "typed",
    [
        "1646092800",  # seconds since 1970: 2022-03-01 to pydantic
        1646092800,
        "20220301",
        20220301,
        "2022-03-01T00:00:00-08:00",  # a midnight with an offset: taken as its calendar day
        "2022-03-01T00:00:00+05:00",  # the day before, in UTC
        "2022-W09-2",
    ],
)
def test_a_day_parameter_is_a_day_written_yyyy_mm_dd_not_digits_or_a_time(
    name: str, parameter: str, typed: object
) -> None:
    """A day typed in Prefect's UI or `prefect deployment run --param as_of=...` as digits
    ran the flow for the day those digits count in seconds since 1970, and a midnight with
    an offset for its calendar day, whatever day that is in UTC. Each is refused before
    the flow starts, naming the parameter; YYYY-MM-DD is taken."""
    from prefect.exceptions import ParameterTypeError

    flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
    base = dict(DEPLOYMENTS[name].get("parameters") or {})
    with pytest.raises(ParameterTypeError, match=rf"{parameter}: .*expected a date, YYYY-MM-DD"):
        flow.validate_parameters({**base, parameter: typed})
    taken = flow.validate_parameters({**base, parameter: "2022-03-01"})
    assert taken[parameter] == date(2022, 3, 1)


# Every count a deployment takes, with the values the CLI's own options refuse.
COUNT_PARAMETERS = [
    ("notify", "concurrency", [0, -1, 65]),
    ("notify", "shards", [0, -2]),
    ("notify", "lease_seconds", [0, -300]),
    ("notify", "straggler_grace_seconds", [-1]),
    ("notify-shard", "concurrency", [0, -1, 65]),
    ("notify-shard", "lease_seconds", [0, -300]),
    ("elv-enroll-all", "batch_size", [0, -5]),
]


@pytest.mark.parametrize(
    ("name", "parameter", "typed"),
    [(n, p, v) for n, p, values in COUNT_PARAMETERS for v in values],
)
def test_a_count_parameter_out_of_its_range_is_refused_before_the_run_starts(
    name: str, parameter: str, typed: int
) -> None:
    """`prefect deployment run notify/notify --param concurrency=0` (or a 0 typed in the
    UI's form) ran: through SendGrid the drain claimed batches of no email, found none,
    and the run ended Completed with every email left queued. Each count is refused
    before the flow starts, naming the parameter, as `rollout notify send --concurrency
    0` is refused; and the deployment's schema carries the bound, so the server refuses
    it when the run is made."""
    from prefect.exceptions import ParameterTypeError

    flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
    base = dict(DEPLOYMENTS[name].get("parameters") or {})
    with pytest.raises(ParameterTypeError, match=rf"{parameter}: Input should be"):
        flow.validate_parameters({**base, parameter: typed})
    schema = flow.parameters.model_dump()["properties"][parameter]
    assert {"minimum", "exclusiveMinimum"} & set(schema), schema
    flow.validate_parameters(base)  # the deployment's own values still pass


def _name_parameters() -> list[tuple[str, str]]:
    """Every (deployment, parameter) whose flow takes text: a phase's or brown-out's name."""
    found = []
    for name in sorted(DEPLOYMENTS):
        flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
        for parameter in inspect.signature(flow.fn, eval_str=True).parameters.values():
            if str in _types_in(parameter.annotation):
                found.append((name, parameter.name))
    return found


def test_every_flow_taking_a_name_is_found() -> None:
    assert set(_name_parameters()) >= {
        ("phase-preview", "phase"),
        ("phase-enforce", "phase"),
        ("brownout-start", "name"),
        ("brownout-end", "name"),
    }


@pytest.mark.parametrize(("name", "parameter"), _name_parameters())
@pytest.mark.parametrize("typed", ["", " ", "top-100 ", "../top-100", "top\n100"])
def test_an_empty_or_malformed_name_is_refused_before_the_run_starts(
    name: str, parameter: str, typed: str
) -> None:
    """`prefect deployment run phase-preview/phase-preview --param phase=""` (the UI's
    form left empty) made a run that failed only once a worker started it and read the
    plan. A name is refused before the flow starts, naming the parameter, as the CLI
    refuses an empty path (path_given); the pattern in the deployment's schema makes the
    server refuse it when the run is made."""
    from prefect.exceptions import ParameterTypeError
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
    base = dict(DEPLOYMENTS[name].get("parameters") or {})
    with pytest.raises(ParameterTypeError, match=rf"{parameter}: String should match"):
        flow.validate_parameters({**base, parameter: typed})
    schema = flow.parameters.model_dump()
    with pytest.raises(ValidationError, match=rf"field '{parameter}'.*does not match"):
        validate({**base, parameter: typed}, schema, raise_on_error=True, ignore_required=True)
    validate({**base, parameter: "top-100"}, schema, raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize(("name", "parameter"), _day_parameters())
@pytest.mark.parametrize(
    "typed", ["2022-13-01", "2022-3-1", "20220301", "1646092800", "2022-03-01T00:00:00Z", "today"]
)
def test_a_malformed_day_is_refused_by_the_server_when_the_run_is_made(
    name: str, parameter: str, typed: str
) -> None:
    """The server checks a run's parameters against the deployment's schema when the run
    is made (the UI's form, `prefect deployment run --param`, the API), with the check
    used here; "format: date" it takes as a note only, so a 2022-13-01 made a run that
    failed only once a worker started it. The schema's pattern refuses it there, naming
    the parameter; YYYY-MM-DD (and no day: today) is taken."""
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    flow = load_entrypoint(DEPLOYMENTS[name]["entrypoint"])
    schema = flow.parameters.model_dump()
    base = dict(DEPLOYMENTS[name].get("parameters") or {})
    with pytest.raises(ValidationError, match=rf"field '{parameter}'.*does not match"):
        validate({**base, parameter: typed}, schema, raise_on_error=True, ignore_required=True)
    for taken in ("2022-03-01", None):
        validate({**base, parameter: taken}, schema, raise_on_error=True, ignore_required=True)
