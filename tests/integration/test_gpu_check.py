"""`make gpu-check` (tracking/gpu_check.py): its logic end to end at tiny sizes on CPU, its real sizes composed,
and the `gpu` tests a CUDA machine runs (skipped without one)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch
from stage_configs import compose_stage

from scripts.gpu_check import main
from tracking.bench import docs_markers
from tracking.gpu_check import REAL, SECTION, TASKS, TINY, Check, ddp_command, run_check


@pytest.mark.slow
@pytest.mark.ci  # the whole check on CPU: two trainings, calibrations, evaluations, exports and a bench
def test_the_tiny_check_runs_every_part_and_fills_its_docs_section(tmp_path, shared_cache, tracking_uri):
    start, end = docs_markers(SECTION)
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Measured\n\nhand-written\n\n{start}\npending\n{end}\n\nmore hand-written\n")

    table = run_check(TINY, tmp_path / "work", shared_cache, docs)

    for task in TASKS:
        for part in ("train small_cnn at 32 px, bf16-mixed", "calibrate", "evaluate on cpu", "export and parity gate"):
            assert f"| {task}: {part}" in table, (task, part)
    assert "test MAE" in table and "test accuracy" in table and "max abs diff expected_age" in table
    for bench_row in ("| pipeline / plain loop", "| MFU", "| train loader alone"):
        assert bench_row in table
    assert "| DDP over the GPUs present | skipped: 0 GPUs |" in table
    assert table.startswith("Device: CPU") and "sizes `tiny`" in table
    text = docs.read_text()
    assert "pending" not in text and text.count("hand-written") == 2 and table in text
    assert (tmp_path / "work" / "gpu_check.md").read_text() == table + "\n"
    assert (tmp_path / "work" / "mlruns" / "mlflow.db").is_file()  # its own store, not the session's
    assert os.environ["MLFLOW_TRACKING_URI"] == tracking_uri


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_real_sizes_compose_for_every_stage(tmp_path, task):
    """The GPU run is the one that cannot be tried here: every override it gives must at least compose."""
    check = Check(REAL, tmp_path, tmp_path / "cache", [])
    train = check.stage_config("train", *REAL.train_overrides(task))
    assert train.model.backbone.name == "resnet50" and train.data.generator.image_size == 224
    assert train.trainer.precision == "bf16-mixed" and train.trainer.max_steps == 300
    assert train.trainer.deterministic == "warn"  # accelerator=gpu: no crash on AdaptiveAvgPool2d's backward
    assert train.data.pin_memory is True and train.data.num_workers > 0
    bench = check.stage_config("bench", *REAL.train_overrides(task), *REAL.bench)
    assert bench.bench.repeats == 3 and bench.trainer.accelerator == "gpu"
    calibrate = check.stage_config("calibrate", "device=cuda", f"train_task={TASKS[task]}", *REAL.calibration)
    assert calibrate.device == "cuda" and calibrate.calibration.age.max_minor_pass_rate == 0.05


def test_ddp_runs_the_train_stage_in_a_child_process_over_every_gpu(tmp_path):
    command = ddp_command(Check(REAL, tmp_path, tmp_path / "cache", []), 4)
    assert command[:3] == [sys.executable, "-m", "scripts.train"]
    assert {"trainer=ddp", "trainer.devices=4", "+trainer.max_steps=100"} <= set(command)
    assert sum(arg.startswith("+trainer.max_steps=") for arg in command) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_the_real_sizes_without_a_gpu_say_how_to_run_the_logic_on_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--work-dir", str(tmp_path)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "needs a CUDA GPU" in error and "--size tiny" in error


@pytest.mark.gpu
def test_a_bf16_resnet_fine_tune_step_runs_on_cuda_under_the_default_trainer(tmp_path, shared_cache, tracking_uri):
    from models.train import train

    cfg = compose_stage(
        "train", tmp_path, shared_cache, "experiment=age_synthetic", "debug=smoke", "model.backbone.name=resnet18"
    )
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.deterministic == "warn"
    metrics = train(cfg)
    assert np.isfinite(metrics["test/age/mae"])


@pytest.mark.gpu
def test_export_parity_passes_with_the_reference_on_cuda(tmp_path):
    from export_cases import age_case, content_case, data
    from test_export import _inputs, _settings

    from export.pipeline import publish_bundle

    for module, state, target in (age_case("resnet18", "dldl"), content_case("resnet18")):
        images, rows = data(target)
        (tmp_path / target).mkdir()
        settings = _settings(tmp_path / target)
        settings.device = "cuda"
        bundle, contract = publish_bundle(settings, _inputs(module, state, images, rows, target), tmp_path / target)
        assert (bundle / "model.onnx").is_file() and contract["metrics"]["parity"]["samples"] == len(images)
        assert next(module.parameters()).device.type == "cpu"  # put back where the caller keeps it
