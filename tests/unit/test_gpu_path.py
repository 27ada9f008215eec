"""The GPU path, checked on CPU: what the configs ask of CUDA, and that the device choice leaves CPU results alone.

The tests marked `gpu` run the same paths on a CUDA device; tests/conftest.py skips them without one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.trainer.connectors.accelerator_connector import _set_torch_flags

from core.hydra_app import register_resolvers, validate
from export.parity import placed_on, reference_outputs

LICENSED = (
    "agedb",
    "appa_real",
    "fgnet",
    "imdb_wiki",
    "utkface",
    "age_manifest",
    "content_manifest",
    "content_imagefolder",
)


@pytest.fixture(autouse=True)
def _resolvers():
    register_resolvers()


def _stage(tmp_path, stage: str, *overrides: str):
    return validate(stage, [*overrides, f"paths.log_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'c'}"])


@pytest.fixture
def deterministic_flags():
    """Lightning sets torch's global deterministic flags; put them back for the tests that follow."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.mark.parametrize("accelerator", ["gpu", "auto-on-a-cuda-machine"])
def test_the_default_trainer_on_cuda_only_warns_where_cuda_has_no_deterministic_kernel(
    tmp_path, monkeypatch, accelerator, deterministic_flags
):
    if accelerator == "gpu":
        cfg = _stage(tmp_path, "train", "trainer.accelerator=gpu")
    else:  # the default `accelerator: auto`, composed as on a machine where CUDA is available
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        cfg = _stage(tmp_path, "train")
        assert cfg.trainer.accelerator == "auto"
    assert cfg.trainer.deterministic == "warn"
    _set_torch_flags(deterministic=cfg.trainer.deterministic)  # what Lightning's Trainer does with the value
    # Strict mode would raise on the backward of AdaptiveAvgPool2d (resnet, convnext, efficientnet, vit heads).
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()


def test_the_default_trainer_on_cpu_stays_strictly_deterministic(tmp_path, deterministic_flags):
    cfg = _stage(tmp_path, "train", "trainer.accelerator=cpu")
    assert cfg.trainer.deterministic is True
    _set_torch_flags(deterministic=cfg.trainer.deterministic)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()


@pytest.mark.parametrize("data", LICENSED)
def test_licensed_data_gets_workers_and_pinned_memory_on_a_gpu_only(tmp_path, data):
    for accelerator, on in (("cpu", False), ("gpu", True)):
        cfg = _stage(tmp_path, "train", f"data={data}", "data.root=/data/set", f"trainer.accelerator={accelerator}")
        assert cfg.data.pin_memory is on, (data, accelerator)
        assert (cfg.data.num_workers > 0) is on and (cfg.data.prefetch_factor is not None) is on
        loader_settings = instantiate(cfg.data)  # the datamodule takes the keys (nothing is read yet)
        assert loader_settings.pin_memory is on and loader_settings.prefetch_factor == (4 if on else None)


@pytest.mark.parametrize("stage", ["calibrate", "evaluate", "export"])
def test_the_inference_stages_choose_the_gpu_when_there_is_one(tmp_path, monkeypatch, stage):
    def device(cfg):
        return cfg.export.device if stage == "export" else cfg.device

    assert device(_stage(tmp_path, stage)) == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device(_stage(tmp_path, stage)) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device(_stage(tmp_path, stage)) == "cpu"


def test_the_device_choice_leaves_cpu_outputs_bit_identical_and_the_module_where_it_was():
    from export_cases import age_case, content_case, data

    for module, state, target in (age_case("small_cnn", "dldl"), content_case("small_cnn")):
        images, _ = data(target)
        where = reference_outputs(module, state, images, 0.9)
        chosen = reference_outputs(module, state, images, 0.9, "cpu")
        assert where.keys() == chosen.keys()
        for key in where:
            np.testing.assert_array_equal(chosen[key], where[key], err_msg=key)
        assert next(module.parameters()).device.type == "cpu"


def test_placed_on_turns_tf32_off_for_the_block_and_restores_everything_even_when_it_fails():
    """TF32 convolutions are ~1e-3 off fp32: the parity gate (1e-4 against onnxruntime) needs them off on CUDA."""
    module = torch.nn.Linear(2, 2)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # as a run with torch.set_float32_matmul_precision("high") leaves it
    try:
        with pytest.raises(RuntimeError, match="inside"), placed_on(module, "cpu") as target:
            assert target.type == "cpu"
            assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("inside")
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert module.weight.device.type == "cpu"
