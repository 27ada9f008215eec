"""The evaluation catches a disparity the generator injects, and does not invent one without it.

Slow: it trains two age models (bias on, bias off, same sizes) end to end on CPU.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import binom
from stage_configs import compose_stage

from calibration.calibrate import calibrate
from evaluation.evaluate import evaluate
from models.train import train

BIAS = (
    "data.generator.noise.bias.enabled=true",
    "data.generator.noise.bias.shift_years=3.0",
    "data.generator.noise.bias.noise_scale=2.5",
)


def _fairness(root: Path, cache: Path, *overrides: str) -> pd.DataFrame:
    train(compose_stage("train", root, cache, "experiment=age_synthetic", "trainer.max_epochs=5", *overrides))
    calibrate(compose_stage("calibrate", root, cache, "train_task=age_synthetic"))
    cfg = compose_stage("evaluate", root, cache, "train_task=age_synthetic")
    evaluate(cfg)
    return pd.read_csv(Path(cfg.paths.output_dir) / "fairness.csv")


@pytest.mark.slow
def test_injected_bias_is_flagged_at_the_18_gate_and_parity_is_not(tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'biased' / 'mlflow.db'}")
    biased = _fairness(tmp_path / "biased", shared_cache, *BIAS)
    dark = biased[
        (biased["attribute"] == "skin_tone_bin")
        & (biased["value"] == "dark")
        & (biased["metric"] == "gate18/challenge_age18/minor_pass_rate")
    ]
    assert dark["flagged"].item(), dark.to_string()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'fair' / 'mlflow.db'}")
    fair = _fairness(tmp_path / "fair", shared_cache)
    measurable = fair[fair["value_num"].notna()]
    # At the 95% level about 5% of slices are flagged by chance; allow the binomial 99th percentile of that.
    allowed = binom.ppf(0.99, len(measurable), 0.05)
    assert measurable["flagged"].sum() <= allowed, measurable[measurable["flagged"]].to_string()
