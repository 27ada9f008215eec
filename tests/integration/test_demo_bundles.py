"""The bundles `make demo` published, recounted independently on their calib split (issue 13, acceptance 1).

Run after `make demo`: `.venv/bin/python -m pytest -m slow tests/integration/test_demo_bundles.py -s`.
The images come from the demo's own dataset cache, so nothing is rendered again.
"""

from __future__ import annotations

import pytest
from contract_recount import recount_bundle
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from scripts.hydra_app import CONFIG_DIR, register_resolvers
from tracking.mlflow_run import REPO_ROOT


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["age_synthetic", "content_synthetic"])
def test_demo_bundle_misses_exactly_what_its_certificates_counted(experiment):
    bundle = REPO_ROOT / "releases" / f"childsafe-{experiment}"
    if not (bundle / "contract.json").exists():
        pytest.skip(f"no demo bundle at {bundle}: run `make demo` first")
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", f"paths.cache_dir={REPO_ROOT / '.cache' / 'datasets'}"]
        )
    cached = instantiate(cfg.data).load()
    counts = recount_bundle(bundle, cached.images, cached.manifest)
    print(experiment, counts)
    assert all(graph == certified for graph, certified in counts.values()), counts
