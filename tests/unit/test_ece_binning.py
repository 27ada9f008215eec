"""The ECE binning is the stated one: equal-width, left-closed bins, the same for float64 and float32 scores."""

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_calibration_error

from calibration.metrics import ECE_BINS, binary_scores, ece_bins, multiclass_scores


def test_ece_matches_torchmetrics_off_the_bin_edges():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0, 1, 4000)
    outcome = rng.uniform(0, 1, 4000) < probs**1.5
    reference = binary_calibration_error(torch.as_tensor(probs), torch.as_tensor(outcome.astype(int)), n_bins=ECE_BINS)
    assert binary_scores(probs, outcome)["ece"] == pytest.approx(float(reference), abs=1e-9)


def test_a_score_on_an_edge_opens_the_next_bin_and_one_closes_the_last():
    edges = np.arange(ECE_BINS + 1) / ECE_BINS
    assert ece_bins(edges).tolist() == [*range(ECE_BINS), ECE_BINS - 1]
    below = np.nextafter(edges[1:].astype(np.float32), np.float32(0))
    assert ece_bins(below).tolist() == list(range(ECE_BINS))
    # A float64 score closer to an edge than float32 can tell apart is on the edge, as the graph sees it.
    assert ece_bins(np.nextafter(edges[1:-1], 0)).tolist() == list(range(1, ECE_BINS))


def test_float32_rounding_of_scores_on_edges_leaves_the_ece_unchanged():
    rng = np.random.default_rng(1)
    on_edges = rng.integers(0, ECE_BINS + 1, 3000) / ECE_BINS  # isotonic outputs often sit on an edge
    outcome = rng.uniform(0, 1, 3000) < on_edges
    assert np.array_equal(ece_bins(on_edges), ece_bins(on_edges.astype(np.float32)))
    as_float64 = binary_scores(on_edges, outcome)["ece"]
    as_float32 = binary_scores(on_edges.astype(np.float32).astype(np.float64), outcome)["ece"]
    assert as_float32 == pytest.approx(as_float64, abs=1e-7)


def test_multiclass_ece_is_top_label():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 2, 2])
    # bin of 0.7: confidence 0.7, accuracy 0.5; bin of 0.8: confidence 0.8, accuracy 1.0.
    assert multiclass_scores(probs, labels)["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * 0.2)
