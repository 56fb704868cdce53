"""The runbooks, followed literally.

Every ``rollout`` command in a shell block of README.md or docs/*.md is parsed against
the Typer app (nothing runs): the command exists, its options exist, its arguments fit,
and typed values (ints, choices, dates) are valid. Then the release manager's rehearsal
(docs/runbook-release-manager.md) is played in a scratch ROLLOUT_HOME on the tiny
sample, each command taken from the runbook's own blocks, in the runbook's order.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rollout.cli import app
from rollout.core.clock import SimulatedClock, use_clock
from rollout.core.plan import Plan, load_plan
from rollout.demo.sample import SCALES
from rollout.notify.emails import EMAILS

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
SHELL_BLOCKS = {"sh", "bash", "console"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
ANGLE_PLACEHOLDER = re.compile(r"<[A-Za-z][^<>\s]*>")
ROLLOUT = ("rollout", ".venv/bin/rollout")
ROLLOUT_LINE = re.compile(r"^(?:[A-Za-z_]\w*=\S*\s+)*(?:\.venv/bin/)?rollout(?:\s|$)")

# The placeholders the docs use for a value the reader fills in, and a sample value of
# the right kind for each. A `<word>` not listed here fails the test: a shell reads it
# as a redirection.
PLACEHOLDERS = {
    "D": "2022-02-01",  # a day (the operator's first-day checks)
    "PHASE": "top-100",
    "N": "87",  # a count typed back
    "<id>": "922d8ed1-561e-4843-90ad-2cc4ef21a11f",  # a flow run's id
}

# Options and arguments the CLI takes as text and reads as a day or a time itself
# (rollout.cli.app._parse_day and _parse_time), by parameter name.
DAY_PARAMETERS = {"as_of", "start", "end", "first", "second"}
TIME_PARAMETERS = {"at"}


@dataclass(frozen=True)
class DocCommand:
    """One `rollout` command line of a doc's shell block: where, and its words."""

    path: Path
    line: int
    text: str
    words: tuple[str, ...]  # after `rollout`, placeholders filled in
    problem: str | None = None  # why the line could not be read as a command

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def shell_blocks(
    path: Path, kinds: set[str] = SHELL_BLOCKS
) -> list[tuple[int, str, list[tuple[int, str]]]]:
    """Each fenced sh/bash/console block of a Markdown file (or of the other kinds
    asked for, "" for a block with no language: output the docs show): the heading it
    sits under, and its lines (number, text), `\\` continuations joined into the first
    line."""
    blocks: list[tuple[int, str, list[tuple[int, str]]]] = []
    heading = ""
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if not fence:
            index += 1
            continue
        start = index
        body: list[tuple[int, str]] = []
        index += 1
        while index < len(lines) and not FENCE.match(lines[index]):
            number, text = index + 1, lines[index].strip()
            while text.endswith("\\") and index + 1 < len(lines):
                index += 1
                text = text[:-1] + " " + lines[index].strip()
            if fence.group(2) == "console":
                text = text.removeprefix("$ ")
            body.append((number, text))
            index += 1
        index += 1  # the closing fence
        if fence.group(2) in kinds:
            blocks.append((start + 1, heading, body))
    return blocks


def command_words(text: str) -> list[str] | None:
    """The words of a `rollout` command on a shell line, after any VAR=value
    assignments, up to a pipe, redirection, `;` or `&&`, without a `# comment`:
    None when the line runs something else."""
    if not ROLLOUT_LINE.match(text):
        return None
    for placeholder in ANGLE_PLACEHOLDER.findall(text.split(" #", 1)[0]):
        if placeholder not in PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {placeholder} (add it to PLACEHOLDERS)")
        text = text.replace(placeholder, PLACEHOLDERS[placeholder])
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)  # ValueError for an unclosed quote
    while words and ASSIGNMENT.match(words[0]):
        words.pop(0)
    if not words or words[0] not in ROLLOUT:
        return None
    rest: list[str] = []
    for word in words[1:]:
        if word and set(word) <= set("();<>|&"):
            break
        rest.append(PLACEHOLDERS.get(word, word))
    return rest


def doc_commands(paths: tuple[Path, ...] = DOCS) -> list[DocCommand]:
    found = []
    for path in paths:
        for _, _, body in shell_blocks(path):
            for number, text in body:
                try:
                    words = command_words(text)
                except ValueError as error:
                    found.append(DocCommand(path, number, text, (), str(error)))
                    continue
                if words is not None:
                    found.append(DocCommand(path, number, text, tuple(words)))
    return found


ROOT_COMMAND = typer.main.get_command(app)


def _choices() -> dict[tuple[str, str], set[str]]:
    """Values the CLI takes as text and checks itself (exit 2 otherwise), by command and
    parameter: the sample's scales, the emails, and the reference plan's names."""
    plan = load_plan(ROOT / "plans" / "npm-2022.yaml")
    phases = {phase.name for phase in plan.phases}
    cohorts = set(plan.cohorts)
    brownouts = {brownout.name for brownout in plan.brownouts}
    return {
        ("sample", "scale"): set(SCALES),
        ("notify preview", "email"): set(EMAILS),
        ("notify withdraw", "email"): set(EMAILS),
        ("notify withdraw", "phase"): phases,
        ("phase preview", "phase"): phases,
        ("phase enforce", "phase"): phases,
        ("phase rollback", "phase"): phases,
        ("cohorts build", "cohort"): cohorts,
        ("cohorts show", "cohort"): cohorts,
        ("cohorts diff", "cohort"): cohorts,
        ("cohorts release", "cohort"): cohorts,
        ("brownout start", "name"): brownouts,
        ("brownout end", "name"): brownouts,
    }


CHOICES = _choices()


def parse(words: tuple[str, ...] | list[str]) -> tuple[str, dict[str, Any]]:
    """Parse a command line as `rollout` would, invoking nothing (click's make_context
    never calls the command): the command's path and its parameters. Raises the CLI's
    usage error where it would exit 2, or AssertionError for a value it would refuse."""
    command: Any = ROOT_COMMAND
    context = None
    name = "rollout"
    path: list[str] = []
    args = list(words)
    while hasattr(command, "commands"):  # a group: its options, then the sub-command
        context = command.make_context(name, args, parent=context, resilient_parsing=False)
        rest = [*context._protected_args, *context.args]
        assert rest, f"rollout {' '.join(path)} needs a sub-command".replace("  ", " ")
        name, command, args = command.resolve_command(context, rest)
        path.append(name)
    context = command.make_context(name, args, parent=context, resilient_parsing=False)
    where = " ".join(path)
    for parameter, value in context.params.items():
        values = value if isinstance(value, list | tuple) else [value]
        for one in values:
            if one is None:
                continue
            if parameter in DAY_PARAMETERS:
                try:
                    date.fromisoformat(one)
                except ValueError:
                    raise AssertionError(
                        f"{parameter}: {one!r} is not a day (YYYY-MM-DD)"
                    ) from None
            if parameter in TIME_PARAMETERS:
                try:
                    datetime.fromisoformat(one)
                except ValueError:
                    raise AssertionError(f"{parameter}: {one!r} is not an ISO time") from None
            allowed = CHOICES.get((where, parameter))
            if allowed is not None and one not in allowed:
                raise AssertionError(f"{parameter}: {one!r} is not one of {sorted(allowed)}")
    return where, dict(context.params)


def parse_problem(words: tuple[str, ...] | list[str]) -> str | None:
    """Why `rollout` would refuse these words as usage (exit 2), or None."""
    try:
        parse(words)
    except typer.TyperException as error:  # click's UsageError and its kin
        return str(getattr(error, "message", "") or error) or type(error).__name__
    except typer.Exit:  # an eager option such as --help: it would exit, not run
        return "exits before running (an eager option such as --help)"
    except AssertionError as error:
        return str(error)
    return None


# --- 1. every rollout command in the docs parses --------------------------------------------

COMMANDS = doc_commands()


def test_the_docs_give_rollout_commands_in_every_runbook() -> None:
    per_file = {command.path.name for command in COMMANDS}
    assert {
        "runbook-release-manager.md",
        "runbook-operator.md",
        "runbook-analyst.md",
    } <= per_file
    assert len(COMMANDS) > 50


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.where)
def test_every_rollout_command_in_the_docs_parses(command: DocCommand) -> None:
    problem = command.problem or parse_problem(command.words)
    assert problem is None, f"{command.where}: `{command.text}`: {problem}"


@pytest.mark.parametrize(
    "words",
    [
        ("cohorts", "bogus"),  # no such command
        ("cohorts",),  # a group without its sub-command
        ("phase", "enforce", "top-100", "--bogus"),  # no such option
        ("phase", "preview", "top-100", "high-impact"),  # one argument too many
        ("cohorts", "show"),  # its argument missing
        ("metrics",),  # a required option missing
        ("phase", "enforce", "top-100", "--apply", "--expect", "many"),  # not an int
        ("notify", "status", "--format", "yaml"),  # not a choice
        ("sample", "--scale", "galactic"),  # a scale the CLI refuses
        ("phase", "preview", "top-1000"),  # a phase not in the plan
        ("metrics", "--as-of", "2022-13-01"),  # not a day
        ("cohorts", "diff", "2022-01-02", "yesterday"),  # an argument that is not a day
        ("plan", "show", "--at", "noon"),  # not a time
        ("plan", "show", "--help"),  # would print help, not run
    ],
    ids=" ".join,
)
def test_a_command_the_cli_would_refuse_does_not_parse(words: tuple[str, ...]) -> None:
    assert parse_problem(words) is not None


def test_commands_are_read_as_a_shell_would(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# A heading\n"
        "```sh\n"
        "export ROLLOUT_HOME=$(mktemp -d)\n"
        "rollout phase enforce PHASE --apply \\\n"
        "  --expect N   # typed back\n"
        "ROLLOUT_ACTOR=ana .venv/bin/rollout approve <id> --expect 3 | tee out.txt\n"
        "```\n"
        "- a step:\n"
        "  ```console\n"
        "  $ rollout notify send --reason 'a b' > sent.txt\n"
        "  ```\n"
        "```python\n"
        "rollout = 1\n"
        "```\n"
    )
    found = [(c.line, c.words) for c in doc_commands((doc,))]
    assert found == [
        (4, ("phase", "enforce", "top-100", "--apply", "--expect", "87")),
        (6, ("approve", PLACEHOLDERS["<id>"], "--expect", "3")),
        (10, ("notify", "send", "--reason", "a b")),
    ]
    doc.write_text("```sh\nrollout approve <run>\nrollout notify suppress 'a@b\n```\n")
    assert [(c.line, c.problem) for c in doc_commands((doc,))] == [
        (2, "unknown placeholder <run> (add it to PLACEHOLDERS)"),
        (3, "No closing quotation"),
    ]


# --- 2. the release manager's rehearsal, literally -----------------------------------------

RUNBOOK = ROOT / "docs" / "runbook-release-manager.md"


def section_blocks(heading: str, kinds: set[str] = SHELL_BLOCKS) -> list[list[tuple[int, str]]]:
    """The shell blocks (or blocks of other kinds) of the release manager's runbook
    under a heading (its start)."""
    blocks = [body for _, under, body in shell_blocks(RUNBOOK, kinds) if under.startswith(heading)]
    assert blocks, f"no such block under a heading {heading!r} in {RUNBOOK.name}"
    return blocks


def output_shape(text: str) -> list[str]:
    """Output lines as the docs show them, up to what differs from one registry to
    another: paths, numbers and fingerprints, and which reasons a count is split by."""
    shapes = []
    for line in text.strip().splitlines():
        line = re.sub(r"\S*/\S*", "PATH", line)
        line = re.sub(r"\b[0-9a-f]*[0-9][0-9a-f]*\b", "N", line)
        line = re.sub(r"Why: .* \(column notice\)", "Why: ... (column notice)", line)
        shapes.append(line)
    return shapes


def section_commands(heading: str, block: int | None = None) -> list[DocCommand]:
    """The `rollout` commands of a section's shell blocks (or of one of them), in order."""
    blocks = section_blocks(heading)
    chosen = blocks if block is None else [blocks[block]]
    found = []
    for body in chosen:
        for number, text in body:
            words = command_words(text)  # a ValueError here fails the doc test too
            if words is not None:
                found.append(DocCommand(RUNBOOK, number, text, tuple(words)))
    return found


def pick(commands: list[DocCommand], *words: str) -> DocCommand:
    """The one command of a section that is exactly these words."""
    matches = [command for command in commands if command.words == words]
    assert len(matches) == 1, f"the runbook gives `rollout {' '.join(words)}` {len(matches)} times"
    return matches[0]


def option(command: DocCommand, name: str) -> str:
    return command.words[command.words.index(name) + 1]


def table_rows(output: str) -> list[dict[str, str]]:
    """The rows of a table the CLI printed (captured output prints rows whole)."""
    header: list[str] | None = None
    rows = []
    for line in output.splitlines():
        if line.startswith("┃"):
            header = [cell.strip() for cell in line.strip("┃").split("┃")]
        elif line.startswith("│") and header:
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def record(output: str) -> dict[str, str]:
    """A `what | value` table as a dict."""
    return {row["what"]: row["value"] for row in table_rows(output)}


def plan_step(output: str, on: date, step: str) -> dict[str, str]:
    rows = [r for r in csv.DictReader(io.StringIO(output)) if r["on"] == on.isoformat()]
    matches = [r for r in rows if r["step"] == step]
    assert len(matches) == 1, f"plan show has no step {step!r} on {on}: {rows}"
    return matches[0]


def test_the_release_manager_rehearsal_runs_as_the_runbook_gives_it(
    rollout_home: Path, monkeypatch: pytest.MonkeyPatch, plan: Plan
) -> None:
    def run(command: DocCommand, *replace: tuple[str, str]) -> Any:
        words = list(command.words)
        for name, value in replace:
            words[words.index(name) + 1] = value
        result = CliRunner().invoke(app, words)
        assert result.exit_code == 0, (
            f"{command.where}: rollout {' '.join(words)} exited {result.exit_code}:\n"
            f"{result.stderr}{result.stdout[-2000:]}"
        )
        return result

    # Before you start: a new shell with the deployments' settings loaded, then the
    # block's own lines make every location the scratch home.
    monkeypatch.setenv("ROLLOUT_PLAN", str(ROOT / "plans" / "npm-2022.yaml"))
    production = {
        "ROLLOUT_REGISTRY_URL": "postgresql+psycopg://rollout@db.invalid:5432/rollout",
        "ROLLOUT_WAREHOUSE": "/nonexistent/production/warehouse.duckdb",
        "SENDGRID_API_KEY": "SG.production-key-that-must-not-be-used",
    }
    for name, value in production.items():
        monkeypatch.setenv(name, value)
    (setup_block,) = section_blocks("Before you start")
    shell = [text.split("#", 1)[0].split() for _, text in setup_block]
    assert ["export", "ROLLOUT_HOME=$(mktemp", "-d)"] in shell  # rollout_home is that dir
    (unset,) = [words for words in shell if words[:1] == ["unset"]]
    for name in unset[1:]:
        monkeypatch.delenv(name, raising=False)
    assert not set(production) & set(os.environ), "the rehearsal block leaves a location"

    setup = section_commands("Before you start")
    (preview_command,) = section_commands("3. Preview")
    assert preview_command.words[:2] == ("phase", "preview")
    phase = plan.phase(preview_command.words[2])
    status = run(setup[0])
    assert setup[0].words == ("db", "status")
    assert record(status.stdout)["registry"] == f"sqlite:///{rollout_home}/registry.db"
    for command in setup[1:]:
        run(command)
    assert option(setup[-1], "--as-of") == phase.cohort_as_of.isoformat()

    # 1. Check the plan.
    check_the_plan = section_commands("1. Check the plan")
    checked = run(pick(check_the_plan, "plan", "check"))
    # The line the runbook quotes, the plan's file first (here given as an absolute path).
    verdict = "plan npm-2022 is valid: 2 cohorts, 2 phases, 2 brown-outs"
    assert f"`plans/npm-2022.yaml: {verdict}`" in " ".join(RUNBOOK.read_text().split())
    assert f"{ROOT / 'plans' / 'npm-2022.yaml'}: {verdict}" in checked.stderr
    run(pick(check_the_plan, "plan", "show"))
    show_csv = pick(check_the_plan, "plan", "show", "--format", "csv")
    enforced_step = f"phase {phase.name} enforced"
    assert plan_step(run(show_csv).stdout, phase.enforce_on, enforced_step)["state"] == "pending"

    # 2. Fix the cohort, on the phase's cohort_as_of.
    fix = section_commands("2. Fix the cohort")
    for command in fix:
        if "--as-of" in command.words:
            assert option(command, "--as-of") == phase.cohort_as_of.isoformat(), command.where
    # On that day, as the section says: the day's build judges 2FA by the factors held
    # then, as the preview does (a build of a long-past day judges them as it ended).
    on_the_day = datetime.combine(phase.cohort_as_of, datetime.min.time()).replace(hour=12)
    with use_clock(SimulatedClock(on_the_day)):
        results = {command.words: run(command) for command in fix}
    built = next(r for words, r in results.items() if words[:2] == ("cohorts", "build"))
    (cohort_row,) = [r for r in table_rows(built.stdout) if r["cohort"] == phase.cohort]
    # Who has to act: the phase asks any 2FA, so those short of it are those without.
    without_2fa = table_rows(results[("cohorts", "show", phase.cohort, "--short")].stdout)
    assert len(without_2fa) == int(cohort_row["without_2fa"]) > 0
    assert {row["tfa_status"] for row in without_2fa} == {"none"}

    # 3. Preview the phase: the count, and the command to apply, with N filled in.
    preview = run(preview_command)
    counted = re.search(r"^([\d,]+) accounts? without 2FA in cohort (\S+)", preview.stderr, re.M)
    assert counted and counted.group(2) == phase.cohort, preview.stderr
    expect = int(counted.group(1).replace(",", ""))
    assert not plan.exempt_usernames
    assert expect == len(table_rows(preview.stdout)) == len(without_2fa)
    to_apply = re.search(r"^To apply: rollout (.+)$", preview.stderr, re.M)
    assert to_apply, preview.stderr
    # The preview's summary reads as the runbook shows it, line by line.
    (shown,) = section_blocks("3. Preview", kinds={""})
    assert output_shape(preview.stderr) == output_shape("\n".join(t for _, t in shown))
    state = plan_step(run(show_csv).stdout, phase.enforce_on, enforced_step)["state"]
    assert state == "previewed"

    # 6. Enforce: preview once more on the day, then apply with the count typed back.
    enforce_block = section_commands("6. Enforce", block=0)
    assert [c.words[:2] for c in enforce_block] == [("phase", "preview"), ("phase", "enforce")]
    again, enforce = enforce_block
    assert again.words == ("phase", "preview", phase.name)
    assert run(again).stderr.count(f"To apply: rollout {to_apply.group(1)}") == 1
    listed = to_apply.group(1).split()[-1]  # the list's fingerprint, after --expect-list
    filled_in = (("--expect", str(expect)), ("--expect-list", listed))
    enforce_words = list(enforce.words)
    for name, value in filled_in:
        enforce_words[enforce_words.index(name) + 1] = value
    assert to_apply.group(1).split() == enforce_words  # the runbook's command, filled in
    enforced = record(run(enforce, *filled_in).stdout)
    assert int(enforced["accounts_required"]) == int(enforced["accounts_flagged"]) == expect
    assert int(enforced["emails_queued"]) == expect
    applied = plan_step(run(show_csv).stdout, phase.enforce_on, enforced_step)
    assert applied["state"] == "applied"
    assert applied["run"] == enforced["run_id"]
    assert f"accounts_flagged {expect}," in applied["detail"]

    # 7. Roll back: the preview, then --apply; the flags and the unsent emails go.
    roll_back = section_commands("7. Roll back")
    assert [c.words for c in roll_back] == [
        ("phase", "rollback", phase.name),
        ("phase", "rollback", phase.name, "--apply"),
    ]
    previewed = run(roll_back[0])
    assert {row["outcome"] for row in table_rows(previewed.stdout)} == {"cleared"}
    assert len(table_rows(previewed.stdout)) == expect
    assert f"from {expect} accounts: {expect} no longer required" in previewed.stderr
    rolled_back = record(run(roll_back[1]).stdout)
    assert int(rolled_back["requirements_withdrawn"]) == expect
    assert int(rolled_back["accounts_cleared"]) == expect
    assert int(rolled_back["emails_withdrawn"]) == expect
    state = plan_step(run(show_csv).stdout, phase.enforce_on, enforced_step)["state"]
    assert state == "rolled back"
    preview_after = run(again)
    assert f"To apply: rollout phase enforce {phase.name} --apply --expect {expect}" in (
        preview_after.stderr
    )

    # 4. notify status: the enforcement notices, withdrawn as the runbook says.
    emails = table_rows(run(pick(section_commands("4. Notices"), "notify", "status")).stdout)
    assert emails == [
        {
            "email": "enforcement_notice",
            "state": "skipped",
            "reason": f"withdrawn: phase {phase.name} rolled back",
            "count": str(expect),
        }
    ]

    # 8. Orgs, on the sample's org as the runbook names it: audit, the enforcement's
    # preview, its command with the preview's count and list typed back, then the
    # invitations back (into a team the org has) and their listing.
    orgs = section_commands("8. Orgs")
    assert [c.words[:2] for c in orgs] == [
        ("orgs", "audit"),
        ("orgs", "audit"),
        ("orgs", "enforce"),
        ("orgs", "enforce"),
        ("orgs", "reinvite"),
        ("orgs", "invitations"),
    ]
    audit, audit_filtered, enforce_preview, enforce_org, reinvite, invitations = orgs
    members = table_rows(run(audit).stdout)
    owner = option(enforce_org, "--owner")
    assert {"username": owner, "role": "owner"}.items() <= next(
        row for row in members if row["username"] == owner
    ).items()
    filtered = table_rows(run(audit_filtered).stdout)
    assert filtered and {(r["role"], r["tfa_status"]) for r in filtered} == {("developer", "none")}
    would_go = run(enforce_preview)
    hint = re.search(r"run rollout (orgs enforce .+)$", would_go.stderr, re.M)
    assert hint, would_go.stderr
    typed = hint.group(1).split()
    typed[typed.index("--owner") + 1] = owner  # the hint says YOU
    assert typed == list(enforce_org.words)  # the rehearsal's count and list, as the runbook's
    removed = record(run(enforce_org).stdout)
    assert int(removed["removed"]) == len(table_rows(would_go.stdout)) > 0
    run(reinvite)
    run(invitations)


def test_the_doctor_runs_from_cron_as_the_runbook_gives_it(tmp_path: Path) -> None:
    """The runbook's cron lines for `rollout doctor` (every 5 minutes, mailing a failed
    check; daily, mailing any warning), run as cron runs them: by sh, from the home
    folder, with nothing in the environment but PATH and HOME. Its settings file names
    the plan as the runbook's /etc/rollout.env does, relative to the checkout: without a
    cd into the checkout the plan check failed every time."""
    blocks = shell_blocks(ROOT / "docs" / "runbook-operator.md", {"crontab"})
    lines = [text for _, _, body in blocks for _, text in body if "rollout doctor" in text]
    assert len(lines) == 2, "the operator's runbook gives a frequent and a daily doctor line"
    settings = tmp_path / "rollout.env"
    settings.write_text(f"ROLLOUT_HOME={tmp_path / 'home'}\nROLLOUT_PLAN=plans/npm-2022.yaml\n")
    home = tmp_path / "home-folder"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "COLUMNS": "200"}
    for line in lines:
        *schedule, user, command = line.split(None, 6)
        assert len(schedule) == 5 and user == "rollout"
        # The checkout and its .venv are this test's: this checkout, this interpreter.
        command = (
            command.replace("/srv/rollout", shlex.quote(str(ROOT)))
            .replace("/etc/rollout.env", shlex.quote(str(settings)))
            .replace(".venv/bin/rollout", f"{shlex.quote(sys.executable)} -m rollout")
        )
        done = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=home,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        # No registry in this home: a check fails and the warehouse warns, so each line
        # prints the table (cron mails it), the plan found from the checkout.
        assert done.returncode == 0, done.stderr
        plan_row = next(row for row in done.stdout.splitlines() if re.search(r"\bplan\b", row))
        assert re.search(r"plan\s*\S\s*ok\s|^plan,ok,", plan_row), done.stdout
    # The daily line stays quiet when nothing warns: its test is the CSV's status column.
    quiet = 'check,status,detail\nregistry,ok,fine\nplan,ok,"a, warn, b"\n'
    daily = lines[1].split(None, 6)[-1]
    test_part = daily[daily.index("grep") :].split("&&")[0].strip()
    probe = subprocess.run(
        ["/bin/sh", "-c", test_part], input=quiet, capture_output=True, text=True, timeout=30
    )
    assert probe.returncode == 1, "the daily line would mail a table with no warning"


def test_the_worker_unit_stops_every_flow_run_with_the_worker_still_there() -> None:
    """The operator's systemd unit signals the whole cgroup with SIGTERM at once and
    never the worker first: the flow runs stop on SIGTERM (their children ignore SIGINT,
    as does `prefect worker start` in effect), and a flow run whose worker was gone
    ended without reporting its state, left Running."""
    text = (ROOT / "docs" / "runbook-operator.md").read_text()
    units = re.findall(r"```ini\n(.*?)```", text, re.S)
    unit = next(u for u in units if "prefect worker start" in u)
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    assert settings.get("KillMode") == "control-group"
    assert settings.get("KillSignal", "SIGTERM") == "SIGTERM"
    assert not {"ExecStop", "ExecStopPre"} & settings.keys()
    assert int(settings["TimeoutStopSec"]) >= 30  # the runs' wind-down and final states
