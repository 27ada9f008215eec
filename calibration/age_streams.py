"""Age over a stream: what judging a person on several frames buys over judging one frame (issue 19).

Apparent age wanders a few years from frame to frame of the same person, so one frame is a noisy
witness. Here a stream's score after m frames is the mean of logit P(age < T) over its first m
decided frames (abstained frames do not count; a stream with none yet counts as a minor, failing
closed). For each m, the threshold is set on calib adults' streams so that their false rejection
equals the per-frame operating point's on calib frames; the test streams then show the minor pass
rate at that same false rejection, per person, with exact intervals over streams.

Those figures are a measurement. The runtime policy (`AgeStreamPolicy`, applied by the runtime's
`MeanLogitWindow`) is the mean logit over a stream's last n decided frames, blocked until n frames
are decided; per gate its threshold is certified per person on calib streams: a minor's stream
counts as passed when any of its windows passes, so the bound covers the whole stream, not one
moment of it (as a person with several images is missed when any image is).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from childsafe_runtime.smoothing import clipped_logit, window_score

from calibration.operating_points import OperatingPoint, certify_threshold, required_sample_size
from core.errors import WorkbenchError
from evaluation.stats import proportion


@dataclass
class AgeStreamFigures:
    """Per gate: per-frame against per-stream minor pass rate and adult false rejection, by frames seen."""

    frame_rate_hz: float
    frames_per_stream: int
    calib_streams: int
    test_streams: int
    gates: list[dict] = field(default_factory=list)
    aggregation: str = "mean of logit P(age < T) over the first m decided frames of a stream"

    def to_dict(self) -> dict:
        return asdict(self)


def running_scores(prob_below: np.ndarray, decided: np.ndarray, frames: int) -> np.ndarray:
    """(frames,) score after each m = 1..frames: mean logit over the decided frames so far; +inf before any."""
    logits = np.where(decided, clipped_logit(prob_below), 0.0)[:frames]
    counts = np.cumsum(decided[:frames])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.cumsum(logits) / counts, np.inf)


def stream_scores(manifest: pd.DataFrame, prob_below: np.ndarray, decided: np.ndarray, frames: int):
    """Split -> (streams x frames seen) scores and each stream's true age, from one column of P(age < T)."""
    out = {}
    for split, rows in manifest.groupby("split"):
        scores, ages = [], []
        for _, stream in rows.sort_values("frame_index").groupby("stream_id"):
            index = stream.index.to_numpy()
            scores.append(running_scores(prob_below[index], decided[index], frames))
            ages.append(float(stream["age"].iloc[0]))
        out[split] = (np.array(scores), np.array(ages))
    return out


def matched_threshold(adult_scores: np.ndarray, false_rejection: float) -> float:
    """The threshold at which this share of adults' scores (or just under it) is at or above it."""
    ranked = np.sort(adult_scores)[::-1]
    flagged = int(np.floor(false_rejection * ranked.size))
    if flagged == 0:
        return float(np.nextafter(ranked[0], np.inf))
    return float(ranked[flagged - 1])


def gate_figures(
    point: OperatingPoint, calib, test, frame_calib: tuple[np.ndarray, np.ndarray], target: float, fps: float
) -> dict:
    """One gate's per-frame and per-stream figures; `frame_calib` is (P(age < T), age) over decided calib frames."""
    gate, frame_threshold = float(point.gate), float(point.threshold)
    probabilities, ages = frame_calib
    frame_false_rejection = float((probabilities[ages >= gate] >= frame_threshold).mean())
    (calib_scores, calib_ages), (test_scores, test_ages) = calib, test
    minors, adults = test_ages < gate, test_ages >= gate
    curve = []
    for m in range(1, calib_scores.shape[1] + 1):
        threshold = matched_threshold(calib_scores[calib_ages >= gate, m - 1], frame_false_rejection)
        score = test_scores[:, m - 1]
        curve.append(
            {
                "frames": m,
                "seconds": m / fps,
                "threshold_logit": threshold,
                "minor_pass_rate": proportion(score[minors] < threshold, "minor stream").to_dict(),
                "adult_false_rejection": proportion(score[adults] >= threshold, "adult stream").to_dict(),
            }
        )
    first = float(clipped_logit(frame_threshold))
    per_frame = {
        "threshold": frame_threshold,
        "minor_pass_rate": proportion(test_scores[minors, 0] < first, "minor stream").to_dict(),
        "adult_false_rejection": proportion(test_scores[adults, 0] >= first, "adult stream").to_dict(),
        "calib_adult_false_rejection": frame_false_rejection,
    }
    reached = [c["frames"] for c in curve if (c["minor_pass_rate"]["value"] or 0.0) <= target]
    return {
        "gate": gate,
        "per_frame": per_frame,
        "per_stream": curve,
        "target_minor_pass_rate": target,
        "frames_needed": reached[0] if reached else None,
    }


def measure_age_streams(
    manifest: pd.DataFrame,
    outputs: dict[str, np.ndarray],
    state,
    fps: float,
    frames: int,
    target: float,
) -> AgeStreamFigures:
    """Every gate's figures over the calib and test streams of `manifest` (one row per frame, with its split)."""
    decided = outputs["ood_score"].astype(np.float32) <= np.float32(state.ood.threshold)
    is_calib = (manifest["split"] == "calib").to_numpy() & decided
    columns = [g.gate for g in state.age.gates]
    gates = []
    for point in (p for p in state.operating_points if p.target == "minor"):
        probabilities = outputs["prob_below"][:, columns.index(point.gate)]
        scores = stream_scores(manifest, probabilities, decided, frames)
        frame_calib = (probabilities[is_calib], manifest["age"].to_numpy()[is_calib])
        gates.append(gate_figures(point, scores["calib"], scores["test"], frame_calib, target, fps))
    counts = manifest.groupby("split")["stream_id"].nunique()
    return AgeStreamFigures(fps, frames, int(counts.get("calib", 0)), int(counts.get("test", 0)), gates)


def age_stream_metrics(figures: AgeStreamFigures) -> dict[str, float]:
    """Per gate, the test per-person minor pass rate and adult false rejection on one frame and on the whole stream."""
    metrics = {}
    for gate in figures.gates:
        prefix = f"test/age/stream/gate{gate['gate']:g}"
        whole = gate["per_stream"][-1]
        for name, record in (("frame", gate["per_frame"]), (f"frames{whole['frames']}", whole)):
            for rate in ("minor_pass_rate", "adult_false_rejection"):
                if record[rate]["value"] is not None:
                    metrics[f"{prefix}/{name}/{rate}"] = record[rate]["value"]
        if gate["frames_needed"] is not None:
            metrics[f"{prefix}/frames_needed"] = float(gate["frames_needed"])
    return metrics


@dataclass
class AgeStreamPolicy:
    """The certified per-stream age policy: runtime.smoothing's mean-logit window and what it certifies."""

    n: int
    frame_rate_hz: float
    frames_per_stream: int
    max_minor_pass_rate: float
    confidence: float
    gates: list[dict]  # per gate: column, threshold_logit, certificate, calib and test figures, per-frame comparison
    candidates: int
    calib_streams: int
    test_streams: int
    method: str = "mean_logit"

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def thresholds(self) -> dict[str, float]:
        return {gate["column"]: gate["threshold_logit"] for gate in self.gates}


def window_scores(probabilities: np.ndarray, decided: np.ndarray, n: int) -> np.ndarray:
    """(frames, gates) mean logit over the last n decided frames after each frame; +inf (blocked) before n.

    Each window goes through the runtime's own `window_score`, so calibrate's scores are the consumer's.
    """
    scores = np.full(probabilities.shape, np.inf)
    kept = []
    for frame in range(len(probabilities)):
        if decided[frame]:
            kept.append(frame)
        if len(kept) >= n:
            scores[frame] = window_score(probabilities[kept[-n:]])
    return scores


@dataclass(frozen=True)
class StreamSet:
    """One split's age streams: each frame's P(age < T) per gate, whether it was decided, and the truth."""

    ids: list[str]
    ages: np.ndarray
    probabilities: list[np.ndarray]  # per stream (frames, gates)
    decided: list[np.ndarray]

    def scores(self, n: int) -> list[np.ndarray]:
        return [window_scores(p, d, n) for p, d in zip(self.probabilities, self.decided, strict=True)]


def stream_sets(manifest: pd.DataFrame, prob_below: np.ndarray, decided: np.ndarray) -> dict[str, StreamSet]:
    out = {}
    for split, rows in manifest.groupby("split"):
        ids, ages, probabilities, flags = [], [], [], []
        for stream_id, stream in rows.sort_values("frame_index").groupby("stream_id", sort=True):
            index = stream.index.to_numpy()
            ids.append(str(stream_id))
            ages.append(float(stream["age"].iloc[0]))
            probabilities.append(prob_below[index].astype(np.float64))
            flags.append(decided[index])
        out[str(split)] = StreamSet(ids, np.array(ages), probabilities, flags)
    return out


def _stream_rates(scores: list[np.ndarray], streams: StreamSet, column: int, gate: float, threshold: float) -> dict:
    """A minor passes when any window of the stream passes; an adult is falsely rejected when the last one blocks."""
    minors = streams.ages < gate
    passed = np.array([bool((s[:, column] < threshold).any()) for s in scores])
    rejected = np.array([bool(s[-1, column] >= threshold) for s in scores])
    return {
        "minor_pass_rate": proportion(passed[minors], "minor stream").to_dict(),
        "adult_false_rejection": proportion(rejected[~minors], "adult stream").to_dict(),
    }


def _certify_gate(scores: list[np.ndarray], streams: StreamSet, column: int, gate: float, target, confidence):
    minors = np.flatnonzero(streams.ages < gate)
    positive = np.concatenate([scores[i][:, column] for i in minors]) if minors.size else np.empty(0)
    units = np.concatenate([[streams.ids[i]] * len(scores[i]) for i in minors]) if minors.size else np.empty(0)
    adults = np.array([scores[i][-1, column] for i in np.flatnonzero(streams.ages >= gate)])
    return certify_threshold(f"stream gate{gate:g}", positive, adults, target, confidence, units, "people")


def choose_age_policy(
    calib: StreamSet,
    test: StreamSet,
    gates: list[OperatingPoint],
    target: float,
    confidence: float,
    max_window: int,
    fps: float,
) -> AgeStreamPolicy:
    """The window n (1 <= n <= max_window) whose certified thresholds reject the fewest calib adults on average.

    Every gate is certified per person at `target` (the per-frame gates' max_minor_pass_rate) with a
    one-sided Clopper-Pearson bound over calib minor streams. Too few minor streams at any gate is a
    refusal naming the number a certificate needs.
    """
    frames = min(len(p) for p in calib.probabilities)
    needed = required_sample_size(target, confidence)
    for point in gates:
        minors = int((calib.ages < point.gate).sum())
        if minors < needed:
            raise WorkbenchError(
                f"The age stream policy cannot be certified at gate {point.gate:g}: the calib streams hold {minors} "
                f"people under {point.gate:g}, and a minor pass rate of at most {target:g} at confidence "
                f"{confidence:g} needs at least {needed} even with none passing. Raise "
                f"calibration.streams.age.num_streams about {needed / max(minors, 1):.1f}-fold, or relax "
                "calibration.streams.age.max_minor_pass_rate (it defaults to the per-frame gates' target)."
            )
    best = None
    for n in range(1, min(max_window, frames) + 1):
        scores = calib.scores(n)
        points = [_certify_gate(scores, calib, i, float(p.gate), target, confidence) for i, p in enumerate(gates)]
        cost = float(np.mean([p.false_alarm_rate or 0.0 for p in points]))
        if best is None or cost < best[0]:
            best = (cost, n, points)
    _, n, points = best
    calib_scores, test_scores = calib.scores(n), test.scores(n)
    frame_test = test.scores(1)  # n = 1 with the per-frame threshold: each frame judged alone
    figures = []
    for column, (point, certified) in enumerate(zip(gates, points, strict=True)):
        gate = float(point.gate)
        frame_threshold = float(clipped_logit(point.threshold))
        figures.append(
            {
                "gate": gate,
                "column": point.name,
                "threshold_logit": certified.threshold,
                "certificate": {
                    "max_minor_pass_rate": target,
                    "confidence": confidence,
                    "minor_people": certified.positives,
                    "passed": certified.misses,
                    "pass_rate_upper_bound": certified.miss_rate_upper_bound,
                    "unit": "people (one stream each)",
                },
                "calib": _stream_rates(calib_scores, calib, column, gate, certified.threshold),
                "test": _stream_rates(test_scores, test, column, gate, certified.threshold),
                "per_frame": _stream_rates(frame_test, test, column, gate, frame_threshold),
            }
        )
    return AgeStreamPolicy(
        n, fps, frames, target, confidence, figures, min(max_window, frames), len(calib.ids), len(test.ids)
    )


def fit_age_policy(manifest, outputs, state, settings, fps: float) -> AgeStreamPolicy:
    """The certified policy over the calib and test streams of `manifest`; WorkbenchError when it cannot be."""
    decided = outputs["ood_score"].astype(np.float32) <= np.float32(state.ood.threshold)
    sets = stream_sets(manifest, outputs["prob_below"], decided)
    columns = [g.gate for g in state.age.gates]
    gates = sorted((p for p in state.operating_points if p.target == "minor"), key=lambda p: columns.index(p.gate))
    if [p.gate for p in gates] != columns:
        raise WorkbenchError(f"Every age gate needs an operating point for the stream policy; gates {columns}.")
    return choose_age_policy(
        sets["calib"],
        sets["test"],
        gates,
        float(settings.max_minor_pass_rate),
        state.confidence,
        int(settings.max_window),
        fps,
    )


def age_policy_metrics(policy: AgeStreamPolicy) -> dict[str, float]:
    """The certified age stream policy: its window, and per gate the calib bound and the test rates."""
    metrics = {"calib/age/stream_policy/n": float(policy.n)}
    for gate in policy.gates:
        metrics[f"calib/age/stream_policy/gate{gate['gate']:g}/pass_rate_upper_bound"] = gate["certificate"][
            "pass_rate_upper_bound"
        ]
        for rate in ("minor_pass_rate", "adult_false_rejection"):
            if gate["test"][rate]["value"] is not None:
                metrics[f"test/age/stream_policy/gate{gate['gate']:g}/{rate}"] = gate["test"][rate]["value"]
    return metrics
