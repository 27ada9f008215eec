"""Session bundles for the runtime consumer's tests: stand-ins (tests/stand_in_bundles.py) and a real exported one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stand_in_bundles import stand_in_contract, stand_in_graph, write_bundle


@pytest.fixture(scope="session")
def stand_in_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stand-in-bundles")
    return {
        task: write_bundle(root / task, stand_in_graph(task), stand_in_contract(task)) for task in ("age", "content")
    }


@pytest.fixture(scope="session")
def exported_age(tmp_path_factory: pytest.TempPathFactory):
    """A real age bundle from the exporter: a small untrained CNN whose OOD abstention is fitted on synthetic faces.

    Returns (bundle folder, module, calibration state): the module and state give the workbench's own outputs.
    """
    import pandas as pd
    from export_cases import SIZE, age_case
    from test_export import _inputs, _settings

    from datamodules.synthetic.faces import SyntheticFaces
    from export.pipeline import publish_bundle

    faces = SyntheticFaces(seed=3, num_subjects=24, images_per_subject=2, image_size=SIZE)
    rows = faces.manifest()
    images = np.stack([faces.render(row, i) for i, row in rows.iterrows()])
    subject = rows["subject_id"].str.rsplit("-", n=1).str[1].astype(int)
    rows = pd.DataFrame(
        {"split": np.where(subject % 2 == 0, "calib", "test"), **rows[["subject_id", "age", "sex"]].to_dict("list")}
    )
    module, state, target = age_case("small_cnn", "dldl")
    inputs = _inputs(module, state, images, rows, target)
    root = tmp_path_factory.mktemp("exported-age")
    bundle, _ = publish_bundle(_settings(root), inputs, root)
    return bundle, module, inputs.state


@pytest.fixture
def stages_in_process(monkeypatch):
    """Each `childsafe <stage>` the pipeline starts runs in this process: the same entry point, minus
    five torch imports per pipeline. Its exit status is what the process would have returned."""
    from scripts import cli
    from tracking import pipeline as pipeline_module

    real_run = subprocess.run

    def run_here(command, **kwargs):
        if command[:3] != [sys.executable, "-m", "scripts.cli"]:
            return real_run(command, **kwargs)  # git and the like, which the stages start themselves
        monkeypatch.setattr(sys, "argv", list(sys.argv))
        monkeypatch.setattr(sys.modules["__main__"], "__spec__", getattr(sys.modules["__main__"], "__spec__", None))
        try:
            code = cli.main(command[3:])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        return subprocess.CompletedProcess(command, code)

    monkeypatch.setattr(pipeline_module.subprocess, "run", run_here)
