"""Stream state: k-of-n smoothing that fails closed from the first frame, and the no-face policy.

The contract's `runtime.smoothing` rule: a stream blocks on a decision when at least k of its last n
voting frames blocked; until n frames have voted it blocks when at least max(1, k - (n - seen)) of the
`seen` frames blocked, so its first frame decides alone and a single image is judged as it was.
A frame with no decision (no face, every face abstained, or out of distribution) casts no vote and
leaves the window as it was. `smoothed` is the authoritative field.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


def required_votes(k: int, n: int, seen: int) -> int:
    """How many of the `seen` (at most n) voting frames must block for the stream to block."""
    return k if seen >= n else max(1, k - (n - seen))


@dataclass
class KOfNSmoother:
    """Per decision column, a window of the last n votes; `update(None)` is a frame that did not vote."""

    k: int
    n: int
    history: dict[str, deque] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"k-of-n smoothing needs 1 <= k <= n, got k={self.k}, n={self.n}")

    def update(self, decisions: dict[str, bool] | None) -> dict[str, bool] | None:
        """The stream's smoothed decisions after this frame; None while no frame has voted."""
        for name, value in (decisions or {}).items():
            self.history.setdefault(name, deque(maxlen=self.n)).append(bool(value))
        if not self.history:
            return None
        return {
            name: sum(window) >= required_votes(self.k, self.n, len(window)) for name, window in self.history.items()
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
