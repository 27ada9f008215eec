"""Inference latency and throughput: the ONNX bundle on onnxruntime (CPU) against PyTorch eager.

Both run the same export wrapper (preprocessing, network, calibration, decisions) on the same
uint8 batches in one process; each figure is the median of `repeats` runs of `iterations` calls.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from omegaconf import DictConfig

from export.latency import median_seconds
from scripts.export import build_wrapper, load_calibrated_model
from scripts.hydra_app import run_stage


def bench(cfg: DictConfig) -> list[dict]:
    output_dir = Path(cfg.paths.output_dir)
    state, _, _, module = load_calibrated_model(cfg, output_dir / "source")
    wrapper = build_wrapper(module, state, 0.9).eval()
    session = ort.InferenceSession(str(Path(cfg.bundle) / "model.onnx"), providers=["CPUExecutionProvider"])
    size = int(module.hparams.image_size)
    rows = []
    for batch in cfg.batch_sizes:
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        tensor = torch.from_numpy(images)
        with torch.inference_mode():
            eager = median_seconds(lambda t=tensor: wrapper(t), cfg.repeats, cfg.iterations)
        onnx = median_seconds(lambda x=images: session.run(None, {"images": x}), cfg.repeats, cfg.iterations)
        rows.append(
            {
                "batch": batch,
                "eager_ms": eager * 1e3,
                "ort_ms": onnx * 1e3,
                "eager_img_s": batch / eager,
                "ort_img_s": batch / onnx,
                "speedup": eager / onnx,
            }
        )
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    lines = [
        f"{state.task} bundle `{cfg.bundle}` ({machine}; torch {torch.__version__}, "
        f"onnxruntime {metadata.version('onnxruntime')}; median of {cfg.repeats} x {cfg.iterations} calls)",
        "",
        "| batch | PyTorch eager ms | ORT fp32 ms | eager img/s | ORT img/s | ORT speed-up |",
        "|---|---|---|---|---|---|",
        *(
            f"| {r['batch']} | {r['eager_ms']:.2f} | {r['ort_ms']:.2f} | {r['eager_img_s']:.0f} | "
            f"{r['ort_img_s']:.0f} | {r['speedup']:.2f}x |"
            for r in rows
        ),
    ]
    table = "\n".join(lines)
    (output_dir / "inference_benchmark.md").write_text(table + "\n")
    print(table)
    return rows


def main() -> None:
    run_stage("bench", bench)


if __name__ == "__main__":
    main()
