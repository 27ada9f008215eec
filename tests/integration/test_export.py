"""Export: every backbone and head through the parity gate and the runtime consumer; corruption and tampering."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from childsafe_runtime.consumer import BundleError, Filter
from childsafe_runtime.crop import CropConvention
from contract_recount import recount_abstention, recount_bundle
from doc_examples import drift
from export_cases import CLASSES, SIZE
from export_cases import age_case as _age_case
from export_cases import content_case as _content_case
from export_cases import data as _data
from helpers import consume_without_torch
from omegaconf import OmegaConf

from calibration.fit import Scores, near_gate_rates, near_gate_years
from calibration.ood import OODCalibration
from calibration.operating_points import at_threshold, certify_threshold, is_degenerate, measure
from calibration.state import CalibrationState
from export.contract import KNOWN_RULES
from export.parity import certified_positives, reference_outputs
from export.pipeline import (
    DegeneratePointError,
    ExportInputs,
    ParityError,
    build_wrapper,
    manifest_record,
    publish_bundle,
)
from models.backbones import TORCHVISION_BACKBONES
from models.resize import Framing

REPO = Path(__file__).resolve().parents[2]


def _certified(state: CalibrationState, module, images: np.ndarray, rows: pd.DataFrame) -> CalibrationState:
    """Each point's certificate and test rates recounted on these rows, as calibrate would record them."""
    scores = reference_outputs(module, state, images, 0.9)["scores"]
    units = rows["subject_id"].to_numpy()
    points = []
    for column, point in enumerate(state.operating_points):
        positive = certified_positives(state, point, rows)
        split = {name: (rows["split"] == name).to_numpy() for name in ("calib", "test")}
        calib, test = (
            (split["calib"] & positive, split["calib"] & ~positive),
            (split["test"] & positive, split["test"] & ~positive),
        )
        certified = at_threshold(
            point.name,
            point.threshold,
            scores[calib[0], column],
            scores[calib[1], column],
            0.5,
            0.95,
            units[calib[0]],
            "subjects",
        )
        certified = replace(certified, target=point.target, gate=point.gate, labels=point.labels)
        measured = measure(
            certified, scores[test[0], column], scores[test[1], column], units[test[0]], units[test[1]], 0.01
        )
        if state.task == "age":  # the years just below the gate; a year nobody in the split has is null
            tested = Scores.of(
                scores[split["test"], column], positive[split["test"]], units[split["test"]], "subjects", "age"
            )
            ages = rows.loc[split["test"] & positive, "age"].to_numpy()
            years = near_gate_years(point.gate, 3)
            measured["near_gate"] = near_gate_rates(tested, ages, point.threshold, years, 0.95)
        points.append(replace(certified, test=measured))
    return replace(state, operating_points=points)


def _inputs(module, state, images, rows, target, wrapper=None) -> ExportInputs:
    calib, test = (images[(rows["split"] == split).to_numpy()] for split in ("calib", "test"))
    ood = OODCalibration.fit(calib, Framing(SIZE, SIZE), test)
    state = _certified(replace(state, ood=ood), module, images, rows)
    with tempfile.TemporaryDirectory() as folder:  # the data record of a real manifest file, as export makes it
        rows.to_parquet(Path(folder) / "manifest.parquet", index=False)
        data = {"name": "random", "licence": "n/a", "synthetic": True, "framing": Framing(SIZE, SIZE).describe()}
        data |= manifest_record(Path(folder) / "manifest.parquet")
    if target == "age":  # the crop the (stand-in) data was cut with: the contract's input.face_crop
        data["crop"] = {"margin": 0.4, "square": True, "min_face_side": 16, "size": SIZE, "input_size": SIZE}
    release = {"debug_run": False, "max_false_alarm_rate": 1.0}
    return ExportInputs(
        module, wrapper or build_wrapper(module, state, 0.9), state, images, rows, target, data, release
    )


def _settings(tmp_path: Path):
    return OmegaConf.create(
        {
            "model_name": "bundle",
            "quantize": None,
            "release_dir": str(tmp_path / "releases"),
            "opset": 18,
            "coverage": 0.9,
            "slice_attributes": ["sex"],
            "smoothing": {"method": "k_of_n", "k": 2, "n": 3, "frame_rate_hz": 5, "no_face_seconds": 2.0},
            "allow_degenerate": False,
            "signing": {"key": None},
        }
    )


def _export_and_consume(tmp_path: Path, module, state, target: str):
    images, rows = _data(target)
    inputs = _inputs(module, state, images, rows, target)
    state = inputs.state
    bundle, contract = publish_bundle(_settings(tmp_path), inputs, tmp_path)
    filter_ = Filter(bundle)
    records = filter_.run(images)
    reference = reference_outputs(module, state, images, 0.9)
    thresholds = np.array([p.threshold for p in state.operating_points])
    for i, record in enumerate(records):
        for column, name in enumerate(filter_.decision_names):
            if abs(reference["scores"][i, column] - thresholds[column]) > 1e-5:
                assert record["decisions"][name] == (reference["scores"][i, column] >= thresholds[column])
    return bundle, contract


@pytest.mark.parametrize("head", ["dldl", "corn", "regression"])
def test_small_age_models_pass_parity_and_run_in_the_consumer(tmp_path, head):
    bundle, contract = _export_and_consume(tmp_path, *_age_case("small_cnn", head))
    assert contract["versions"]["exporter"] == "dynamo" and contract["versions"]["opset"] == 18
    assert sorted(p.name for p in bundle.iterdir()) == ["SHA256SUMS", "contract.json", "model.onnx", "model_card.md"]
    assert contract["input"]["face_crop"] == CropConvention(0.4, True, 16).describe()
    assert contract["schema_version"] == 2 and contract["input"]["height"] is None is contract["input"]["width"]
    assert contract["input"]["resize"]["antialias"] is True and contract["input"]["network_size"] == SIZE
    assert contract["labels"]["gates"] == [13, 16, 18] == [g["gate"] for g in contract["calibration"]["gates"]]
    assert all(type(g) is int for g in contract["labels"]["gates"])
    for point in contract["operating_points"]:
        assert float(np.float32(point["threshold"])) == point["threshold"] and point["rule"] in KNOWN_RULES
    assert contract["abstention"]["ood"]["rule"] in KNOWN_RULES
    listed = [line.split()[1] for line in (bundle / "SHA256SUMS").read_text().splitlines()]
    assert listed == ["contract.json", "model.onnx", "model_card.md"]  # every file but the sums themselves
    # 24 random test ages over 0-80: some year below a gate has nobody, so its rate is null with a reason.
    near_gate = [year for point in contract["operating_points"] for year in point["test"]["near_gate"]]
    assert any(year["rate"] is None and year["reason"].startswith("no subjects aged") for year in near_gate)
    assert "NaN" not in (bundle / "contract.json").read_text()
    card = (bundle / "model_card.md").read_text()
    assert "The graph itself resizes to 64x64" in card and "`ood_score` abstains" in card and "**unsigned**" in card
    if head == "dldl":
        assert drift(contract) == []  # docs/export-contract.md's age examples have this contract's structure


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_small_content_model_passes_parity_and_runs_in_the_consumer(tmp_path, method):
    _, contract = _export_and_consume(tmp_path, *_content_case("small_cnn", method))
    assert [p["name"] for p in contract["operating_points"]] == ["recall_explicit", "recall_unsafe"]
    assert drift(contract) == []  # docs/export-contract.md's content examples have this contract's structure


@pytest.mark.slow
@pytest.mark.parametrize("backbone", TORCHVISION_BACKBONES)
@pytest.mark.parametrize("head", ["dldl", "corn", "regression", "content"])
def test_every_backbone_and_head_exports(tmp_path, backbone, head):
    case = _content_case(backbone) if head == "content" else _age_case(backbone, head)
    _export_and_consume(tmp_path, *case)


@pytest.mark.parametrize("corruption", ["perturbed_weight", "wrong_normalisation"])
def test_parity_gate_refuses_a_corrupted_export_and_publishes_nothing(tmp_path, corruption):
    module, state, target = _age_case("small_cnn", "dldl")
    images, rows = _data(target)
    inputs = _inputs(module, state, images, rows, target)
    wrapper = inputs.wrapper
    with torch.no_grad():
        if corruption == "perturbed_weight":
            next(wrapper.module.backbone.parameters()).view(-1)[0] += 5.0
        else:
            wrapper.module.mean += 10.0
    settings = _settings(tmp_path)
    with pytest.raises(ParityError, match=r"(?s)Parity gate failed.*output 'expected_age' differs"):
        publish_bundle(settings, inputs, tmp_path)
    assert list(Path(settings.release_dir).iterdir()) == []  # no bundle, no staging leftovers


def test_consumer_refuses_a_tampered_bundle_and_never_imports_torch(tmp_path):
    bundle, _ = _export_and_consume(tmp_path, *_content_case("small_cnn"))
    image = tmp_path / "frame.png"
    from PIL import Image

    # The bundle's calib split is uniform noise, so a noise frame is in distribution and gets a decision.
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(image)
    record = json.loads(consume_without_torch(bundle, image).stdout.splitlines()[0])
    assert set(record["decisions"]) == {"recall_explicit", "recall_unsafe"}
    assert set(record["outputs"]["probabilities"]) == set(CLASSES)

    model = bundle / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match its SHA256SUMS entry"):
        Filter(bundle)


def test_int8_is_measured_and_either_kept_or_refused_with_numbers(tmp_path):
    module, state, target = _content_case("small_cnn", "temperature")
    images, rows = _data(target)
    settings = _settings(tmp_path)
    settings.quantize = "int8"
    inputs = _inputs(module, state, images, rows, target)
    bundle, contract = publish_bundle(settings, inputs, tmp_path)
    quantization = contract["quantization"]
    assert set(quantization["latency_ms"]) == {"fp32_batch1", "int8_batch1", "fp32_batch32", "int8_batch32"}
    assert 0.0 <= quantization["deltas"]["decision_agreement"] <= 1.0
    assert quantization["kept"] == (not quantization["reasons"])
    assert contract["precision"] == ("int8" if quantization["kept"] else "fp32")
    assert not (bundle / "model.int8.onnx").exists()
    Filter(bundle)  # whichever graph was kept, the bundle verifies and loads


def test_consumer_reads_video_frames_and_smooths_k_of_n(tmp_path):
    import json

    import cv2
    from childsafe_runtime.consumer import KOfNSmoother, stream_decisions

    bundle, contract = _export_and_consume(tmp_path, *_content_case("small_cnn"))
    video = tmp_path / "stream.avi"
    rate = contract["runtime"]["smoothing"]["frame_rate_hz"]  # a video at the policy's rate: every frame is judged
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), rate, (SIZE, SIZE))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    writer.release()
    records = list(stream_decisions(Filter(bundle), video))
    assert [r["frame_index"] for r in records] == list(range(6))
    assert {r["source"] for r in records} == {str(video)}
    # Replaying the per-frame decisions through a fresh k-of-n smoother gives the stream's smoothed decisions.
    smoothing = contract["runtime"]["smoothing"]
    replay = KOfNSmoother(smoothing["k"], smoothing["n"], tuple(p["name"] for p in contract["operating_points"]))
    assert [replay.update(r["decisions"]) for r in records] == [r["smoothed"] for r in records]
    json.dumps(records)  # every record is plain JSON


def test_k_of_n_smoothing_fails_closed_while_the_window_fills():
    """Schema 2's warm-up: until n frames, max(1, k - (n - seen)) blocks suffice, so the first frame decides alone."""
    from childsafe_runtime.consumer import KOfNSmoother

    smoother = KOfNSmoother(k=2, n=3)
    decided = [smoother.update({"block": value})["block"] for value in (True, False, True, False, False, True)]
    assert decided == [True, True, True, False, False, False]  # windows: T, TF, TFT, FTF, TFF, FFT


@pytest.mark.parametrize("case", ["age", "content"])
def test_the_shipped_graph_recounts_exactly_the_certified_misses(tmp_path, case):
    """Run model.onnx itself on the calib split and recount per person, reading only the contract."""
    module, state, target = _age_case("small_cnn", "dldl") if case == "age" else _content_case("small_cnn")
    images, rows = _data(target)
    bundle, contract = publish_bundle(_settings(tmp_path), _inputs(module, state, images, rows, target), tmp_path)
    counts = recount_bundle(bundle, images, rows)
    assert counts and all(graph == certified for graph, certified in counts.values()), counts
    graph_rate, stated_rate = recount_abstention(bundle, images, rows)
    assert graph_rate == stated_rate and 0.0 <= stated_rate <= 0.005
    assert {p["guarantee"]["unit"] for p in contract["operating_points"]} == {"subjects"}


def test_a_degenerate_point_is_refused_by_name_unless_allowed(tmp_path):
    """Positives and negatives that overlap completely: a 99% recall target flags nearly every negative."""
    rng = np.random.default_rng(0)
    point = certify_threshold("recall_explicit", rng.uniform(size=400), rng.uniform(size=400), 0.01, 0.95)
    point = replace(point, target="explicit", labels="label", test={"false_alarm_rate": point.false_alarm_rate})
    assert is_degenerate(point, 0.5)
    module, state, target = _content_case("small_cnn")
    state = replace(state, operating_points=[replace(state.operating_points[0], threshold=0.0)])
    images, rows = _data(target)
    inputs = _inputs(module, state, images, rows, target)
    inputs = replace(
        inputs,
        state=replace(inputs.state, operating_points=[replace(inputs.state.operating_points[0], degenerate=True)]),
    )
    settings = _settings(tmp_path)
    with pytest.raises(DegeneratePointError, match=r"'recall_explicit' flags 100\.0% of calib.*allow_degenerate=true"):
        publish_bundle(settings, inputs, tmp_path)
    assert list(Path(settings.release_dir).iterdir()) == []
    settings.allow_degenerate = True
    _, contract = publish_bundle(settings, inputs, tmp_path)
    assert contract["operating_points"][0]["degenerate"] is True
    assert contract["release"]["allow_degenerate"] is True
    assert contract["release"]["warnings"] == [
        "published although degenerate: operating point 'recall_explicit' flags 100.0% of calib and 100.0% of test "
        "negatives (ceiling 1)"
    ]
