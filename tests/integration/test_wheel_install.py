"""The built wheel works outside the checkout: configs and the contract schema ship inside it, and every
default path is relative to the working directory (issue 18, acceptance 1).

Slow, in the set CI runs. The wheels are built here without build isolation (nothing downloads) and
installed with --no-deps into a fresh virtual environment. Its dependencies come from this
environment's site-packages as a plain path entry, whose editable-install hooks do not run, so the
checkout itself is not importable there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run(command: list, cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.ci
def test_the_installed_wheel_trains_and_runs_the_pipeline_from_an_empty_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "CHILDSAFE_HOME", "PYTHONPATH")}
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "empty"
    # Built from tracked files only: a stale build/ folder in the checkout would otherwise ride into the wheel.
    source = tmp_path / "source"
    files = run(["git", "ls-files", "-z"], REPO, env).split("\0")
    for name in filter(None, files):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    for project in (source, source / "runtime"):
        pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, project]
        run(pip, tmp_path, env)
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path, env)
    python = venv / "bin" / "python"
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q"]
    run([*pip, *sorted(wheels.glob("*.whl"))], tmp_path, env)
    work.mkdir()

    where = run([python, "-c", "import scripts, configs, export; print(scripts.__file__, export.__file__)"], work, env)
    assert all(Path(path).is_relative_to(site) for path in where.split()), where
    childsafe = venv / "bin" / "childsafe"
    run([childsafe, "train", "experiment=age_synthetic", "debug=smoke"], work, env)
    out = run([childsafe, "pipeline", "experiment=age_synthetic", "debug=smoke"], work, env, timeout=900)
    assert "pipeline complete" in out

    assert (work / "mlruns" / "mlflow.db").is_file() and (work / ".cache" / "datasets").is_dir()
    stages = {"age_synthetic", "calibrate", "evaluate", "export", "promote", "pipeline"}
    assert {p.name for p in (work / "outputs").iterdir()} == stages
    assert (work / "releases" / "childsafe-age_synthetic" / "contract.json").is_file()
    written = {p.name for p in site.iterdir()} & {"outputs", "mlruns", "releases", ".cache"}
    assert not written, f"a run wrote into the installed package's folder: {written}"
