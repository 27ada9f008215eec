import numpy as np
import pandas as pd
import pytest

from core.errors import WorkbenchError
from datamodules.synthetic.streams import (
    MIN_ONSET_FRAMES,
    SyntheticAgeStreams,
    SyntheticContentStreams,
    assign_stream_splits,
    check_stream_ids_disjoint,
    write_mp4,
)
from evaluation.streams import StreamDecisions

# 6 streams of 8 s at 2 Hz (16 frames), 32 px: small enough to render whole streams in a test.
TINY = {"num_streams": 6, "stream_seconds": 8.0, "event_seconds": (1.0, 3.0), "image_size": 32}


def frame_row(manifest: pd.DataFrame, stream_id: str, frame: int) -> pd.Series:
    return manifest[(manifest["stream_id"] == stream_id) & (manifest["frame_index"] == frame)].iloc[0]


def test_content_streams_are_deterministic_and_frames_render_alone():
    generator = SyntheticContentStreams(seed=3, **TINY)
    manifest = generator.manifest()
    pd.testing.assert_frame_equal(manifest, SyntheticContentStreams(seed=3, **TINY).manifest())
    stream_id = generator.stream_id(1)
    full_pass = generator.frames(1)
    alone = generator.render(frame_row(manifest, stream_id, 5), index=0)
    assert alone.dtype == np.uint8 and alone.shape == (32, 32, 3)
    assert np.array_equal(alone, full_pass[5])

    other_seed = SyntheticContentStreams(seed=4, **TINY)
    other = other_seed.render(frame_row(other_seed.manifest(), other_seed.stream_id(1), 5), index=0)
    assert not np.array_equal(alone, other)


def test_age_streams_are_deterministic_and_frames_render_alone():
    kwargs = {"num_streams": 3, "frames_per_stream": 6, "image_size": 32}
    generator = SyntheticAgeStreams(seed=3, **kwargs)
    manifest = generator.manifest()
    pd.testing.assert_frame_equal(manifest, SyntheticAgeStreams(seed=3, **kwargs).manifest())
    alone = generator.render(frame_row(manifest, generator.stream_id(2), 5), index=0)
    assert np.array_equal(alone, generator.frames(2)[5])
    other_seed = SyntheticAgeStreams(seed=4, **kwargs)
    assert not np.array_equal(alone, other_seed.render(frame_row(other_seed.manifest(), other_seed.stream_id(2), 5), 0))


def test_consecutive_frames_are_much_closer_than_frames_of_two_streams():
    generator = SyntheticContentStreams(seed=0, event_share=0.0, **TINY)
    streams = [generator.frames(s).astype(float) for s in range(3)]
    within = np.mean([np.abs(np.diff(frames, axis=0)).mean() for frames in streams])
    across = np.mean([np.abs(streams[a] - streams[b]).mean() for a, b in ((0, 1), (0, 2), (1, 2))])
    assert within < across / 3, (within, across)


def test_events_switch_to_explicit_inside_the_stream_in_the_stated_share():
    generator = SyntheticContentStreams(seed=1, num_streams=40, event_share=0.25, stream_seconds=20.0)
    manifest, events = generator.manifest(), generator.events()
    frames = generator.frames_per_stream
    assert frames == 40 and manifest.groupby("stream_id").size().eq(frames).all()
    assert sum(event is not None for event in events.values()) == 10  # exactly round(0.25 * 40)

    for stream_id, rows in manifest.groupby("stream_id"):
        event = events[stream_id]
        explicit = (rows["label_name"] == "explicit").to_numpy()
        assert rows["event_start"].nunique() == 1 and rows["event_end"].nunique() == 1
        if event is None:
            assert not explicit.any() and rows["event_start"].iloc[0] == rows["event_end"].iloc[0] == -1
            continue
        start, end = event
        assert MIN_ONSET_FRAMES <= start < end <= frames
        assert 3.0 <= (end - start) / generator.frame_rate_hz <= 10.0
        assert np.array_equal(np.flatnonzero(explicit), np.arange(start, end))
        assert (rows["event_start"].iloc[0], rows["event_end"].iloc[0]) == event
        assert rows["label"].iloc[0] != generator.classes.index("explicit")
        StreamDecisions(stream_id, blocked=explicit, event=event)  # the consumer accepts the annotation
    np.testing.assert_allclose(manifest["timestamp_s"], manifest["frame_index"] / 2.0)


def test_age_stream_frame_noise_has_the_stated_correlation_and_spread():
    generator = SyntheticAgeStreams(num_streams=400, frames_per_stream=50, frame_correlation=0.8, frame_sigma_years=1.5)
    manifest = generator.manifest()
    per_stream = manifest.groupby("stream_id")
    assert (per_stream[["subject_id", "age", "sex", "skin_tone", "subject_apparent_age"]].nunique() == 1).all().all()
    assert manifest.groupby("subject_id")["stream_id"].nunique().eq(1).all()  # one person per stream, and back

    unclipped = manifest[manifest["age"].between(10, 65)]  # far from the clips at 0 and 95 years
    noise = (unclipped["apparent_age"] - unclipped["subject_apparent_age"]).to_numpy().reshape(-1, 50)
    assert noise.std() == pytest.approx(1.5, rel=0.05)
    lag1 = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert lag1 == pytest.approx(0.8, abs=0.03)
    assert abs(np.corrcoef(noise[:, :-5].ravel(), noise[:, 5:].ravel())[0, 1] - 0.8**5) < 0.05


@pytest.mark.parametrize(
    "generator",
    [SyntheticContentStreams(num_streams=30, stream_seconds=4.0, event_seconds=(1.0, 1.0)), SyntheticAgeStreams()],
    ids=["content", "age"],
)
def test_splits_keep_whole_streams_and_subjects_apart(generator):
    manifest = generator.manifest()
    split = assign_stream_splits(manifest, {"calib": 0.5, "test": 0.5}, seed=0)
    assert set(split["split"]) == {"calib", "test"} and split.drop(columns="split").equals(manifest)
    for key in ("stream_id", "subject_id"):
        assert split.groupby(key)["split"].nunique().eq(1).all()
    if "event_start" in manifest:  # both splits get event streams to measure time-to-block on
        assert split.query("event_start >= 0")["split"].nunique() == 2


def test_a_stream_id_reused_across_splits_is_named():
    generator = SyntheticContentStreams(**TINY)
    calib = generator.manifest().assign(split="calib")
    test = SyntheticContentStreams(seed=1, **TINY).manifest().assign(split="test")
    check_stream_ids_disjoint(pd.concat([calib, test]))
    reused = test.assign(stream_id=test["stream_id"].replace("cstream-1-00004", "cstream-0-00004"))
    with pytest.raises(WorkbenchError, match="stream_id 'cstream-0-00004'"):
        check_stream_ids_disjoint(pd.concat([calib, reused]))
    with pytest.raises(WorkbenchError, match="stream_id 'cstream-0-00004'"):
        assign_stream_splits(pd.concat([calib, reused], ignore_index=True), {"calib": 0.5, "test": 0.5}, seed=0)


def test_mp4_round_trip_keeps_frame_count_and_rate(tmp_path):
    import cv2

    frames = SyntheticContentStreams(**TINY).frames(0)[:6]
    path = write_mp4(frames, tmp_path / "stream.mp4", frame_rate_hz=2.0)
    video = cv2.VideoCapture(str(path))
    try:
        assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(2.0)
        assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        decoded = []
        while (frame := video.read())[0]:
            decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    finally:
        video.release()
    assert len(decoded) == 6
    assert np.abs(np.stack(decoded).astype(float) - frames).mean() < 20  # lossy, but the same pictures in RGB order


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SyntheticContentStreams(num_streams=0), "num_streams"),
        (lambda: SyntheticContentStreams(frame_rate_hz=0.0), "frame_rate_hz"),
        (lambda: SyntheticContentStreams(stream_seconds=0.4), "stream_seconds"),
        (lambda: SyntheticContentStreams(stream_seconds=5.0, event_seconds=(3.0, 6.0)), "event_seconds"),
        (lambda: SyntheticContentStreams(event_share=1.5), "event_share"),
        (lambda: SyntheticContentStreams(classes=("safe", "suggestive")), "classes"),
        (lambda: SyntheticAgeStreams(num_streams=0), "num_streams"),
        (lambda: SyntheticAgeStreams(frame_rate_hz=-2.0), "frame_rate_hz"),
        (lambda: SyntheticAgeStreams(frames_per_stream=0), "frames_per_stream"),
        (lambda: SyntheticAgeStreams(frame_correlation=1.0), "frame_correlation"),
        (lambda: write_mp4(np.zeros((0, 8, 8, 3), np.uint8), "x.mp4", 2.0), "frames"),
        (lambda: write_mp4(np.zeros((2, 8, 8, 3), np.uint8), "x.mp4", 0.0), "frame_rate_hz"),
        (lambda: assign_stream_splits(pd.DataFrame(), {"calib": 0.7, "test": 0.7}, 0), "split_fractions"),
    ],
)
def test_bad_input_names_the_field(make, field):
    with pytest.raises(WorkbenchError, match=field):
        make()
