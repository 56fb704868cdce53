"""The adoption report's definition: ``reports/adoption.yml`` (which marts it writes as
CSV and in what row order, the organisations table's size, the brown-out measures and
funnel stages its charts show, with their labels), and each mart's columns from its
model file, ``sql/marts/<mart>.yml``. Both are where an analyst edits
(rollout.core.resources finds them); nothing about the report's shape is kept in code.

A definition that does not hold together (a mart without a model file, a measure that
is no column of its mart, a typo in a key) is refused with the file, the line and why.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.core.controls import quoted
from rollout.core.errors import BadInput
from rollout.core.names import SAFE_NAME_RULE, is_safe_name
from rollout.core.resources import resource_dir

SPEC_FILE = "adoption.yml"
# The marts whose columns the report's own code reads by name (beyond the spec's lists).
BROWNOUT_MART = "brownout_impact"
FUNNEL_MART = "compliance_funnel"


class _SpecFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csvs: dict[str, str] = Field(min_length=1)
    top_orgs: int = Field(strict=True, ge=1, le=10_000)
    publishing_days: int = Field(strict=True, ge=1, le=366)
    brownout_measures: dict[str, str] = Field(min_length=1)
    funnel_stages: dict[str, str] = Field(min_length=1)


@dataclass(frozen=True)
class ReportSpec:
    # Each mart the report reads and writes as CSV, and its columns in CSV order (the
    # contract of docs/adoption-marts.md, kept in sql/marts/<mart>.yml).
    marts: dict[str, tuple[str, ...]]
    # Each mart's CSV row order: a DuckDB ``order by`` list.
    csv_order: dict[str, str]
    top_orgs: int
    # The publishing table: publishes of the last N days up to the report's day.
    publishing_days: int
    # (column, label) pairs, in the order shown.
    brownout_measures: tuple[tuple[str, str], ...]
    funnel_stages: tuple[tuple[str, str], ...]
    # Where each mart's row order is written (the file, and the line of each): a list
    # that does not run on its mart is refused there (rollout.report.reporting).
    path: Path = Path(SPEC_FILE)
    order_lines: dict[str, int] = field(default_factory=dict)

    def bad_order(self, mart: str, problem: str) -> BadInput:
        """The refusal of ``mart``'s row order, which DuckDB could not run: ``problem``."""
        return BadInput(
            self.path,
            self.order_lines.get(mart, 1),
            f"csvs: {mart}: the row order {quoted(self.csv_order[mart])} does not run on "
            f"{mart}: {problem}",
        )


@cache
def report_spec() -> ReportSpec:
    """The installed (or checked-out) definition, read once per process."""
    return load_report_spec(resource_dir("reports") / SPEC_FILE, resource_dir("sql") / "marts")


def load_report_spec(path: Path, marts_dir: Path) -> ReportSpec:
    node, raw = _read_yaml(path)
    try:
        spec = _SpecFile.model_validate(raw)
    except ValidationError as error:
        # A misspelt key also makes the key it should have been "missing": name the
        # misspelling, where it is, rather than line 1.
        first = min(error.errors(), key=lambda e: e["type"] == "missing")
        where = [str(part) for part in first["loc"]]
        raise BadInput(path, _line(node, where), f"{'.'.join(where)}: {first['msg']}") from None
    for mart in spec.csvs:
        # A table's name, and `<mart>.csv` in the report's folder: `../x` named a model
        # file in another folder, a file outside the report's, and was a SQL traceback.
        if not is_safe_name(mart):
            raise BadInput(
                path,
                _line(node, ["csvs", mart]),
                f"csvs: {quoted(mart)} is no mart's name ({SAFE_NAME_RULE})",
            )
    marts = {
        mart: _mart_columns(marts_dir, mart, path, _line(node, ["csvs", mart]))
        for mart in spec.csvs
    }
    for mart, order in spec.csvs.items():
        # One `order by` list: a second statement after it would run with every report.
        if ";" in order or not order.strip():
            raise BadInput(
                path,
                _line(node, ["csvs", mart]),
                f"csvs: {mart}: a row order is one `order by` list (columns, no ';'), "
                f"not {quoted(order)}",
            )
    for section, mart in (("brownout_measures", BROWNOUT_MART), ("funnel_stages", FUNNEL_MART)):
        columns = marts.get(mart)
        if columns is None:
            raise BadInput(path, _line(node, [section]), f"{section} needs {mart} under csvs")
        for column in getattr(spec, section):
            if column not in columns:
                raise BadInput(
                    path,
                    _line(node, [section, column]),
                    f"{section}: {column} is no column of {mart} ({marts_dir / (mart + '.yml')})",
                )
    return ReportSpec(
        marts=marts,
        csv_order=dict(spec.csvs),
        top_orgs=spec.top_orgs,
        publishing_days=spec.publishing_days,
        brownout_measures=tuple(spec.brownout_measures.items()),
        funnel_stages=tuple(spec.funnel_stages.items()),
        path=path,
        order_lines={mart: _line(node, ["csvs", mart]) for mart in spec.csvs},
    )


def _read_yaml(path: Path) -> tuple[yaml.Node | None, Any]:
    try:
        loader = yaml.SafeLoader(path.read_text(encoding="utf-8"))
        try:
            # One parse: the node (for lines) and the data built from it.
            node = loader.get_single_node()
            return node, loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except OSError as error:
        raise BadInput(path, None, f"cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise BadInput(path, None, "not UTF-8 text") from None
    except yaml.MarkedYAMLError as error:
        line = error.problem_mark.line + 1 if error.problem_mark else 1
        reason = f"not valid YAML: {error.problem}"
        if error.context and error.context_mark is not None:  # e.g. an unclosed [ or {
            reason += f" ({error.context} that began on line {error.context_mark.line + 1})"
        raise BadInput(path, line, reason) from None


def _mart_columns(marts_dir: Path, mart: str, spec: Path, line: int) -> tuple[str, ...]:
    model = marts_dir / f"{mart}.yml"
    if not model.is_file():
        raise BadInput(spec, line, f"csvs: {mart} has no model file {model}")
    _, meta = _read_yaml(model)
    columns = meta.get("columns") if isinstance(meta, dict) else None
    if not isinstance(columns, dict) or not columns:
        raise BadInput(model, None, "no columns listed")
    return tuple(str(name) for name in columns)


def _line(node: yaml.Node | None, keys: list[str]) -> int:
    """The 1-based line of the deepest of ``keys`` found under ``node`` (1 if none)."""
    line = 1
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            break
        for key_node, value_node in node.value:
            if key_node.value == key:
                line, node = key_node.start_mark.line + 1, value_node
                break
        else:
            break
    return line
