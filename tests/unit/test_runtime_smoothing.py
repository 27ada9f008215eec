"""Stream smoothing fails closed from the first frame (issue 15 item 3, acceptance 3), and the stream clocks."""

from __future__ import annotations

import itertools

import pytest
from childsafe_runtime.smoothing import (
    KOfNSmoother,
    NoFaceClock,
    StreamClock,
    VideoSampler,
    rate_warning,
    required_votes,
)


def test_the_warm_up_asks_max_1_k_minus_missing_frames_then_k():
    assert [required_votes(3, 5, seen) for seen in range(1, 8)] == [1, 1, 1, 2, 3, 3, 3]
    assert [required_votes(2, 3, seen) for seen in range(1, 5)] == [1, 1, 2, 2]


def test_a_single_per_frame_block_stays_a_block():
    assert KOfNSmoother(3, 5).update({"gate18": True, "gate13": False}) == {"gate18": True, "gate13": False}


def _by_definition(votes: list[bool], k: int, n: int) -> list[bool]:
    """The contract's sentence, written out: the last n votes, k of them once n have been seen."""
    out = []
    for seen in range(1, len(votes) + 1):
        window = votes[max(0, seen - n) : seen]
        out.append(sum(window) >= (k if seen >= n else max(1, k - (n - seen))))
    return out


@pytest.mark.parametrize(("k", "n"), [(3, 5), (2, 3), (1, 1), (5, 5)])
def test_every_vote_sequence_follows_the_stated_rule(k, n):
    for votes in itertools.product([False, True], repeat=7):
        smoother = KOfNSmoother(k, n)
        assert [smoother.update({"d": v})["d"] for v in votes] == _by_definition(list(votes), k, n), votes


def test_a_stream_s_first_frames_block_on_a_few_blocks_and_the_full_window_on_k():
    smoother = KOfNSmoother(3, 5)
    # frame 1-3 need 1 block, frame 4 needs 2, frame 5 on needs 3 of the last 5.
    votes = [True, False, False, False, False, True, True, False, True]
    assert [smoother.update({"d": v})["d"] for v in votes] == [c == "T" for c in "TTTFFFFFT"]


def test_frames_without_a_decision_cast_no_vote():
    smoother = KOfNSmoother(3, 5, ("d",))
    assert smoother.update(None) == {"d": True}  # nothing has voted yet: the stream fails closed
    assert smoother.update({"d": True}) == {"d": True}
    for _ in range(10):  # abstentions neither fill the window nor wash the block out
        assert smoother.update(None) == {"d": True}
    assert [smoother.update({"d": False})["d"] for _ in range(4)] == [True, True, False, False]


def test_a_smoother_without_columns_has_no_state_before_a_vote():
    assert KOfNSmoother(3, 5).update(None) is None


def test_a_column_blocks_until_its_own_first_vote():
    smoother = KOfNSmoother(1, 1, ("a", "b"))
    assert smoother.update({"a": False}) == {"a": False, "b": True}
    assert smoother.update({"a": False, "b": False}) == {"a": False, "b": False}


def test_k_above_n_is_refused():
    with pytest.raises(ValueError, match="1 <= k <= n"):
        KOfNSmoother(4, 3)


def test_no_face_is_flagged_after_no_face_seconds_without_a_decided_face():
    clock = NoFaceClock(seconds=2.0, rate_hz=5.0)
    flags = [clock.update(i * 0.2, decided=False) for i in range(11)]
    assert flags == [False] * 9 + [True, True]  # ten faceless frames cover 2.0 s
    assert clock.update(2.2, decided=True) is False
    assert clock.update(2.4, decided=False) is False  # the count starts again after a decided face


def test_stream_time_advances_by_the_frame_rate_and_keeps_video_spacing_across_inputs():
    clock = StreamClock(rate_hz=5.0)
    assert [clock.tick("a.png", None), clock.tick("b.png", None)] == [0.0, 0.2]
    assert [round(clock.tick("v.avi", t), 6) for t in (0.0, 0.1, 0.2)] == [0.4, 0.5, 0.6]
    assert round(clock.tick("w.avi", 0.0), 6) == 0.8  # a second video continues the stream


def test_a_faster_video_is_sampled_at_the_policy_rate_on_its_timestamps():
    sampler = VideoSampler(rate_hz=2.0)
    times = [i / 25 for i in range(76)]  # 3 s of a 25 fps video
    taken = [t for t in times if sampler.take(t)]
    assert taken == pytest.approx([0.0, 0.52, 1.0, 1.52, 2.0, 2.52, 3.0])  # first frame at or after each 0.5 s


def test_a_video_at_the_policy_rate_keeps_every_frame_and_a_gap_restarts_the_grid():
    sampler = VideoSampler(rate_hz=2.0)
    assert all(sampler.take(i * 0.5) for i in range(6))
    assert sampler.take(7.3) and not sampler.take(7.5) and sampler.take(7.8)


def test_rate_mismatches_are_described():
    assert rate_warning("call.mp4", 2.0, 2.0) is None
    assert "one frame every 0.5 s is judged" in rate_warning("call.mp4", 30.0, 2.0)
    slower = rate_warning("call.mp4", 1.0, 2.0)
    assert "slower" in slower and "do not hold" in slower and "2x" in slower
    assert "states no frame rate" in rate_warning("call.mp4", 0.0, 2.0)
