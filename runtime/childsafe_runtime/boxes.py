"""The `--boxes` sidecar: face boxes from the runtime's own detector, one JSON line per frame.

    {"frame": "<file name, path relative to the folder given, or video file name>", "index": 12,
     "boxes": [[x0, y0, x1, y1], ...]}

`index` is required for video frames (the frame number, from 0) and optional for images. A frame with
no line has no face; `"boxes": []` says so explicitly. Every line must match a frame the run reads: a
line left over at the end names a frame that does not exist, and the run says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


class SidecarError(Exception):
    """A boxes sidecar line that cannot be used; the message names the file, the line and the field."""


@dataclass
class BoxLine:
    number: int
    frame: str
    index: int | None
    boxes: list[list[float]]


@dataclass
class BoxesSidecar:
    """Lines keyed by (frame, index); `take` hands each line out once, `unused` lists the rest."""

    path: Path
    lines: dict[tuple[str, int | None], BoxLine] = field(default_factory=dict)
    used: set[tuple[str, int | None]] = field(default_factory=set)

    @classmethod
    def read(cls, path: Path) -> BoxesSidecar:
        sidecar = cls(Path(path))
        try:
            text = sidecar.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise SidecarError(f"{path} cannot be read as a UTF-8 text file: {error}") from error
        for number, raw in enumerate(text.splitlines(), 1):
            if raw.strip():
                line = sidecar._parse(number, raw)
                key = (line.frame, line.index)
                if key in sidecar.lines:
                    raise SidecarError(
                        f"{path} line {number} repeats frame {line.frame!r} index {line.index} "
                        f"(first given on line {sidecar.lines[key].number}): give each frame's boxes once"
                    )
                sidecar.lines[key] = line
        return sidecar

    def _parse(self, number: int, raw: str) -> BoxLine:
        where = f"{self.path} line {number}"
        try:
            record = json.loads(raw)
        except ValueError as error:
            raise SidecarError(f"{where} is not JSON: {error}") from None
        if not isinstance(record, dict) or not isinstance(record.get("frame"), str) or not record["frame"]:
            raise SidecarError(f'{where} needs a "frame" field naming the image or video, e.g. {{"frame": "a.jpg"}}')
        index = record.get("index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise SidecarError(f'{where}: "index" must be a frame number >= 0, got {index!r}')
        boxes = record.get("boxes")
        valid = isinstance(boxes, list) and all(
            isinstance(box, list)
            and len(box) == 4
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in box)
            for box in boxes
        )
        if not valid:
            raise SidecarError(f'{where}: "boxes" must be a list of [x0, y0, x1, y1] number lists, got {boxes!r}')
        return BoxLine(number, record["frame"], index, [[float(v) for v in box] for box in boxes])

    def take(self, names: tuple[str, ...], index: int, is_video: bool) -> BoxLine | None:
        """The line for a frame known by any of `names` (its name, its path); video frames match on index too."""
        for name in names:
            for key in ((name, index),) if is_video else ((name, None), (name, index)):
                if key in self.lines and key not in self.used:
                    self.used.add(key)
                    return self.lines[key]
        return None

    def unused(self) -> list[BoxLine]:
        return [line for key, line in self.lines.items() if key not in self.used]
