"""Issue 19 item 4 for age: the consumer applies the contract's age stream policy exactly as the workbench scores it.

A small age bundle carries a mean-logit stream policy. Each test stream of synthetic faces goes
through the consumer with a box per frame, as a folder of lossless frames and as an MP4 file; its
smoothed gate decisions must equal the workbench's (the calibrate stage's window scores against the
certified thresholds) on the very crops the consumer judged.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from childsafe_runtime.boxes import BoxesSidecar
from childsafe_runtime.consumer import Filter, stream_decisions
from childsafe_runtime.crop import CropConvention, crop_face
from export_cases import SIZE, age_case
from jsonschema import Draft202012Validator
from PIL import Image
from test_export import _inputs, _settings
from test_stream_replay import _decoded

from calibration.age_streams import AgeStreamPolicy, window_scores
from datamodules.synthetic.streams import SyntheticAgeStreams, assign_stream_splits, write_mp4
from evaluation.stats import proportion
from export.contract import SCHEMA_PATH
from export.parity import reference_outputs
from export.pipeline import publish_bundle

N = 3
MARGIN = 0.4
SIDE = SIZE / (1 + 2 * MARGIN)  # the face box whose grown square is the whole frame
BOX = [(SIZE - SIDE) / 2, (SIZE - SIDE) / 2, (SIZE + SIDE) / 2, (SIZE + SIDE) / 2]
CONVENTION = CropConvention(MARGIN, True, 16)
RATES = {
    name: proportion(np.array([False, True]), "stream").to_dict()
    for name in ("minor_pass_rate", "adult_false_rejection")
}


def _gate_scores(module, state, crops: np.ndarray, n: int) -> np.ndarray:
    outputs = reference_outputs(module, state, crops, 0.9)
    decided = outputs["ood_score"].astype(np.float32) <= np.float32(state.ood.threshold)
    return window_scores(outputs["prob_below"].astype(np.float64), decided, n)


@pytest.fixture(scope="module")
def age_stream_bundle(tmp_path_factory):
    """(bundle, module, state, manifest, frames): an age bundle with a mean-logit policy over 3 frames."""
    generator = SyntheticAgeStreams(seed=3, num_streams=6, frames_per_stream=6, image_size=SIZE, margin=MARGIN)
    manifest = assign_stream_splits(generator.manifest(), {"calib": 0.5, "test": 0.5}, seed=0)
    frames = np.stack([generator.render(row, i) for i, row in manifest.iterrows()])
    module, state, target = age_case("small_cnn", "dldl")
    rows = manifest[["split", "subject_id", "age"]].assign(sex="female")
    inputs = _inputs(module, state, frames, rows, target)
    scores = _gate_scores(module, inputs.state, frames, N)
    # Each gate's threshold at the median finite window score, so decisions go both ways and parity means something.
    names = [p.name for p in inputs.state.operating_points]
    gates = [
        {
            "gate": float(point.gate),
            "column": point.name,
            "threshold_logit": float(np.median(scores[np.isfinite(scores[:, i]), i])),
            "certificate": {
                "max_minor_pass_rate": 0.5,
                "confidence": 0.95,
                "minor_people": 5,
                "passed": 0,
                "pass_rate_upper_bound": 0.45,
                "unit": "people (one stream each)",
            },
            "calib": RATES,
            "test": RATES,
            "per_frame": RATES,
        }
        for i, point in enumerate(inputs.state.operating_points)
    ]
    policy = AgeStreamPolicy(N, generator.frame_rate_hz, 6, 0.5, 0.95, gates, 6, 3, 3)
    state = replace(inputs.state, age_policy=policy)
    root = tmp_path_factory.mktemp("age-stream-bundle")
    bundle, _ = publish_bundle(_settings(root), replace(inputs, state=state), root)
    assert names == list(policy.thresholds)
    return bundle, module, state, manifest, frames


def _consumer(bundle, source, sidecar) -> list[dict[str, bool]]:
    return [record["smoothed"] for record in stream_decisions(Filter(bundle), source, sidecar=sidecar)]


def _workbench(module, state, frames: np.ndarray) -> list[dict[str, bool]]:
    crops = np.stack([crop_face(frame, BOX, CONVENTION) for frame in frames])
    scores = _gate_scores(module, state, crops, state.age_policy.n)
    thresholds = state.age_policy.thresholds
    return [{name: bool(s >= t) for (name, t), s in zip(thresholds.items(), row, strict=True)} for row in scores]


def test_the_contract_ships_the_age_policy_as_the_runtime_smoothing(age_stream_bundle):
    bundle, _, state, *_ = age_stream_bundle
    contract = json.loads((bundle / "contract.json").read_text())
    Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(contract)
    smoothing = contract["runtime"]["smoothing"]
    assert smoothing["method"] == "mean_logit" and smoothing["n"] == N
    assert smoothing["thresholds_logit"] == state.age_policy.thresholds
    assert smoothing["inputs"] == {"gate13": "P(age < 13)", "gate16": "P(age < 16)", "gate18": "P(age < 18)"}
    assert contract["stream"]["certified"] and contract["stream"]["policy"]["method"] == "mean_logit"
    assert "judged on the mean of logit P(age < gate) over their last 3" in (bundle / "model_card.md").read_text()


def test_replayed_age_streams_decide_as_the_workbench_and_fail_closed_until_n_frames(age_stream_bundle, tmp_path):
    bundle, module, state, manifest, frames = age_stream_bundle
    test = manifest[manifest["split"] == "test"]
    decisions = set()
    for stream_id, rows in test.groupby("stream_id"):
        rows = rows.sort_values("frame_index")
        stream_frames = frames[rows.index.to_numpy()]
        folder = tmp_path / "frames" / stream_id
        folder.mkdir(parents=True)
        lines = []
        for index, frame in zip(rows["frame_index"], stream_frames, strict=True):
            Image.fromarray(frame).save(folder / f"{index:04d}.png")
            lines.append(json.dumps({"frame": f"{index:04d}.png", "boxes": [BOX]}))
        sidecar = tmp_path / f"{stream_id}.jsonl"
        sidecar.write_text("\n".join(lines) + "\n")
        replayed = _consumer(bundle, folder, BoxesSidecar.read(sidecar))
        assert replayed == _workbench(module, state, stream_frames), stream_id
        assert all(all(r.values()) for r in replayed[: N - 1])  # fewer than n decided frames: every gate blocks
        decisions |= {v for r in replayed[N - 1 :] for v in r.values()}

        video = write_mp4(stream_frames, tmp_path / f"{stream_id}.mp4", 2.0)
        video_lines = [json.dumps({"frame": video.name, "index": i, "boxes": [BOX]}) for i in range(len(stream_frames))]
        video_sidecar = tmp_path / f"{stream_id}-video.jsonl"
        video_sidecar.write_text("\n".join(video_lines) + "\n")
        decoded = _decoded(video)
        assert _consumer(bundle, video, BoxesSidecar.read(video_sidecar)) == _workbench(module, state, decoded)
    assert decisions == {True, False}  # past the warm-up, windows both pass and block
