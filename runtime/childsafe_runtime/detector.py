"""An optional face-detector adapter: runs an ONNX detector file the runtime team provides (none ships here).

The convention the file must follow (docs/runtime.md, "Detector"):
- one input, uint8 RGB NHWC `[1, H, W, 3]`: the oriented frame at its own size when H and W are
  dynamic, or resized (bilinear, Pillow) to the fixed H x W the model declares, boxes then scaled back;
- two outputs, `boxes` float32 `[N, 4]` (x0, y0, x1, y1 in the input's pixels, after non-maximum
  suppression) and `scores` float32 `[N]`; a leading batch axis of 1 (`[1, N, 4]`, `[1, N]`) is accepted;
- a box is kept when its score is at least the threshold.
YuNet and SCRFD files output anchor grids, not boxes: wrap them in a graph that decodes the anchors and
applies NMS (with onnx.compose, or by exporting your own pre- and post-processing) to meet this convention.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image


class DetectorError(Exception):
    """A detector file that does not follow the adapter's convention; the message says which part."""


class Detector:
    """Face boxes for a frame, in that frame's pixels, from a user-provided ONNX detector."""

    def __init__(self, path: Path, score_threshold: float = 0.5):
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise DetectorError(f"{self.path} cannot be loaded as an ONNX model: {error}") from error
        inputs = self.session.get_inputs()
        outputs = {o.name for o in self.session.get_outputs()}
        if len(inputs) != 1 or inputs[0].type != "tensor(uint8)" or len(inputs[0].shape) != 4:
            raise DetectorError(
                f"{self.path} must take one uint8 RGB NHWC input [1, H, W, 3], "
                f"got {[(i.name, i.type, i.shape) for i in inputs]}"
            )
        if not {"boxes", "scores"} <= outputs:
            raise DetectorError(f"{self.path} must have outputs named 'boxes' and 'scores', got {sorted(outputs)}")
        self.input_name = inputs[0].name
        height, width = inputs[0].shape[1:3]
        self.fixed_size = (width, height) if isinstance(height, int) and isinstance(width, int) else None
        self.score_threshold = float(score_threshold)

    def detect(self, frame: np.ndarray) -> list[list[float]]:
        """Boxes x0, y0, x1, y1 in the frame's pixels whose score reaches the threshold, best first."""
        image, scale = frame, np.ones(2)
        if self.fixed_size is not None and (frame.shape[1], frame.shape[0]) != self.fixed_size:
            image = np.asarray(Image.fromarray(frame).resize(self.fixed_size, Image.Resampling.BILINEAR))
            scale = np.array([frame.shape[1] / self.fixed_size[0], frame.shape[0] / self.fixed_size[1]])
        boxes, scores = self.session.run(["boxes", "scores"], {self.input_name: image[None]})
        boxes, scores = np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise DetectorError(f"{self.path} returned {len(boxes)} boxes but {len(scores)} scores")
        order = np.argsort(-scores, kind="stable")
        keep = [i for i in order if scores[i] >= self.score_threshold]
        return [(boxes[i] * np.tile(scale, 2)).tolist() for i in keep]
