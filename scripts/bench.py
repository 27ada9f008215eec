"""Where training and inference time goes, measured side by side in one process: `childsafe bench`.

1. training images/s: the full Lightning pipeline (the configured trainer and callbacks) against a
   plain PyTorch loop over the same module, loader, optimizer, precision and device;
2. the train loader alone (datamodules/throughput.py), against the rate a training step consumes;
3. synthetic rendering, the one-off cost of building the cache;
4. the exported bundle on onnxruntime against PyTorch eager, at each batch size (if a bundle exists);
5. MFU: achieved training FLOP/s (torch.utils.flop_counter) over the device's peak, stated with it.

Each figure is the median of `repeats` runs; the two training arms alternate, so drift hits both.
The table goes to the run folder, to MLflow and, with `docs_file` set, into docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.flop_counter import FlopCounterMode

from datamodules.throughput import loader_images_per_second
from export.latency import median_seconds
from models.base import WorkbenchModule
from models.fast_path import apply_fast_path
from scripts.hydra_app import run_stage
from tracking.errors import WorkbenchError
from tracking.mlflow_run import log_metrics, stage_run

DOCS_START, DOCS_END = "<!-- bench:start -->", "<!-- bench:end -->"
# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), matched against the CUDA device name.
GPU_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


class StepClock(L.Callback):
    """The time at the end of each training step (after the optimizer and scheduler stepped), and its images."""

    def __init__(self):
        self.ends: list[float] = []
        self.images: list[int] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        _synchronize(pl_module.device)  # as the plain loop does: a GPU step ends when its kernels do
        self.ends.append(time.perf_counter())
        self.images.append(len(batch["image"]))


def steady_rate(ends: list[float], images: list[int], warmup: int) -> float:
    """Images/s between the end of the last warm-up step and the end of the last step."""
    return sum(images[warmup:]) / (ends[-1] - ends[warmup - 1])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """What Lightning's precision plugin does around the step, for the plain loop."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def fresh_datamodule(cfg: DictConfig):
    """A datamodule no trainer has touched: a fitted one carries its trainer's progress into its loaders."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def lightning_rate(cfg: DictConfig, steps: int, warmup: int) -> tuple[float, torch.device]:
    """The real pipeline: the configured Trainer and callbacks, no logger, no validation."""
    L.seed_everything(cfg.seed)
    datamodule = fresh_datamodule(cfg)
    model = instantiate(cfg.model)
    clock = StepClock()
    callbacks = [instantiate(c) for c in cfg.callbacks.values() if c is not None] + [clock]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        max_steps=steps + warmup,
        max_epochs=-1,
        limit_train_batches=None,
        limit_val_batches=0,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.fit(model, datamodule=datamodule)
    return steady_rate(clock.ends, clock.images, warmup), trainer.strategy.root_device


def plain_model(cfg: DictConfig, device: torch.device, compile: bool = True) -> WorkbenchModule:
    """The configured module as the pipeline trains it (fast-path switches applied), with Lightning's logging off."""
    model: WorkbenchModule = instantiate(cfg.model).to(device).train()
    model.log = lambda *args, **kwargs: None  # Lightning's logging is part of what the pipeline costs
    fast = cfg.callbacks.get("fast_path")
    if fast is not None:
        apply_fast_path(model, fast.channels_last, compile and fast.compile, fast.get("compile_mode"))
    return model


def plain_rate(cfg: DictConfig, datamodule, steps: int, warmup: int, device: torch.device) -> float:
    """The same module's training_step, AdamW + one-cycle, autocast as configured: nothing else."""
    L.seed_everything(cfg.seed)
    model = plain_model(cfg, device)
    optimization = model.build_optimizer(steps + warmup)
    optimizer, scheduler = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
    ends: list[float] = []
    images: list[int] = []
    while len(ends) < steps + warmup:  # as many epochs as the steps need
        for index, batch in enumerate(datamodule.train_dataloader()):
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            with _autocast(str(cfg.trainer.precision), device):
                loss = model.training_step(batch, index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            _synchronize(device)
            ends.append(time.perf_counter())
            images.append(len(batch["image"]))
            if len(ends) == steps + warmup:
                break
    return steady_rate(ends, images, warmup)


def render_rate(generator, images: int, repeats: int) -> float:
    """Images/s of the synthetic generator on one process (the cache build splits this across render_workers)."""
    rows = generator.manifest().head(images)
    seconds = median_seconds(lambda: [generator.render(row, i) for i, row in rows.iterrows()], repeats, 1)
    return len(rows) / seconds


def training_flops_per_image(cfg: DictConfig, datamodule, device: torch.device) -> float:
    """Forward + backward FLOPs of one training step, counted by torch.utils.flop_counter, per image."""
    model = plain_model(cfg, device, compile=False)  # the FLOP counter needs eager mode
    batch = next(iter(datamodule.train_dataloader()))
    batch = {key: value.to(device) for key, value in batch.items()}
    with FlopCounterMode(display=False) as counter:
        model.training_step(batch, 0).backward()
    return counter.get_total_flops() / len(batch["image"])


def cpu_peak_flops(threads: int) -> tuple[float, str]:
    """fp32 peak = threads x clock x FLOPs per cycle (2 FMA pipes x SIMD lanes x 2), read from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    clock = re.search(r"cpu MHz\s*:\s*([\d.]+)", info)
    ghz = float(clock.group(1)) / 1e3 if clock else 2.0
    lanes = 16 if " avx512f" in info else 8 if " avx2" in info else 4
    per_cycle = 2 * lanes * 2
    return threads * ghz * 1e9 * per_cycle, f"{threads} threads x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle"


def device_peak_flops(device: torch.device, configured_tflops: float | None) -> tuple[float, str]:
    if configured_tflops:
        return configured_tflops * 1e12, f"{configured_tflops} TFLOP/s (bench.peak_tflops)"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for model, tflops in GPU_PEAK_TFLOPS.items():
            if model in name:
                return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16 (data sheet)"
        raise ValueError(f"No known peak for {name}: set bench.peak_tflops.")
    return cpu_peak_flops(torch.get_num_threads())


def _median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def measure_training(cfg: DictConfig) -> tuple[dict[str, float], list[str]]:
    """Sections 1, 2, 3 and 5: figures (MLflow keys) and the markdown rows that state them."""
    bench = cfg.bench
    datamodule = fresh_datamodule(cfg)
    pipeline, plain = [], []
    for _ in range(bench.repeats):
        rate, device = lightning_rate(cfg, bench.steps, bench.warmup_steps)
        pipeline.append(rate)
        plain.append(plain_rate(cfg, datamodule, bench.steps, bench.warmup_steps, device))
    figures = {
        "bench/train/lightning_img_s": statistics.median(pipeline),
        "bench/train/plain_img_s": statistics.median(plain),
        "bench/loader/img_s": _median_of(
            bench.repeats, lambda: loader_images_per_second(datamodule, bench.loader_workers, bench.loader_seconds)
        ),
        "bench/render/img_s": render_rate(datamodule.generator, bench.render_images, bench.repeats),
    }
    figures["bench/train/ratio"] = figures["bench/train/lightning_img_s"] / figures["bench/train/plain_img_s"]
    figures["bench/loader/headroom"] = figures["bench/loader/img_s"] / figures["bench/train/lightning_img_s"]
    flops = training_flops_per_image(cfg, datamodule, device)
    peak, peak_basis = device_peak_flops(device, bench.peak_tflops)
    figures["bench/train/gflop_per_img"] = flops / 1e9
    figures["bench/train/mfu"] = flops * figures["bench/train/lightning_img_s"] / peak
    model = f"{cfg.model.backbone.name} at {cfg.data.generator.image_size} px, batch {datamodule.batch_size}"
    rows = [
        f"| training, Lightning pipeline ({model}, {cfg.trainer.precision}, {device.type}) | "
        f"{figures['bench/train/lightning_img_s']:.0f} img/s |",
        f"| training, plain PyTorch loop (same module, loader, optimizer, precision) | "
        f"{figures['bench/train/plain_img_s']:.0f} img/s |",
        f"| pipeline / plain loop (target at least 0.95) | {figures['bench/train/ratio']:.3f} |",
        f"| train loader alone ({bench.loader_workers} workers) / rate a training step consumes | "
        f"{figures['bench/loader/img_s']:.0f} img/s / "
        f"{figures['bench/train/lightning_img_s']:.0f} img/s = {figures['bench/loader/headroom']:.1f}x |",
        f"| synthetic rendering, one process ({cfg.data.generator._target_.rsplit('.', 1)[-1]}) | "
        f"{figures['bench/render/img_s']:.0f} img/s |",
        f"| training FLOPs per image (forward + backward, FlopCounterMode) | "
        f"{figures['bench/train/gflop_per_img']:.3f} GFLOP |",
        f"| MFU (achieved FLOP/s / peak; peak = {peak / 1e9:.0f} GFLOP/s: {peak_basis}) | "
        f"{figures['bench/train/mfu']:.2%} |",
    ]
    return figures, rows


def measure_inference(cfg: DictConfig) -> tuple[dict[str, float], list[str]]:
    """Section 4: the bundle on onnxruntime against the same wrapper in PyTorch eager."""
    import onnxruntime as ort

    from scripts.export import build_wrapper, load_calibrated_model

    state, _, _, module = load_calibrated_model(cfg, Path(cfg.paths.output_dir) / "source")
    wrapper = build_wrapper(module, state, 0.9).eval()
    session = ort.InferenceSession(str(Path(cfg.bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    size = int(module.hparams.image_size)
    figures, rows = {}, []
    for batch in cfg.batch_sizes:
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        tensor = torch.from_numpy(images)
        with torch.inference_mode():
            eager = median_seconds(lambda t=tensor: wrapper(t), cfg.bench.repeats, cfg.iterations)
        onnx = median_seconds(lambda x=images: session.run(None, {"images": x}), cfg.bench.repeats, cfg.iterations)
        figures |= {f"bench/infer/b{batch}/eager_ms": eager * 1e3, f"bench/infer/b{batch}/ort_ms": onnx * 1e3}
        rows.append(
            f"| inference at batch {batch}, `{cfg.bundle}`: PyTorch eager / ORT fp32 | {eager * 1e3:.2f} ms / "
            f"{onnx * 1e3:.2f} ms ({batch / onnx:.0f} img/s on ORT, {eager / onnx:.2f}x) |"
        )
    return figures, rows


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.+)", info)
    return name.group(1).strip() if name else platform.processor() or platform.machine()


def report(cfg: DictConfig, rows: list[str]) -> str:
    machine = f"{cpu_name()}, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("torch", "lightning", "onnxruntime") if _installed(name)
    )
    command = "childsafe bench " + " ".join(sys.argv[1:])
    return "\n".join(
        [
            f"Machine: {machine}; Python {platform.python_version()}, {versions}.",
            f"Command: `{command}`; median of {cfg.bench.repeats} repeats, {time.strftime('%Y-%m-%d')}.",
            "",
            "| what | figure |",
            "|---|---|",
            *rows,
        ]
    )


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def write_into_docs(path: Path, table: str) -> None:
    """Replace the harness's own section of the markdown file, leaving the hand-written rest alone."""
    text = path.read_text() if path.is_file() else ""
    if DOCS_START not in text:
        raise WorkbenchError(
            f"docs_file={path} has no {DOCS_START} ... {DOCS_END} section for the harness to fill (or does not "
            "exist). Add the two markers where the table belongs, or pass docs_file=null; the table is in the run "
            "folder's benchmark.md and in MLflow either way."
        )
    head, rest = text.split(DOCS_START, 1)
    tail = rest.split(DOCS_END, 1)[1]
    path.write_text(f"{head}{DOCS_START}\n{table}\n{DOCS_END}{tail}")


def bench(cfg: DictConfig) -> dict[str, float]:
    figures, rows = measure_training(cfg)
    if Path(cfg.bundle).is_dir():
        inference, inference_rows = measure_inference(cfg)
        figures, rows = figures | inference, rows + inference_rows
    else:
        rows.append(f"| inference, ORT fp32 against PyTorch eager | not measured: no bundle at `{cfg.bundle}` |")
    table = report(cfg, rows)
    output = Path(cfg.paths.output_dir) / "benchmark.md"
    output.write_text(table + "\n")
    print(table)
    with stage_run("bench", None, str(cfg.task_name), "bench") as (client, run_id):
        log_metrics(client, run_id, figures)
        client.log_artifact(run_id, str(output), "bench")
    if cfg.docs_file:
        write_into_docs(Path(cfg.docs_file), table)
    return figures


def main() -> None:
    run_stage("bench", bench)


if __name__ == "__main__":
    main()
