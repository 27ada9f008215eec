import pytest
import torch

from core.errors import WorkbenchError
from models.age_heads import build_age_head

HEADS = ("regression", "dldl", "corn")


@pytest.mark.parametrize("kind", HEADS)
def test_prob_below_is_a_monotone_probability_in_the_threshold(kind):
    torch.manual_seed(0)
    head = build_age_head(kind, in_features=16, max_age=100)
    raw = head(torch.randn(32, 16) * 3)
    thresholds = torch.linspace(-5, 110, 200)
    below = head.prob_below(raw, thresholds)
    assert below.shape == (32, 200)
    assert (below >= 0).all() and (below <= 1).all()
    assert (below[:, 1:] - below[:, :-1] >= -1e-6).all()
    assert below[:, 0].max() < 0.05 or kind == "regression"  # nothing is younger than 0 for binned heads
    assert torch.isfinite(head.expected_age(raw)).all()


@pytest.mark.parametrize("kind", HEADS)
def test_each_head_learns_a_clean_mapping(kind):
    """A linear signal in the features must be learnable, or the loss or gradients are wrong."""
    torch.manual_seed(0)
    features = torch.randn(512, 8)
    age = (40 + 15 * features[:, 0]).clamp(1, 90)
    head = build_age_head(kind, in_features=8, max_age=100)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(1000):
        optimizer.zero_grad()
        head.loss(head(features), age).backward()
        optimizer.step()
    mae = (head.expected_age(head(features)) - age).abs().mean()
    assert mae < 4.0, f"{kind} head reached MAE {mae:.2f} on a noiseless linear task"


@pytest.mark.parametrize("kind", ("dldl", "corn"))
def test_binned_heads_give_a_distribution(kind):
    head = build_age_head(kind, in_features=4, max_age=50)
    probs = head.bin_probs(head(torch.randn(10, 4)))
    assert probs.shape == (10, 51)
    assert torch.allclose(probs.sum(dim=1), torch.ones(10), atol=1e-5)
    assert (probs >= -1e-7).all()


def test_unknown_head_names_the_options():
    with pytest.raises(WorkbenchError, match=r"model\.head\.kind='ordinal'.*regression.*dldl.*corn"):
        build_age_head("ordinal", 4, 100)
