"""Calibrated and uncalibrated figures never share a metric name."""

import numpy as np
import pandas as pd
import torch

from evaluation.age import age_metrics
from evaluation.content import content_metrics
from models.age_module import AgeModule
from models.content_module import ContentModule

BACKBONE = {"name": "small_cnn", "weights": None}
OPTIMIZER = {"lr": 0.003, "weight_decay": 0.0, "warmup_fraction": 0.1}


def _logged(module, batch) -> set[str]:
    names: set[str] = set()
    module.log = lambda name, *args, **kwargs: names.add(name)
    module.step(batch, "test")
    return names


def test_the_train_run_names_its_raw_probability_scores_uncalibrated():
    images = torch.rand(6, 3, 32, 32)
    content = _logged(
        ContentModule(BACKBONE, OPTIMIZER, image_size=32), {"image": images, "target": torch.tensor([0, 1, 2] * 2)}
    )
    assert "test/content/ece_uncalibrated" in content and "test/content/ece" not in content
    age = _logged(
        AgeModule(BACKBONE, {"kind": "dldl"}, OPTIMIZER, image_size=32, max_age=40, gates=(13,)),
        {"image": images, "target": torch.tensor([5.0, 12.0, 15.0, 20.0, 30.0, 35.0])},
    )
    assert "test/age/gate13/brier_uncalibrated" in age and "test/age/gate13/brier" not in age


def test_evaluate_names_scores_by_whether_the_probabilities_were_calibrated():
    rng = np.random.default_rng(0)
    age = rng.uniform(0, 40, 200)
    frame = pd.DataFrame(
        {
            "age": age,
            "expected_age": age + rng.normal(0, 2, 200),
            "subject_id": np.arange(200) // 2,
            "p_below_18": np.clip(1 - age / 36, 0, 1),
        }
    )
    calibrated, _ = age_metrics(frame, [18.0], 0.9, calibrated=True)
    raw, _ = age_metrics(frame, [18.0], 0.9, calibrated=False)
    assert {"gate18/ece", "gate18/brier"} <= set(calibrated) and not {"gate18/ece", "gate18/brier"} & set(raw)
    assert raw["gate18/brier_uncalibrated"] == calibrated["gate18/brier"]
    classes = ["safe", "suggestive", "explicit"]
    labels = rng.integers(0, 3, 200)
    probs = np.full((200, 3), 0.2) + 0.4 * np.eye(3)[labels]
    content = frame[["subject_id"]].assign(label=labels, **{f"p_{c}": probs[:, i] for i, c in enumerate(classes)})
    content["unsafe_score"] = probs[:, 1:].sum(1)
    names = set(content_metrics(content, classes, classes[1:], 0.005, {}, calibrated=False)[0])
    assert "ece_uncalibrated" in names and "ece" not in names
