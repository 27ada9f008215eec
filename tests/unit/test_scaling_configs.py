"""The scale-out configs compose into the engines they name, and the override checks still work under -m."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn

from core.errors import WorkbenchError
from core.hydra_app import register_resolvers, validate
from models.fast_path import apply_fast_path

LAUNCHERS = {
    "joblib": "JoblibLauncher",
    "submitit_local": "LocalLauncher",
    "submitit_slurm": "SlurmLauncher",
}


@pytest.fixture(autouse=True)
def _resolvers():
    register_resolvers()


def _train(tmp_path, *overrides: str):
    return validate("train", [*overrides, f"paths.log_dir={tmp_path / 'out'}", f"paths.cache_dir={tmp_path / 'c'}"])


SEARCHES = {"age_optuna": "val/age/mae", "content_optuna": "val/content/accuracy"}


@pytest.mark.parametrize(("search", "metric"), sorted(SEARCHES.items()))
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_sweeps_compose_with_each_launcher(tmp_path, search, metric, launcher):
    experiment = search.replace("_optuna", "_synthetic")
    cfg = _train(tmp_path, "-m", f"experiment={experiment}", f"hparams_search={search}", f"launcher={launcher}")
    assert cfg.optimized_metric == metric
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == ("minimize" if "mae" in metric else "maximize")
    assert cfg.hydra.launcher._target_.endswith(LAUNCHERS[launcher])
    assert cfg.hydra.callbacks.create_tracking_store._target_ == "tracking.hydra_callbacks.CreateTrackingStore"


def test_a_typo_is_still_caught_in_a_sweep(tmp_path):
    with pytest.raises(WorkbenchError, match=r"Did you mean model\.optimizer"):
        _train(tmp_path, "-m", "hparams_search=age_optuna", "launcher=joblib", "model.optimiser.lr=0.1,0.2")
    with pytest.raises(WorkbenchError, match="age_optuna"):
        _train(tmp_path, "-m", "hparams_search=age_optunaa")


def test_sync_batchnorm_follows_the_device(tmp_path):
    assert _train(tmp_path, "trainer=ddp", "trainer.accelerator=cpu").trainer.sync_batchnorm is False
    assert _train(tmp_path, "trainer=ddp", "trainer.accelerator=gpu").trainer.sync_batchnorm is True


def test_fsdp_shards_every_module_of_a_million_parameters(tmp_path):
    cfg = _train(tmp_path, "trainer=fsdp")
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy) and cfg.trainer.precision == "bf16-mixed"
    policy = strategy.kwargs["auto_wrap_policy"]
    big, small = nn.Linear(1000, 1000), nn.Linear(10, 10)
    assert policy(module=big, recurse=False, nonwrapped_numel=sum(p.numel() for p in big.parameters()))
    assert not policy(module=small, recurse=False, nonwrapped_numel=sum(p.numel() for p in small.parameters()))


def test_gpu_fast_path_switches_are_on_for_a_gpu_and_off_on_cpu(tmp_path):
    for accelerator, on in (("cpu", False), ("gpu", True)):
        cfg = _train(tmp_path, f"trainer.accelerator={accelerator}")
        assert cfg.trainer.precision == ("bf16-mixed" if on else "32-true")
        assert cfg.callbacks.fast_path.channels_last is on
        assert cfg.data.pin_memory is on
        assert (cfg.data.num_workers > 0) is on and (cfg.data.prefetch_factor is not None) is on
        assert cfg.callbacks.fast_path.compile is False  # opt-in everywhere


def test_fast_path_keeps_outputs_and_parameter_names_on_cpu(tmp_path, monkeypatch):
    cfg = _train(tmp_path, "experiment=age_synthetic")
    reference = instantiate(cfg.model).eval()
    fast = instantiate(cfg.model).eval()
    fast.load_state_dict(reference.state_dict())
    compiled = []  # compiling for real takes minutes on 2 cores: record what would be compiled, run it eagerly
    monkeypatch.setattr(torch, "compile", lambda function, **options: compiled.append((function, options)) or function)
    apply_fast_path(fast, channels_last=True, compile=True, compile_mode="max-autotune")
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert [(f.__self__, o) for f, o in compiled] == [(fast.backbone, {"mode": "max-autotune"})]  # in place
    assert fast.state_dict().keys() == reference.state_dict().keys()  # checkpoints and export unaffected
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        expected, got = reference(images)["expected_age"], fast(images)["expected_age"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
