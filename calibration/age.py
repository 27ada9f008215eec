"""Age calibration: calibrated P(age < T) per gate and split-conformal age intervals.

- One temperature widens or sharpens the whole predicted age distribution (fitted by the
  likelihood of the true ages); per gate, isotonic regression on the derived P(age < T) competes
  with it, and 5-fold cross-validated Brier score on the calib split picks the winner.
- Intervals are normalised split conformal: score = |age - prediction| / predicted spread, so
  widths adapt per face. The finite-sample quantile is the ceil((n + 1)(1 - alpha))-th smallest
  score; the Mondrian option takes that quantile per group (e.g. sex x skin-tone bin). mapie and
  crepes are not dependencies here, and the method is these few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from sklearn.model_selection import KFold

from calibration.isotonic import fit_isotonic
from calibration.modules import gate_probabilities
from core.errors import WorkbenchError
from models.age_heads import AgeHead


def fit_age_temperature(head: AgeHead, raw: torch.Tensor, age: torch.Tensor) -> float:
    def loss(log_t: float) -> float:
        with torch.no_grad():
            return float(-head.log_likelihood(head.temper(raw, math.exp(log_t)), age).mean())

    return float(math.exp(minimize_scalar(loss, bounds=(-3, 3), method="bounded").x))


def _gate_probabilities(head: AgeHead, raw: torch.Tensor, gates: list[float], temperature: float) -> np.ndarray:
    with torch.no_grad():
        return gate_probabilities(head, raw, torch.tensor(gates), temperature).numpy().astype(np.float64)


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ceil((n+1) coverage)-th smallest score; infinite when n is too small to guarantee coverage."""
    rank = math.ceil((scores.size + 1) * coverage)
    return float(np.sort(scores)[rank - 1]) if rank <= scores.size else math.inf


@dataclass
class GateCalibration:
    gate: float
    method: str  # "temperature" or "isotonic", whichever cross-validated better on calib
    cv_brier: dict[str, float]
    isotonic_x: list[float] = field(default_factory=list)
    isotonic_y: list[float] = field(default_factory=list)


@dataclass
class ConformalIntervals:
    coverage: float
    quantile: float
    calib_size: int
    group_by: list[str] = field(default_factory=list)
    group_quantiles: dict[str, float] = field(default_factory=dict)
    group_sizes: dict[str, int] = field(default_factory=dict)

    def row_quantiles(self, groups: np.ndarray) -> np.ndarray:
        """Each row's conformal quantile: its group's, or the pooled one for a group calib never saw."""
        return np.array([self.group_quantiles.get(str(g), self.quantile) for g in groups])


@dataclass
class AgeCalibration:
    temperature: float
    gates: list[GateCalibration]
    intervals: list[ConformalIntervals]
    calib_size: int
    max_age: float

    @classmethod
    def identity(cls, gates: list[float], max_age: float) -> AgeCalibration:
        """The network's own P(age < T) (temperature 1, no intervals): uncalibrated figures through the same module."""
        return cls(1.0, [GateCalibration(float(g), "temperature", {}) for g in sorted(gates)], [], 0, float(max_age))

    def intervals_at(self, coverage: float) -> ConformalIntervals:
        """The intervals calibrated at `coverage`; asking for one that calibrate did not fit is a named error."""
        for intervals in self.intervals:
            if math.isclose(intervals.coverage, coverage):
                return intervals
        raise WorkbenchError(
            f"No age interval was calibrated at coverage {coverage:g}: the calibration state has "
            f"{[i.coverage for i in self.intervals]}. Use one of those (evaluation.coverage, export.coverage), or "
            f"re-run calibrate with calibration.age.coverages including {coverage:g}."
        )

    @classmethod
    def fit(
        cls,
        head: AgeHead,
        raw: torch.Tensor,
        expected_age: np.ndarray,
        age: np.ndarray,
        gates: list[float],
        coverages: list[float],
        groups: np.ndarray | None,
        group_by: list[str],
        max_age: float,
    ) -> AgeCalibration:
        gates = sorted(gates)
        age_t = torch.as_tensor(age, dtype=raw.dtype)
        temperature = fit_age_temperature(head, raw, age_t)

        uncalibrated = _gate_probabilities(head, raw, gates, 1.0)
        cv_errors = {"temperature": np.zeros(len(gates)), "isotonic": np.zeros(len(gates))}
        for train, held in KFold(5, shuffle=True, random_state=0).split(age):
            fold_t = fit_age_temperature(head, raw[train], age_t[train])
            tempered = _gate_probabilities(head, raw[held], gates, fold_t)
            for i, gate in enumerate(gates):
                minor = (age < gate).astype(float)
                iso = np.interp(uncalibrated[held, i], *fit_isotonic(uncalibrated[train, i], minor[train]))
                cv_errors["temperature"][i] += ((tempered[:, i] - minor[held]) ** 2).sum() / age.size
                cv_errors["isotonic"][i] += ((iso - minor[held]) ** 2).sum() / age.size
        gate_states = []
        for i, gate in enumerate(gates):
            errors = {name: float(values[i]) for name, values in cv_errors.items()}
            state = GateCalibration(gate=float(gate), method=min(errors, key=errors.get), cv_brier=errors)
            if state.method == "isotonic":
                state.isotonic_x, state.isotonic_y = fit_isotonic(uncalibrated[:, i], (age < gate).astype(float))
            gate_states.append(state)

        with torch.no_grad():
            spread = head.spread(head.temper(raw, temperature)).numpy().astype(np.float64)
        scores = np.abs(age - expected_age) / spread
        intervals = []
        for coverage in coverages:
            state = ConformalIntervals(float(coverage), conformal_quantile(scores, coverage), int(age.size))
            if group_by:
                state.group_by = list(group_by)
                for group in np.unique(groups):
                    members = scores[groups == group]
                    state.group_quantiles[str(group)] = conformal_quantile(members, coverage)
                    state.group_sizes[str(group)] = int(members.size)
            intervals.append(state)
        return cls(temperature, gate_states, intervals, int(age.size), float(max_age))
