"""The benchmark harness end to end at tiny sizes: every section measured, written into the docs, logged."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from mlflow import MlflowClient
from stage_configs import compose_stage

import tracking.bench
from core.errors import WorkbenchError
from tracking.bench import (
    DOCS_END,
    DOCS_START,
    bench,
    device_peak_flops,
    fresh_datamodule,
    plain_model,
    read_batches,
    steady_rate,
    train_side_by_side,
    write_into_docs,
)


def test_bench_measures_every_section_writes_the_docs_and_logs_to_mlflow(tmp_path, tracking_uri, shared_cache):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Measured\n\nhand-written\n\n{DOCS_START}\nstale\n{DOCS_END}\n\nmore hand-written\n")
    cfg = compose_stage(
        "bench",
        tmp_path,
        shared_cache,
        "debug=smoke",
        f"docs_file={docs}",
        "bench.repeats=1",
        "bench.warmup_steps=1",
        "bench.steps=2",
        "bench.render_images=2",
        "bench.loader_seconds=0.2",
        f"bundle={tmp_path / 'no-bundle'}",
        "bench.target_ratio=100",  # out of reach, so the profile of the shortfall must be written beside the table
        # The GPU fast path's logic, run on CPU: bf16 autocast in both arms, channels_last weights.
        "trainer.precision=bf16-mixed",
        "callbacks.fast_path.channels_last=true",
        "bench.peak_tflops=1",  # a CPU has no data-sheet peak: state one, so MFU is measured
    )
    figures = bench(cfg)

    for key in ("lightning_img_s", "plain_img_s", "ratio", "mfu", "gflop_per_img"):
        assert figures[f"bench/train/{key}"] > 0, key
    assert figures["bench/train/mfu"] < 1  # a fraction of a peak that was actually stated
    assert figures["bench/loader/img_s"] > 0 and figures["bench/render/img_s"] > 0
    text = docs.read_text()
    assert "stale" not in text and text.count("hand-written") == 2
    assert figures["bench/train/ratio_min"] <= figures["bench/train/ratio"] <= figures["bench/train/ratio_max"]
    assert "| pipeline / plain loop, median of the repeats' ratios (range) (target at least 100) |" in text
    assert "| where a pipeline step's extra time goes" in text
    assert re.search(r"\| of which: Lightning's `self.log` \(2 calls per step\) \| \d+\.\d\d \|", text)
    assert "| of which: callback `FiniteGuard`, its per-step hooks |" in text
    assert "| of which: callback `ModelCheckpoint` (2 instances), its per-step hooks |" in text
    assert "PlainLoopAlongside" not in text and "ProfileAfterWarmup" not in text
    assert "peak: 1 TFLOP/s (bench.peak_tflops)" in text
    assert "not measured: no bundle" in text and "bf16-mixed" in text
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("childsafe-bench").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["bench/train/ratio"] == pytest.approx(figures["bench/train/ratio"])


def test_the_plain_loop_trains_its_twin_step_by_step_beside_the_pipeline(tmp_path, shared_cache):
    cfg = compose_stage("bench", tmp_path, shared_cache, "debug=smoke")
    batches = read_batches(fresh_datamodule(cfg), 3)
    L.seed_everything(cfg.seed)
    start = [p.detach().clone() for p in plain_model(cfg).parameters()]

    timings, trainer = train_side_by_side(cfg, batches)

    assert trainer.strategy.root_device.type == "cpu"
    assert len(timings.pipeline_seconds) == len(timings.plain_seconds) == len(batches)
    assert all(s > 0 for s in timings.pipeline_seconds + timings.plain_seconds)
    assert timings.images == [len(b["image"]) for b in batches]
    # the twin was trained by its own optimizer
    trained = list(timings.twin.parameters())
    assert all(a.shape == b.shape for a, b in zip(start, trained, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(start, trained, strict=True))


def test_the_plain_step_runs_under_the_pipelines_autocast(tmp_path, shared_cache, monkeypatch):
    cfg = compose_stage("bench", tmp_path, shared_cache, "debug=smoke", "trainer.precision=bf16-mixed")
    dtypes = []

    def recording_twin(cfg, compile=True):
        twin = plain_model(cfg, compile)
        step = twin.training_step

        def recorded_step(batch, batch_idx):
            dtypes.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return step(batch, batch_idx)

        twin.training_step = recorded_step
        return twin

    monkeypatch.setattr(tracking.bench, "plain_model", recording_twin)
    train_side_by_side(cfg, read_batches(fresh_datamodule(cfg), 2))
    assert dtypes == [torch.bfloat16, torch.bfloat16]


def test_batches_are_read_over_as_many_epochs_as_needed_and_an_empty_split_is_refused():
    epoch = [{"image": torch.zeros(2, 3, 4, 4)}] * 2
    assert len(read_batches(SimpleNamespace(train_dataloader=lambda: iter(epoch)), 5)) == 5
    with pytest.raises(WorkbenchError, match="no batches to benchmark"):
        read_batches(SimpleNamespace(train_dataloader=lambda: iter([])), 3)


def test_steady_rate_counts_only_the_steps_after_warm_up():
    assert steady_rate([9.0, 1.0, 1.0, 2.0], [128, 128, 128, 64], warmup=2) == pytest.approx((128 + 64) / 3.0)


def test_a_configured_peak_wins_and_a_cpu_without_one_has_no_mfu():
    assert device_peak_flops(torch.device("cpu"), "32-true", 989.0) == (989e12, "989 TFLOP/s (bench.peak_tflops)")
    peak, basis = device_peak_flops(torch.device("cpu"), "bf16-mixed", None)
    assert peak is None and "torch.bfloat16" in basis and "bench.peak_tflops" in basis


def test_docs_without_the_harness_section_are_refused(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# no markers\n")
    with pytest.raises(WorkbenchError, match="bench:start"):
        write_into_docs(docs, "| table |")


def test_no_profile_when_the_ratio_meets_its_target(tmp_path, shared_cache, tracking_uri):
    cfg = compose_stage(
        "bench",
        tmp_path,
        shared_cache,
        "debug=smoke",
        "docs_file=null",
        "bench.repeats=1",
        "bench.warmup_steps=1",
        "bench.steps=1",
        "bench.render_images=1",
        "bench.loader_seconds=0.1",
        "bench.target_ratio=0",
        f"bundle={tmp_path / 'no-bundle'}",
    )
    bench(cfg)
    table = (Path(cfg.paths.output_dir) / "benchmark.md").read_text()
    assert "| pipeline / plain loop" in table and "extra time goes" not in table


def test_bench_runs_on_licensed_data(tmp_path, tracking_uri):
    """It used to read data.generator and crash on licensed data: now it skips the rendering figure, saying why."""
    import licensed_fixtures as fixtures

    root = fixtures.utkface(tmp_path / "UTKFace", n=60)
    overrides = ("experiment=age_utkface", f"data.root={root}", "data.max_bad_fraction=0.05", "debug=smoke")
    timing = ("bench.repeats=1", "bench.warmup_steps=1", "bench.steps=2", "bench.loader_seconds=0.2")
    outputs = ("docs_file=null", f"bundle={tmp_path / 'none'}")
    cfg = compose_stage("bench", tmp_path, tmp_path / "cache", *overrides, *timing, *outputs)
    figures = bench(cfg)
    assert figures["bench/train/lightning_img_s"] > 0 and "bench/render/img_s" not in figures
    table = (Path(cfg.paths.output_dir) / "benchmark.md").read_text()
    assert "| synthetic rendering | not measured: utkface is licensed data, decoded at ingest |" in table
