"""Issue 19 acceptance 4: the reference consumer, replaying test streams, decides as the workbench did, frame by frame.

A small content bundle carries a stream policy in its contract. Each test stream goes through the
consumer twice, as a folder of lossless frames and as an MP4 file, and its smoothed decisions must
equal the workbench's own (the calibrate stage's frame votes through the same k-of-n) on the very
frames the consumer saw: the cached frames, and the MP4's decoded frames.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from childsafe_runtime.consumer import Filter, stream_decisions
from doc_examples import drift
from export_cases import SIZE, content_case
from PIL import Image
from test_export import _inputs, _settings

from calibration.streams import (
    BASELINES,
    ContentStreamPolicy,
    certified_recall,
    decisions_of,
    frame_votes,
    policy_figures,
    scored_streams,
    smoothed,
)
from datamodules.synthetic.streams import SyntheticContentStreams, assign_stream_splits, write_mp4
from export.parity import reference_outputs
from export.pipeline import publish_bundle

K, N = 2, 3
DEADLINES = [1.0, 2.0, 5.0]
DECISION = "recall_explicit"


@pytest.fixture(scope="module")
def stream_bundle(tmp_path_factory):
    """(bundle, module, state, generator, manifest, frames): a bundle whose contract holds a 2-of-3 policy."""
    generator = SyntheticContentStreams(
        seed=5, num_streams=8, stream_seconds=8, event_seconds=(2, 3), image_size=SIZE, event_share=0.5
    )
    manifest = assign_stream_splits(generator.manifest(), {"calib": 0.5, "test": 0.5}, seed=0)
    frames = np.stack([generator.render(row, i) for i, row in manifest.iterrows()])
    rows = manifest[["split", "subject_id", "label"]].assign(sex="female")
    module, state, target = content_case("small_cnn")
    # The decision's threshold at the median score, so the frames' votes go both ways and parity means something.
    median = np.median(reference_outputs(module, state, frames, 0.9)["scores"][:, 0])
    points = [replace(state.operating_points[0], threshold=float(np.float32(median))), *state.operating_points[1:]]
    inputs = _inputs(module, replace(state, operating_points=points), frames, rows, target)
    outputs = reference_outputs(module, inputs.state, frames, 0.9)
    votes = frame_votes(outputs, inputs.state, DECISION)
    assert {True, False, None} <= set(votes)  # blocks, passes and abstentions all occur
    streams = scored_streams(manifest, votes)
    bound = certified_recall(decisions_of(streams["calib"], K, N), 2.0, 5.0, 0.95)
    events = sum(s.event is not None for s in streams["calib"])
    policy = ContentStreamPolicy(
        k=K,
        n=N,
        decision=DECISION,
        frame_rate_hz=generator.frame_rate_hz,
        deadline_s=5.0,
        min_deadline_recall=0.0,
        confidence=0.95,
        recall_lower_bound=bound,
        calib_event_streams=events,
        calib_streams=len(streams["calib"]),
        candidates=1,
        calib=policy_figures(streams["calib"], K, N, 2.0, DEADLINES),
        test=policy_figures(streams["test"], K, N, 2.0, DEADLINES),
        compared={name: policy_figures(streams["test"], *kn, 2.0, DEADLINES) for name, kn in BASELINES.items()},
    )
    state = replace(inputs.state, stream=policy)
    root = tmp_path_factory.mktemp("stream-bundle")
    bundle, _ = publish_bundle(_settings(root), replace(inputs, state=state), root)
    return bundle, module, state, generator, manifest, frames


def _workbench(module, state, frames: np.ndarray) -> list[bool]:
    """The workbench's stream decisions on these frames: calibrate's votes through the policy's k-of-n."""
    votes = frame_votes(reference_outputs(module, state, frames, 0.9), state, DECISION)
    return smoothed(tuple(votes), state.stream.k, state.stream.n).tolist()


def _consumer(bundle, source) -> list[bool]:
    return [record["smoothed"][DECISION] for record in stream_decisions(Filter(bundle), source)]


def test_the_contract_carries_the_policy_and_the_runtime_smoothing_is_that_policy(stream_bundle):
    bundle, *_ = stream_bundle
    contract = json.loads((bundle / "contract.json").read_text())
    assert contract["stream"]["certified"] and contract["stream"]["policy"]["decision"] == DECISION
    smoothing = contract["runtime"]["smoothing"]
    assert (smoothing["k"], smoothing["n"], smoothing["frame_rate_hz"]) == (K, N, 2.0)
    assert contract["stream"]["frame_rate_hz"] == 2.0
    assert "Live streams" in (bundle / "model_card.md").read_text()
    assert drift(contract) == []  # docs/export-contract.md's certified stream example has this structure


def test_replayed_test_streams_decide_as_the_workbench_frame_by_frame(stream_bundle, tmp_path):
    bundle, module, state, _, manifest, frames = stream_bundle
    test = manifest[manifest["split"] == "test"]
    compared = 0
    for stream_id, rows in test.groupby("stream_id"):
        rows = rows.sort_values("frame_index")
        stream_frames = frames[rows.index.to_numpy()]
        folder = tmp_path / "frames" / stream_id
        folder.mkdir(parents=True)
        for index, frame in zip(rows["frame_index"], stream_frames, strict=True):
            Image.fromarray(frame).save(folder / f"{index:04d}.png")
        expected = _workbench(module, state, stream_frames)
        assert _consumer(bundle, folder) == expected, stream_id

        video = write_mp4(stream_frames, tmp_path / f"{stream_id}.mp4", 2.0)
        decoded = _decoded(video)  # MP4 is lossy: the workbench judges the frames the consumer decodes
        assert len(decoded) == len(stream_frames)
        assert _consumer(bundle, video) == _workbench(module, state, decoded), stream_id
        compared += len(expected)
    assert compared == len(test)
    assert pd.unique(test["stream_id"]).size >= 2


def _decoded(video) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)
