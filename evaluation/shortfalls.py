"""Certified figures whose test estimate misses the target: said in the contract and the model card, and refused
at promotion when the test interval excludes the target, never left for a reviewer to spot in a table.

Calib certifies a rate with a one-sided bound; the test split then measures it once more, with its own sampling
error. A test point past the target whose 95% interval still reaches the target is that error (docs/certification.md,
"Reading a test figure"); an interval that excludes the target says the guarantee does not hold on this data.
Read from the contract, so export's warnings and promotion's gates judge the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CertifiedFigure:
    """One certified rate as the test split measured it, and which side of `target` the guarantee promises."""

    name: str  # how promotion's gate and the warning name it: the operating point, or the stream policy's gate
    what: str
    value: float | None
    low: float | None
    high: float | None
    n: int | None
    target: float
    at_most: bool  # True: the rate must stay at or below target (misses); False: at or above it (recall)

    @property
    def missed(self) -> bool:
        """The test point estimate is on the wrong side of the target."""
        return self.value is not None and (self.value > self.target if self.at_most else self.value < self.target)

    @property
    def contradicted(self) -> bool:
        """The whole test interval is on the wrong side of the target: the guarantee does not hold on test."""
        if self.value is None:
            return False
        return self.low > self.target if self.at_most else self.high < self.target

    @property
    def measured(self) -> str:
        """The figure against its target, in the words of the warning and of promotion's gate."""
        promise = f"the certified {'at most' if self.at_most else 'at least'} {self.target:g}"
        if self.value is None:
            return f"{self.what}: not measured on test, against {promise}"
        interval = f"n={self.n}, 95% CI {self.low:.4f}-{self.high:.4f}"
        return f"{self.what}: {self.value:.4f} on test ({interval}) against {promise}"

    def shortfall(self) -> str | None:
        if not self.missed:
            return None
        measured = self.measured
        if self.contradicted:
            return (
                f"{measured}. The interval excludes the target: on this test split the guarantee does not hold. "
                "Recalibrate on more, or more representative, calib data before relying on it"
            )
        return (
            f"{measured}. The interval contains the target, so this test split neither confirms nor refutes the "
            "guarantee (docs/certification.md, 'Reading a test figure')"
        )


def _point_figure(point: dict[str, Any]) -> CertifiedFigure:
    test, guarantee = point["test"], point["guarantee"]
    return CertifiedFigure(
        point["name"],
        f"operating point '{point['name']}' missed {guarantee['unit']}",
        test["miss_rate"],
        test["miss_rate_ci_low"],
        test["miss_rate_ci_high"],
        test.get("positives"),
        guarantee["target_max_miss_rate"],
        at_most=True,
    )


def stream_figures(contract: dict[str, Any]) -> list[CertifiedFigure]:
    """The certified stream policy's test figures: per age gate the minor pass rate, for content the recall."""
    stream = contract.get("stream") or {}
    if not stream.get("certified"):
        return []
    certificate = stream["certificate"]
    if stream["policy"]["method"] == "mean_logit":
        return [
            CertifiedFigure(
                f"age stream gate {gate['gate']:g}",
                f"the age stream policy passed people under {gate['gate']:g}",
                gate["test"]["minor_pass_rate"]["value"],
                gate["test"]["minor_pass_rate"]["ci_low"],
                gate["test"]["minor_pass_rate"]["ci_high"],
                gate["test"]["minor_pass_rate"]["n"],
                certificate["max_minor_pass_rate"],
                at_most=True,
            )
            for gate in stream["gates"]
        ]
    deadline = certificate["deadline_s"]
    recall = stream["test"]["deadline_recall"][f"{deadline:g}s"]
    return [
        CertifiedFigure(
            "content stream recall",
            f"the content stream policy blocked event streams within {deadline:g} s",
            recall["value"],
            recall["ci_low"],
            recall["ci_high"],
            recall["n"],
            certificate["min_recall"],
            at_most=False,
        )
    ]


def certified_figures(contract: dict[str, Any]) -> list[CertifiedFigure]:
    """Every certified rate of a contract with its test measurement: operating points, then the stream policy."""
    return [_point_figure(p) for p in contract["operating_points"]] + stream_figures(contract)


def shortfall_warnings(contract: dict[str, Any]) -> list[str]:
    """The release warnings for certified figures that test measured past their targets."""
    return [message for figure in certified_figures(contract) if (message := figure.shortfall()) is not None]
