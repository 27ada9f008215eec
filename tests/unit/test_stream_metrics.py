"""Stream figures: time to block, deadline recall and false interruptions per hour."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.errors import WorkbenchError
from evaluation.streams import (
    StreamDecisions,
    deadline_recall,
    interruptions_per_hour,
    poisson_rate_interval,
    time_to_block_quantiles,
)

FPS = 2.0


def stream(bits: str, event: tuple[int, int] | None = None, name: str = "s") -> StreamDecisions:
    return StreamDecisions(name, np.array([c == "1" for c in bits]), event)


def test_a_block_starts_where_a_run_of_blocked_frames_starts():
    assert stream("11001101").block_onsets().tolist() == [0, 4, 7]
    assert stream("0000").block_onsets().tolist() == []


def test_time_to_block_counts_from_the_onset_and_only_within_the_event():
    assert stream("0000001111", event=(4, 10)).seconds_to_block(FPS) == 1.0
    assert stream("1110000000", event=(4, 10)).seconds_to_block(FPS) == math.inf  # blocked before, not during


def test_deadline_recall_is_the_share_of_event_streams_blocked_in_time_with_an_exact_interval():
    streams = [
        stream("0000010000", (4, 10), "a"),  # 0.5 s
        stream("0000000100", (4, 10), "b"),  # 1.5 s
        stream("0000000000", (4, 10), "c"),  # never
        stream("1111111111", None, "benign"),  # no event: not a trial
    ]
    within_1s, within_2s = deadline_recall(streams, FPS, 1.0), deadline_recall(streams, FPS, 2.0)
    assert (within_1s.value, within_1s.n) == (pytest.approx(1 / 3), 3)
    assert within_2s.value == pytest.approx(2 / 3)
    assert within_1s.low < 1 / 3 < within_1s.high and within_1s.high < within_2s.high
    assert time_to_block_quantiles(streams, FPS, (0.5, 0.9)) == {0.5: 1.5, 0.9: math.inf}


def test_interruptions_outside_the_event_and_its_grace_are_false_ones():
    assert stream("0110011000").false_interruptions(grace=2) == 2  # benign: every block is false
    event = (3, 6)
    assert stream("1001000000", event).false_interruptions(grace=2) == 1  # before onset; the one at 3 is the event's
    assert stream("0000001000", event).false_interruptions(grace=2) == 0  # just after the end, within grace
    assert stream("0000000010", event).false_interruptions(grace=2) == 1  # at end + grace: a new block


def test_interruptions_per_hour_with_the_exact_poisson_interval():
    benign = [stream("1" + "0" * 3599, name="x"), stream("1010" + "0" * 3596, name="y")]  # 7200 frames = 1 h
    rate = interruptions_per_hour(benign, FPS, grace=2)
    assert (rate.value, rate.n) == (3.0, 2)
    assert (rate.low, rate.high) == (pytest.approx(0.6186, abs=1e-4), pytest.approx(8.7673, abs=1e-4))  # Garwood k=3
    assert poisson_rate_interval(0, 1.0) == (0.0, pytest.approx(3.6889, abs=1e-4))
    assert not interruptions_per_hour([stream("111", (0, 3))], FPS, grace=2).measurable


def test_bad_streams_are_named():
    with pytest.raises(WorkbenchError, match=r"stream 'empty'.*none"):
        stream("", name="empty")
    with pytest.raises(WorkbenchError, match=r"stream 'late'.*\[8, 12\).*10 frames"):
        stream("0" * 10, (8, 12), "late")
