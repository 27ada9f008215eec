"""Age heads: each gives a training loss, an expected age and P(age < T) for any threshold T.

Three families, chosen in config (`model.head.kind`):
- `regression`: mean and learned variance, trained with Gaussian NLL;
- `dldl`: label distribution over integer ages (KL to a Gaussian label + expectation L1);
- `corn`: ordinal, conditional binary tasks P(age > k | age > k - 1) (Shi et al., 2021).
The two binned heads share one definition of expectation and P(age < T).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import WorkbenchError


class AgeHead(nn.Module):
    def loss(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expected_age(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prob_below(self, raw: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        """(B, len(thresholds)) probabilities that the true age is below each threshold."""
        raise NotImplementedError

    def spread(self, raw: torch.Tensor) -> torch.Tensor:
        """Standard deviation of the predicted age distribution (normalises conformal scores)."""
        raise NotImplementedError

    def log_likelihood(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """Log density of the true age, per sample: what temperature calibration maximises."""
        raise NotImplementedError

    def temper(self, raw: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
        """The same prediction with its distribution widened (T > 1) or sharpened (T < 1)."""
        raise NotImplementedError


class RegressionHead(AgeHead):
    def __init__(self, in_features: int, max_age: float = 100.0):
        super().__init__()
        self.linear = nn.Linear(in_features, 2)
        self.max_age = max_age
        self.nll = nn.GaussianNLLLoss()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.linear(features)
        mean = out[:, 0] * (self.max_age / 4) + self.max_age / 4  # start near a plausible age scale
        log_var = out[:, 1] + 3.0
        return torch.stack([mean, log_var], dim=1)

    def loss(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        return self.nll(raw[:, 0], age, raw[:, 1].exp())

    def expected_age(self, raw: torch.Tensor) -> torch.Tensor:
        return raw[:, 0]

    def prob_below(self, raw: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        z = (thresholds.to(raw)[None, :] - raw[:, :1]) / self.spread(raw)[:, None]
        return 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))  # the Normal CDF, in ops every exporter knows

    def spread(self, raw: torch.Tensor) -> torch.Tensor:
        return (0.5 * raw[:, 1]).exp()

    def log_likelihood(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(raw[:, 0], self.spread(raw)).log_prob(age)

    def temper(self, raw: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
        log_t = torch.log(torch.as_tensor(temperature, dtype=raw.dtype))
        return torch.stack([raw[:, 0], raw[:, 1] + 2 * log_t], dim=1)


class BinnedAgeHead(AgeHead):
    """Distribution over integer-age bins k = 0..max_age; bin k spans [k, k + 1)."""

    def __init__(self, max_age: int):
        super().__init__()
        self.register_buffer("bins", torch.arange(max_age + 1, dtype=torch.float32), persistent=False)

    def bin_probs(self, raw: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def expected_age(self, raw: torch.Tensor) -> torch.Tensor:
        return (self.bin_probs(raw) * (self.bins + 0.5)).sum(dim=1)

    def prob_below(self, raw: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
        # Share of each bin below T, with age uniform inside its bin.
        below = (thresholds.to(raw)[:, None] - self.bins[None, :]).clamp(0.0, 1.0)
        return (self.bin_probs(raw) @ below.T).clamp(0.0, 1.0)

    def spread(self, raw: torch.Tensor) -> torch.Tensor:
        probs, centres = self.bin_probs(raw), self.bins + 0.5
        mean = (probs * centres).sum(dim=1, keepdim=True)
        return ((probs * (centres - mean) ** 2).sum(dim=1) + 1 / 12).sqrt()  # + within-bin uniform variance

    def log_likelihood(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        index = age.floor().clamp(0, len(self.bins) - 1).long()
        return self.bin_probs(raw).gather(1, index[:, None]).squeeze(1).clamp_min(1e-12).log()

    def temper(self, raw: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
        return raw / temperature  # both binned heads emit logits


class LabelDistributionHead(BinnedAgeHead):
    def __init__(self, in_features: int, max_age: int = 100, label_sigma: float = 2.0, l1_weight: float = 0.05):
        super().__init__(max_age)
        self.linear = nn.Linear(in_features, max_age + 1)
        self.label_sigma, self.l1_weight = label_sigma, l1_weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def bin_probs(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.softmax(dim=1)

    def loss(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        target = torch.distributions.Normal(age[:, None], self.label_sigma).log_prob(self.bins[None, :] + 0.5)
        kl = F.kl_div(raw.log_softmax(dim=1), target.log_softmax(dim=1), log_target=True, reduction="batchmean")
        return kl + self.l1_weight * F.l1_loss(self.expected_age(raw), age)


class CornHead(BinnedAgeHead):
    """CORN: rank-consistent by construction, since P(age > k) is a product of conditionals.

    Written here because the reference package (coral-pytorch) is a few lines and unmaintained.
    """

    def __init__(self, in_features: int, max_age: int = 100):
        super().__init__(max_age)
        self.linear = nn.Linear(in_features, max_age)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)

    def bin_probs(self, raw: torch.Tensor) -> torch.Tensor:
        # P(age bin > k) = prod_{j<=k} sigmoid(raw_j), as exp of a cumulative sum: stable, and ONNX has CumSum.
        survival = torch.exp(torch.cumsum(F.logsigmoid(raw), dim=1))
        ones, zeros = torch.ones_like(survival[:, :1]), torch.zeros_like(survival[:, :1])
        return torch.cat([ones, survival], 1) - torch.cat([survival, zeros], 1)

    def loss(self, raw: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        rank = age.floor().clamp(0, raw.shape[1]).long()
        k = torch.arange(raw.shape[1], device=raw.device)[None, :]
        at_risk = k <= rank[:, None]  # task k only sees samples known to exceed bin k - 1
        exceeds = (rank[:, None] > k).to(raw)
        losses = F.binary_cross_entropy_with_logits(raw, exceeds, reduction="none")
        return (losses * at_risk).sum() / at_risk.sum()


def build_age_head(kind: str, in_features: int, max_age: int, **options) -> AgeHead:
    heads = {"regression": RegressionHead, "dldl": LabelDistributionHead, "corn": CornHead}
    if kind not in heads:
        raise WorkbenchError(f"Unknown age head model.head.kind={kind!r}. Valid options: {list(heads)}.")
    return heads[kind](in_features, max_age, **options)
