"""Session bundles for the runtime consumer's tests: stand-ins (tests/stand_in_bundles.py) and a real exported one."""

from __future__ import annotations

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
    from scripts.export import publish_bundle

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
