"""The runtime consumer as a runtime engineer runs it (issue 15 items 2, 3 and 7; acceptance 2, 3 and 6).

Most tests use the stand-in v2 bundles of conftest.py, whose 'age' is the brightness of what the graph
is fed, so each face's answer is known in advance. The exported-bundle tests at the end run the real
exporter on a small model and compare the consumer with the workbench's own ingest path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from childsafe_runtime.consumer import EXIT_NOTHING_DECIDED, EXIT_REFUSED, EXIT_SIDECAR, EXIT_UNREADABLE, Filter, main
from childsafe_runtime.crop import CropConvention, crop_face
from childsafe_runtime.frames import InputError
from childsafe_runtime.integrity import BundleError
from helpers import consume_without_torch
from onnx import TensorProto, helper
from PIL import Image
from stand_in_bundles import stand_in_contract, stand_in_graph, write_bundle

REPO = Path(__file__).resolve().parents[2]


def _consume(capsys, *argv) -> tuple[int, list[dict], str]:
    """Exit code, JSON records (stdout) and the operator's messages (stderr) of one childsafe-filter run."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def _frames(records: list[dict]) -> list[dict]:
    return [r for r in records if r["type"] == "frame"]


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _flat(value: int, height: int = 96, width: int = 128) -> np.ndarray:
    return np.full((height, width, 3), value, np.uint8)


def _boxes(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _scene(faces: list[tuple[int, list[int]]], value: int = 40) -> np.ndarray:
    """A dark frame with flat 'faces' (brightness, box) pasted in; the crop margin shows some background."""
    frame = _flat(value, 160, 240)
    for brightness, (x0, y0, x1, y1) in faces:
        frame[y0:y1, x0:x1] = brightness
    return frame


# --- contract checks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 3}, r"schema_version 3: this childsafe-runtime reads schema 2 only"),
        ({"schema_version": 1}, r"schema_version 1"),
        ({"rule": "decision = score > threshold"}, r"operating point 'gate13' has rule 'decision = score > threshold'"),
        ({"ood_rule": "abstain when ood_score >= threshold"}, r"abstention.ood has rule 'abstain when ood_score >="),
    ],
)
def test_an_unknown_schema_version_or_rule_is_refused_with_exit_2(tmp_path, capsys, change, message):
    contract = stand_in_contract("age")
    if "rule" in change:
        contract["operating_points"][0]["rule"] = change["rule"]
    elif "ood_rule" in change:
        contract["abstention"]["ood"]["rule"] = change["ood_rule"]
    else:
        contract.update(change)
    bundle = write_bundle(tmp_path / "bundle", stand_in_graph("age"), contract)
    with pytest.raises(BundleError, match=message):
        Filter(bundle)
    code, records, err = _consume(capsys, bundle, _save(tmp_path / "a.png", _flat(60)))
    assert code == EXIT_REFUSED and records == [] and "refused" in err


def test_without_contract_json_the_verified_embedded_contract_is_used_and_the_operator_told(
    tmp_path, capsys, stand_in_bundles
):
    bundle = shutil.copytree(stand_in_bundles["content"], tmp_path / "bundle")
    (bundle / "contract.json").unlink()
    code, records, err = _consume(capsys, bundle, _save(tmp_path / "dark.png", _flat(30)))
    assert code == 0 and _frames(records)[0]["model_name"] == "stand-in-content"
    assert "contract.json is missing: using the contract embedded in model.onnx" in err
    assert "No public key pinned" in err


def test_a_pinned_key_refuses_an_unsigned_bundle_and_accepts_a_signed_one(tmp_path, capsys, stand_in_bundles):
    from childsafe_runtime.signing import new_key_pair, sign_sums

    private, public = new_key_pair(tmp_path / "keys")
    image = _save(tmp_path / "dark.png", _flat(30))
    code, _, err = _consume(capsys, stand_in_bundles["content"], image, "--public-key", public)
    assert code == EXIT_REFUSED and "SHA256SUMS.sig" in err
    signed = shutil.copytree(stand_in_bundles["content"], tmp_path / "signed")
    sign_sums(signed, private)
    code, _, err = _consume(capsys, signed, image, "--public-key", public)
    assert code == 0 and "No public key pinned" not in err


# --- faces, abstention, frame decision (acceptance 2 on the stand-in) -------------------------------


def test_each_face_is_cropped_by_the_contract_and_the_youngest_face_decides(tmp_path, capsys, stand_in_bundles):
    """0, 1 and 2 faces: a dark face is young (blocks gate18), a bright face is old (blocks nothing)."""
    young, old = (5, [30, 30, 70, 80]), (235, [140, 40, 190, 100])
    scenes = {"none.png": [], "old.png": [old], "both.png": [young, old]}
    for name, faces in scenes.items():
        _save(tmp_path / "scenes" / name, _scene(faces))
    sidecar = _boxes(
        tmp_path / "boxes.jsonl", [{"frame": n, "boxes": [box for _, box in faces]} for n, faces in scenes.items()]
    )
    code, records, _ = _consume(capsys, stand_in_bundles["age"], tmp_path / "scenes", "--boxes", sidecar)
    by_name = {r["frame"]: r for r in _frames(records)}
    assert code == 0
    assert by_name["none.png"]["decisions"] is None and by_name["none.png"]["abstained"] == "no_face"
    filter_ = Filter(stand_in_bundles["age"])
    for name, faces in scenes.items():
        frame = np.asarray(Image.open(tmp_path / "scenes" / name))
        crops = [crop_face(frame, box, CropConvention()) for _, box in faces]
        expected = [filter_.run([crop])[0] for crop in crops]  # each crop alone, at its own size
        got = by_name[name]["faces"]
        assert [f["box"] for f in got] == [[float(v) for v in box] for _, box in faces]
        for face, reference in zip(got, expected, strict=True):
            assert face["outputs"]["expected_age"] == pytest.approx(reference["outputs"]["expected_age"], abs=1e-5)
            assert face["decisions"] == reference["decisions"]
    both = by_name["both.png"]
    assert both["faces"][0]["decisions"]["gate18"] and not both["faces"][1]["decisions"]["gate18"]
    assert both["decisions"] == {
        name: any(face["decisions"][name] for face in both["faces"]) for name in both["decisions"]
    }
    assert both["decisions"]["gate18"] and not by_name["old.png"]["decisions"]["gate18"]
    assert both["smoothed"]["gate18"]  # an image is a stream of one frame: its block stays a block


def test_faces_batched_into_one_call_keep_their_own_outputs(stand_in_bundles):
    filter_ = Filter(stand_in_bundles["age"])
    boxes = [[30, 30, 70, 80], [150, 30, 190, 80], [100, 100, 140, 150]]  # equal sizes: one session call
    frame = _scene([(5, boxes[0]), (235, boxes[1]), (120, boxes[2])])
    batched = filter_.decide_many([(frame, boxes), (frame, boxes[::-1])], batch=8)
    alone = [filter_.decide(frame, [box])["faces"][0] for box in boxes]
    assert batched[0]["faces"] == alone and batched[1]["faces"] == alone[::-1]


def test_too_small_and_out_of_distribution_faces_abstain_and_do_not_decide(stand_in_bundles):
    filter_ = Filter(stand_in_bundles["age"])
    frame = _scene([(0, [20, 20, 80, 90]), (235, [150, 40, 190, 100]), (20, [200, 120, 210, 130])], value=0)
    result = filter_.decide(frame, [[20, 20, 80, 90], [150, 40, 190, 100], [200, 120, 210, 130]])
    reasons = [face["abstained"] for face in result["faces"]]
    assert reasons == ["out_of_distribution", None, "face_too_small"]  # black face: ood_score near 1
    assert result["faces"][0]["outputs"]["ood_score"] > 0.9 and result["faces"][0]["decisions"] is None
    assert result["decisions"] == result["faces"][1]["decisions"]  # only the decided face counts
    alone = filter_.decide(frame, [[20, 20, 80, 90], [200, 120, 210, 130]])
    assert alone["decisions"] is None and alone["abstained"] == "all_faces_abstained"
    with pytest.raises(InputError, match=r"frame 0 of this call is 100x8 pixels"):
        filter_.decide(np.zeros((8, 100, 3), np.uint8), [])


def test_a_face_crop_beyond_max_side_abstains_instead_of_reaching_the_graph(stand_in_bundles):
    filter_ = Filter(stand_in_bundles["age"])
    frame = np.full((3000, 3000, 3), 128, np.uint8)  # 2900 px box + 40% margin a side: a 5220 px crop
    result = filter_.decide(frame, [[50, 50, 2950, 2950], [100, 100, 300, 300]])
    assert [face["abstained"] for face in result["faces"]] == ["face_crop_too_large", None]
    assert result["faces"][0]["outputs"] is None and result["decisions"] == result["faces"][1]["decisions"]


def test_a_stream_without_a_decided_face_for_no_face_seconds_is_flagged(tmp_path, capsys, stand_in_bundles):
    folder = tmp_path / "call"
    for i in range(12):
        _save(folder / f"{i:03d}.png", _scene([]))
    face = [40, 40, 90, 100]
    sidecar = _boxes(tmp_path / "boxes.jsonl", [{"frame": "011.png", "boxes": [face]}])
    code, records, _ = _consume(capsys, stand_in_bundles["age"], folder, "--folder-is-stream", "--boxes", sidecar)
    frames = _frames(records)
    assert code == 0 and {r["stream_id"] for r in frames} == {str(folder)}
    assert [r["timestamp_s"] for r in frames] == [round(i * 0.2, 6) for i in range(12)]  # frame_rate_hz 5
    # 5 frames a second, no_face_seconds 2.0: the tenth faceless frame completes 2 s; the decided face clears it.
    assert [("no_face" in r["flags"]) for r in frames] == [False] * 9 + [True, True, False]


def test_a_box_that_breaks_the_convention_or_a_line_for_no_frame_is_named(tmp_path, capsys, stand_in_bundles):
    folder = tmp_path / "frames"
    for name in ("a.png", "b.png", "c.png"):
        _save(folder / name, _scene([]))
    lines = [
        {"frame": "a.png", "boxes": [[40, 40, 90, 100]]},
        {"frame": "b.png", "boxes": [[90, 40, 40, 100]]},
        {"frame": "c.png", "boxes": [[float("nan"), 0, 10, 10]]},
        {"frame": "missing.png", "boxes": []},
    ]
    code, records, err = _consume(
        capsys, stand_in_bundles["age"], folder, "--boxes", _boxes(tmp_path / "b.jsonl", lines)
    )
    assert code == EXIT_SIDECAR
    failed = {Path(r["source"]).name: r["error"] for r in records if r["type"] == "failed"}
    assert "b.jsonl line 2, frame" in failed["b.png"] and "inverted or empty" in failed["b.png"]
    assert "b.jsonl line 3" in failed["c.png"] and "non-finite" in failed["c.png"]
    assert "line 4 gives boxes for frame 'missing.png', which no input of this run has" in err
    assert [r["frame"] for r in _frames(records)] == ["a.png"]
    (tmp_path / "bad.jsonl").write_text('{"frame": "a.png", "boxes": [[1, 2, 3]]}\n')
    code, records, err = _consume(capsys, stand_in_bundles["age"], folder, "--boxes", tmp_path / "bad.jsonl")
    assert code == EXIT_SIDECAR and records == [] and "bad.jsonl line 1" in err


# --- streams (acceptance 3) ---------------------------------------------------------------------------


def test_a_single_image_s_block_stays_blocked_after_smoothing(tmp_path, capsys, stand_in_bundles):
    code, records, _ = _consume(capsys, stand_in_bundles["content"], _save(tmp_path / "dark.png", _flat(60)))
    (frame,) = _frames(records)
    assert code == 0 and frame["decisions"]["recall_unsafe"] and frame["smoothed"] == frame["decisions"]


def test_a_stream_s_first_frames_follow_the_warm_up_rule(tmp_path, capsys, stand_in_bundles):
    """k=3 of n=5: frames 1-3 block on one block, frame 4 on two, then three of the last five."""
    values = [60, 200, 200, 200, 200, 60, 60, 200, 60]  # 60 blocks recall_unsafe, 200 does not
    paths = [_save(tmp_path / f"f{i}.png", _flat(v)) for i, v in enumerate(values)]
    code, records, _ = _consume(capsys, stand_in_bundles["content"], *paths, "--stream-id", "call-7")
    frames = _frames(records)
    assert code == 0 and {r["stream_id"] for r in frames} == {"call-7"}
    assert [r["decisions"]["recall_unsafe"] for r in frames] == [v == 60 for v in values]
    assert [r["smoothed"]["recall_unsafe"] for r in frames] == [c == "T" for c in "TTTFFFFFT"]
    code, records, _ = _consume(capsys, stand_in_bundles["content"], *paths)  # no stream id: each image alone
    assert [r["smoothed"] for r in _frames(records)] == [r["decisions"] for r in _frames(records)]


# --- operating the consumer (acceptance 6) ------------------------------------------------------------


def _grey_video(path: Path, fps: float, count: int = 6) -> Path:
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (64, 48))
    for value in range(40, 40 + 20 * count, 20):
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    return path


def test_records_carry_identity_time_and_latency_and_the_summary_counts(tmp_path, capsys, stand_in_bundles):
    video = _grey_video(tmp_path / "call.avi", 5)  # the stand-in contract's stream policy rate
    code, records, _ = _consume(capsys, stand_in_bundles["content"], video, "--batch", "4")
    frames, summary = _frames(records), records[-1]
    assert code == 0 and len(frames) == 6
    contract = stand_in_contract("content")
    for record in frames:
        assert record["model_name"] == contract["model_name"] and record["version"] == contract["created_at"]
        assert record["mlflow_run_id"] == contract["mlflow_run_id"] and record["stream_id"] == str(video)
        assert record["latency_ms"] > 0
    assert [(r["frame_index"], r["timestamp_s"]) for r in frames] == [(i, round(i / 5, 6)) for i in range(6)]
    assert summary["type"] == "summary" and summary["frames_read"] == 6 and summary["decided"] == 6
    assert summary["not_sampled"] == 0 and not [r for r in records if r["type"] == "warning"]
    assert summary["failed"] == summary["skipped"] == summary["abstained"] == 0 and summary["exit_code"] == 0
    assert summary["latency_ms"]["p50"] <= summary["latency_ms"]["p95"] <= summary["latency_ms"]["p99"]
    _, unbatched, _ = _consume(capsys, stand_in_bundles["content"], video)
    assert [r["outputs"] for r in _frames(unbatched)] == [r["outputs"] for r in frames]  # batching changes nothing


def test_a_video_faster_than_the_policy_rate_is_sampled_down_and_the_operator_told(tmp_path, capsys, stand_in_bundles):
    video = _grey_video(tmp_path / "call.avi", 10)  # the contract's policy counts frames at 5 per second
    code, records, _ = _consume(capsys, stand_in_bundles["content"], video)
    (warning,) = [r for r in records if r["type"] == "warning"]
    assert "runs at 10 fps" in warning["warning"] and "assumes 5" in warning["warning"]
    frames, summary = _frames(records), records[-1]
    assert code == 0 and [r["frame_index"] for r in frames] == [0, 2, 4]
    assert summary["frames_read"] == 6 and summary["not_sampled"] == 3 and summary["decided"] == 3


def test_a_video_slower_than_the_policy_rate_is_judged_whole_with_a_warning(tmp_path, capsys, stand_in_bundles):
    video = _grey_video(tmp_path / "call.avi", 2.5)
    code, records, _ = _consume(capsys, stand_in_bundles["content"], video)
    (warning,) = [r for r in records if r["type"] == "warning"]
    assert "slower" in warning["warning"] and "do not hold" in warning["warning"]
    assert code == 0 and len(_frames(records)) == 6 and records[-1]["not_sampled"] == 0


def test_a_broken_video_is_named_and_exits_3(tmp_path, capsys, stand_in_bundles):
    broken = tmp_path / "call.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 300)
    code, records, err = _consume(capsys, stand_in_bundles["content"], broken)
    assert code == EXIT_UNREADABLE and "call.mp4 could not be opened as a video" in err
    assert records[-1]["failed"] == 1 and records[-1]["frames_read"] == 0


def test_a_corrupt_frame_mid_video_is_named_and_the_stream_goes_on(tmp_path, capsys, stand_in_bundles):
    cv2 = pytest.importorskip("cv2")
    video = tmp_path / "call.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for value in range(40, 240, 20):  # 10 frames, each one JPEG
        writer.write(np.full((48, 64, 3), value, np.uint8))
    writer.release()
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG start markers
    data[starts[4] : starts[5]] = bytes(starts[5] - starts[4])  # frame 4 wiped
    video.write_bytes(bytes(data))
    code, records, err = _consume(capsys, stand_in_bundles["content"], video)
    frames = _frames(records)
    assert code == EXIT_UNREADABLE and "call.avi frame 4 could not be decoded; the stream goes on" in err
    assert [r["frame_index"] for r in frames][:4] == [0, 1, 2, 3] and max(r["frame_index"] for r in frames) > 4
    assert records[-1]["failed"] >= 1 and records[-1]["decided"] == len(frames)


def test_an_empty_folder_is_an_error(tmp_path, capsys, stand_in_bundles):
    (tmp_path / "empty").mkdir()
    code, records, err = _consume(capsys, stand_in_bundles["content"], tmp_path / "empty")
    assert code == EXIT_UNREADABLE and "empty folder" in err and records[-1]["failed"] == 1


def test_one_truncated_image_among_good_ones_is_named_and_the_run_goes_on(tmp_path, capsys, stand_in_bundles):
    folder = tmp_path / "frames"
    for name in ("a.png", "b.png", "d.jpg"):
        _save(folder / name, _flat(60))
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])
    code, records, err = _consume(capsys, stand_in_bundles["content"], folder)
    assert code == EXIT_UNREADABLE and "b.png could not be decoded" in err
    assert [r["frame"] for r in _frames(records)] == ["a.png", "d.jpg"]
    assert records[-1]["decided"] == 2 and records[-1]["failed"] == 1


def test_blank_frames_abstain_noise_is_judged_and_an_age_frame_without_boxes_decides_nothing(
    tmp_path, capsys, stand_in_bundles
):
    """As the stand-in's contract says: ood_score > 0.9 abstains (black and white frames, not noise)."""
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    paths = [_save(tmp_path / "black.png", _flat(0)), _save(tmp_path / "white.png", _flat(255))]
    paths.append(_save(tmp_path / "noise.png", noise))
    code, records, _ = _consume(capsys, stand_in_bundles["content"], *paths)
    frames = {r["frame"]: r for r in _frames(records)}
    assert code == 0
    for name in ("black.png", "white.png"):
        assert frames[name]["abstained"] == "out_of_distribution" and frames[name]["decisions"] is None
    # Each image is its own stream, and a stream that has not voted fails closed on every decision.
    for name in ("black.png", "white.png"):
        assert frames[name]["smoothed"] and all(frames[name]["smoothed"].values()), frames[name]
    assert frames["noise.png"]["decisions"] is not None and frames["noise.png"]["abstained"] is None
    code, records, _ = _consume(capsys, stand_in_bundles["content"], *paths[:2])
    assert code == EXIT_NOTHING_DECIDED and records[-1]["abstained"] == 2
    code, records, _ = _consume(capsys, stand_in_bundles["age"], paths[2])
    assert code == EXIT_NOTHING_DECIDED and _frames(records)[0]["abstained"] == "no_face"


def test_the_consumer_never_imports_torch(tmp_path, stand_in_bundles):
    image = _save(tmp_path / "dark.png", _flat(60))
    consume_without_torch(stand_in_bundles["content"], image)


# --- the detector adapter -----------------------------------------------------------------------------


def _fixed_detector(path: Path, boxes: list[list[float]], scores: list[float], size: int | None = None) -> Path:
    """A tiny ONNX 'detector' that returns fixed boxes and scores, whatever the frame (its input is read)."""
    nodes = [
        helper.make_node("Constant", [], ["boxes"], value=onnx.numpy_helper.from_array(np.array(boxes, np.float32))),
        helper.make_node("Constant", [], ["scores"], value=onnx.numpy_helper.from_array(np.array(scores, np.float32))),
    ]
    shape = [1, size, size, 3] if size else [1, "height", "width", 3]
    graph = helper.make_graph(
        nodes,
        "fixed-detector",
        [helper.make_tensor_value_info("frame", TensorProto.UINT8, shape)],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [len(boxes), 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [len(scores)]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_the_detector_adapter_supplies_boxes_above_its_score_threshold(tmp_path, capsys, stand_in_bundles):
    young = [30, 30, 70, 80]
    image = _save(tmp_path / "scene.png", _scene([(20, young)]))
    detector = _fixed_detector(tmp_path / "det.onnx", [[150, 40, 190, 100], young], [0.3, 0.9])
    code, records, _ = _consume(capsys, stand_in_bundles["age"], image, "--detector", detector)
    (frame,) = _frames(records)
    assert code == 0 and [f["box"] for f in frame["faces"]] == [[30.0, 30.0, 70.0, 80.0]]  # 0.3 < 0.5 dropped
    assert frame["decisions"]["gate18"]
    code, records, _ = _consume(
        capsys, stand_in_bundles["age"], image, "--detector", detector, "--detector-threshold", "0.2"
    )
    assert [f["box"] for f in _frames(records)[0]["faces"]] == [young, [150.0, 40.0, 190.0, 100.0]]  # best first
    fixed = _fixed_detector(tmp_path / "fixed.onnx", [[10, 10, 40, 40]], [1.0], size=80)  # frame is 240 x 160
    code, records, _ = _consume(capsys, stand_in_bundles["age"], image, "--detector", fixed)
    assert _frames(records)[0]["faces"][0]["box"] == [30.0, 20.0, 120.0, 80.0]  # scaled back to frame pixels
    inverted = _fixed_detector(tmp_path / "inverted.onnx", [[50, 50, 10, 10]], [1.0])
    code, records, err = _consume(capsys, stand_in_bundles["age"], image, "--detector", inverted)
    assert code == EXIT_UNREADABLE and f"the detector {inverted}, frame {image} #0" in err and "inverted" in err
    uneven = _fixed_detector(tmp_path / "uneven.onnx", [[10, 10, 40, 40]], [1.0, 0.5])
    code, records, err = _consume(capsys, stand_in_bundles["age"], image, image, "--detector", uneven)
    assert code == EXIT_UNREADABLE and "returned 1 boxes but 2 scores" in err and records[-1]["failed"] == 2


def test_a_detector_file_off_the_convention_is_refused(tmp_path, capsys, stand_in_bundles):
    image = _save(tmp_path / "scene.png", _scene([]))
    code, _, err = _consume(
        capsys, stand_in_bundles["age"], image, "--detector", stand_in_bundles["age"] / "model.onnx"
    )
    assert code == EXIT_REFUSED and "must have outputs named 'boxes' and 'scores'" in err


# --- an exported bundle against the workbench's own path (acceptance 2 and 6) ----------------------

FACE = 90  # a face is rendered at 90 px and pasted so that its crop region is exactly the pasted patch
INNER = 50  # the box: the patch's central 50 px, grown by the 0.4 margin on each side to 90 px


def _paste_scene(faces: list[tuple[int, int, float]], seed: int) -> tuple[np.ndarray, list[list[int]]]:
    """A 240 x 360 frame (a smooth wall with sensor noise) with synthetic faces of these apparent ages pasted."""
    from datamodules.synthetic.faces import MONK_SCALE_RGB, render_face

    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 170, 360)[None, :, None] + np.linspace(0, 30, 240)[:, None, None]
    frame = np.clip(ramp + rng.normal(0, 4, (240, 360, 3)), 0, 255).astype(np.uint8)
    boxes = []
    for x, y, age in faces:
        face = render_face(age, MONK_SCALE_RGB[seed % 10], bool(seed % 2), rng, rng, FACE)
        frame[y : y + FACE, x : x + FACE] = np.clip(np.rint(face * 255), 0, 255).astype(np.uint8)
        margin = (FACE - INNER) // 2
        boxes.append([x + margin, y + margin, x + margin + INNER, y + margin + INNER])
    return frame, boxes


def test_exported_bundle_reproduces_the_workbench_on_ingest_cropped_faces(tmp_path, capsys, exported_age):
    """0, 1 and 2 faces pasted at known boxes: each face's outputs equal crop_face + resize_uint8 + the model."""
    from export.parity import AGE_TOLERANCE_YEARS, PROBABILITY_TOLERANCE, reference_outputs
    from models.resize import resize_uint8

    bundle, module, state = exported_age
    contract = json.loads((bundle / "contract.json").read_text())
    scenes = {"none.png": [], "one.png": [(40, 60, 9.0)], "two.png": [(30, 40, 40.0), (220, 110, 12.0)]}
    lines, frames = [], {}
    for seed, (name, faces) in enumerate(scenes.items()):
        frames[name], boxes = _paste_scene(faces, seed)
        _save(tmp_path / "scenes" / name, frames[name])
        lines.append({"frame": name, "boxes": boxes})
    code, records, _ = _consume(capsys, bundle, tmp_path / "scenes", "--boxes", _boxes(tmp_path / "b.jsonl", lines))
    by_name = {r["frame"]: r for r in _frames(records)}
    assert code == 0 and by_name["none.png"]["decisions"] is None and by_name["none.png"]["abstained"] == "no_face"
    convention = CropConvention(**{k: contract["input"]["face_crop"][k] for k in ("margin", "square", "min_face_side")})
    thresholds = [p["threshold"] for p in contract["operating_points"]]
    compared = 0
    for line in lines[1:]:
        record = by_name[line["frame"]]
        for face, box in zip(record["faces"], line["boxes"], strict=True):
            ingest = resize_uint8(crop_face(frames[line["frame"]], box, convention), module.hparams.image_size)
            reference = reference_outputs(module, state, ingest[None], 0.9)
            assert face["abstained"] is None, face  # a synthetic face is in distribution
            assert abs(face["outputs"]["expected_age"] - reference["expected_age"][0]) <= AGE_TOLERANCE_YEARS
            probabilities = list(face["outputs"]["prob_below"].values())
            assert np.abs(np.array(probabilities) - reference["prob_below"][0]).max() <= PROBABILITY_TOLERANCE
            for column, (name, blocked) in enumerate(face["decisions"].items()):
                if abs(probabilities[column] - thresholds[column]) > PROBABILITY_TOLERANCE:
                    assert blocked == (reference["prob_below"][0][column] >= thresholds[column]), name
            compared += 1
        assert record["decisions"] == {
            name: any(face["decisions"][name] for face in record["faces"]) for name in record["decisions"]
        }  # the youngest face decides
    assert compared == 3


def test_exported_bundle_abstains_on_blank_and_noise_and_flags_a_faceless_stream(tmp_path, capsys, exported_age):
    bundle, _, _ = exported_age
    noise = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    paths = [_save(tmp_path / "blank.png", _flat(128, 120, 160)), _save(tmp_path / "noise.png", noise)]
    box = [[40, 30, 100, 90]]
    sidecar = _boxes(tmp_path / "b.jsonl", [{"frame": p.name, "boxes": box} for p in paths])
    code, records, _ = _consume(capsys, bundle, *paths, "--boxes", sidecar)
    assert code == EXIT_NOTHING_DECIDED
    for frame in _frames(records):
        (face,) = frame["faces"]
        assert face["abstained"] == "out_of_distribution" and face["decisions"] is None, face["outputs"]
        assert frame["decisions"] is None and frame["abstained"] == "all_faces_abstained"
    faceless = [_save(tmp_path / "call" / f"{i:02d}.png", _flat(90, 120, 160)) for i in range(10)]
    code, records, _ = _consume(capsys, bundle, *faceless, "--stream-id", "call")
    assert code == EXIT_NOTHING_DECIDED and ["no_face" in r["flags"] for r in _frames(records)] == [False] * 9 + [True]
