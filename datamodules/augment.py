"""Training augmentation (`augment=none|flip|face|content`): random draws that are a pure function of a sample's key.

torchvision.transforms.v2 applied to a batch draws one set of parameters for the whole batch, so each
image goes through the pipeline on its own, with torch's random state seeded from (seed, epoch,
position in the epoch's draw) and restored after the batch: the number of loader workers, their
scheduling and a kill-and-resume all give the same pixels. MixUp and CutMix mix a whole batch, seeded from the key
of its first sample. Only the train split is augmented; evaluation, calibration and export take the
cache's centre crop (models.resize.Framing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from core.errors import WorkbenchError
from models.resize import Framing

POLICIES = {"trivial_augment": v2.TrivialAugmentWide, "rand_augment": v2.RandAugment}
MIX_STREAM = 1  # a batch's mixing draws from its own stream, apart from its first sample's


def sample_seed(seed: int, epoch: int, position: int, stream: int = 0) -> int:
    """A 64-bit seed for one sample (or one batch's mixing), independent across keys."""
    return int(np.random.SeedSequence([seed, epoch, position, stream]).generate_state(1, np.uint64)[0])


class Augmentation:
    """The configured steps, built for one framing; every key of `configs/augment/*.yaml` is an argument."""

    def __init__(
        self,
        name: str = "none",
        crop_scale: Sequence[float] | None = None,
        crop_ratio: Sequence[float] = (0.75, 1.333),
        horizontal_flip: float = 0.0,
        rotation_degrees: float = 0.0,
        policy: str | None = None,
        colour_jitter: dict[str, float] | None = None,
        greyscale: float = 0.0,
        blur: dict[str, Any] | None = None,
        jpeg: dict[str, Any] | None = None,
        erasing: dict[str, Any] | None = None,
        mix: dict[str, float] | None = None,
        extra: Sequence[Any] = (),
    ):
        if policy is not None and policy not in POLICIES:
            raise WorkbenchError(f"Unknown data.augment.policy={policy!r}. Valid options: {[*POLICIES, None]}.")
        self.name = name
        self.crop_scale, self.crop_ratio = crop_scale, tuple(crop_ratio)
        self.horizontal_flip, self.rotation_degrees = horizontal_flip, rotation_degrees
        self.policy, self.colour_jitter, self.greyscale = policy, colour_jitter, greyscale
        self.blur, self.jpeg, self.erasing, self.mix = blur, jpeg, erasing, mix
        self.extra = list(extra)

    def steps(self, framing: Framing) -> list[tuple[str, Any]]:
        """(config key, transform) in order: a crop to the network input first, then size-keeping steps."""
        size = framing.input_size
        if self.crop_scale:
            crop = v2.RandomResizedCrop(size, tuple(self.crop_scale), self.crop_ratio, antialias=True)
            steps = [("crop_scale", crop)]
        else:
            steps = [("centre crop", CentreCrop(framing))]
        if self.horizontal_flip:
            steps.append(("horizontal_flip", v2.RandomHorizontalFlip(self.horizontal_flip)))
        if self.rotation_degrees:
            rotation = v2.RandomRotation(self.rotation_degrees, InterpolationMode.BILINEAR)
            steps.append(("rotation_degrees", rotation))
        if self.policy:
            steps.append(("policy", POLICIES[self.policy]()))
        if self.colour_jitter:
            steps.append(("colour_jitter", v2.ColorJitter(**self.colour_jitter)))
        if self.greyscale:
            steps.append(("greyscale", v2.RandomGrayscale(self.greyscale)))
        if self.blur:
            blur = v2.GaussianBlur(self.blur["kernel"], tuple(self.blur["sigma"]))
            steps.append(("blur", v2.RandomApply([blur], self.blur["p"])))
        if self.jpeg:
            steps.append(("jpeg", v2.RandomApply([v2.JPEG(tuple(self.jpeg["quality"]))], self.jpeg["p"])))
        if self.erasing:
            steps.append(("erasing", v2.RandomErasing(self.erasing["p"], tuple(self.erasing["scale"]), value=0)))
        steps += [(f"extra[{i}]", transform) for i, transform in enumerate(self.extra)]
        return steps


class CentreCrop:
    """The centre square of the cache, exactly as evaluation and the graph take it (not v2.CenterCrop's rounding)."""

    def __init__(self, framing: Framing):
        self.framing = framing

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        start, stop = self.framing.offset, self.framing.offset + self.framing.input_size
        return image[..., start:stop, start:stop]


class AugmentedBatches:
    """Applies an `Augmentation` to cached uint8 CHW images, one key per sample; picklable for loader workers."""

    def __init__(self, augmentation: Augmentation, framing: Framing, seed: int, num_classes: int | None):
        if augmentation.mix and not num_classes:
            raise WorkbenchError(
                f"augment={augmentation.name} sets data.augment.mix (MixUp/CutMix), which mixes class labels, "
                "but this is age data. Use augment=face for faces, or set data.augment.mix=null."
            )
        self.name, self.framing, self.seed = augmentation.name, framing, seed
        self.steps = augmentation.steps(framing)
        self.mix = augmentation.mix
        self.num_classes = num_classes
        # augment=none only takes the centre crop, which the dataset does for the whole batch at once
        self.draws_at_random = bool(self.mix) or any(not isinstance(t, CentreCrop) for _, t in self.steps)
        if self.mix:
            self.mixer = v2.RandomChoice(
                [v2.MixUp(alpha=self.mix["mixup_alpha"], num_classes=num_classes),
                 v2.CutMix(alpha=self.mix["cutmix_alpha"], num_classes=num_classes)]
            )  # fmt: skip

    def _sample(self, image: torch.Tensor, epoch: int, position: int) -> torch.Tensor:
        size = self.framing.input_size
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, position))  # 1 us; torch.manual_seed: 200
        for key, transform in self.steps:
            before = tuple(image.shape[-2:])
            image = transform(image)
            if tuple(image.shape[-2:]) != (size, size):
                raise WorkbenchError(
                    f"augment={self.name}: the step {key} ({type(transform).__name__}) turned a "
                    f"{before[0]}x{before[1]} image into {image.shape[-2]}x{image.shape[-1]}, but the network "
                    f"takes {size}x{size} (model.image_size). The first step crops to that size and every later "
                    "step must keep it: remove or fix that step (data.augment)."
                )
        return image

    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, epochs: np.ndarray, positions: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, S, S) cached images -> (B, 3, N, N) augmented images and their targets (soft when mixing).

        The global random state is saved once and restored after the batch, so nothing else sees the reseeding.
        """
        saved = torch.get_rng_state()
        try:
            keyed = zip(images, epochs.tolist(), positions.tolist(), strict=True)
            out = torch.stack([self._sample(image, epoch, position) for image, epoch, position in keyed])
            if not self.mix:
                return out, targets
            torch.default_generator.manual_seed(sample_seed(self.seed, int(epochs[0]), int(positions[0]), MIX_STREAM))
            if torch.rand(()) >= self.mix["p"]:
                return out.float(), torch.nn.functional.one_hot(targets, self.num_classes).float()
            return self.mixer(out.float(), targets)
        finally:
            torch.set_rng_state(saved)
