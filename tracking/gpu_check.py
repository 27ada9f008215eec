"""`make gpu-check`: the whole GPU path in one run, with one table of what it measured.

For the age and the content task: a fine-tune at 224 px on ResNet-50 in bf16 (synthetic data, random
init, nothing downloaded), then calibrate, evaluate and export with the network on the GPU (the parity
gate compares that against onnxruntime on CPU). Then the `childsafe bench` training figures
(pipeline / plain-loop ratio, MFU, loader against step), and DDP over the GPUs present (skipped on one).

Every stage runs in this process through the stage's own function and config, composed as its CLI
composes it, except DDP: Lightning starts the other ranks by re-running the command, so DDP runs
`python -m scripts.train` in a child process. Everything goes to a work folder with its own MLflow
store, never the repo's. `Sizes.tiny` runs the same logic on CPU in seconds, so CI keeps it working.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from core.errors import WorkbenchError
from core.paths import CONFIG_DIR

TASKS = {"age": "age_synthetic", "content": "content_synthetic"}
HEADLINES = {"age": ("mae", "MAE"), "content": ("accuracy", "accuracy")}
SECTION = "gpu-check"  # docs/benchmarks.md: <!-- gpu-check:start --> ... <!-- gpu-check:end -->


@dataclass(frozen=True)
class Sizes:
    """How big each part of the check is: `real` for one GPU in under 8 minutes, `tiny` for CPU in CI."""

    name: str
    accelerator: str
    backbone: str
    image_size: int
    subjects: dict[str, int]  # synthetic subjects per task (age: 3 images each, content: 4)
    batch_size: int
    steps: int
    precision: str
    render_workers: int
    bench: tuple[str, ...]  # `childsafe bench` sizes
    # Certificate targets the calib split of this size can certify (the check exercises the machinery; the
    # demo's 1% needs 299 subjects under each gate).
    calibration: tuple[str, ...]
    extra: tuple[str, ...] = ()  # anything else every training composition gets

    def train_overrides(self, task: str) -> list[str]:
        return [
            f"experiment={TASKS[task]}",
            f"model.backbone.name={self.backbone}",
            f"data.generator.image_size={self.image_size}",
            f"data.generator.num_subjects={self.subjects[task]}",
            f"data.batch_size={self.batch_size}",
            f"data.render_workers={self.render_workers}",
            f"trainer.accelerator={self.accelerator}",
            f"trainer.precision={self.precision}",
            f"+trainer.max_steps={self.steps}",
            "trainer.max_epochs=1000",  # the step count ends training
            *self.extra,
        ]


def _smoke_stream_overrides() -> list[str]:
    """debug=smoke's stream sizes (configs/pipeline.yaml), so the tiny check renders what the smoke pipeline does."""
    calibrate = OmegaConf.load(CONFIG_DIR / "pipeline.yaml").debug_runs.smoke.overrides.calibrate
    return [override for override in calibrate if override.startswith("calibration.streams.")]


REAL = Sizes(
    name="real",
    accelerator="gpu",
    backbone="resnet50",
    image_size=224,
    subjects={"age": 2000, "content": 1500},  # 6,000 images each
    batch_size=128,
    steps=300,
    precision="bf16-mixed",
    render_workers=8,
    # The stream policy is not a GPU figure, and its 240 streams at 224 px would cost minutes to render.
    calibration=(
        "calibration.age.max_minor_pass_rate=0.05",
        "calibration.content.min_recall=0.95",
        "calibration.streams.enabled=false",
    ),
    bench=("bench.repeats=3", "bench.steps=20", "bench.warmup_steps=3", "bench.loader_workers=4"),
)
TINY = Sizes(
    name="tiny",
    accelerator="cpu",
    backbone="small_cnn",
    image_size=32,
    subjects={"age": 200, "content": 150},
    batch_size=32,
    steps=4,  # debug=smoke's epoch: training must reach a validation for a best checkpoint
    precision="bf16-mixed",  # the GPU's autocast logic, on CPU
    render_workers=1,
    calibration=(
        "calibration.age.max_minor_pass_rate=0.4",
        "calibration.content.min_recall=0.6",
        *_smoke_stream_overrides(),
    ),
    bench=(
        "bench.repeats=1",
        "bench.steps=2",
        "bench.warmup_steps=1",
        "bench.loader_workers=0",
        "bench.loader_seconds=0.2",
        "bench.render_images=2",
        "bench.target_ratio=0",  # no cProfile repeat: seconds matter here, not the shortfall's breakdown
    ),
    extra=("debug=smoke",),  # few validation and test batches
)
SIZES = {sizes.name: sizes for sizes in (REAL, TINY)}


@dataclass
class Check:
    """Where one run keeps its files, and the table rows it has measured so far."""

    sizes: Sizes
    folder: Path
    cache_dir: Path
    rows: list[str]

    def stage_config(self, stage: str, *overrides: str) -> DictConfig:
        """The stage's config as its CLI composes it (overrides checked), its folders under the work folder."""
        from core.hydra_app import prepare, register_resolvers

        register_resolvers()
        folders = [f"paths.log_dir={self.folder / 'outputs'}", f"paths.cache_dir={self.cache_dir}"]
        cfg, _ = prepare(stage, [*overrides, *folders])
        HydraConfig().set_config(cfg)  # `${hydra:...}` keys (run names) resolve as in a Hydra app
        # A fresh folder per stage run, also when the work folder is reused (its cache and store are kept).
        run = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}-{len(self.rows):02d}-{cfg.task_name}"
        output_dir = self.folder / "outputs" / stage / run
        output_dir.mkdir(parents=True)
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
            del cfg.hydra
        return cfg

    def timed(self, what: str, run: Callable[[], dict[str, float]], figure: Callable[[dict, float], str]) -> dict:
        """Run one part, add its row (`figure` of its metrics and seconds) and print it as it lands."""
        started = time.perf_counter()
        metrics = run()
        row = f"| {what} | {figure(metrics, time.perf_counter() - started)} |"
        self.rows.append(row)
        print(row, flush=True)
        return metrics


def device_name(sizes: Sizes) -> str:
    from tracking.bench import cpu_name

    if sizes.accelerator == "gpu":
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}"
    return f"CPU ({cpu_name()})"


def task_rows(check: Check, task: str) -> None:
    """Fine-tune, calibrate, evaluate and export one task, a row each."""
    from calibration.calibrate import calibrate
    from evaluation.evaluate import evaluate
    from export.pipeline import export
    from models.train import train

    sizes, experiment = check.sizes, TASKS[task]
    key, label = HEADLINES[task]
    check.timed(
        f"{task}: train {sizes.backbone} at {sizes.image_size} px, {sizes.precision}, {sizes.steps} steps of "
        f"{sizes.batch_size} (random init)",
        lambda: train(check.stage_config("train", *sizes.train_overrides(task))),
        lambda m, s: (
            f"{s:.0f} s; {sizes.steps * sizes.batch_size / m[f'train/{task}/fit_seconds']:.0f} img/s "
            f"over fit (validation included); test {label} {m[f'test/{task}/{key}']:.3f}"
        ),
    )
    device = "cuda" if sizes.accelerator == "gpu" else "cpu"
    stage = ("device=" + device, f"train_task={experiment}")
    check.timed(
        f"{task}: calibrate (calib and test splits predicted on {device})",
        lambda: calibrate(check.stage_config("calibrate", *stage, *sizes.calibration)),
        lambda m, s: f"{s:.0f} s",
    )
    check.timed(
        f"{task}: evaluate on {device} (test split, robustness perturbations included)",
        lambda: evaluate(check.stage_config("evaluate", *stage)),
        lambda m, s: f"{s:.0f} s; test {label} {m[f'test/{task}/{key}']:.3f}",
    )
    check.timed(
        f"{task}: export and parity gate (PyTorch on {device} against onnxruntime CPU fp32)",
        lambda: export(
            check.stage_config(
                "export",
                f"train_task={experiment}",
                f"export.device={device}",
                "export.register=false",
                "export.allow_degenerate=true",  # a few hundred steps from random init may give degenerate points
                f"export.release_dir={check.folder / 'releases'}",
            )
        ),
        lambda m, s: (
            f"{s:.0f} s; max abs diff "
            + ", ".join(f"{k.rsplit('/', 1)[1]} {v:.1e}" for k, v in sorted(m.items()) if "parity_max_abs_diff" in k)
        ),
    )


def bench_rows(check: Check) -> None:
    """`childsafe bench`'s training figures for the age fine-tune: pipeline / plain loop, MFU, loader / step."""
    from tracking.bench import measure_training

    sizes = check.sizes
    cfg = check.stage_config("bench", *sizes.train_overrides("age"), *sizes.bench)
    started = time.perf_counter()
    _, rows, profile = measure_training(cfg)
    check.rows += [*rows, *profile]
    print("\n".join([*rows, *profile]), f"\n(bench: {time.perf_counter() - started:.0f} s)", flush=True)


def ddp_steps(sizes: Sizes) -> int:
    """A third of the single-GPU run: enough to see every rank step and sync, not a second fine-tune."""
    return max(sizes.steps // 3, 1)


def ddp_command(check: Check, devices: int) -> list[str]:
    """`childsafe train` under DDP in a child process: Lightning starts each further rank by re-running it."""
    overrides = [o for o in check.sizes.train_overrides("age") if not o.startswith("+trainer.max_steps=")]
    return [
        sys.executable,
        "-m",
        "scripts.train",
        *overrides,
        "trainer=ddp",
        f"trainer.devices={devices}",
        f"+trainer.max_steps={ddp_steps(check.sizes)}",
        f"paths.log_dir={check.folder / 'outputs'}",
        f"paths.cache_dir={check.cache_dir}",
        f"hydra.run.dir={check.folder / 'outputs' / 'ddp'}",
    ]


def ddp_row(check: Check) -> None:
    devices = torch.cuda.device_count() if check.sizes.accelerator == "gpu" else 0
    if devices < 2:
        check.rows.append(f"| DDP over the GPUs present | skipped: {devices} GPU{'s' if devices != 1 else ''} |")
        print(check.rows[-1], flush=True)
        return

    def run() -> dict[str, float]:
        done = subprocess.run(ddp_command(check, devices), env=os.environ | {"PYTHONUNBUFFERED": "1"}, check=False)
        if done.returncode:
            raise WorkbenchError(f"DDP on {devices} GPUs failed (exit {done.returncode}); its log is printed above.")
        return {}

    check.timed(f"DDP, {devices} GPUs (NCCL), age, {ddp_steps(check.sizes)} steps", run, lambda m, s: f"{s:.0f} s")


@contextmanager
def own_tracking_store(folder: Path) -> Iterator[str]:
    """The check's MLflow store in its work folder, so its runs never mix with the team's."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    (folder / "mlruns").mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield uri
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


def run_check(sizes: Sizes, folder: Path, cache_dir: Path | None = None, docs: Path | None = None) -> str:
    """Every part in turn; returns the table (also printed, and written into `docs` when given)."""
    from tracking.bench import write_into_docs

    if sizes.accelerator == "gpu" and not torch.cuda.is_available():
        raise WorkbenchError(
            "make gpu-check needs a CUDA GPU and this machine has none (torch.cuda.is_available() is False). "
            "Its logic runs on CPU at tiny sizes with `python -m scripts.gpu_check --size tiny`."
        )
    check = Check(sizes, folder, cache_dir or folder / "cache", [])
    started = time.perf_counter()
    with own_tracking_store(folder):
        for task in TASKS:
            task_rows(check, task)
        bench_rows(check)
        ddp_row(check)
    minutes = (time.perf_counter() - started) / 60
    table = "\n".join(
        [
            f"Device: {device_name(sizes)}; torch {torch.__version__}; sizes `{sizes.name}`; "
            f"{time.strftime('%Y-%m-%d')}; {minutes:.1f} min in all.",
            "",
            "| what | figure |",
            "|---|---|",
            *check.rows,
        ]
    )
    (folder / "gpu_check.md").write_text(table + "\n")
    print(table)
    if docs is not None:
        write_into_docs(docs, table, SECTION)
    return table
