"""augment=none|flip|face|content: per-sample draws keyed by (seed, epoch, position), train only, the network's size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchvision.transforms import v2

from core.errors import WorkbenchError
from core.hydra_app import register_resolvers, validate
from core.paths import SOURCE_ROOT as REPO_ROOT
from datamodules.augment import Augmentation, AugmentedBatches
from datamodules.datamodule import CachedImageDataset
from models.resize import Framing

FRAMING = Framing(72, 64)  # a cache with a 4 px border on each side


def configured(name: str, *overrides: str) -> Augmentation:
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=[f"augment={name}", *overrides])
    return instantiate(cfg.data.augment)


def batches(name: str, num_classes: int = 0, *overrides: str) -> AugmentedBatches:
    return AugmentedBatches(configured(name, *overrides), FRAMING, seed=7, num_classes=num_classes)


def cached_images(n: int = 6) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 3, 72, 72), dtype=np.uint8))


def test_face_draws_per_sample_and_is_a_pure_function_of_the_key():
    augment = batches("face")
    same = cached_images(1).expand(6, -1, -1, -1)
    epochs, positions = np.zeros(6, int), np.arange(6)
    out, _ = augment(same, torch.zeros(6), epochs, positions)
    assert out.shape == (6, 3, 64, 64) and out.dtype == torch.uint8
    assert len({o.numpy().tobytes() for o in out}) == 6  # one image, six keys: six different draws
    again, _ = augment(same[3:4], torch.zeros(1), epochs[3:4], positions[3:4])
    assert torch.equal(again[0], out[3])  # alone, or in any batch or worker: the key decides
    next_epoch, _ = augment(same[3:4], torch.zeros(1), epochs[3:4] + 1, positions[3:4])
    assert not torch.equal(next_epoch[0], out[3])


def test_augmenting_leaves_the_global_random_state_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    batches("face")(cached_images(), torch.zeros(6), np.zeros(6, int), np.arange(6))
    assert torch.equal(torch.rand(3), expected)


def test_only_training_keys_are_augmented_and_evaluation_takes_the_centre():
    images = cached_images().permute(0, 2, 3, 1).numpy()
    dataset = CachedImageDataset(images, np.arange(6), np.zeros(6, np.float32), FRAMING, batches("face"))
    centre = torch.from_numpy(images[:, 4:68, 4:68].copy()).permute(0, 3, 1, 2)
    assert torch.equal(dataset.__getitems__([0, 1, 2, 3, 4, 5])["image"], centre)  # val, test, calib, predict
    trained = dataset.__getitems__([(row, 0, row) for row in range(6)])["image"]
    assert trained.shape == centre.shape and not torch.equal(trained, centre)
    unaugmented = CachedImageDataset(images, np.arange(6), np.zeros(6, np.float32), FRAMING, batches("none"))
    assert torch.equal(unaugmented.__getitems__([(row, 0, row) for row in range(6)])["image"], centre)


def test_content_mixes_batches_into_soft_targets():
    augment = batches("content", 3, "data.augment.mix.p=1.0")
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    out, soft = augment(cached_images(), labels, np.zeros(6, int), np.arange(6))
    assert out.shape == (6, 3, 64, 64) and soft.shape == (6, 3)
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))
    assert (soft.max(dim=1).values < 1).any()  # some mass moved to another image's class
    unmixed = batches("content", 3, "data.augment.mix.p=0.0")
    _, one_hot = unmixed(cached_images(), labels, np.zeros(6, int), np.arange(6))
    assert torch.equal(one_hot, torch.nn.functional.one_hot(labels, 3).float())


def test_a_step_that_changes_the_size_fails_naming_it():
    wrong = Augmentation("face", crop_scale=(0.8, 1.0), extra=[v2.Resize(50)])
    with pytest.raises(WorkbenchError, match=r"step extra\[0\] \(Resize\) turned a 64x64 image into 50x50.*64x64"):
        AugmentedBatches(wrong, FRAMING, 0, 0)(cached_images(1), torch.zeros(1), np.zeros(1, int), np.arange(1))


def test_bad_augmentation_settings_are_named(tmp_path):
    with pytest.raises(WorkbenchError, match=r"policy='autoaugment'.*'trivial_augment', 'rand_augment'"):
        Augmentation(policy="autoaugment")
    with pytest.raises(WorkbenchError, match=r"mix \(MixUp/CutMix\).*age data.*augment=face"):
        batches("content", 0)
    folders = [f"paths.log_dir={tmp_path / 'logs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(WorkbenchError, match=r"(?s)augment/faces.*content.*face.*flip.*none"):
        validate("train", ["augment=faces", *folders])


def test_every_recipe_keeps_the_network_size_at_224_from_a_256_cache():
    framing = Framing(256, 224)
    for name, classes in (("none", 0), ("flip", 0), ("face", 0), ("content", 3)):
        augment = AugmentedBatches(configured(name), framing, 0, classes)
        images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 3, 256, 256), dtype=np.uint8))
        out, _ = augment(images, torch.tensor([0, 1, 2, 0]), np.zeros(4, int), np.arange(4))
        assert out.shape == (4, 3, 224, 224), name


def test_loader_workers_serve_the_same_augmented_batches_as_the_main_process():
    from torch.utils.data import DataLoader

    from datamodules.datamodule import pass_through
    from datamodules.resumable import ResumableShuffle

    images = np.random.default_rng(2).integers(0, 256, (40, 72, 72, 3), dtype=np.uint8)
    dataset = CachedImageDataset(images, np.arange(40), np.zeros(40, np.float32), FRAMING, batches("face"))

    def served(workers: int) -> list[torch.Tensor]:
        sampler = ResumableShuffle(40, 3, 8, lambda: 0, epoch=1)
        loader = DataLoader(dataset, batch_size=8, sampler=sampler, collate_fn=pass_through, num_workers=workers)
        return [batch["image"] for batch in loader]

    in_process, in_workers = served(0), served(2)
    assert len(in_process) == 5 and all(torch.equal(a, b) for a, b in zip(in_process, in_workers, strict=True))
