"""A timm backbone through the whole fine-tuning recipe: smoke training, calibration, export's parity gate."""

from __future__ import annotations

import json

import pytest
import torch
from export_cases import content_case
from stage_configs import compose_stage
from test_export import _export_and_consume

from calibration.calibrate import calibrate
from export.pipeline import export
from models.train import train

RECIPE = (
    "callbacks=ema",
    "callbacks.ema.decay=0.5",  # 4 smoke steps: a visible average
    "model.scheduler=warmup_cosine",
    "model.optimizer.backbone_lr_mult=0.1",
    "model.optimizer.decay_norms_and_biases=false",
)


def test_a_timm_backbone_smoke_trains_with_the_recipe_and_exports_through_the_parity_gate(
    tmp_path, shared_cache, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    train(
        compose_stage(
            "train",
            tmp_path,
            shared_cache,
            "experiment=content_synthetic",
            "debug=smoke",
            "data.generator.num_subjects=600",  # a calib split large enough to certify 90% recall
            "model.backbone.name=timm:test_vit",
            *RECIPE,
        )
    )
    calibrate(
        compose_stage(
            "calibrate", tmp_path, shared_cache, "train_task=content_synthetic", "calibration.content.min_recall=0.9"
        )
    )
    release = tmp_path / "releases"
    export(
        compose_stage(
            "export",
            tmp_path,
            shared_cache,
            "train_task=content_synthetic",
            f"export.release_dir={release}",
            "export.allow_degenerate=true",  # a 4-step model flags nearly everything
        )
    )
    contract = json.loads((release / "childsafe-content_synthetic" / "contract.json").read_text())
    assert contract["metrics"]["parity"]["samples"] > 0
    # What calibrate and export read, the best checkpoint's state_dict, is the EMA of the weights.
    checkpoint = torch.load(next(tmp_path.glob("outputs/**/checkpoints/epoch_*.ckpt")), weights_only=True)
    name = "classifier.weight"
    assert not torch.equal(checkpoint["state_dict"][name], checkpoint["current_model_state"][name])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["timm:vit_small_patch16_224", "timm:convnext_atto"])
def test_timm_backbones_the_docs_recommend_export(tmp_path, backbone):
    _export_and_consume(tmp_path, *content_case(backbone))
