"""The bundles `make demo` published: recounted independently on their calib split (issue 13, acceptance 1),
and blank and noise frames abstained on through the shipped graph (issue 15; figures in docs/benchmarks.md).

Run after `make demo`: `.venv/bin/python -m pytest -m slow tests/integration/test_demo_bundles.py -s`.
The images come from the demo's own dataset cache, so nothing is rendered again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from childsafe_runtime.consumer import Filter
from contract_recount import recount_bundle
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from core.hydra_app import register_resolvers
from core.paths import CONFIG_DIR
from core.paths import SOURCE_ROOT as REPO_ROOT


@pytest.fixture(params=["age_synthetic", "content_synthetic"])
def experiment(request) -> str:
    return request.param


@pytest.fixture
def bundle(experiment: str) -> Path:
    """The experiment's published demo bundle; the test is skipped before `make demo` has made it."""
    folder = REPO_ROOT / "releases" / f"childsafe-{experiment}"
    if not (folder / "contract.json").exists():
        pytest.skip(f"no demo bundle at {folder}: run `make demo` first")
    return folder


@pytest.mark.slow
def test_demo_bundle_misses_exactly_what_its_certificates_counted(experiment, bundle):
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"experiment={experiment}", f"paths.cache_dir={REPO_ROOT / '.cache' / 'datasets'}"]
        )
    cached = instantiate(cfg.data).load()
    counts = recount_bundle(bundle, cached.images, cached.manifest)
    print(experiment, counts)
    assert all(graph == certified for graph, certified in counts.values()), counts


@pytest.mark.slow
def test_blank_and_noise_frames_of_any_size_score_above_the_demo_bundle_s_ood_threshold(experiment, bundle):
    filter_ = Filter(bundle)
    threshold = filter_.contract["abstention"]["ood"]["threshold"]
    ratios: dict[str, list[float]] = {}
    for height, width in [(64, 64), (97, 131), (480, 640), (720, 1280)]:
        frames = {f"uniform {v}": np.full((height, width, 3), v, np.uint8) for v in (0, 128, 255)}
        frames["noise"] = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        for name, frame in frames.items():
            ratios.setdefault(name, []).append(filter_.run([frame])[0]["outputs"]["ood_score"] / threshold)
    print(experiment, f"threshold {threshold:.3f}", {k: f"{min(v):.1f}-{max(v):.1f}x" for k, v in ratios.items()})
    assert min(min(v) for v in ratios.values()) > 1.0, ratios
