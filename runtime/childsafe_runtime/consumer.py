"""`childsafe-filter BUNDLE INPUT...`: the reference runtime consumer of an exported bundle (docs/runtime.md).

It imports only onnxruntime, numpy, Pillow and cryptography (and OpenCV for video): never torch. It
verifies the bundle (and its signature against a pinned key), refuses a contract it does not know,
then knows nothing but the contract: it decodes frames, crops faces by the contract's convention,
feeds each frame or face at its own size (the graph resizes), abstains where the contract says,
takes the frame decision over its faces, and smooths decisions per stream so that it fails closed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from childsafe_runtime.boxes import BoxesSidecar, BoxLine, SidecarError
from childsafe_runtime.crop import BoxError, CropConvention, check_box, crop_face, is_too_small
from childsafe_runtime.detector import Detector, DetectorError
from childsafe_runtime.frames import Frame, SizeLimits, Unreadable, read_inputs
from childsafe_runtime.integrity import METADATA_KEY, MODEL_FILE, BundleError, read_contract, verify_bundle
from childsafe_runtime.smoothing import (
    KOfNSmoother,
    MeanLogitWindow,
    NoFaceClock,
    StreamClock,
    VideoSampler,
    rate_warning,
)

if TYPE_CHECKING:
    from childsafe_runtime.signing import PublicKeySource

SCHEMA_MAJOR = 2
DECISION_RULE = "decision = score >= threshold"  # what the graph's `decisions` output computes per point
ABSTAIN_RULE = "abstain when ood_score > threshold"  # applied here, to the graph's ood_score output

EXIT_OK = 0
EXIT_REFUSED = 2  # the command line, the bundle, its contract or the public key was refused: nothing was judged
EXIT_UNREADABLE = 3  # some input could not be read (each is reported); the rest was judged
EXIT_NOTHING_DECIDED = 4  # every input was read but no frame got a decision (no face, or all abstained)
EXIT_SIDECAR = 5  # the boxes sidecar is malformed, names a frame the run never read, or holds a bad box


def check_contract(contract: dict[str, Any], source: str) -> None:
    """Refuse a contract this consumer cannot apply faithfully: another schema major version, an unknown rule."""
    version = contract.get("schema_version")
    major = str(version).split(".")[0]
    if major != str(SCHEMA_MAJOR):
        raise BundleError(
            f"{source} has schema_version {version!r}: this childsafe-runtime reads schema {SCHEMA_MAJOR} only. "
            "Install the childsafe-runtime release made for that bundle, or re-export the bundle."
        )
    stated = [
        (f"operating point {p.get('name')!r}", p.get("rule"), DECISION_RULE)
        for p in contract.get("operating_points", [])
    ]
    stated.append(("abstention.ood", contract.get("abstention", {}).get("ood", {}).get("rule"), ABSTAIN_RULE))
    for where, rule, known in stated:
        if rule != known:
            raise BundleError(
                f"{source} {where} has rule {rule!r}; this consumer knows only {known!r} there, so it cannot "
                "apply the bundle faithfully. Use the childsafe-runtime release made for that bundle."
            )


def _plain(value: Any) -> float | bool:
    return bool(value) if isinstance(value, np.bool_ | bool) else float(value)


@dataclass
class _Job:
    """One graph input (a frame for content, a face crop for age) and where its result goes."""

    item: int
    face: int | None
    pixels: np.ndarray


class Filter:
    """A loaded, verified bundle: frames (and face boxes) in, per-face outputs and frame decisions out."""

    def __init__(self, bundle: Path, public_key: PublicKeySource | None = None):
        self.bundle = Path(bundle)
        check = verify_bundle(self.bundle, public_key=public_key)
        self.warnings = list(check.warnings)
        try:
            self.session = ort.InferenceSession(str(self.bundle / MODEL_FILE), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime's own exception types; the file verified, so it is not ONNX we run
            raise BundleError(f"{self.bundle / MODEL_FILE} verified but onnxruntime cannot load it: {error}") from error
        embedded = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        self.contract = read_contract(check, embedded)
        source = str(self.bundle / "contract.json")
        check_contract(self.contract, source)
        try:
            self._take_contract_fields()
        except (KeyError, TypeError, StopIteration) as error:
            raise BundleError(
                f"{source} lacks a field a schema {SCHEMA_MAJOR} contract has ({error!r}): it is incomplete. "
                "Re-export the bundle."
            ) from error

    def _take_contract_fields(self) -> None:
        spec = self.contract["input"]
        self.input_name = spec["name"]
        self.limits = SizeLimits(spec["min_side"], spec["max_side"])
        self.outputs = self.contract["outputs"]
        self.output_names = [o["name"] for o in self.outputs]
        self.decision_names = next(o["columns"] for o in self.outputs if o["name"] == "decisions")
        self.task = self.contract["task"]
        ood = self.contract["abstention"]["ood"]
        self.ood_output, self.ood_threshold = ood["output"], np.float32(ood["threshold"])
        crop = spec.get("face_crop")
        self.convention = (
            CropConvention(crop["margin"], crop["square"], crop["min_face_side"]) if self.task == "age" else None
        )

    def run(self, images: np.ndarray | Sequence[np.ndarray], batch: int = 32) -> list[dict[str, Any]]:
        """Per image: every output by name (columns named) and the graph's decisions; no abstention applied.

        Images of one shape share a session call (up to `batch`); each image goes in at its own size.
        """
        images = list(images)
        records: list[dict[str, Any]] = [{} for _ in images]
        for indices in _same_shape_chunks([image.shape for image in images], batch):
            values = self.session.run(
                self.output_names, {self.input_name: np.stack([images[i] for i in indices]).astype(np.uint8)}
            )
            for row, i in enumerate(indices):
                outputs = {}
                for spec, value in zip(self.outputs, values, strict=True):
                    value = value[row]
                    outputs[spec["name"]] = (
                        {column: _plain(v) for column, v in zip(spec["columns"], value, strict=True)}
                        if "columns" in spec
                        else _plain(value)
                    )
                records[i] = {"outputs": outputs, "decisions": outputs.pop("decisions")}
        return records

    def _judged(self, record: dict[str, Any]) -> dict[str, Any]:
        """A graph result with the out-of-distribution rule applied (compared in float32, as the contract says)."""
        if np.float32(record["outputs"][self.ood_output]) > self.ood_threshold:
            return {"outputs": record["outputs"], "decisions": None, "abstained": "out_of_distribution"}
        return {"outputs": record["outputs"], "decisions": record["decisions"], "abstained": None}

    def decide(self, frame: np.ndarray, boxes: list[Sequence[float]] | None = None) -> dict[str, Any]:
        """One frame's result: see `decide_many`."""
        return self.decide_many([(frame, boxes)])[0]

    def decide_many(
        self, items: Sequence[tuple[np.ndarray, list[Sequence[float]] | None]], batch: int = 1
    ) -> list[dict[str, Any]]:
        """Per frame: content {outputs, decisions, abstained}; age {faces, decisions, abstained}.

        frame: uint8 (H, W, 3) RGB, oriented. boxes (age only): x0, y0, x1, y1 in that frame's pixels,
        as the contract's `input.face_crop` defines them; None or [] is a frame with no face. A box that
        breaks the convention raises BoxError, a frame outside the contract's size limits InputError.
        `decisions` is None when the frame has no decision, and `abstained` then says why (no_face,
        all_faces_abstained, out_of_distribution).
        """
        jobs, results = self._jobs(items)
        graph = self.run([job.pixels for job in jobs], batch=max(1, batch)) if jobs else []
        for job, record in zip(jobs, graph, strict=True):
            judged = self._judged(record)
            if job.face is None:
                results[job.item] = judged
            else:
                results[job.item]["faces"][job.face].update(judged)
        if self.task == "age":
            for result in results:
                result.update(_frame_decision(result["faces"]))
        return results

    def _jobs(self, items: Sequence[tuple[np.ndarray, list | None]]) -> tuple[list[_Job], list[dict[str, Any]]]:
        """The graph inputs for these frames and the result skeletons they fill; too-small faces abstain here."""
        jobs, results = [], []
        for item, (frame, boxes) in enumerate(items):
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"a frame must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
            self.limits.check(frame.shape[1], frame.shape[0], f"frame {item} of this call")
            if self.convention is None:
                if boxes:
                    raise ValueError("this is a content bundle: it judges whole frames and takes no face boxes")
                jobs.append(_Job(item, None, frame))
                results.append({})
                continue
            faces = []
            for box in boxes or []:
                box = list(check_box(box, frame.shape[1], frame.shape[0]))
                if is_too_small(box, self.convention):
                    faces.append({"box": box, "outputs": None, "decisions": None, "abstained": "face_too_small"})
                    continue
                crop = crop_face(frame, box, self.convention)
                if max(crop.shape[:2]) > self.limits.max_side:  # margin and square can outgrow the graph's bounds
                    faces.append({"box": box, "outputs": None, "decisions": None, "abstained": "face_crop_too_large"})
                    continue
                jobs.append(_Job(item, len(faces), crop))
                faces.append({"box": box})
            results.append({"faces": faces})
        return jobs, results


def _frame_decision(faces: list[dict[str, Any]]) -> dict[str, Any]:
    """The most restrictive decision over the decided faces: a column blocks when any decided face's does."""
    decided = [face["decisions"] for face in faces if face["decisions"] is not None]
    if not decided:
        return {"decisions": None, "abstained": "no_face" if not faces else "all_faces_abstained"}
    return {"decisions": {name: any(d[name] for d in decided) for name in decided[0]}, "abstained": None}


def _same_shape_chunks(shapes: Sequence[tuple[int, ...]], batch: int) -> Iterator[list[int]]:
    """Indices grouped by shape, in order of first appearance, at most `batch` per group."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    for indices in groups.values():
        for start in range(0, len(indices), batch):
            yield indices[start : start + batch]


class BadBox(Exception):
    """A frame whose boxes cannot be used (one breaks the crop convention, or the detector failed on it);
    `line` is the sidecar line the box came from, None when it came from the detector."""

    def __init__(self, message: str, line: BoxLine | None):
        super().__init__(message)
        self.line = line


def _youngest(result: dict[str, Any], inputs: dict[str, str]) -> dict[str, float] | None:
    """Per gate column, the largest P(age < T) over the frame's decided faces; None for a frame without a decision."""
    decided = [face["outputs"]["prob_below"] for face in result.get("faces", []) if face["decisions"] is not None]
    if result["decisions"] is None or not decided:
        return None
    return {column: max(p[source] for p in decided) for column, source in inputs.items()}


@dataclass
class _Stream:
    smoother: KOfNSmoother | MeanLogitWindow
    clock: StreamClock
    no_face: NoFaceClock | None
    inputs: dict[str, str] | None = None  # a mean-logit policy's P(age < T) column per decision column

    def smoothed(self, result: dict[str, Any]) -> dict[str, bool] | None:
        if self.inputs is None:
            return self.smoother.update(result["decisions"])
        return self.smoother.update(_youngest(result, self.inputs))


@dataclass
class Run:
    """One consumer run: streams keyed by id, the records it writes, and the counts its summary reports."""

    filter_: Filter
    stream_id: str | None = None
    folder_is_stream: bool = False
    batch: int = 1
    sidecar: BoxesSidecar | None = None
    detector: Detector | None = None
    streams: dict[str, _Stream] = field(default_factory=dict)
    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("frames_read", "not_sampled", "decided", "abstained", "skipped", "failed"), 0
        )
    )
    latencies_ms: list[float] = field(default_factory=list)
    sidecar_problems: list[str] = field(default_factory=list)

    def records(self, inputs: Iterable[Path]) -> Iterator[dict[str, Any]]:
        """Per-frame and per-unreadable-input records in input order, then the summary record."""
        for source in inputs:
            pending: list[tuple[Frame, str, tuple[list | None, int | None]]] = []
            sampler: VideoSampler | None = None
            for event in read_inputs([Path(source)], self.filter_.limits):
                if isinstance(event, Unreadable):
                    yield from self._flush(pending)
                    pending = []
                    yield self._unreadable(event)
                    continue
                self.counts["frames_read"] += 1
                if event.video_time_s is not None:
                    if sampler is None:
                        sampler = VideoSampler(self.rate_hz)
                        warning = rate_warning(event.source, event.video_fps or 0.0, self.rate_hz)
                        if warning:
                            yield {"type": "warning", "source": event.source, "warning": warning}
                    if not sampler.take(event.video_time_s):
                        self._not_sampled(event)
                        continue
                stream = self._stream_id(Path(source), event)
                try:
                    boxes, line = self._boxes(event)
                except BadBox as error:
                    yield from self._flush(pending)
                    pending = []
                    yield self._bad_box(event, stream, error)
                    continue
                pending.append((event, stream, (boxes, line)))
                if len(pending) >= self.batch:
                    yield from self._flush(pending)
                    pending = []
            yield from self._flush(pending)
        for line in self.sidecar.unused() if self.sidecar else []:
            problem = (
                f"{self.sidecar.path} line {line.number} gives boxes for frame {line.frame!r}"
                f"{'' if line.index is None else f' index {line.index}'}, which no input of this run has: "
                "check the name (file name, or path relative to the folder given) and the index"
            )
            self.sidecar_problems.append(problem)
            yield {"type": "sidecar_error", "line": line.number, "frame": line.frame, "error": problem}
        yield self.summary()

    @property
    def rate_hz(self) -> float:
        """The frame rate the contract's stream policy counts frames at."""
        return float(self.filter_.contract["runtime"]["smoothing"]["frame_rate_hz"])

    def _not_sampled(self, frame: Frame) -> None:
        """A video frame between the policy's samples: counted, and its boxes line (if any) consumed."""
        self.counts["not_sampled"] += 1
        if self.sidecar is not None and self.filter_.convention is not None:
            self.sidecar.take((frame.name, frame.source), frame.index, True)

    def _stream_id(self, source: Path, frame: Frame) -> str:
        if self.stream_id is not None:
            return self.stream_id
        if frame.video_time_s is not None or (source.is_dir() and self.folder_is_stream):
            return str(source)
        return frame.source

    def _boxes(self, frame: Frame) -> tuple[list[list[float]] | None, int | None]:
        """The frame's boxes and their sidecar line, else the detector's, else none; each checked against the frame.

        A box that breaks the convention raises BadBox naming where it came from and the frame.
        """
        if self.filter_.convention is None:
            return None, None
        is_video = frame.video_time_s is not None
        line = self.sidecar.take((frame.name, frame.source), frame.index, is_video) if self.sidecar else None
        if line is not None:
            boxes, origin = line.boxes, f"{self.sidecar.path} line {line.number}"
        elif self.detector is not None:
            origin = f"the detector {self.detector.path}"
            try:
                boxes = self.detector.detect(frame.pixels)
            except DetectorError as error:
                raise BadBox(f"{origin}, frame {frame.source} #{frame.index}: {error}", None) from None
        else:
            return None, None
        height, width = frame.pixels.shape[:2]
        for box in boxes:
            try:
                check_box(box, width, height)
            except BoxError as error:
                raise BadBox(f"{origin}, frame {frame.source} #{frame.index}: {error}", line) from None
        return boxes, None if line is None else line.number

    def _flush(self, pending: list) -> Iterator[dict[str, Any]]:
        if not pending:
            return
        start = time.perf_counter()
        results = self.filter_.decide_many([(frame.pixels, boxes) for frame, _, (boxes, _) in pending], self.batch)
        latency_ms = (time.perf_counter() - start) * 1000.0
        for (frame, stream_id, (_, line)), result in zip(pending, results, strict=True):
            self.latencies_ms.append(latency_ms)
            yield self._frame_record(frame, stream_id, line, result, latency_ms)

    def _stream(self, stream_id: str) -> _Stream:
        if stream_id not in self.streams:
            runtime = self.filter_.contract["runtime"]
            smoothing, rate = runtime["smoothing"], self.rate_hz
            no_decision = runtime.get("no_decision")
            no_face = NoFaceClock(float(no_decision["no_face_seconds"]), rate) if self.filter_.convention else None
            if smoothing["method"] == "mean_logit":  # the certified age stream policy (contract stream.policy)
                window = MeanLogitWindow(smoothing["n"], dict(smoothing["thresholds_logit"]))
                stream = _Stream(window, StreamClock(rate), no_face, dict(smoothing["inputs"]))
            else:
                columns = tuple(point["name"] for point in self.filter_.contract["operating_points"])
                smoother = KOfNSmoother(smoothing["k"], smoothing["n"], columns)  # blocks until a frame votes
                stream = _Stream(smoother, StreamClock(rate), no_face)
            self.streams[stream_id] = stream
        return self.streams[stream_id]

    def _frame_record(
        self, frame: Frame, stream_id: str, line: int | None, result: dict[str, Any], latency_ms: float
    ) -> dict[str, Any]:
        stream = self._stream(stream_id)
        timestamp = stream.clock.tick(frame.source, frame.video_time_s)
        self.counts["decided" if result["decisions"] is not None else "abstained"] += 1
        flags = []
        if stream.no_face is not None and stream.no_face.update(timestamp, result["decisions"] is not None):
            flags.append("no_face")
        return {
            "type": "frame",
            **self._identity(),
            "stream_id": stream_id,
            "source": frame.source,
            "frame": frame.name,
            "frame_index": frame.index,
            "timestamp_s": round(timestamp, 6),
            "latency_ms": round(latency_ms, 3),
            **({"boxes_line": line} if line is not None else {}),
            **result,
            "smoothed": stream.smoothed(result),
            "flags": flags,
        }

    def _identity(self) -> dict[str, Any]:
        contract = self.filter_.contract
        return {
            "model_name": contract["model_name"],
            "version": contract["created_at"],
            "git_commit": contract.get("git_commit"),
            "mlflow_run_id": contract.get("mlflow_run_id"),
        }

    def _unreadable(self, event: Unreadable) -> dict[str, Any]:
        kind = "skipped" if event.skipped else "failed"
        self.counts[kind] += 1
        return {"type": kind, "source": event.source, "error": event.reason}

    def _bad_box(self, frame: Frame, stream_id: str, error: BadBox) -> dict[str, Any]:
        """The frame is not judged (its boxes cannot be trusted); a sidecar's bad box also makes the exit code 5."""
        self.counts["failed"] += 1
        if error.line is not None:
            self.sidecar_problems.append(str(error))
        return {
            "type": "failed",
            "source": frame.source,
            "frame_index": frame.index,
            "stream_id": stream_id,
            "error": str(error),
        }

    def exit_code(self) -> int:
        if self.sidecar_problems:
            return EXIT_SIDECAR
        if self.counts["failed"] or self.counts["skipped"]:
            return EXIT_UNREADABLE
        return EXIT_OK if self.counts["decided"] else EXIT_NOTHING_DECIDED

    def summary(self) -> dict[str, Any]:
        latencies = np.array(self.latencies_ms) if self.latencies_ms else None
        percentiles = (
            {f"p{q}": round(float(np.percentile(latencies, q)), 3) for q in (50, 95, 99)}
            if latencies is not None
            else {"p50": None, "p95": None, "p99": None}
        )
        return {
            "type": "summary",
            **self._identity(),
            **self.counts,
            "streams": len(self.streams),
            "latency_ms": percentiles,
            "exit_code": self.exit_code(),
        }


def stream_decisions(filter_: Filter, source: Path, **options: Any) -> Iterator[dict[str, Any]]:
    """The frame records of one input (a video or folder is one stream), without the summary: for library use."""
    options.setdefault("folder_is_stream", True)
    for record in Run(filter_, **options).records([Path(source)]):
        if record["type"] == "frame":
            yield record


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="childsafe-filter",
        description=__doc__.split("\n\n")[0],
        epilog="Exit codes: 0 every input read and at least one frame decided; 2 bundle, contract, key or "
        "command line refused; 3 some input unreadable; 4 nothing decided; 5 boxes sidecar error. docs/runtime.md",
    )
    parser.add_argument("bundle", type=Path, help="folder with model.onnx, contract.json, model_card.md, SHA256SUMS")
    parser.add_argument("inputs", type=Path, nargs="+", metavar="INPUT", help="images, folders of images, videos")
    parser.add_argument("--boxes", type=Path, help="JSON-lines face boxes per frame (age bundles)")
    parser.add_argument("--public-key", type=Path, help="the pinned release public key (PEM); refuses unsigned bundles")
    parser.add_argument("--stream-id", help="treat every input as one stream with this id")
    parser.add_argument("--folder-is-stream", action="store_true", help="each folder of frames is one stream")
    parser.add_argument("--batch", type=int, default=1, help="frames (content) or faces (age) per session call")
    parser.add_argument(
        "--detector", type=Path, help="an ONNX face detector (docs/runtime.md) for frames without boxes"
    )
    parser.add_argument("--detector-threshold", type=float, default=0.5, help="detector score to keep a box")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch < 1:
        print("childsafe-filter: --batch must be at least 1", file=sys.stderr)
        return EXIT_REFUSED
    try:
        filter_ = Filter(args.bundle, public_key=args.public_key)
        detector = Detector(args.detector, args.detector_threshold) if args.detector is not None else None
    except (BundleError, DetectorError) as error:  # every refusal before judging anything
        print(f"childsafe-filter: refused: {error}", file=sys.stderr)
        return EXIT_REFUSED
    for warning in filter_.warnings:
        print(f"childsafe-filter: warning: {warning}", file=sys.stderr)
    try:
        sidecar = BoxesSidecar.read(args.boxes) if args.boxes is not None else None
    except SidecarError as error:
        print(f"childsafe-filter: {error}", file=sys.stderr)
        return EXIT_SIDECAR
    if sidecar is not None and filter_.convention is None:
        print("childsafe-filter: --boxes is for age bundles; a content bundle judges whole frames", file=sys.stderr)
        return EXIT_REFUSED
    run = Run(filter_, args.stream_id, args.folder_is_stream, args.batch, sidecar, detector)
    for record in run.records(args.inputs):
        if "error" in record:
            print(f"childsafe-filter: {record['type']}: {record['error']}", file=sys.stderr)
        print(json.dumps(record), flush=True)
    return run.exit_code()


if __name__ == "__main__":
    sys.exit(main())
