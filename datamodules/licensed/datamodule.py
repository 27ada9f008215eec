"""The DataModule for licensed data: licence check, ingest (checks, screening, splits, cache), provenance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from childsafe_runtime.crop import CropConvention

from datamodules.cache import CachedDataset
from datamodules.cards import DatasetCard, load_card, require_permitted
from datamodules.datamodule import CachedDataModule
from datamodules.ingest import IngestEngine, IngestSettings, ingest


class LicensedDataModule(CachedDataModule):
    """A published dataset read through its adapter, allowed only for the uses its card permits."""

    synthetic = False

    def __init__(
        self,
        adapter,
        root: str,
        name: str,
        card: str | None,
        intended_use: str,
        cache_dir: str,
        target: str,
        preview_columns: tuple[str, ...],
        image_size: int = 64,
        crop: dict[str, Any] | None = None,
        classes: list[str] | None = None,
        age_range: tuple[float, float] = (0.0, 120.0),
        min_image_size: int = 32,
        max_bad_fraction: float = 0.01,
        hash_lists: list[str] | None = None,
        near_duplicate_distance: int = 31,
        split_fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        holdout_subject: str | None = None,
        max_images: int | None = None,
        ingest_engine: str = "local",
        ray_address: str | None = None,
        **loading: Any,
    ):
        super().__init__(cache_dir, target, preview_columns, **loading)
        self.engine = IngestEngine(ingest_engine, self.render_workers, ray_address)  # a bad name fails here
        self.adapter, self.root, self.name = adapter, Path(root), name
        self.card_path, self.intended_use = card, intended_use
        self.settings = IngestSettings(
            task=adapter.task,
            classes=list(classes or []),
            age_range=tuple(age_range),
            min_image_size=min_image_size,
            max_bad_fraction=max_bad_fraction,
            hash_lists=[str(p) for p in hash_lists or []],
            near_duplicate_distance=near_duplicate_distance,
            split_fractions=dict(split_fractions or {"train": 0.7, "val": 0.1, "calib": 0.1, "test": 0.1}),
            split_seed=split_seed,
            holdout_subject=holdout_subject,
            crop=CropConvention(**(crop or {})),
            image_size=image_size,
            max_images=max_images,
        )
        self._card: DatasetCard | None = None

    @property
    def task(self) -> str:
        return self.adapter.task

    @property
    def dataset_name(self) -> str:
        return self.name

    @property
    def card(self) -> DatasetCard:
        """Read and enforced on first use, so no image is touched for a use the licence does not allow."""
        if self._card is None:
            card = load_card(self.card_path)
            require_permitted(card, self.intended_use)
            self._card = card
        return self._card

    @property
    def licence(self) -> str:
        return self.card.licence

    @property
    def cache_size(self) -> int:
        return self.settings.image_size

    @property
    def crop(self) -> CropConvention:
        return self.settings.crop

    @property
    def class_names(self) -> list[str] | None:
        return self.settings.classes or None

    def build(self) -> CachedDataset:
        return ingest(self.adapter, self.root, self.name, self.card, self.settings, Path(self.cache_dir), self.engine)

    def data_metrics(self) -> dict[str, float]:
        summary = self.quarantine_summary()
        return {
            f"data/{self.task}/images": float(summary["accepted"]),
            f"data/{self.task}/quarantined": float(summary["quarantined"]),
            f"data/{self.task}/quarantined_fraction": float(summary["quarantined_fraction"]),
        }

    def quarantine_summary(self) -> dict[str, Any]:
        return json.loads((self.load().directory / "quarantine_summary.json").read_text())

    def data_record(self) -> dict[str, Any]:
        return super().data_record() | {
            "intended_use": self.intended_use,
            "card": {k: v for k, v in self.card.to_dict().items() if k != "path"},
        }

    def crop_record(self) -> dict[str, Any]:
        return super().crop_record() | {"without_box": "the whole image, resized to size x size"}

    def log_provenance(self, client, run_id: str) -> None:
        """Card, licence, intended use and the quarantine report go to the run beside the dataset inputs."""
        card = self.card
        client.set_tag(run_id, "data.intended_use", self.intended_use)
        client.set_tag(run_id, "data.permitted_uses", ",".join(card.permitted_uses))
        client.set_tag(run_id, "data.contains_minors", str(card.contains_minors).lower())
        client.log_artifact(run_id, card.path, "data/card")
        for report in ("quarantine.csv", "quarantine_summary.json"):
            client.log_artifact(run_id, str(self.load().directory / report), "data/quarantine")
