"""Content decisions over live streams: how soon an explicit event is blocked, and how often benign
chats are interrupted.

A video-chat filter is judged per stream, not per frame: a trust-and-safety team asks how long
after an adult starts exposing himself the stream is cut, and how many benign chats are cut per
hour. These figures take a stream's per-frame decisions *after* the smoothing policy (a block is
a run of consecutive blocked frames) and the frame rate those frames were sampled at.

- Deadline recall: the share of event streams blocked within D seconds of the event's onset, with
  an exact Clopper-Pearson interval over streams (one stream, one trial).
- False interruptions per hour: block onsets outside an event, per hour of benign frames, with
  an exact (Garwood) Poisson interval; a block that starts during an event, or within `grace`
  frames after it ends (the policy's window still holds event frames), is the event's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from core.errors import WorkbenchError
from evaluation.stats import CONFIDENCE, Estimate, not_measurable, proportion

SECONDS_PER_HOUR = 3600.0


@dataclass(frozen=True)
class StreamDecisions:
    """One stream's per-frame block decisions, and the frames [start, end) of its explicit event, if any."""

    stream_id: str
    blocked: np.ndarray
    event: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.blocked.ndim != 1 or self.blocked.size == 0:
            raise WorkbenchError(f"stream {self.stream_id!r}: blocked must be one decision per frame; it has none.")
        if self.event is not None:
            start, end = self.event
            if not 0 <= start < end <= self.blocked.size:
                raise WorkbenchError(
                    f"stream {self.stream_id!r}: the event's frames [{start}, {end}) lie outside the stream's "
                    f"{self.blocked.size} frames; fix the event annotation (onset and duration)."
                )

    def block_onsets(self) -> np.ndarray:
        """The frames where a block starts: blocked now, not blocked on the frame before (or the stream starts)."""
        blocked = self.blocked.astype(bool)
        return np.flatnonzero(blocked & ~np.concatenate([[False], blocked[:-1]]))

    def seconds_to_block(self, fps: float) -> float:
        """Seconds from the event's onset to the first blocked frame within the event; inf if none is blocked."""
        start, end = self.event
        hits = np.flatnonzero(self.blocked[start:end])
        return hits[0] / fps if hits.size else float("inf")

    def false_interruptions(self, grace: int) -> int:
        onsets = self.block_onsets()
        if self.event is None:
            return int(onsets.size)
        start, end = self.event
        return int(((onsets < start) | (onsets >= end + grace)).sum())

    def benign_frames(self) -> int:
        return self.blocked.size - (self.event[1] - self.event[0] if self.event else 0)


def deadline_recall(streams: list[StreamDecisions], fps: float, deadline_s: float) -> Estimate:
    """Share of event streams blocked within `deadline_s` seconds of the event's onset."""
    delays = np.array([s.seconds_to_block(fps) for s in streams if s.event is not None])
    return proportion(delays <= deadline_s, "stream with an explicit event")


def poisson_rate_interval(events: int, exposure: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Garwood) interval of a Poisson rate; scipy has the chi-square quantiles but no such function."""
    alpha = 1 - confidence
    low = chi2.ppf(alpha / 2, 2 * events) / 2 if events else 0.0
    return low / exposure, chi2.ppf(1 - alpha / 2, 2 * events + 2) / 2 / exposure


def interruptions_per_hour(streams: list[StreamDecisions], fps: float, grace: int) -> Estimate:
    """Block onsets outside events per hour of benign stream; n counts the streams."""
    hours = sum(s.benign_frames() for s in streams) / fps / SECONDS_PER_HOUR
    if hours == 0:
        return not_measurable("no benign stream time in this data", len(streams))
    count = sum(s.false_interruptions(grace) for s in streams)
    low, high = poisson_rate_interval(count, hours)
    return Estimate(count / hours, low, high, len(streams))


def time_to_block_quantiles(
    streams: list[StreamDecisions], fps: float, quantiles: tuple[float, ...] = (0.5, 0.9)
) -> dict[float, float]:
    """Quantiles of seconds-to-block over event streams; a never-blocked event counts as infinitely late."""
    delays = np.array([s.seconds_to_block(fps) for s in streams if s.event is not None])
    if delays.size == 0:
        return {}
    return {q: float(np.quantile(delays, q, method="inverted_cdf")) for q in quantiles}
