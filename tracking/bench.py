"""Where training and inference time goes, measured side by side in one process: `childsafe bench`.

1. training images/s: the full Lightning pipeline (the configured trainer and callbacks) against a
   plain PyTorch loop over the same module, batch tensors, optimizer, precision and device;
2. the train loader alone (datamodules/throughput.py), against the rate a training step consumes;
3. synthetic rendering, the one-off cost of building the cache;
4. the exported bundle on onnxruntime against PyTorch eager, at each batch size (if a bundle exists);
5. MFU: achieved training FLOP/s (Lightning's measure_flops) over the device's peak (bench.peak_tflops, else
   Lightning's get_available_flops, which knows GPUs and TPUs but not CPUs), stated with it.

Each figure is the median of `repeats` runs; the two training arms alternate step by step, so the
machine's load hits both alike, and their ratio is taken within each repeat.
The table goes to the run folder, to MLflow and, with `docs_file` set, into docs/benchmarks.md.
"""

from __future__ import annotations

import itertools
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
from hydra.utils import get_class, instantiate
from lightning.fabric.utilities.throughput import get_available_flops, measure_flops
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from core.errors import WorkbenchError
from datamodules.throughput import loader_images_per_second
from export.latency import median_seconds
from models.base import WorkbenchModule
from models.fast_path import apply_fast_path
from tracking.mlflow_run import log_metrics, stage_run
from tracking.step_profile import profile_rows


def docs_markers(section: str) -> tuple[str, str]:
    """The comments that fence a harness's own table in a markdown file."""
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


DOCS_START, DOCS_END = docs_markers("bench")
# Dense bf16 tensor-core peaks (vendor data sheets, SXM parts), matched against the CUDA device name.


class PlainLoopAlongside(L.Callback):
    """The plain PyTorch loop, run step by step inside the pipeline's loop: after every pipeline step,
    one step of a twin module on the same batch tensors, timed on its own.

    Load from the machine's neighbours moves throughput by tens of per cent within seconds; arms
    that alternate every step see the same load, where arms run one after the other do not.
    """

    def __init__(self, twin: WorkbenchModule, batches: list[dict[str, torch.Tensor]]):
        self.twin, self.steps = twin, len(batches)
        # Copies, so neither arm finds the other's batch warm in the CPU caches; read through a loader, like Lightning.
        copies = [{key: value.clone() for key, value in batch.items()} for batch in batches]
        self.batches = iter(DataLoader(copies, batch_size=None))
        self.pipeline_seconds: list[float] = []
        self.plain_seconds: list[float] = []
        self.images: list[int] = []
        self.resumed = 0.0  # when the pipeline's time started running again: the end of the last plain step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.twin.to(pl_module.device)  # the device the trainer chose
        optimization = self.twin.build_optimizer(self.steps)
        self.optimizer, self.scheduler = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
        self.resumed = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        device = pl_module.device
        _synchronize(device)  # a GPU step ends when its kernels do
        paused = time.perf_counter()
        self.pipeline_seconds.append(paused - self.resumed)
        batch = {key: value.to(device, non_blocking=True) for key, value in next(self.batches).items()}
        with torch.enable_grad():
            with trainer.precision_plugin.train_step_context():  # the autocast Lightning puts around the step
                loss = self.twin.training_step(batch, batch_idx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
        _synchronize(device)
        self.resumed = time.perf_counter()
        self.plain_seconds.append(self.resumed - paused)
        self.images.append(len(batch["image"]))


def steady_rate(seconds: list[float], images: list[int], warmup: int) -> float:
    """Images/s over the steps after the warm-up."""
    return sum(images[warmup:]) / sum(seconds[warmup:])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fresh_datamodule(cfg: DictConfig):
    """A datamodule no trainer has touched: a fitted one carries its trainer's progress into its loaders."""
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    return datamodule


def read_batches(datamodule, count: int) -> list[dict[str, torch.Tensor]]:
    """The shuffled train batches both arms train on, read once: loading is timed on its own (section 2)."""
    batches: list[dict[str, torch.Tensor]] = []
    while len(batches) < count:  # as many epochs as it takes
        epoch = list(itertools.islice(datamodule.train_dataloader(), count - len(batches)))
        if not epoch:
            raise WorkbenchError(
                "The train split has no batches to benchmark on: check the data config (data.batch_size against "
                "the size of the train split)."
            )
        batches.extend(epoch)
    return batches


def plain_model(cfg: DictConfig, compile: bool = True) -> WorkbenchModule:
    """The configured module as the pipeline trains it (fast-path switches applied), with Lightning's logging off."""
    model: WorkbenchModule = instantiate(cfg.model).train()
    model.log = lambda *args, **kwargs: None  # Lightning's logging is part of what the pipeline costs
    fast = cfg.callbacks.get("fast_path")
    if fast is not None:
        apply_fast_path(model, fast.channels_last, compile and fast.compile, fast.get("compile_mode"))
    return model


def train_side_by_side(
    cfg: DictConfig, batches: list[dict[str, torch.Tensor]], *extra: L.Callback
) -> tuple[PlainLoopAlongside, L.Trainer]:
    """One repeat of both arms: the configured Trainer and callbacks (no logger, no validation) with the plain
    loop alongside; the two modules start from the same seeded weights. `extra` callbacks run first."""
    L.seed_everything(cfg.seed)
    model = instantiate(cfg.model)
    L.seed_everything(cfg.seed)
    plain = PlainLoopAlongside(plain_model(cfg), batches)
    callbacks = [*extra, *(instantiate(c) for c in cfg.callbacks.values() if c is not None), plain]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=False,
        max_steps=len(batches),
        max_epochs=-1,
        limit_train_batches=None,
        limit_val_batches=0,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return plain, trainer


def render_rate(generator, images: int, repeats: int) -> float:
    """Images/s of the synthetic generator on one process (the cache build splits this across render_workers)."""
    rows = generator.manifest().head(images)
    seconds = median_seconds(lambda: [generator.render(row, i) for i, row in rows.iterrows()], repeats, 1)
    return len(rows) / seconds


def training_flops_per_image(cfg: DictConfig, batch: dict[str, torch.Tensor], device: torch.device) -> float:
    """Forward + backward FLOPs of one training step, counted by Lightning's measure_flops, per image."""
    model = plain_model(cfg, compile=False).to(device)  # the FLOP counter needs eager mode
    batch = {key: value.to(device) for key, value in batch.items()}
    return measure_flops(model, lambda: model.training_step(batch, 0), lambda loss: loss) / len(batch["image"])


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls run in under a Lightning precision setting ("bf16-mixed", "16-true", "32-true")."""
    return {"bf16": torch.bfloat16, "16": torch.float16}.get(str(precision).split("-")[0], torch.float32)


def device_peak_flops(
    device: torch.device, precision: str, configured_tflops: float | None
) -> tuple[float | None, str]:
    """The peak MFU divides by: `bench.peak_tflops`, else Lightning's data-sheet table (GPUs and TPUs only)."""
    if configured_tflops:
        return configured_tflops * 1e12, f"{configured_tflops:g} TFLOP/s (bench.peak_tflops)"
    dtype = compute_dtype(precision)
    peak = get_available_flops(device, dtype)
    if peak is None:
        return None, f"no data-sheet peak for {device.type} at {dtype}: set bench.peak_tflops to state one"
    return float(peak), f"{peak / 1e12:.0f} TFLOP/s at {dtype} (Lightning's get_available_flops)"


def _median_of(repeats: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(repeats))


def measure_training(cfg: DictConfig) -> tuple[dict[str, float], list[str], list[str]]:
    """Sections 1, 2, 3 and 5: figures (MLflow keys), the markdown rows that state them, and the profile
    of the pipeline's extra time when the ratio falls short of its target (or `bench.profile` asks)."""
    bench = cfg.bench
    datamodule = fresh_datamodule(cfg)
    batches = read_batches(datamodule, bench.warmup_steps + bench.steps)
    pipeline, plain = [], []
    for _ in range(bench.repeats):
        timings, trainer = train_side_by_side(cfg, batches)
        pipeline.append(steady_rate(timings.pipeline_seconds, timings.images, bench.warmup_steps))
        plain.append(steady_rate(timings.plain_seconds, timings.images, bench.warmup_steps))
    ratios = [a / b for a, b in zip(pipeline, plain, strict=True)]  # the arms ran side by side within a repeat
    figures = {
        "bench/train/lightning_img_s": statistics.median(pipeline),
        "bench/train/plain_img_s": statistics.median(plain),
        "bench/train/ratio": statistics.median(ratios),
        "bench/train/ratio_min": min(ratios),
        "bench/train/ratio_max": max(ratios),
        "bench/loader/img_s": _median_of(
            bench.repeats, lambda: loader_images_per_second(datamodule, bench.loader_workers, bench.loader_seconds)
        ),
    }
    if datamodule.synthetic:  # licensed data is decoded once at ingest: there is no rendering to time
        figures["bench/render/img_s"] = render_rate(datamodule.generator, bench.render_images, bench.repeats)
    device = trainer.strategy.root_device
    figures["bench/loader/headroom"] = figures["bench/loader/img_s"] / figures["bench/train/lightning_img_s"]
    flops = training_flops_per_image(cfg, batches[0], device)
    peak, peak_basis = device_peak_flops(device, cfg.trainer.precision, bench.peak_tflops)
    figures["bench/train/gflop_per_img"] = flops / 1e9
    if peak is not None:
        figures["bench/train/mfu"] = flops * figures["bench/train/lightning_img_s"] / peak
    module = cfg.model._target_.rsplit(".", 1)[-1]
    model = f"{module}, {cfg.model.backbone.name} at {cfg.model.image_size} px, batch {datamodule.batch_size}"
    rows = [
        f"| training, Lightning pipeline ({model}, {cfg.trainer.precision}, {device.type}) | "
        f"{figures['bench/train/lightning_img_s']:.0f} img/s |",
        f"| training, plain PyTorch loop (same module, batch tensors, optimizer, precision) | "
        f"{figures['bench/train/plain_img_s']:.0f} img/s |",
        f"| pipeline / plain loop, median of the repeats' ratios (range) (target at least {bench.target_ratio}) | "
        f"{figures['bench/train/ratio']:.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |",
        f"| train loader alone ({bench.loader_workers} workers) / rate a training step consumes | "
        f"{figures['bench/loader/img_s']:.0f} img/s / "
        f"{figures['bench/train/lightning_img_s']:.0f} img/s = {figures['bench/loader/headroom']:.1f}x |",
        (
            f"| synthetic rendering, one process ({type(datamodule.generator).__name__}) | "
            f"{figures['bench/render/img_s']:.0f} img/s |"
            if datamodule.synthetic
            else f"| synthetic rendering | not measured: {datamodule.dataset_name} is licensed data, decoded "
            "at ingest |"
        ),
        f"| training FLOPs per image (forward + backward, Lightning's measure_flops) | "
        f"{figures['bench/train/gflop_per_img']:.3f} GFLOP |",
        f"| MFU (achieved FLOP/s / peak; peak: {peak_basis}) | "
        + (f"{figures['bench/train/mfu']:.2%} |" if peak is not None else "not measured |"),
    ]
    profile = []
    if bench.profile or figures["bench/train/ratio"] < bench.target_ratio:

        def profiled_repeat(profiling: L.Callback) -> tuple[L.Trainer, list[float], list[float]]:
            timings, trainer = train_side_by_side(cfg, batches, profiling)
            return trainer, timings.pipeline_seconds, timings.plain_seconds

        profile = profile_rows(profiled_repeat, bench.warmup_steps, skip=(PlainLoopAlongside,))
    return figures, rows, profile


def measure_inference(cfg: DictConfig) -> tuple[dict[str, float], list[str]]:
    """Section 4: the bundle on onnxruntime against the same wrapper in PyTorch eager."""
    import onnxruntime as ort

    from export.pipeline import build_wrapper, load_calibrated_model

    state, _, _, module = load_calibrated_model(cfg, Path(cfg.paths.output_dir) / "source")
    wrapper = build_wrapper(module, state, state.interval_coverage(cfg.coverage)).eval()
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
    command = " ".join(["childsafe bench", *sys.argv[1:]])
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


def write_into_docs(path: Path, table: str, section: str = "bench") -> None:
    """Replace the harness's own section (`<!-- section:start -->` to `:end`) of the markdown file, leaving the
    hand-written rest alone. `make gpu-check` fills its own section the same way."""
    start, end = docs_markers(section)
    text = path.read_text() if path.is_file() else ""
    if start not in text:
        raise WorkbenchError(
            f"{path} has no {start} ... {end} section for the harness to fill (or does not exist). Add the two "
            "markers where the table belongs, or leave the docs alone (childsafe bench: drop docs_file; make "
            "gpu-check: GPU_CHECK_DOCS=); the table is printed and kept in the run folder either way."
        )
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{start}\n{table}\n{end}{tail}")


def bench(cfg: DictConfig) -> dict[str, float]:
    figures, rows, profile = measure_training(cfg)
    if Path(cfg.bundle).is_dir():
        inference, inference_rows = measure_inference(cfg)
        figures, rows = figures | inference, rows + inference_rows
    else:
        rows.append(f"| inference, ORT fp32 against PyTorch eager | not measured: no bundle at `{cfg.bundle}` |")
    table = report(cfg, rows) + ("\n\n" + "\n".join(profile) if profile else "")
    output = Path(cfg.paths.output_dir) / "benchmark.md"
    output.write_text(table + "\n")
    print(table)
    task = get_class(cfg.model._target_).task  # age or content, as every stage tags it
    with stage_run("bench", None, task, str(cfg.train_task)) as (client, run_id):
        log_metrics(client, run_id, figures)
        client.log_artifact(run_id, str(output), "bench")
    if cfg.docs_file:
        write_into_docs(Path(cfg.docs_file), table)
    return figures
