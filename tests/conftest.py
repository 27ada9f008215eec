"""Shared fixtures: every test gets its own MLflow store, output and cache folders."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from stage_configs import NonFiniteJSON, compose_stage, strict_json_loads


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` need CUDA: without it they are skipped, with the reason in the summary."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (marker gpu)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smoke datasets are rendered once per test session, as a real cache would be reused."""
    return tmp_path_factory.mktemp("dataset-cache")


@pytest.fixture
def compose_train(tmp_path: Path, shared_cache: Path):
    return lambda *overrides: compose_stage("train", tmp_path, shared_cache, *overrides)


STRICT_JSON_FILES = ("contract.json", "calibration_state.json")
_strict_json_checked: set[tuple[Path, int, int]] = set()


@pytest.fixture(autouse=True)
def written_json_is_strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After every test, parse each contract and calibration state under this session's temp folders
    (every tmp_path and every tmp_path_factory folder lie there) strictly: a non-finite number fails it.

    Each file version is checked once; a file that is not JSON at all is left to the test that wrote it.
    """
    yield
    for path in tmp_path_factory.getbasetemp().rglob("*.json"):
        if path.name not in STRICT_JSON_FILES:
            continue
        stamp = (path, path.stat().st_mtime_ns, path.stat().st_size)
        if stamp in _strict_json_checked:
            continue
        _strict_json_checked.add(stamp)
        try:
            strict_json_loads(path.read_text())
        except NonFiniteJSON as error:
            pytest.fail(f"{path} is not strict JSON: {error}")
        except json.JSONDecodeError:
            continue
