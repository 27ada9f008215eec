"""Stream state: k-of-n smoothing that fails closed from the first frame, and the no-face policy.

The contract's `runtime.smoothing` rule: a stream blocks on a decision when at least k of its last n
voting frames blocked; until n frames have voted it blocks when at least max(1, k - (n - seen)) of the
`seen` frames blocked, so its first frame decides alone and a single image is judged as it was.
A frame with no decision (no face, every face abstained, or out of distribution) casts no vote and
leaves the window as it was. Before any frame of the stream has voted on a column, the stream blocks
on it: the start of a stream fails closed. `smoothed` is the authoritative field.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


def required_votes(k: int, n: int, seen: int) -> int:
    """How many of the `seen` (at most n) voting frames must block for the stream to block."""
    return k if seen >= n else max(1, k - (n - seen))


@dataclass
class KOfNSmoother:
    """Per decision column, a window of the last n votes; `update(None)` is a frame that did not vote.

    `columns` are the contract's decision columns: each blocks until its first vote. A column first
    seen in a vote (a smoother built without columns) joins then.
    """

    k: int
    n: int
    columns: tuple[str, ...] = ()
    history: dict[str, deque] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k-of-n smoothing needs 1 <= k <= n, got k={self.k}, n={self.n}")
        for name in self.columns:
            self.history[name] = deque(maxlen=self.n)

    def update(self, decisions: dict[str, bool] | None) -> dict[str, bool] | None:
        """The stream's smoothed decisions after this frame; None only without columns before any vote."""
        for name, value in (decisions or {}).items():
            self.history.setdefault(name, deque(maxlen=self.n)).append(bool(value))
        if not self.history:
            return None
        return {
            name: not window or sum(window) >= required_votes(self.k, self.n, len(window))
            for name, window in self.history.items()
        }


@dataclass
class NoFaceClock:
    """Flags a stream whose frames have had no decided face for `seconds` (each frame covers 1 / rate_hz)."""

    seconds: float
    rate_hz: float
    since: float | None = None  # time of the first frame after the last one with a decided face

    def update(self, time_s: float, decided: bool) -> bool:
        if decided:
            self.since = None
            return False
        if self.since is None:
            self.since = time_s
        return time_s - self.since + 1.0 / self.rate_hz >= self.seconds - 1e-9


@dataclass
class StreamClock:
    """A stream's monotonic time: video frames keep their own spacing, other frames advance by 1 / rate_hz.

    A stream may join several inputs (`--stream-id`), so each new source continues after the last frame.
    """

    rate_hz: float
    source: str | None = None
    offset: float = 0.0
    last: float | None = None

    def tick(self, source: str, video_time_s: float | None) -> float:
        step = 1.0 / self.rate_hz
        if video_time_s is None:
            now = 0.0 if self.last is None else self.last + step
        else:
            if source != self.source:
                self.offset = 0.0 if self.last is None else self.last + step - video_time_s
            now = self.offset + video_time_s
        self.source, self.last = source, now
        return now


RATE_TOLERANCE = 0.01  # relative: a video within 1% of the policy's rate is taken as at that rate


@dataclass
class VideoSampler:
    """Takes a video's frames at the policy's rate, by their timestamps: the k-of-n policy counts frames.

    A 30 fps video judged frame by frame would fill a window chosen for 2 frames a second fifteen
    times too fast, so the first frame is taken, then the first frame at or after each 1 / rate_hz.
    A video slower than the rate cannot be sampled up: every frame is taken (see `rate_warning`).
    """

    rate_hz: float
    due: float | None = None

    def take(self, time_s: float) -> bool:
        step = 1.0 / self.rate_hz
        slack = RATE_TOLERANCE * step
        if self.due is None or time_s > self.due + step:  # the first frame, or the first after a gap
            self.due = time_s
        if time_s < self.due - slack:
            return False
        self.due += step
        return True


def rate_warning(source: str, video_fps: float, rate_hz: float) -> str | None:
    """What the consumer does with a video whose rate is not the policy's, in words; None when it is."""
    if video_fps <= 0:
        return (
            f"{source} states no frame rate: frames are taken by their timestamps at the policy's {rate_hz:g} per "
            "second"
        )
    if abs(video_fps - rate_hz) <= RATE_TOLERANCE * rate_hz:
        return None
    if video_fps > rate_hz:
        return (
            f"{source} runs at {video_fps:g} fps and the contract's stream policy assumes {rate_hz:g}: one frame "
            f"every {1 / rate_hz:g} s is judged (by timestamp) and the rest are counted as not_sampled"
        )
    return (
        f"{source} runs at {video_fps:g} fps, slower than the {rate_hz:g} per second the contract's stream policy "
        f"was certified at: every frame is judged, so its k-of-n window spans {rate_hz / video_fps:g}x the time "
        "it was chosen for and the stream figures in the contract do not hold for this input"
    )


LOGIT_CLIP = 1e-6  # P(age < T) is clipped to [LOGIT_CLIP, 1 - LOGIT_CLIP] before the logit


def clipped_logit(probabilities: np.ndarray) -> np.ndarray:
    """logit(p) in float64, p clipped away from 0 and 1 (numpy: the runtime has no scipy)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), LOGIT_CLIP, 1 - LOGIT_CLIP)
    return np.log(p) - np.log1p(-p)


def window_score(probabilities: np.ndarray) -> np.ndarray:
    """The mean logit over a window's frames (rows), per column: the one formula calibrate and the runtime share."""
    return clipped_logit(probabilities).mean(axis=0)


@dataclass
class MeanLogitWindow:
    """The age stream policy: per gate column, the mean of logit P(age < T) over the last n decided frames.

    A stream blocks on a column while that mean is at or above the column's certified threshold, and
    on every column until n frames have been decided: a stream fails closed until it has shown its
    face n times. `update(None)` is a frame without a decision (no face, abstained): it leaves the
    window as it was. Frames with several faces enter with the youngest face's (largest) P(age < T).
    """

    n: int
    thresholds: dict[str, float]  # decision column -> threshold on the mean logit
    history: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"a mean-logit window needs n >= 1, got n={self.n}")
        self.history = deque(maxlen=self.n)

    def update(self, probabilities: dict[str, float] | None) -> dict[str, bool]:
        if probabilities is not None:
            self.history.append([probabilities[name] for name in self.thresholds])
        if len(self.history) < self.n:
            return {name: True for name in self.thresholds}
        scores = window_score(np.array(self.history))
        return {name: bool(s >= t) for (name, t), s in zip(self.thresholds.items(), scores, strict=True)}
