"""The CLI mirrors the library and documents itself; the library never imports prefect."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rollout.cli import app

ROOT = Path(__file__).resolve().parent.parent


def all_commands() -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []

    def walk(prefix: str, command: Any) -> None:
        found.append((prefix, command))
        # Typer builds click-like groups; a group is what has sub-commands.
        for name, sub in getattr(command, "commands", {}).items():
            walk(f"{prefix} {name}".strip(), sub)

    walk("", typer.main.get_command(app))
    return found


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=lambda v: str(v) or "rollout")
def test_every_command_has_help(name: str, command: Any) -> None:
    assert (command.help or "").strip(), f"rollout {name} has no help text"
    result = CliRunner().invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize(("name", "command"), all_commands(), ids=lambda v: str(v) or "rollout")
def test_help_shows_no_value_for_a_flag(name: str, command: Any) -> None:
    """`--apply <bool>` reads as if `--apply true` were how to give it (refused as an
    extra argument): a flag is shown bare, an option taking a value with its type."""
    result = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0
    assert "<bool>" not in result.output
    help_line = next(line for line in result.output.splitlines() if " --help " in line)
    assert "<" not in help_line
    if any("--format" in getattr(p, "opts", ()) for p in command.params):
        assert "<table|csv|json>" in result.output


def test_help_paragraphs_wrap_to_the_terminal_not_to_the_source() -> None:
    """Each paragraph of a command's help is one line on a terminal wide enough,
    however the docstring was wrapped (Typer 0.29 kept the source's breaks after the
    first paragraph: a sentence broke at column 88 on any terminal)."""
    import inspect

    checked = 0
    for name, command in all_commands():
        help_text = inspect.cleandoc(command.help or "").partition("\f")[0]
        later = help_text.split("\n\n")[1:]
        if not later:
            continue
        result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "1000"})
        lines = {line.strip() for line in result.output.splitlines()}
        for paragraph in later:
            assert " ".join(paragraph.split()) in lines, f"rollout {name}: {paragraph[:60]}"
            checked += 1
    assert checked >= 5


GROUPS = [(name, command) for name, command in all_commands() if getattr(command, "commands", None)]


def test_a_group_lists_each_command_on_one_line_on_a_terminal_wide_enough() -> None:
    """`rollout orgs --help`: each command's description is its first paragraph on one
    line, however the docstring was wrapped (Typer 0.29 kept the source's breaks there:
    a description broke after "records" and at each source line)."""
    import inspect

    checked = 0
    for name, group in GROUPS:
        result = CliRunner().invoke(app, [*name.split(), "--help"], env={"COLUMNS": "1000"})
        lines = [" ".join(line.strip(" │").split()) for line in result.output.splitlines()]
        for sub_name, sub in group.commands.items():
            first = inspect.cleandoc(sub.help or "").partition("\f")[0].split("\n\n")[0]
            shown = " ".join([sub_name, *first.split()])
            assert shown in lines, f"rollout {name} --help: {sub_name}"
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize(("name", "command"), GROUPS, ids=lambda v: str(v) or "rollout")
def test_a_group_run_bare_shows_its_help_and_no_empty_error(name: str, command: Any) -> None:
    """`rollout notify` with no sub-command: the group's help, then exit 2 (bad usage),
    not an error line with no reason after it (`error:  (see ...)`)."""
    result = CliRunner().invoke(app, name.split())
    assert result.exit_code == 2
    assert "Usage:" in result.stdout
    assert "error:" not in result.stderr


def test_the_commands_the_design_promises_exist() -> None:
    names = {name for name, _ in all_commands()}
    assert {"sample", "ingest", "summary", "quarantine", "db upgrade", "db status"} <= names


def test_nothing_under_rollout_imports_prefect() -> None:
    offenders = []
    for path in (ROOT / "rollout").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            if any(m == "prefect" or m.startswith("prefect.") for m in modules):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_readme_gives_exactly_the_two_setup_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]


def readme_command_table() -> dict[str, set[str]]:
    """{command path: the options its row names} from the README's command table. A
    row may name several commands of one group: `rollout db upgrade` / `db status`."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The command line", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("| `rollout "):
            continue
        first_cell = line.strip("|").split(" |", 1)[0]
        group: list[str] = []
        for usage in re.findall(r"`([^`]+)`", first_cell):
            words = usage.replace("\\|", "|").split()
            if words[0] == "rollout":
                words = words[1:]
            path = []
            for word in words:
                if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                    break
                path.append(word)
            if not group:
                group = path[:-1]
            elif len(path) == 1:
                path = [*group, *path]
            table[" ".join(path)] = set(re.findall(r"--[a-z][a-z0-9-]*", usage))
    return table


def cli_commands() -> dict[str, set[str]]:
    """{command path: its options} of every command that runs (not the groups)."""
    found = {}
    for name, command in all_commands():
        if name and not getattr(command, "commands", None):
            found[name] = {
                option
                for param in command.params
                for option in (*param.opts, *param.secondary_opts)
                if option.startswith("--")
            }
    return found


def test_the_readme_command_table_is_the_cli() -> None:
    documented, cli = readme_command_table(), cli_commands()
    assert len(documented) >= 30
    assert sorted(set(documented) - set(cli)) == [], "in the README, not in the CLI"
    assert sorted(set(cli) - set(documented)) == [], "in the CLI, not in the README's table"
    unknown = {
        name: sorted(options - cli[name])
        for name, options in documented.items()
        if options - cli[name]
    }
    assert unknown == {}, "options the README names that the command does not take"


def test_the_readme_shows_the_report_and_the_picture_is_a_sensible_png() -> None:
    """docs/report.png (`make screenshot`) is embedded near the top of the README, and
    is a PNG about one laptop screen wide and at most a few screens tall, not huge."""
    readme = (ROOT / "README.md").read_text()
    top = readme.split("\n## ", 1)[0]
    assert "](docs/report.png)" in top, "the README's opening embeds docs/report.png"
    png = (ROOT / "docs" / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert 800 <= width <= 2000 and 400 <= height <= 2400, (width, height)
    assert len(png) <= 400 * 1024


def test_every_example_in_the_plan_language_page_is_a_valid_plan_part() -> None:
    """docs/plans.md shows each feature in a YAML block: each, put into the reference
    plan (its cohorts added to the plan's), passes `plan check`,
    and draws none of its warnings about the phases it shows (a cap that does nothing)."""
    import copy
    import re

    import yaml

    from rollout.core.plan import parse_plan, plan_warnings

    page = (ROOT / "docs" / "plans.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", page, flags=re.S)
    assert len(blocks) >= 8
    reference = yaml.safe_load((ROOT / "plans" / "npm-2022.yaml").read_text())
    for block in blocks:
        plan = copy.deepcopy(reference)
        for key, value in yaml.safe_load(block).items():
            if key == "cohorts":
                plan["cohorts"].update(value)
            else:
                plan[key] = value
        parsed, problems = parse_plan(yaml.safe_dump(plan), "plan.yaml")
        assert problems == [], (block, problems)
        assert parsed is not None
        warned = [w for w in plan_warnings(parsed) if w.startswith("phase ")]
        assert warned == [], (block, warned)


# The commands that print no result, only messages: a server's log, a plan's verdict, the
# revision a migration reached. Every other command prints a listing, a preview or what
# it did, and the README promises each of those `--format table|csv|json`.
PRINTS_NO_RESULT = {
    "db upgrade": "says the revision the registry is at",
    "plan check": "says valid, or one error line per problem",
    "copy-warehouse": "says where the copy is",
    "notify events serve": "a server: logs the posts it receives",
    "dev sendgrid": "a server: logs the mail it accepts",
}


def test_every_command_printing_a_result_takes_format() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Every command that prints a result" in readme and "`--format table|csv|json`" in readme
    cli = cli_commands()
    assert set(PRINTS_NO_RESULT) <= set(cli)
    missing = sorted(name for name, options in cli.items() if "--format" not in options)
    assert missing == sorted(PRINTS_NO_RESULT), "commands printing a result without --format"


@pytest.mark.parametrize(
    ("document", "heading"),
    [("README.md", "## Configuration"), ("docs/runbook-operator.md", "| variable |")],
)
def test_every_setting_is_in_the_configuration_tables(document: str, heading: str) -> None:
    """An operator learns the environment from these tables: each variable Settings
    reads has its row in both, and neither names one nothing reads."""
    from rollout.core.config import Settings
    from rollout.core.output import FORCE_PROGRESS

    text = (ROOT / document).read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", section, re.MULTILINE))
    read = {f.validation_alias for f in Settings.model_fields.values() if f.validation_alias}
    # Read by Prefect's client, the notify flow or the CLI's output, not by Settings.
    elsewhere = {"PREFECT_API_URL", "ROLLOUT_SENDGRID_SECRET_BLOCK", FORCE_PROGRESS}
    assert read <= documented, "read but not documented"
    assert documented <= read | elsewhere, "documented but read by nothing"


def test_the_readme_says_a_list_in_csv_is_the_cell_the_cli_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README said a list in CSV was its items joined by `, `: a script splitting the
    cell so read `["totp"]` as one method, and a member `bo, di` as two. The cell is a
    JSON array; the README says so, as the release manager's runbook does."""
    import csv
    import io
    import json

    from rollout.core.output import Format, csv_value, emit_record

    readme = " ".join((ROOT / "README.md").read_text().split())
    said = readme.split("in CSV a list is one cell", 1)[1].split(". ", 1)[0]
    assert "JSON array" in said and "joined by" not in said, said
    example = re.search(r"`(\[.*?\])`", said)
    assert example, said
    names = json.loads(example[1])
    emit_record({"removed_members": names}, Format.csv)
    [_, row] = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert row[0] == example[1] and json.loads(csv_value(row[0])) == names
