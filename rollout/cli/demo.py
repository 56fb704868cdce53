"""`rollout demo`: the reference plan played day by day over the sample."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from rollout.cli.app import (
    FormatOption,
    _given_day,
    _runtime,
    app,
    path_given,
    reports_errors,
)
from rollout.core.errors import EXIT_BAD_INPUT, RolloutError
from rollout.core.output import Format, emit_record, progress_for, stderr
from rollout.core.words import counted

# --- demo ----------------------------------------------------------------------------------


@app.command()
@reports_errors
def demo(
    ctx: typer.Context,
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan", parser=path_given, help="The plan to play (default: $ROLLOUT_PLAN's)."
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(help="First day of the calendar (default: 14 days before its first step)."),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(help="Last day of the calendar (default: 14 days after its last step)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Same seed, same story.")] = 7,
    metrics_every: Annotated[
        int,
        typer.Option(
            min=1, help="Metrics and cohorts every N days (and on each cohort day) for long plans."
        ),
    ] = 1,
    fmt: FormatOption = Format.table,
) -> None:
    """Run the plan day by day over a simulated calendar on the sample registry.

    Maintainers respond as people do (some enrol after a notice, more after a
    brown-out, most once enforcement signs them out; token holders move CI to granular
    tokens); emails go to the file outbox. Run `rollout sample --for-plan` first (it fits
    its download history to the plan's cohort days: a sample whose history stops before
    a cohort day of the calendar is refused, exit 3). A --start after a phase's cohort
    day, that phase still to play, is refused (exit 2) unless a story played that day
    before (the registry holds the cohort's build)."""
    from rollout.core.plan import load_plan
    from rollout.demo.story import STORY_MARGIN_DAYS, Story, story_window

    runtime = _runtime(ctx)
    # The days given are read before the plan (a bad --start is said as that).
    start_day = _given_day(start, "--start")
    end_day = _given_day(end, "--end")
    if plan_file is not None:
        runtime.use_plan(load_plan(plan_file))
    settings, plan = runtime.settings, runtime.plan
    first_step, last_step = story_window(plan)
    first = start_day or first_step
    last = end_day or last_step
    if last < first:
        # Name the day given against the one it was compared with: a default calendar
        # day nobody typed is said as such, with the option that moves it.
        margin = f"{STORY_MARGIN_DAYS} days"
        if end is None:
            problem = (
                f"--start {first} is after the calendar's last day, {last} ({margin} after "
                "the plan's last step): give --end too"
            )
        elif start is None:
            problem = (
                f"--end {last} is before the calendar's first day, {first} ({margin} before "
                "the plan's first step): give --start too"
            )
        else:
            problem = f"--end {last} is before --start {first}"
        raise RolloutError(problem).with_exit(EXIT_BAD_INPUT)
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    with progress_for(
        fmt, TextColumn("{task.description}", markup=False), BarColumn(), TimeElapsedColumn()
    ) as progress:
        task = progress.add_task("day", total=(last - first).days + 1)

        def on_day(day: date, number: int, days: int) -> None:
            progress.update(task, description=f"day {number} of {days}  {day}", completed=number)

        # Milestones through the progress display's console: above the bar on a
        # terminal, plain lines when piped.
        story = Story(
            runtime,
            first,
            last,
            seed=seed,
            log=lambda line: progress.console.print(line, highlight=False),
            on_day=on_day,
            metrics_every=metrics_every,
            cohorts_every=metrics_every,
        )
        report = story.run()
    emit_record(
        report.summary(),
        fmt,
        title=f"the plan from {first} to {last}",
    )
    stderr.print("", *_story_lines(report, plan), sep="\n", highlight=False)
    if report.files is not None:
        stderr.print(
            "",
            f"The adoption report: {report.files.html}",
            f"Emails sent: {settings.outbox_dir} (one .eml each)",
            f"The warehouse: {settings.warehouse_path} (docs/warehouse.md)",
            "Where each step stands: rollout plan show",
            sep="\n",
            highlight=False,
        )


def _story_lines(report: Any, plan: Any) -> list[str]:
    """The few numbers that tell the demo's story: 2FA share before and after, by
    cohort (labelled as the report labels them: "cohort all" is no "all accounts"), and
    the security-key share of a cohort a phase asks a security key of (a cohort built
    with nobody in it: 0 accounts, as the report shows it); who was required to use
    2FA; emails; what the brown-outs did."""
    from rollout.demo.story import applies_in_words  # lazily, as the command imports it
    from rollout.report.reporting import population_label

    def share(value: float | None) -> str:
        return "?" if value is None else f"{value:.0%}"

    # The one rule for "compliant", the report's (Plan.security_key_phases).
    asks_a_key = {f"cohort:{cohort}" for cohort in plan.security_key_phases()}
    lines = ["The story:"]
    for population in [*(f"cohort:{c}" for c in plan.cohorts), "all"]:
        if population in report.shares:
            before, after = report.shares[population]
            said = f"2FA {share(before)} -> {share(after)}"
            if population in asks_a_key:
                key_before, key_after = report.key_shares.get(population, (None, None))
                said += f", security key {share(key_before)} -> {share(key_after)}"
        elif population in report.selected_no_one:
            # As the report shows it: 0 accounts, no share (its days have no one).
            said = "0 accounts (built: selected no one)"
        else:
            continue  # not built by the end: no rows, nothing to tell
        name = population_label(population)
        lines.append(f"  {name[:1].lower()}{name[1:]}: {said}")
    for phase in plan.phases:
        if phase.name not in report.enforced:
            continue
        did = [f"{counted(report.enforced[phase.name], 'account')} {applies_in_words(phase)}"]
        if report.unreached_enforced.get(phase.name):
            did.append(f"{report.unreached_enforced[phase.name]:,} of them never reached by email")
        if report.tokens_revoked.get(phase.name):
            did.append(f"{counted(report.tokens_revoked[phase.name], 'token')} revoked")
        lines.append(f"  phase {phase.name}: {', '.join(did)}")
    if report.snoozed:
        lines.append(f"  own deadlines postponed on request: {report.snoozed:,}")
    if report.tokens_replaced:
        lines.append(
            f"  tokens their maintainers replaced before a deadline: {report.tokens_replaced:,}"
        )
    lines.append(
        f"  emails sent: {report.emails['sent']:,}"
        + (f" (to {counted(report.bounced, 'maintainer')} they bounced)" if report.bounced else "")
    )
    days = (report.end - report.start).days + 1
    if plan.brownouts:
        lines.append(
            f"  enrolled in response to a brown-out: {report.enrolled['brown-out']:,} "
            f"(unprompted, over all {counted(days, 'day')}: {report.enrolled['organic']:,})"
        )
    else:
        prompted = report.enrolled["notice"] + report.enrolled["reminder"]
        lines.append(
            f"  enrolled after a notice or reminder: {prompted:,} "
            f"(unprompted, over all {counted(days, 'day')}: {report.enrolled['organic']:,})"
        )
    return lines
