"""The calibration state: small, JSON-serialisable, and later turned into export-graph buffers."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from calibration.age import AgeCalibration, ConformalIntervals, GateCalibration
from calibration.age_streams import AgeStreamFigures, AgeStreamPolicy
from calibration.content import ContentCalibration
from calibration.ood import OODCalibration
from calibration.operating_points import OperatingPoint
from calibration.streams import ContentStreamPolicy
from core.errors import WorkbenchError

SCHEMA_VERSION = 1


UNCALIBRATED_COVERAGE = 0.9  # names the (not measurable) interval figures of a model without intervals


@dataclass
class CalibrationState:
    task: str
    train_run_id: str | None
    checkpoint: str
    confidence: float
    content: ContentCalibration | None = None
    age: AgeCalibration | None = None
    operating_points: list[OperatingPoint] = field(default_factory=list)
    ood: OODCalibration | None = None  # the abstain score's statistics and threshold (calibration/ood.py)
    max_false_alarm_rate: float = 0.5  # the ceiling above which a point was marked degenerate
    stream: ContentStreamPolicy | None = None  # the certified stream policy (calibration/streams.py)
    age_stream: AgeStreamFigures | None = None  # per-stream age figures (calibration/age_streams.py)
    age_policy: AgeStreamPolicy | None = None  # the certified per-stream age policy (calibration/age_streams.py)
    stream_reason: str = ""  # why there is no certified stream policy, in words for the contract and model card
    schema_version: int = SCHEMA_VERSION

    def interval_coverage(self, requested: float | None) -> float:
        """The age interval coverage evaluate and export use: `requested`, else the one calibrate fitted, so
        the coverage is set once (calibration.age.coverages) rather than in every stage's config."""
        fitted = [i.coverage for i in self.age.intervals] if self.age is not None else []
        if requested is not None:
            return float(requested)
        if len(fitted) > 1:
            raise WorkbenchError(
                f"The calibration fitted age intervals at coverages {fitted}; name the one to use "
                "(evaluation.coverage=..., export.coverage=...)."
            )
        return fitted[0] if fitted else UNCALIBRATED_COVERAGE

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, allow_nan=False)

    def save(self, path: Path) -> Path:
        path.write_text(self.to_json())
        return path

    @classmethod
    def from_json(cls, text: str, source: str = "calibration state") -> CalibrationState:
        """Parse the JSON `childsafe calibrate` writes; anything else raises a WorkbenchError naming the problem."""
        try:
            return cls._parse(json.loads(text))
        except (TypeError, KeyError, AttributeError, ValueError) as error:
            raise WorkbenchError(
                f"{source} is not a calibration state written by `childsafe calibrate` "
                f"({type(error).__name__}: {error}). Re-run the calibrate stage."
            ) from error

    @classmethod
    def _parse(cls, data: dict) -> CalibrationState:
        if data.get("content"):
            data["content"] = ContentCalibration(**data["content"])
        if data.get("stream"):
            data["stream"] = ContentStreamPolicy(**data["stream"])
        if data.get("age_stream"):
            data["age_stream"] = AgeStreamFigures(**data["age_stream"])
        if data.get("age_policy"):
            data["age_policy"] = AgeStreamPolicy(**data["age_policy"])
        if data.get("age"):
            age = data["age"]
            age["gates"] = [GateCalibration(**g) for g in age["gates"]]
            age["intervals"] = [ConformalIntervals(**i) for i in age["intervals"]]
            data["age"] = AgeCalibration(**age)
        if data.get("ood"):
            data["ood"] = OODCalibration(**data["ood"])
        data["operating_points"] = [OperatingPoint(**op) for op in data["operating_points"]]
        if not all(point.target for point in data["operating_points"]):
            raise KeyError("operating_points[].target (states from before it existed)")
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> CalibrationState:
        return cls.from_json(path.read_text(), source=str(path))
