"""`childsafe-filter BUNDLE INPUT`: the reference runtime consumer of an exported bundle.

It imports only onnxruntime, numpy and Pillow (and OpenCV for video, when installed): never torch.
It is what a runtime team reads to learn the contract. It refuses a bundle whose files do not
match SHA256SUMS, or whose embedded contract differs from contract.json, and otherwise knows
nothing but the contract: it preprocesses, runs, decides per frame, and smooths decisions over a
stream as the contract says.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from childsafe_runtime.integrity import BundleError, verify_bundle

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}
METADATA_KEY = "childsafe_contract"


@dataclass
class KOfNSmoother:
    """A decision holds for a stream when at least k of its last n frames decided so."""

    k: int
    n: int
    history: dict[str, deque] = field(default_factory=dict)

    def update(self, decisions: dict[str, bool]) -> dict[str, bool]:
        smoothed = {}
        for name, value in decisions.items():
            window = self.history.setdefault(name, deque(maxlen=self.n))
            window.append(bool(value))
            smoothed[name] = sum(window) >= self.k
        return smoothed


class Filter:
    """A loaded, verified bundle: images in, per-frame outputs and decisions out."""

    def __init__(self, bundle: Path):
        self.bundle = Path(bundle)
        verify_bundle(self.bundle)
        self.contract = json.loads((self.bundle / "contract.json").read_text())
        self.session = ort.InferenceSession(str(self.bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        embedded = self.session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if embedded is None or json.loads(embedded) != self.contract:
            raise BundleError(f"{self.bundle / 'model.onnx'} carries a different contract than contract.json.")
        self.input = self.contract["input"]
        self.decision_names = [p["name"] for p in self.contract["operating_points"]]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        """What the contract asks of the caller: RGB, resized to height x width, uint8, NHWC."""
        size = (self.input["width"], self.input["height"])
        rgb = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.uint8)
        if self.input["colour_order"] == "BGR":
            array = array[..., ::-1]
        return array if self.input["layout"] == "NHWC" else array.transpose(2, 0, 1)

    def run(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """One record per image: every output by name (columns named), and the decisions."""
        names = [o["name"] for o in self.contract["outputs"]]
        values = dict(zip(names, self.session.run(names, {self.input["name"]: batch}), strict=True))
        records = []
        for i in range(batch.shape[0]):
            outputs = {}
            for spec in self.contract["outputs"]:
                value = values[spec["name"]][i]
                outputs[spec["name"]] = (
                    {column: _plain(v) for column, v in zip(spec["columns"], value, strict=True)}
                    if "columns" in spec
                    else _plain(value)
                )
            records.append({"outputs": outputs, "decisions": outputs.pop("decisions")})
        return records


def _plain(value: Any) -> float | bool:
    return bool(value) if isinstance(value, np.bool_ | bool) else float(value)


def frames(source: Path) -> Iterator[tuple[str, int, Image.Image]]:
    """(source, frame index, image) for an image, a folder of images, or a video file."""
    if source.is_dir():
        for path in sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            yield str(path), 0, Image.open(path)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        try:
            import cv2
        except ImportError as error:
            raise BundleError("Reading video needs OpenCV: pip install opencv-python-headless") from error
        capture = cv2.VideoCapture(str(source))
        index = 0
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            yield str(source), index, Image.fromarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
            index += 1
        capture.release()
    elif source.is_file():
        yield str(source), 0, Image.open(source)
    else:
        raise BundleError(f"{source} is neither an image, a folder of images, nor a video file.")


def stream_decisions(filter_: Filter, source: Path) -> Iterator[dict[str, Any]]:
    """Per-frame records with stream-smoothed decisions (frames of one source form one stream)."""
    smoothing = filter_.contract["runtime"]["smoothing"]
    smoothers: dict[str, KOfNSmoother] = {}
    for name, index, image in frames(source):
        record = filter_.run(filter_.preprocess(image)[None])[0]
        smoother = smoothers.setdefault(name, KOfNSmoother(smoothing["k"], smoothing["n"]))
        yield {"source": name, "frame": index, **record, "smoothed": smoother.update(record["decisions"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="childsafe-filter", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="folder with model.onnx, contract.json, model_card.md, SHA256SUMS")
    parser.add_argument("input", type=Path, help="an image, a folder of images, or a video file")
    args = parser.parse_args(argv)
    try:
        filter_ = Filter(args.bundle)
        for record in stream_decisions(filter_, args.input):
            print(json.dumps(record), flush=True)
    except (BundleError, OSError) as error:
        print(f"childsafe-filter: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
