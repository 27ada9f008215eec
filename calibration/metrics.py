"""Calibration scores from torchmetrics and scikit-learn, in one place for every stage."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import brier_score_loss, log_loss
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

ECE_BINS = 15


def multiclass_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    k = probs.shape[1]
    ece = multiclass_calibration_error(torch.as_tensor(probs), torch.as_tensor(labels), k, n_bins=ECE_BINS)
    return {
        "nll": float(log_loss(labels, probs, labels=list(range(k)))),
        "ece": float(ece),
        "brier": float(brier_score_loss(labels, probs, labels=list(range(k)))),
        "accuracy": float((probs.argmax(axis=1) == labels).mean()),
    }


def binary_scores(probs: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    ece = binary_calibration_error(torch.as_tensor(probs), torch.as_tensor(positive.astype(int)), n_bins=ECE_BINS)
    return {"ece": float(ece), "brier": float(np.mean((probs - positive) ** 2))}
