"""The content stream policy, chosen and certified on calib streams and measured on test streams.

A video-chat filter judges a stream, not a frame. Its policy smooths one operating point's frame
decisions with the runtime's own k-of-n rule (childsafe_runtime.smoothing: the consumer applies
exactly this code, including its fail-closed warm-up). k-of-n is the one family searched: it is
what the runtime already implements and the contract already states, its state is a window of
booleans that any client can replay exactly, and an EMA with hysteresis adds two real-valued
parameters and float state without a property k-of-n lacks at these frame rates.

The choice: among 1 <= k <= n <= max_window, the policy with the fewest false interruptions per
hour of benign calib stream whose recall within the deadline is certified, a one-sided
Clopper-Pearson lower bound over calib event streams (one stream, one trial) at least the target.
A calib set with too few event streams for that bound is refused with the number it would need.
The test streams then give the shipped figures, next to the fixed 3-of-5 and no smoothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from childsafe_runtime.smoothing import KOfNSmoother

from calibration.operating_points import required_sample_size, upper_bound
from core.errors import WorkbenchError
from evaluation.streams import (
    StreamDecisions,
    deadline_recall,
    interruptions_per_hour,
    time_to_block_quantiles,
)

if TYPE_CHECKING:
    from calibration.state import CalibrationState

COLUMN = "block"
BASELINES = {"k3_of_5": (3, 5), "no_smoothing": (1, 1)}


@dataclass(frozen=True)
class ScoredStream:
    """One stream's frame votes on the policy's decision column: True blocks, None abstained (no vote)."""

    stream_id: str
    votes: tuple[bool | None, ...]
    event: tuple[int, int] | None


def frame_votes(outputs: dict[str, np.ndarray], state: CalibrationState, decision: str) -> list[bool | None]:
    """Each frame's vote as the graph casts it: score >= threshold in float32, none when the frame abstains."""
    names = [p.name for p in state.operating_points]
    if decision not in names:
        raise WorkbenchError(
            f"calibration.streams.content.decision={decision!r} is not an operating point of this calibration; "
            f"it has {names}."
        )
    point = state.operating_points[names.index(decision)]
    blocks = outputs["scores"][:, names.index(decision)].astype(np.float32) >= np.float32(point.threshold)
    abstains = outputs["ood_score"].astype(np.float32) > np.float32(state.ood.threshold)
    return [None if abstain else bool(block) for block, abstain in zip(blocks, abstains, strict=True)]


def smoothed(votes: tuple[bool | None, ...], k: int, n: int) -> np.ndarray:
    """The stream's block state after each frame, by the runtime's k-of-n; before any vote it blocks (fails closed)."""
    smoother = KOfNSmoother(k, n, (COLUMN,))
    return np.array([smoother.update(None if vote is None else {COLUMN: vote})[COLUMN] for vote in votes])


def decisions_of(streams: list[ScoredStream], k: int, n: int) -> list[StreamDecisions]:
    return [StreamDecisions(s.stream_id, smoothed(s.votes, k, n), s.event) for s in streams]


def policy_figures(
    streams: list[ScoredStream], k: int, n: int, fps: float, deadlines: list[float]
) -> dict[str, dict | float]:
    """Deadline recall at each deadline, false interruptions per hour and time-to-block quantiles, with intervals."""
    decided = decisions_of(streams, k, n)
    quantiles = time_to_block_quantiles(decided, fps)
    delays = [d.seconds_to_block(fps) for d in decided if d.event is not None]
    return {
        "seconds_to_block": [delay if np.isfinite(delay) else None for delay in delays],  # None: never blocked
        "deadline_recall": {f"{d:g}s": deadline_recall(decided, fps, d).to_dict() for d in deadlines},
        "interruptions_per_hour": interruptions_per_hour(decided, fps, grace=n).to_dict(),
        "time_to_block_s": {f"p{round(q * 100)}": (v if np.isfinite(v) else None) for q, v in quantiles.items()},
        "streams": len(streams),
        "event_streams": sum(s.event is not None for s in streams),
    }


@dataclass
class ContentStreamPolicy:
    """The certified k-of-n policy and its figures; the contract's `stream` section and runtime.smoothing."""

    k: int
    n: int
    decision: str
    frame_rate_hz: float
    deadline_s: float
    min_deadline_recall: float
    confidence: float
    recall_lower_bound: float
    calib_event_streams: int
    calib_streams: int
    candidates: int
    calib: dict = field(default_factory=dict)
    test: dict = field(default_factory=dict)
    compared: dict = field(default_factory=dict)  # the same test figures for the fixed 3-of-5 and no smoothing
    method: str = "k_of_n"

    def to_dict(self) -> dict:
        return asdict(self)


def certified_recall(decided: list[StreamDecisions], fps: float, deadline_s: float, confidence: float) -> float:
    """One-sided Clopper-Pearson lower bound on the share of event streams blocked within the deadline."""
    events = [d for d in decided if d.event is not None]
    hits = sum(d.seconds_to_block(fps) <= deadline_s for d in events)
    return 1.0 - float(upper_bound(len(events) - hits, len(events), confidence))


def choose_content_policy(
    calib: list[ScoredStream],
    test: list[ScoredStream],
    settings,
    fps: float,
    confidence: float,
) -> ContentStreamPolicy:
    """The certified policy with the fewest calib interruptions per hour; `settings` is calibration.streams.content."""
    target, deadline = float(settings.min_deadline_recall), float(settings.deadline_s)
    events = sum(s.event is not None for s in calib)
    needed = required_sample_size(1.0 - target, confidence)
    if events < needed:
        raise WorkbenchError(
            f"The calib streams hold {events} streams with an explicit event, too few to certify recall within "
            f"{deadline:g} s of at least {target:g} at confidence {confidence:g}: even with every event blocked in "
            f"time that needs {needed} event streams. Raise calibration.streams.content.num_streams (or event_share), "
            "or relax calibration.streams.content.min_deadline_recall."
        )
    deadlines = sorted({*map(float, settings.report_deadlines_s), deadline})
    candidates = [(k, n) for n in range(1, int(settings.max_window) + 1) for k in range(1, n + 1)]
    bounds, ranked = {}, []
    for k, n in candidates:
        decided = decisions_of(calib, k, n)
        bounds[k, n] = certified_recall(decided, fps, deadline, confidence)
        if bounds[k, n] >= target:
            ranked.append((interruptions_per_hour(decided, fps, grace=n).value, -bounds[k, n], n, k))
    if not ranked:
        best = max(bounds, key=bounds.get)
        bound = bounds[best]
        raise WorkbenchError(
            f"No k-of-n policy (n up to {settings.max_window}) certifies recall within {deadline:g} s of at least "
            f"{target:g} on the calib streams: the best, k={best[0]} of n={best[1]}, reaches a lower bound of "
            f"{bound:.3f}. The frame decision '{settings.decision}' misses too many events; choose a more sensitive "
            "operating point, a longer deadline, or a lower calibration.streams.content.min_deadline_recall."
        )
    _, _, n, k = min(ranked)
    return ContentStreamPolicy(
        k=k,
        n=n,
        decision=str(settings.decision),
        frame_rate_hz=fps,
        deadline_s=deadline,
        min_deadline_recall=target,
        confidence=confidence,
        recall_lower_bound=bounds[k, n],
        calib_event_streams=events,
        calib_streams=len(calib),
        candidates=len(candidates),
        calib=policy_figures(calib, k, n, fps, deadlines),
        test=policy_figures(test, k, n, fps, deadlines),
        compared={name: policy_figures(test, *kn, fps, deadlines) for name, kn in BASELINES.items()},
    )


def scored_streams(manifest: pd.DataFrame, votes: list[bool | None]) -> dict[str, list[ScoredStream]]:
    """Split name -> its streams in frame order, from a stream manifest (one row per frame) and each row's vote."""
    frames = manifest.assign(vote=pd.Series(votes, index=manifest.index, dtype=object))
    streams: dict[str, list[ScoredStream]] = {}
    for (split, stream_id), rows in frames.sort_values("frame_index").groupby(["split", "stream_id"]):
        start, end = int(rows["event_start"].iloc[0]), int(rows["event_end"].iloc[0])
        event = (start, end) if start >= 0 else None
        streams.setdefault(split, []).append(ScoredStream(str(stream_id), tuple(rows["vote"]), event))
    return streams


def policy_metrics(policy: ContentStreamPolicy) -> dict[str, float]:
    """The figures calibrate logs to MLflow: the policy, its certificate, and calib and test stream figures."""
    prefix = "content/stream"
    metrics = {
        f"calib/{prefix}/k": float(policy.k),
        f"calib/{prefix}/n": float(policy.n),
        f"calib/{prefix}/recall_lower_bound": policy.recall_lower_bound,
    }
    figures = {"calib": policy.calib, "test": policy.test} | {f"test/{name}": f for name, f in policy.compared.items()}
    for where, figure in figures.items():
        split, _, baseline = where.partition("/")
        key = f"{split}/{prefix}" + (f"/{baseline}" if baseline else "")
        for deadline, recall in figure["deadline_recall"].items():
            if recall["value"] is not None:
                metrics[f"{key}/recall_within_{deadline}"] = recall["value"]
        if figure["interruptions_per_hour"]["value"] is not None:
            metrics[f"{key}/interruptions_per_hour"] = figure["interruptions_per_hour"]["value"]
        for name, value in figure["time_to_block_s"].items():
            if value is not None:
                metrics[f"{key}/time_to_block_{name}_s"] = value
    return metrics
