"""The runtime as a runtime team installs it: a wheel of runtime/ in a fresh virtual environment without torch.

It must install from its own pyproject alone (onnxruntime, numpy, Pillow, cryptography), verify a signed
bundle the exporter wrote, and give the same records as the workbench's editable copy of the same code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from childsafe_runtime.signing import new_key_pair
from export_cases import content_case, data
from PIL import Image
from test_export import _inputs, _settings

from export.pipeline import publish_bundle

REPO = Path(__file__).resolve().parents[2]
SIZES = [(97, 131), (64, 64), (120, 200)]  # (height, width): the graph resizes every frame itself

pytestmark = [pytest.mark.slow, pytest.mark.ci]


def _run(command: list[str | Path], **options: Any) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, env=environment, timeout=600, **options
    )


def _wheel(tmp_path: Path) -> Path:
    """A wheel built from a copy of runtime/, so the build leaves nothing in the checkout."""
    source = tmp_path / "runtime-source"
    shutil.copytree(REPO / "runtime", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp_path / "wheels", source])
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("childsafe_runtime-*.whl")
    return wheel


def _fresh_environment(tmp_path: Path, wheel: Path) -> Path:
    """A virtual environment without system site packages holding the wheel and its declared dependencies only."""
    root = tmp_path / "fresh-venv"
    venv.create(root, system_site_packages=False, with_pip=False)
    python = root / "bin" / "python"
    # The workbench's pip installs into it (pip --python), reusing its cache and the configured local index.
    installed = _run([sys.executable, "-m", "pip", "--python", python, "install", wheel])
    assert installed.returncode == 0, installed.stderr
    return root


def _signed_content_bundle(tmp_path: Path) -> tuple[Path, Path]:
    """A small content bundle, exported through the parity gate and signed with a fresh release key."""
    private_key, public_key = new_key_pair(tmp_path / "keys")
    module, state, target = content_case("small_cnn")
    images, rows = data(target)
    settings = _settings(tmp_path)
    settings.signing.key = str(private_key)
    bundle, contract = publish_bundle(settings, _inputs(module, state, images, rows, target), tmp_path)
    assert (bundle / "SHA256SUMS.sig").is_file()
    assert contract["release"]["signing"]["public_key_sha256"] == hashlib.sha256(public_key.read_bytes()).hexdigest()
    return bundle, public_key


def _frames(folder: Path) -> Path:
    """Synthetic frames of several sizes: noise and smooth gradients, no people."""
    folder.mkdir()
    rng = np.random.default_rng(7)
    for index, (height, width) in enumerate(SIZES):
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
        gradient = np.broadcast_to(ramp, (height, width, 3)).astype(np.uint8)
        Image.fromarray(noise).save(folder / f"noise-{index}.png")
        Image.fromarray(gradient).save(folder / f"gradient-{index}.png")
    return folder


def _records(stdout: str) -> list[dict[str, Any]]:
    """The JSON-lines records without their measured latencies, the one field two runs cannot share."""

    def without_latency(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_latency(v) for k, v in value.items() if k != "latency_ms"}
        return [without_latency(v) for v in value] if isinstance(value, list) else value

    return [without_latency(json.loads(line)) for line in stdout.splitlines()]


def test_the_runtime_wheel_runs_without_torch_and_matches_the_workbench_consumer(tmp_path):
    timings = {}
    started = time.perf_counter()
    bundle, public_key = _signed_content_bundle(tmp_path)
    frames = _frames(tmp_path / "frames")
    timings["export"] = time.perf_counter() - started

    started = time.perf_counter()
    environment = _fresh_environment(tmp_path, _wheel(tmp_path))
    timings["wheel and venv"] = time.perf_counter() - started
    python, filter_cli = environment / "bin" / "python", environment / "bin" / "childsafe-filter"

    no_torch = _run([python, "-c", "import torch"], cwd=tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    where = _run([python, "-c", "import childsafe_runtime; print(childsafe_runtime.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(environment), "the fresh venv imported the checkout's copy"

    started = time.perf_counter()
    arguments = [bundle, frames, "--public-key", public_key]
    fresh = _run([filter_cli, *arguments], cwd=tmp_path)
    workbench = _run([sys.executable, "-m", "childsafe_runtime.consumer", *arguments], cwd=tmp_path)
    timings["both consumers"] = time.perf_counter() - started
    assert fresh.returncode == 0, fresh.stderr
    assert workbench.returncode == 0, workbench.stderr
    records = _records(fresh.stdout)
    assert [r["type"] for r in records] == ["frame"] * 2 * len(SIZES) + ["summary"]
    # Frames unlike the random calib images abstain as out of distribution; the 64x64 noise frame is decided.
    assert all(r["outputs"]["probabilities"] for r in records[:-1])
    assert all(
        set(r["decisions"]) == {"recall_explicit", "recall_unsafe"}
        if r["abstained"] is None
        else r["decisions"] is None
        for r in records[:-1]
    )
    assert records[-1]["decided"] >= 1
    assert records == _records(workbench.stdout)  # same onnxruntime wheel, same code: identical outputs

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    (tampered / "model_card.md").write_text("edited after signing\n")
    refused = _run([filter_cli, tampered, frames, "--public-key", public_key], cwd=tmp_path)
    assert refused.returncode == 2 and "model_card.md does not match its SHA256SUMS entry (changed" in refused.stderr
    print("runtime package test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
