"""`childsafe <stage> --help` answers for every stage, fast, without a required key and without torch."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.paths import CONFIG_DIR
from scripts.cli import STAGES

HEAVY = ("torch", "lightning", "mlflow")


@pytest.mark.parametrize("stage", list(STAGES))
def test_help_of_every_stage_answers_fast_and_names_the_stage(stage):
    # argparse stages (keys) exit from inside main(): report the imports on the way out either way.
    probe = (
        "import atexit, sys; "
        f"atexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])); "
        "from scripts.cli import main; sys.exit(main([sys.argv[1], '--help']))"
    )
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe, stage], capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed <= 5.0, f"{stage} --help took {elapsed:.1f} s"
    assert "HEAVY []" in done.stdout  # no torch, lightning or mlflow imported to answer
    assert f"childsafe {stage}" in done.stdout.splitlines()[0]
    assert "powered by Hydra" not in done.stdout


@pytest.mark.parametrize("stage", [s for s in STAGES if (CONFIG_DIR / f"{s}.yaml").is_file()])
def test_hydra_stage_help_shows_only_its_own_groups_and_keys(stage):
    text = subprocess.run(
        [sys.executable, "-m", "scripts.cli", stage, "--help"], capture_output=True, text=True, check=True
    ).stdout
    groups = text.split("Config groups of this stage", 1)[1].split("Keys and their defaults", 1)[0]
    assert f"task_name: {stage}" in text
    if stage in ("train", "bench", "shard"):  # they compose an experiment's data
        assert "debug" in groups and "experiment" in groups
    else:
        assert "trainer" not in groups and "experiment" not in groups and "debug" not in groups
    if stage == "calibrate":
        assert "calibration" in groups and "max_minor_pass_rate: 0.01" in text
