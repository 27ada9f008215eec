"""Certified figures whose test estimate misses the target: said in the contract and the model card, never left
for a reviewer to spot in a table.

Calib certifies a rate with a one-sided bound; the test split then measures it once more, with its own sampling
error. A test point past the target whose 95% interval still reaches the target is that error (docs/certification.md,
"Reading a test figure"); an interval that excludes the target says the guarantee does not hold on this data.
"""

from __future__ import annotations

from dataclasses import dataclass

from calibration.state import CalibrationState


@dataclass(frozen=True)
class CertifiedFigure:
    """One certified rate as the test split measured it, and which side of `target` the guarantee promises."""

    what: str
    value: float | None
    low: float | None
    high: float | None
    n: int | None
    target: float
    at_most: bool  # True: the rate must stay at or below target (misses); False: at or above it (recall)

    def shortfall(self) -> str | None:
        if self.value is None or (self.value <= self.target if self.at_most else self.value >= self.target):
            return None
        interval = f"95% CI {self.low:.4f}-{self.high:.4f}"
        measured = f"{self.what}: {self.value:.4f} on test (n={self.n}, {interval}) against the certified "
        measured += f"{'at most' if self.at_most else 'at least'} {self.target:g}"
        if self.low <= self.target <= self.high:
            return (
                f"{measured}. The interval contains the target, so this test split neither confirms nor refutes the "
                "guarantee (docs/certification.md, 'Reading a test figure')"
            )
        return (
            f"{measured}. The interval excludes the target: on this test split the guarantee does not hold. "
            "Recalibrate on more, or more representative, calib data before relying on it"
        )


def certified_figures(state: CalibrationState) -> list[CertifiedFigure]:
    """Every certified rate of the state with its test measurement: operating points, stream policies."""
    figures = [
        CertifiedFigure(
            f"operating point '{p.name}' missed {p.unit}",
            p.test.get("miss_rate"),
            p.test.get("miss_rate_ci_low"),
            p.test.get("miss_rate_ci_high"),
            p.test.get("positives"),
            p.target_max_miss_rate,
            at_most=True,
        )
        for p in state.operating_points
    ]
    if state.age_policy is not None:
        for gate in state.age_policy.gates:
            rate = gate["test"]["minor_pass_rate"]
            figures.append(
                CertifiedFigure(
                    f"the age stream policy passed people under {gate['gate']:g}",
                    rate["value"],
                    rate["ci_low"],
                    rate["ci_high"],
                    rate["n"],
                    state.age_policy.max_minor_pass_rate,
                    at_most=True,
                )
            )
    if state.stream is not None:
        recall = state.stream.test["deadline_recall"][f"{state.stream.deadline_s:g}s"]
        figures.append(
            CertifiedFigure(
                f"the content stream policy blocked event streams within {state.stream.deadline_s:g} s",
                recall["value"],
                recall["ci_low"],
                recall["ci_high"],
                recall["n"],
                state.stream.min_deadline_recall,
                at_most=False,
            )
        )
    return figures


def shortfall_warnings(state: CalibrationState) -> list[str]:
    """The release warnings for certified figures that test measured past their targets."""
    return [message for figure in certified_figures(state) if (message := figure.shortfall()) is not None]
