"""Age over a stream: what judging a person on several frames buys over judging one frame (issue 19).

Apparent age wanders a few years from frame to frame of the same person, so one frame is a noisy
witness. Here a stream's score after m frames is the mean of logit P(age < T) over its first m
decided frames (abstained frames do not count; a stream with none yet counts as a minor, failing
closed). For each m, the threshold is set on calib adults' streams so that their false rejection
equals the per-frame operating point's on calib frames; the test streams then show the minor pass
rate at that same false rejection, per person, with exact intervals over streams.

This is a measurement, not a runtime policy: the bundle's runtime still smooths the per-frame
decisions with runtime.smoothing, and the contract says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy.special import logit

from calibration.operating_points import OperatingPoint
from evaluation.stats import proportion

EPSILON = 1e-6  # P(age < T) is clipped to [EPSILON, 1 - EPSILON] before the logit


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
    logits = np.where(decided, logit(np.clip(prob_below, EPSILON, 1 - EPSILON)), 0.0)[:frames]
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
    first = logit(np.clip(frame_threshold, EPSILON, 1 - EPSILON))
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
