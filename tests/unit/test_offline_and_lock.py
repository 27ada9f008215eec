"""Offline by default, a locked and vetted environment, and config errors before torch (issue 18, items 2-4).

Telemetry: every `childsafe` stage runs with MLflow's telemetry off unless the user chose otherwise, and what
a stage starts (the pipeline runs each stage as a subprocess) inherits that. Lock: requirements.lock satisfies
every requirement of both pyproject files, holds nothing they do not need, and neither the ranges nor the lock
admit the malicious lightning releases. Config errors: the validator answers before torch or Lightning load.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from scripts import cli
from scripts.lock import canonical_name, lock_lines, read_lock

tomllib = pytest.importorskip("tomllib")  # Python 3.11+, the interpreter the lock is made for

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
MALICIOUS_LIGHTNING = ("2.6.2", "2.6.3")  # GHSA-w37p-236h-pfx3: stole credentials on import


def _forget(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Remove variables for this test only; set-then-delete so undoing restores the caller's environment
    whether or not it had them (a bare delenv would leave what cli.main sets behind)."""
    for name in names:
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)


def _run_stage(monkeypatch: pytest.MonkeyPatch, stage: str, body) -> None:
    """Run `childsafe <stage>` with the stage module replaced by a stub whose main() is `body`."""
    stub = types.ModuleType(f"stub_{stage}")
    stub.__file__ = f"stub_{stage}.py"
    stub.main = body
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: stub)
    monkeypatch.setattr(cli, "early_config_check", lambda stage, args: True)  # its own test is below
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None, raising=False)
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    assert cli.main([stage]) == 0


@pytest.mark.parametrize("stage", sorted(cli.STAGES))
def test_every_stage_starts_with_telemetry_off(monkeypatch: pytest.MonkeyPatch, stage: str) -> None:
    _forget(monkeypatch, *cli.OFFLINE_DEFAULTS)
    seen: dict[str, str | None] = {}
    _run_stage(monkeypatch, stage, lambda: seen.update({k: os.environ.get(k) for k in cli.OFFLINE_DEFAULTS}))
    assert seen == {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}


def test_a_users_own_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opting back in (or any explicit value) is the user's decision, not overwritten."""
    _forget(monkeypatch, *cli.OFFLINE_DEFAULTS)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    monkeypatch.setenv("DO_NOT_TRACK", "0")
    seen: dict[str, str | None] = {}
    _run_stage(monkeypatch, "train", lambda: seen.update(m=os.environ["MLFLOW_DISABLE_TELEMETRY"]))
    assert seen == {"m": "false"}
    assert os.environ["DO_NOT_TRACK"] == "0"


def test_what_a_stage_starts_inherits_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline runs each stage in a child process (tracking/pipeline.py, subprocess.run without env=):
    the defaults must be in the process environment, not in a copy only this interpreter sees."""
    _forget(monkeypatch, *cli.OFFLINE_DEFAULTS)
    probe = "import os; print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'), os.environ.get('DO_NOT_TRACK'))"
    child: list[str] = []

    def pipeline() -> None:
        child.append(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip())

    _run_stage(monkeypatch, "pipeline", pipeline)
    assert child == ["true true"]


def test_mlflow_itself_sees_telemetry_off() -> None:
    """End to end with MLflow's own switch: after `childsafe` has started, importing mlflow creates no telemetry
    client. Run outside pytest's and CI's markers, which MLflow treats as "testing" and would turn it off anyway."""
    probe = """
import contextlib, io
from scripts import cli
with contextlib.redirect_stdout(io.StringIO()):
    cli.main(["--help"])
import mlflow
from mlflow.telemetry import get_telemetry_client
from mlflow.telemetry.utils import _IS_IN_CI_ENV_OR_TESTING
print(get_telemetry_client() is None, _IS_IN_CI_ENV_OR_TESTING)
"""
    markers = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", *cli.OFFLINE_DEFAULTS}
    env = {k: v for k, v in os.environ.items() if k not in markers}
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.stdout.split() == ["True", "False"], result.stdout + result.stderr


def test_config_errors_are_reported_before_torch_or_lightning_load() -> None:
    """Every Hydra stage refuses a mistyped key with exit status 2 while neither torch nor Lightning is imported
    (in one fresh interpreter, so nothing imported by the test session hides an import)."""
    stages = sorted(stage for stage in cli.STAGES if (cli.CONFIG_DIR / f"{stage}.yaml").is_file())
    probe = f"""
import sys
from scripts import cli
for stage in {stages!r}:
    try:
        status = cli.main([stage, "no_such_key=3"])
    except SystemExit as stop:
        status = stop.code
    print(stage, status, [m for m in ("torch", "lightning", "mlflow") if m in sys.modules])
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = result.stdout.split("\n")
    reports = [line for line in lines if line.split(" ", 1)[0] in stages]
    assert reports == [f"{stage} 2 []" for stage in stages], result.stdout + result.stderr
    assert result.stderr.count("Configuration error:") == len(stages), result.stderr


def _pyproject(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def _declared_requirements() -> list[Requirement]:
    """Everything both pyproject files ask for that the lock must provide: dependencies, every extra (make lock's
    LOCK_EXTRAS), and the build backend (make install builds the projects without isolation)."""
    projects = [_pyproject(ROOT / "pyproject.toml"), _pyproject(ROOT / "runtime" / "pyproject.toml")]
    lines = [
        line
        for project in projects
        for group in (
            project["project"]["dependencies"],
            *project["project"].get("optional-dependencies", {}).values(),
            project["build-system"]["requires"],
        )
        for line in group
    ]
    local = {canonical_name(project["project"]["name"]) for project in projects}
    return [r for r in map(Requirement, lines) if canonical_name(r.name) not in local]


def test_the_lock_satisfies_every_declared_requirement() -> None:
    pins = read_lock(LOCK)
    unmet = [
        f"{requirement} (locked: {pins.get(canonical_name(requirement.name), 'missing')})"
        for requirement in _declared_requirements()
        if not requirement.specifier.contains(pins.get(canonical_name(requirement.name), "0.0"), prereleases=True)
        or canonical_name(requirement.name) not in pins
    ]
    assert not unmet, (
        f"requirements.lock disagrees with the pyproject files: {unmet}. Run make lock (a new extra goes into the "
        "Makefile's LOCK_EXTRAS first)."
    )


def test_neither_the_range_nor_the_lock_admits_the_malicious_lightning_releases() -> None:
    (lightning,) = [r for r in _declared_requirements() if canonical_name(r.name) == "lightning"]
    assert not [v for v in MALICIOUS_LIGHTNING if lightning.specifier.contains(v, prereleases=True)], lightning
    pins = read_lock(LOCK)
    assert pins["lightning"] not in MALICIOUS_LIGHTNING
    assert pins.get("pytorch-lightning") not in MALICIOUS_LIGHTNING


def test_every_locked_package_is_needed() -> None:
    """Walk the installed distributions' own requirements from the declared ones (and pip, locked so the
    installer is verified too); a locked name nobody reaches is a leftover of an old resolution."""
    extras = {"childsafe-workbench": {"dev", "timm"}, "childsafe-runtime": {"video"}}
    pending = [*_declared_requirements(), Requirement("pip")]
    reached: set[str] = set()
    while pending:
        requirement = pending.pop()
        name = canonical_name(requirement.name)
        if name in reached:
            continue
        reached.add(name)
        try:
            declared = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its name counts, its own dependencies cannot be read
        wanted = extras.get(name, set()) | set(requirement.extras)
        for line in map(Requirement, declared):
            if line.marker is None or any(line.marker.evaluate({"extra": e}) for e in wanted | {""}):
                pending.append(line)
    unused = sorted(set(read_lock(LOCK)) - reached)
    assert not unused, f"requirements.lock holds packages nothing requires, run make lock: {unused}"


def test_lock_lines_skip_the_local_projects_and_refuse_unhashed_archives() -> None:
    def item(name: str, url: str, hashes: dict | None) -> dict:
        info = {"url": url, **({"archive_info": {"hashes": hashes}} if hashes is not None else {"dir_info": {}})}
        return {"metadata": {"name": name, "version": "1.0"}, "download_info": info}

    report = {
        "install": [
            item("Zeta_Pkg", "https://example/z.whl", {"sha256": "ab"}),
            item("childsafe-runtime", "file:///repo/runtime", None),
            item("alpha", "https://example/a.whl", {"sha256": "cd"}),
        ]
    }
    assert lock_lines(report) == ["alpha==1.0 --hash=sha256:cd", "zeta-pkg==1.0 --hash=sha256:ab"]
    report["install"].append(item("vendored", "file:///src/vendored", None))
    with pytest.raises(ValueError, match="no sha256 for vendored"):
        lock_lines(report)


def test_a_lock_line_without_a_hash_is_named_with_its_line(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# header\nnumpy==2.0 --hash=sha256:ab\nscipy>=1.11\n")
    with pytest.raises(ValueError, match=r"requirements.lock:3: .*'scipy>=1.11'"):
        read_lock(lock)


def test_make_install_uses_the_hashed_lock() -> None:
    """The install rule is rebuilt when the lock changes, and installs only hashed, pinned packages."""
    makefile = (ROOT / "Makefile").read_text()
    rule = makefile.split("$(STAMP):", 1)[1].split("\ninstall:", 1)[0]
    assert "requirements.lock" in rule.splitlines()[0]
    assert "--require-hashes -r requirements.lock" in rule
    assert "--no-deps" in rule
