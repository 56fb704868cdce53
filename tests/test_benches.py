"""The benches under bench/ run at a tiny scale, each by its own command line in a
process of its own, as the one timing it at npm scale runs it: each must exit 0 and
say its check ran (the peers agree, the counts checked), and a bench whose answer is
wrong must exit non-zero. Product changes broke three of them once (bench_report's
setup; bench_daily and bench_metrics built one cohort of two) and one more since
(bench_file_outbox's queueing), unnoticed until someone ran them by hand.

Covered, each in a few seconds (the tiny sample: 1,000 packages, 700 accounts), about
30 s in all on 2 cores, most of it the Python start-ups of some 20 processes:

- bench_sample.py ``--scale tiny``: the sample the next five read (each copies
  what it changes);
- bench_ingest.py, bench_enforce.py (``--naive-accounts 20``: the naive loop would
  take all of the tiny sample's accounts), bench_tokens.py, bench_file_outbox.py and
  bench_report.py on that sample, SQLite only;
- bench_metrics.py and bench_daily.py ``--generate tiny`` (a Parquet sample of their
  own): rollout against the pandas, DuckDB and polars peers, both cohorts of the plan;
  bench_daily one held-back day against the DuckDB peer (the others are bench_metrics'
  own, and a second day only repeats the first);
- bench_notify.py ``--emails 200`` and bench_webhook.py ``--events 1000``, each with
  its server (``rollout dev sendgrid``, ``rollout notify events serve``);
- a wrong answer: bench_tokens with rollout's enforcement leaving a token live that
  it reports revoked (a sitecustomize on the bench's path) must fail, on the registry's
  counts and against its hand-written SQL peer.

Left out:

- bench_demo.py: it times ``make demo`` itself (the small sample, the 161-day story:
  about a minute a run) against that story's own figures; a tiny story has none to
  check (tests/test_story.py tells the tiny one);
- bench_shards.py: a Prefect server, ``prefect deploy --all``, workers and a
  PostgreSQL server (tests/e2e/ runs that stack, once for the session);
- bench_backfill.py: at least 4 s even on the shortest plan's tiny sample (rubygems,
  31 days) for a check tests/test_ingest_properties.py makes (files loaded in a batch
  give what loading them one by one gives);
- bench_enforce.py's and bench_tokens.py's ``--postgres`` halves: a PostgreSQL server
  and the sample generated into it;
- profile_metrics.py: a profile, no check to fail.

Every process a bench starts carries a marker and is killed with the test however it
ends (tests/support/processes.py); each writes only under the test's temp folder
(TMPDIR, and the folders given on its command line), never bench/out.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from rollout.core.plan import load_plan
from tests.conftest import REFERENCE_PLAN
from tests.support.processes import kill_carrying, kill_group, start_logged

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MARKER = "ROLLOUT_TEST_BENCH_ID"  # inherited by every process a bench starts
SECONDS = 300  # a bench still running then has hung: tiny, each takes seconds
COHORTS = set(load_plan(REFERENCE_PLAN).cohorts)  # the benches play them all


@dataclass
class Ran:
    command: str
    returncode: int
    output: str  # stdout and stderr together

    def ok(self, *lines: str) -> str:
        """The output, once the bench exited 0 and printed each of ``lines``."""
        assert self.returncode == 0, f"`{self.command}` exited {self.returncode}:\n{self.output}"
        for line in lines:
            assert line in self.output, f"`{self.command}` never said {line!r}:\n{self.output}"
        return self.output


def run_bench(work: Path, script: str, *args: str, path: tuple[Path, ...] = ()) -> Ran:
    """``bench/<script> args`` run to its end in a session of its own, with this
    checkout's rollout (and ``path`` before it), none of the shell's rollout settings
    and its temporary files under ``work``; whatever it started is killed afterwards,
    however the test ends."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(exist_ok=True)
    marker = uuid.uuid4().hex
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ROLLOUT_") and name != "SENDGRID_API_KEY"
    }
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in (*path, ROOT)),
        TMPDIR=str(work / "tmp"),
        NO_COLOR="1",
        PYTHONUNBUFFERED="1",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        **{MARKER: marker},
    )
    command = [sys.executable, str(BENCH / script), *args]
    log = work / f"{Path(script).stem}.log"
    process = start_logged(command, env, work, log)
    returncode: int | None = None
    try:
        returncode = process.wait(timeout=SECONDS)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also when the test is interrupted
        if process.poll() is None:
            kill_group(process, grace=5)
        # Whatever it left, in its session or one of its own (bench_notify's server).
        left = kill_carrying(MARKER, marker)
    shown = " ".join(["bench/" + script, *args])
    output = log.read_text(errors="replace")
    assert returncode is not None, f"`{shown}` still running after {SECONDS} s:\n{output}"
    assert not left, f"`{shown}` left processes behind: {left}"
    return Ran(shown, returncode, output)


@dataclass
class Sample:
    folder: Path  # registry.db and landing/, as bench_sample.py --out leaves them
    ran: Ran

    @property
    def registry(self) -> str:
        return str(self.folder / "registry.db")

    @property
    def landing(self) -> str:
        return str(self.folder / "landing")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Sample:
    """bench_sample.py's tiny sample (mixed landing formats, seed 1), kept for the
    benches that read one."""
    work = tmp_path_factory.mktemp("bench-sample")
    ran = run_bench(work, "bench_sample.py", "--scale", "tiny", "--out", str(work / "tiny"))
    ran.ok("checked: the registry and the landing files hold the summary's counts")
    return Sample(work / "tiny", ran)


def table_row(output: str, first: str) -> list[str]:
    """The cells of the Markdown row whose first cell is ``first``."""
    [row] = [line for line in output.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def found(pattern: str, output: str) -> str:
    """The first group of ``pattern``'s match in ``output``."""
    match = re.search(pattern, output)
    assert match, f"no /{pattern}/ in:\n{output}"
    return match[1]


def test_bench_sample_writes_what_its_summary_says(sample: Sample) -> None:
    cells = table_row(sample.ran.output, "tiny")
    assert number(cells[5]) == 1_000  # packages
    assert (sample.folder / "registry.db").is_file()


def test_bench_ingest_loads_every_landing_row(sample: Sample, tmp_path: Path) -> None:
    output = run_bench(tmp_path, "bench_ingest.py", "--landing", sample.landing).ok()
    for kind in ("downloads", "manifests"):
        cells = table_row(output, f"ingest {kind}")
        assert cells[-1] == "counts checked against the files", output
        assert number(found(r"([\d,]+) rows", cells[1])) > 0, output


def test_bench_enforce_flags_and_revokes_what_the_preview_found(
    sample: Sample, tmp_path: Path
) -> None:
    args = ["--registry", sample.registry, "--naive-accounts", "20"]
    output = run_bench(tmp_path, "bench_enforce.py", *args).ok()
    _, flagged, revoked, audit_rows, *_ = table_row(output, "SQLite")
    # The row prints once verify() found the registry as the result reports it.
    assert number(flagged) > 0 and number(revoked) > 0 and number(audit_rows) > 0, output


def test_bench_tokens_revokes_the_peer_s_tokens(sample: Sample, tmp_path: Path) -> None:
    output = run_bench(tmp_path, "bench_tokens.py", "--registry", sample.registry).ok()
    _, considered, accounts, revoked, *_ = table_row(output, "SQLite")
    assert 0 < number(revoked) <= number(considered) and number(accounts) > 0, output


def test_bench_file_outbox_writes_each_email_once(sample: Sample, tmp_path: Path) -> None:
    run_bench(
        tmp_path, "bench_file_outbox.py", "--emails", "300", "--sample", str(sample.folder)
    ).ok("drained 300 of 300 queued emails", "checked: each written once and parsed")


def test_bench_report_s_report_agrees_with_the_registry(sample: Sample, tmp_path: Path) -> None:
    args = ["--registry", sample.registry, "--landing", sample.landing]
    output = run_bench(
        tmp_path, "bench_report.py", *args, "--work", str(tmp_path / "report"), "--runs", "1"
    ).ok("checked: the runs agree; extracted rows and adoption_daily agree with the registry")
    # The setup played both cohorts of the plan (it once failed, then built one).
    built = dict(ast.literal_eval(found(r"cohort memberships: (\[.*\])", output)))
    assert set(built) == COHORTS and all(built.values()), output


def test_bench_metrics_peers_agree_with_rollout(tmp_path: Path) -> None:
    output = run_bench(tmp_path, "bench_metrics.py", "--generate", "tiny").ok()
    for peer in ("pandas", "duckdb", "polars"):
        assert f"package metrics, {peer}: agree" in output, output
        assert f"cohorts, {peer}: agree" in output, output
    assert "floor totals: agree" in output, output
    sizes = ast.literal_eval(found(r"sizes (\{.*?\})", output))
    assert set(sizes) == COHORTS, output
    assert all(packages > 0 and accounts > 0 for packages, accounts, _ in sizes.values()), output


def test_bench_daily_agrees_with_a_rebuild_and_a_peer(tmp_path: Path) -> None:
    args = ["--generate", "tiny", "--days", "1", "--peers", "duckdb"]
    output = run_bench(tmp_path, "bench_daily.py", *args).ok(
        "OK: every day's metrics equal a rebuild's and every peer's, package by package"
    )
    cohorts = re.findall(r"  rollout's cohorts: (.*) \(packages qualifying", output)
    assert cohorts, output
    for line in cohorts:
        sizes = dict(re.findall(r"([\w-]+) \[(\d+), \d+, \d+\]", line))
        assert set(sizes) == COHORTS and all(int(n) > 0 for n in sizes.values()), output


def test_bench_notify_s_server_receives_each_email_once(tmp_path: Path) -> None:
    run_bench(tmp_path, "bench_notify.py", "--emails", "200").ok(
        "sent 200 (failed 0)", "checked: each outbox row delivered once, as recorded"
    )


def test_bench_webhook_lands_and_loads_every_event_once(tmp_path: Path) -> None:
    args = ["--events", "1000", "--batch", "100", "--threads", "2", "--repeat", "1"]
    run_bench(tmp_path, "bench_webhook.py", *args).ok(
        "1,000 events in 10 posts", "OK: every post landed once, byte for byte"
    )


# rollout wrong on purpose, in each process of the bench (a sitecustomize on its path):
# a phase's enforcement leaves the last token it revoked live, and reports it revoked.
ONE_TOKEN_LEFT = textwrap.dedent(
    """
    import sys

    from sqlalchemy import text

    from rollout.phases import enforce

    enforce_phase = enforce.enforce_phase


    def one_token_left_live(registry, plan, phase_name, **options):
        result = enforce_phase(registry, plan, phase_name, **options)
        with registry.engine.begin() as connection:
            connection.execute(
                text(
                    "update tokens set revoked_at = null, revoked_reason = null where id = "
                    "(select max(id) from tokens where revoked_reason like :reason)"
                ),
                {"reason": f"phase {phase_name}:%"},
            )
        return result


    enforce.enforce_phase = one_token_left_live
    print("wrong on purpose: enforcement leaves a token live", file=sys.stderr)
    """
)


def test_bench_tokens_fails_when_enforcement_leaves_a_token_live(
    sample: Sample, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "sitecustomize.py").write_text(ONE_TOKEN_LEFT)
    ran = run_bench(tmp_path, "bench_tokens.py", "--registry", sample.registry, path=(wrong,))
    assert "wrong on purpose" in ran.output, ran.output
    assert ran.returncode == 1, ran.output
    assert "FAIL: " in ran.output, ran.output
    # The registry against the result, and against the hand-written SQL peer.
    assert "classic tokens still live: the registry holds 1, expected 0" in ran.output
    assert "id sum of the tokens revoked by the phase: the registry holds" in ran.output
