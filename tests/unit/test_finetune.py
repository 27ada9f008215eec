"""Fine-tuning: parameter groups, warm-up + cosine, and EMA weights that test and the checkpoint carry."""

import itertools

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, ModelCheckpoint
from torch.utils.data import DataLoader
from torchvision.ops._utils import split_normalization_params

from core.errors import WorkbenchError
from models.checkpointing import RandomStateCheckpoint
from models.content_module import ContentModule
from models.ema import EMAWeights

SIZE = 32


def content_module(scheduler: str = "onecycle", **optimizer) -> ContentModule:
    options = {"lr": 0.01, "weight_decay": 0.05, "warmup_fraction": 0.2} | optimizer
    return ContentModule({"name": "small_cnn"}, options, image_size=SIZE, scheduler=scheduler)


def test_norms_and_biases_get_no_decay_and_the_backbone_its_own_lr():
    module = content_module(backbone_lr_mult=0.1, decay_norms_and_biases=False)
    groups = module.build_optimizer(10)["optimizer"].param_groups
    undecayed = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    norms, _ = split_normalization_params(module)
    norm_and_bias = norms + [p for n, p in module.named_parameters() if n.endswith("bias")]
    assert norm_and_bias and all(id(p) in undecayed for p in norm_and_bias)
    assert all(id(p) not in undecayed for p in module.parameters() if p.ndim > 1)
    backbone = {id(p) for p in module.backbone.parameters()}
    lrs = {all(id(p) in backbone for p in g["params"]): g["initial_lr"] for g in groups}
    assert lrs[True] == pytest.approx(0.1 * lrs[False])
    assert sorted(g["name"] for g in groups) == ["backbone", "backbone_no_decay", "head", "head_no_decay"]


def test_layer_decay_steps_the_learning_rate_down_a_timm_backbones_blocks():
    pytest.importorskip("timm")
    options = {"lr": 0.01, "weight_decay": 0.05, "backbone_lr_mult": 0.5, "layer_decay": 0.5}
    module = ContentModule({"name": "timm:test_vit"}, options, image_size=SIZE, scheduler="warmup_cosine")
    groups = module.build_optimizer(10)["optimizer"].param_groups
    backbone = [g for g in groups if g["name"].startswith("backbone_")]
    rates = sorted({g["initial_lr"] for g in backbone})
    assert len(rates) >= 3 and rates[-1] == pytest.approx(0.005)  # the top block at lr x backbone_lr_mult
    assert all(low == pytest.approx(high * 0.5) for low, high in itertools.pairwise(rates))
    assert {g["initial_lr"] for g in groups if g["name"].startswith("head")} == {0.01}
    in_groups = sorted(id(p) for g in groups for p in g["params"])
    assert in_groups == sorted(id(p) for p in module.parameters())  # every parameter, once
    with pytest.raises(WorkbenchError, match=r"layer_decay needs a timm backbone.*backbone_lr_mult"):
        content_module(layer_decay=0.75).build_optimizer(10)


def test_decay_norms_and_biases_keeps_the_old_single_decay():
    groups = content_module(decay_norms_and_biases=True).build_optimizer(10)["optimizer"].param_groups
    assert {g["weight_decay"] for g in groups} == {0.05}


def learning_rates(scheduler: str, steps: int) -> list[float]:
    optimization = content_module(scheduler).build_optimizer(steps)
    optimizer, schedule = optimization["optimizer"], optimization["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_warmup_cosine_rises_linearly_then_falls_to_zero():
    rates = learning_rates("warmup_cosine", 100)
    warmup, decay = rates[:21], rates[20:]
    assert all(a < b for a, b in itertools.pairwise(warmup))
    assert max(rates) == pytest.approx(0.01) and rates[20] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(decay))
    assert rates[-1] < 0.01 * 0.01


def test_unknown_scheduler_lists_the_valid_ones():
    with pytest.raises(WorkbenchError, match=r"model.scheduler='cosine'.*onecycle.*warmup_cosine"):
        content_module("cosine")


def batches(n: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 3, (n,), generator=generator)
    return DataLoader([{"image": i, "target": t} for i, t in zip(images, targets, strict=True)], batch_size=2)


def fit_and_test(tmp_path, ema: EMAWeightAveraging) -> tuple[dict, dict]:
    """Fit 4 steps with EMA, then test the last checkpoint as models/train.py tests the best one."""
    L.seed_everything(0)
    module = content_module()
    # Saved mid-training, as callbacks.step_checkpoint does: at the end the raw weights are the EMA ones.
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0, every_n_train_steps=3)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[ema, checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, train_dataloaders=batches(), val_dataloaders=batches(4))
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    trainer.test(module, dataloaders=batches(4), ckpt_path=str(tmp_path / "last.ckpt"))
    return saved, {k: v.clone() for k, v in module.state_dict().items()}


def test_ema_weights_are_in_the_checkpoint_and_are_what_test_scores(tmp_path):
    saved, tested = fit_and_test(tmp_path, EMAWeights(decay=0.5))
    name = "classifier.weight"
    assert not torch.equal(saved["state_dict"][name], saved["current_model_state"][name])  # EMA != raw
    assert saved["global_step"] == 3 and "averaging_state" in saved  # resume restores the average and the raw weights
    assert all(torch.equal(tested[k], v) for k, v in saved["state_dict"].items())


def test_lightnings_own_callback_would_test_the_raw_weights(tmp_path):
    """Why models/ema.py subclasses: the stock callback reloads `current_model_state` at test."""
    saved, tested = fit_and_test(tmp_path, EMAWeightAveraging(decay=0.5))
    assert torch.equal(tested["classifier.weight"], saved["current_model_state"]["classifier.weight"])


def fit_two_epochs(tmp_path, ckpt_path=None) -> dict:
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[
            EMAWeights(decay=0.5),
            ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1),
            RandomStateCheckpoint(),  # the training flip's random state, as configs/callbacks/default.yaml has it
        ],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
    )
    module = content_module()
    trainer.fit(module, train_dataloaders=batches(4), val_dataloaders=batches(2), ckpt_path=ckpt_path)
    return module.state_dict()


def test_resuming_restores_both_the_raw_and_the_averaged_weights(tmp_path):
    unbroken = fit_two_epochs(tmp_path / "unbroken")
    resumed = fit_two_epochs(tmp_path / "resumed", ckpt_path=tmp_path / "unbroken" / "epoch=0.ckpt")
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)  # the EMA weights, after training ends


@pytest.mark.parametrize("task", ["age", "content"])
def test_the_finetune_experiments_compose_the_recipe_at_224_px(compose_train, task):
    cfg = compose_train(f"experiment={task}_finetune")
    assert cfg.model.image_size == 224 and cfg.model.backbone.name == "resnet50"
    assert cfg.model.optimizer.backbone_lr_mult == 0.1 and not cfg.model.optimizer.decay_norms_and_biases
    assert cfg.model.scheduler == "warmup_cosine" and cfg.trainer.gradient_clip_val == 1.0
    assert cfg.callbacks.ema._target_ == "models.ema.EMAWeights"
    assert task == "age" or cfg.model.label_smoothing == 0.1
    assert cfg.data.augment.name == ("face" if task == "age" else "content")
    # Faces are cached with a border to crop inside; whole frames are not (their edges must be judged).
    assert cfg.model.cache_size == (256 if task == "age" else 224)
