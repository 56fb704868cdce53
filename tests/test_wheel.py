"""`pip install .` (not editable) gives a rollout that works outside the checkout: the
wheel carries sql/ and reports/ (mapped to rollout/sql and rollout/reports at build time,
pyproject.toml) and the Alembic migrations, and the installed package reads them from
inside itself (rollout.core.resources), never from beside it.

The wheel is built from this checkout and installed, on its own, into a fresh virtualenv
in a temp dir. Its dependencies are not downloaded again: the fresh venv sees the ones
already installed in the running interpreter's site-packages through a path line in a
``.pth`` file (a plain path: that folder's own ``.pth`` files, among them the editable
install of this checkout, are not run). Its console script then runs ingest, metrics and
the report from a working folder outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parent.parent
DAY = "2022-02-01"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def rollout(self) -> Path:
        return self.venv / "bin" / "rollout"


def _run(args: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=600, **kwargs
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, args))} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.is_relative_to(ROOT)
    dist = work / "dist"
    # The build backend (hatchling) comes from the package index, in an isolated env.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", dist, ROOT])
    (wheel,) = dist.glob("rollout-*.whl")

    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", python]
    _run([*pip, "install", "--no-deps", "--no-index", wheel])
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(_run([python, "-c", purelib]).stdout.strip())
    # Sorted after the wheel's own files: rollout is found in the fresh venv first.
    (site / "zz_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return Installed(wheel, env_dir, site)


def _files_under(folder: Path) -> set[str]:
    return {
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_the_wheel_carries_sql_reports_and_the_migrations(installed: Installed) -> None:
    names = set(zipfile.ZipFile(installed.wheel).namelist())

    def under(prefix: str) -> set[str]:
        return {n.removeprefix(prefix) for n in names if n.startswith(prefix)}

    assert _files_under(ROOT / "sql") == under("rollout/sql/")
    assert _files_under(ROOT / "reports") == under("rollout/reports/")
    migrations = ROOT / "rollout" / "registry" / "migrations"
    assert _files_under(migrations) == under("rollout/registry/migrations/")
    assert "versions/0001_initial.py" in under("rollout/registry/migrations/")
    templates = ROOT / "rollout" / "notify" / "templates"
    assert _files_under(templates) == under("rollout/notify/templates/")
    assert "rollout/demo/data/npm-monthly-downloads.tsv.gz" in names
    # Nothing outside the package: no top-level sql/ or reports/ in site-packages.
    assert {n.split("/", 1)[0] for n in names} == {"rollout", "rollout-0.1.0.dist-info"}


def test_the_installed_dependencies_satisfy_the_wheels_requirements(
    installed: Installed,
) -> None:
    check = """
import json
from importlib.metadata import PackageNotFoundError, distribution, version
from packaging.requirements import Requirement

unmet = []
for text in distribution("rollout").requires or []:
    requirement = Requirement(text)
    if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
        continue
    try:
        found = version(requirement.name)
    except PackageNotFoundError:
        found = None
    if found is None or not requirement.specifier.contains(found, prereleases=True):
        unmet.append(f"{text} (found {found})")
print(json.dumps(unmet))
"""
    result = _run([installed.python, "-c", check], cwd=installed.venv)
    assert json.loads(result.stdout) == []


def test_the_installed_wheel_runs_ingest_metrics_and_the_report(
    installed: Installed, tmp_path: Path
) -> None:
    # A working folder outside the checkout, holding the plan as a deployment's would
    # (ROLLOUT_PLAN's default, plans/npm-2022.yaml, is relative to it).
    run_dir = tmp_path / "run"
    (run_dir / "plans").mkdir(parents=True)
    shutil.copy(ROOT / "plans" / "npm-2022.yaml", run_dir / "plans" / "npm-2022.yaml")
    home = tmp_path / "home"
    env = {
        name: value
        for name, value in os.environ.items()
        if not (name.startswith("ROLLOUT_") and not name.startswith("ROLLOUT_TEST_"))
        and name not in {"SENDGRID_API_KEY", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    }
    env["ROLLOUT_HOME"] = str(home)
    env["PATH"] = f"{installed.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    def rollout(*args: str) -> subprocess.CompletedProcess[str]:
        return _run([installed.rollout, *args], cwd=run_dir, env=env)

    where = _run(
        [
            installed.python,
            "-c",
            "import json, rollout, rollout.warehouse as w, rollout.core.resources as r;"
            "print(json.dumps([rollout.__file__, str(w.SQL_DIR), str(r.resource_dir('reports'))]))",
        ],
        cwd=run_dir,
        env=env,
    )
    for path in map(Path, json.loads(where.stdout)):
        assert path.is_relative_to(installed.site_packages / "rollout"), path
        assert not path.is_relative_to(ROOT), path

    rollout("db", "upgrade")
    rollout("sample", "--scale", "tiny", "--seed", "3")
    rollout("ingest")
    metrics = json.loads(rollout("metrics", "--as-of", DAY, "--format", "json").stdout)
    assert metrics["packages"] > 0 and metrics["weekly_window_complete"] is True
    report = json.loads(rollout("report", "--as-of", DAY, "--format", "json").stdout)

    reports = home / "reports" / DAY
    for name in ("adoption.html", "adoption.md"):
        assert (reports / name).stat().st_size > 0
    assert Path(report["html"]).resolve() == (reports / "adoption.html").resolve()
    assert "<svg" in (reports / "adoption.html").read_text()
    assert list(reports.glob("*.csv"))
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as con:
        (rows,) = con.execute(
            "select count(*) from package_metrics_daily where as_of = $day", {"day": DAY}
        ).fetchone()
    assert rows == metrics["packages"] > 0
