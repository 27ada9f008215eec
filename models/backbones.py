"""Feature extractors by name: torchvision's classification models, or a small CNN for CPU runs."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from tracking.errors import WorkbenchError

TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
BACKBONES = ("small_cnn", *TORCHVISION_BACKBONES)


class SmallCNN(nn.Module):
    """A strided stem, three conv stages, then a dense layer that keeps the spatial layout.

    Sized for 2 CPU cores (~550 training images/s at 64 px); keeping the layout matters because
    face geometry (where the eyes sit on the head) is the growth cue.
    """

    def __init__(self, image_size: int = 64, widths: tuple[int, ...] = (32, 32, 64, 128), feature_dim: int = 256):
        super().__init__()
        layers, channels = [], 3
        for stage, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, stride=2 if stage == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            channels = width
        side = image_size // 2 ** len(widths)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, feature_dim), nn.ReLU(inplace=True))
        self.out_features = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _load_weights(model_name: str, weights_name: str) -> dict[str, torch.Tensor]:
    """Weights come from the local torch hub cache only: the workbench never downloads silently."""
    try:
        weights = torchvision.models.get_weight(weights_name)
    except (ValueError, KeyError, AttributeError) as error:
        options = [str(w) for w in torchvision.models.get_model_weights(model_name)]
        raise WorkbenchError(
            f"model.backbone.weights={weights_name!r} is not a torchvision weights name for {model_name}. "
            f"Valid options: {options}."
        ) from error
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.exists():
        raise WorkbenchError(
            f"Pretrained weights {weights_name} are not cached on this machine. Download {weights.url} "
            f"and place it at {path} (or set TORCH_HOME to a folder holding checkpoints/{path.name}), "
            "or train from scratch with model.backbone.weights=null."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def build_backbone(name: str, image_size: int, weights: str | None = None) -> nn.Module:
    """Return a module mapping (B, 3, H, W) floats to (B, F) features, with `.out_features` = F."""
    if name == "small_cnn":
        if weights:
            raise WorkbenchError("model.backbone.weights must be null for small_cnn: it has no pretrained weights.")
        return SmallCNN(image_size)
    if name not in TORCHVISION_BACKBONES:
        raise WorkbenchError(f"Unknown backbone model.backbone.name={name!r}. Valid options: {list(BACKBONES)}.")
    model = torchvision.models.get_model(name, weights=None)
    if weights:
        model.load_state_dict(_load_weights(name, weights))
    if hasattr(model, "fc"):
        out_features, model.fc = model.fc.in_features, nn.Identity()
    else:
        out_features, model.classifier[-1] = model.classifier[-1].in_features, nn.Identity()
    model.out_features = out_features
    return model
