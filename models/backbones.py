"""Feature extractors by name: any torchvision classification model, `timm:<name>`, or a small CNN for CPU runs.

Pretrained weights are read from local files only (the torch hub cache or a path): the workbench
never downloads silently.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
import torchvision
from torch import nn

from core.errors import WorkbenchError

# The torchvision backbones the docs recommend; the slow tests build and export every one.
TORCHVISION_BACKBONES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "convnext_tiny",
    "vit_b_16",
)
BACKBONES = ("small_cnn", *TORCHVISION_BACKBONES)
TIMM_PREFIX = "timm:"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
LIST_TIMM = "python -c 'import timm; print(timm.list_models())'"


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


def _is_file(weights: str) -> bool:
    return weights.endswith(WEIGHT_FILE_SUFFIXES) or "/" in weights


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WorkbenchError(
            f"model.backbone.weights={str(path)!r}: no such file. Give the path of a state dict saved with "
            "torch.save (.pth/.pt/.bin) or safetensors, or train from scratch with model.backbone.weights=null."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def _hub_weights(model_name: str, weights_name: str) -> dict[str, torch.Tensor]:
    """A torchvision weights name, read from the local torch hub cache."""
    try:
        weights = torchvision.models.get_weight(weights_name)
    except (ValueError, KeyError, AttributeError) as error:
        options = [str(w) for w in torchvision.models.get_model_weights(model_name)]
        raise WorkbenchError(
            f"model.backbone.weights={weights_name!r} is not a torchvision weights name for {model_name}. "
            f"Valid options: {options}, or the path of a weights file."
        ) from error
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.exists():
        raise WorkbenchError(
            f"Pretrained weights {weights_name} are not cached on this machine. Download {weights.url} "
            f"and place it at {path} (or set TORCH_HOME to a folder holding checkpoints/{path.name}), "
            "or train from scratch with model.backbone.weights=null."
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def _check_architecture(name: str, expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], source: str):
    """Name the first key where a weights file and the model disagree: the quickest clue to a wrong file."""
    problem = None
    for key, tensor in expected.items():
        if key not in found:
            problem = f"{key!r} is missing from the file"
        elif tuple(found[key].shape) != tuple(tensor.shape):
            problem = f"{key!r} has shape {tuple(found[key].shape)} in the file but {tuple(tensor.shape)} in {name}"
        if problem:
            break
    else:
        extra = next((key for key in found if key not in expected), None)
        problem = extra and f"{extra!r} is in the file but not in {name}"
    if problem:
        raise WorkbenchError(
            f"model.backbone.weights={source!r} does not fit model.backbone.name={name!r}: {problem}. "
            "The file was saved from another architecture (or image size); give the weights of this one."
        )


def _unknown(name: str, options: list[str], how_to_list: str) -> WorkbenchError:
    close = difflib.get_close_matches(name, options, n=3)
    hint = f" Did you mean {close}?" if close else ""
    return WorkbenchError(f"Unknown backbone model.backbone.name={name!r}.{hint} {how_to_list}")


def _strip_classifier(model: nn.Module) -> nn.Module:
    """Replace the last Linear layer (torchvision's classifier: fc, classifier[-1], heads.head) with Identity."""
    name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent), attribute, nn.Identity())
    model.out_features = linear.in_features
    return model


def _torchvision_backbone(name: str, image_size: int, weights: str | None) -> nn.Module:
    options = torchvision.models.list_models(module=torchvision.models)
    if name not in options:
        raise _unknown(
            name,
            ["small_cnn", *options],
            f"Valid options: small_cnn, any torchvision classification model {options}, "
            f"or timm:<name> (list them with {LIST_TIMM}). Recommended: {list(BACKBONES)}.",
        )
    # Vision transformers fix their input size at construction; convolutional models take any size.
    size = {"image_size": image_size} if name.startswith("vit_") else {}
    model = torchvision.models.get_model(name, weights=None, **size)
    if weights:
        state = _read_file(Path(weights)) if _is_file(weights) else _hub_weights(name, weights)
        _check_architecture(name, model.state_dict(), state, weights)
        model.load_state_dict(state)
    return _strip_classifier(model)


def _timm_backbone(name: str, image_size: int, weights: str | None) -> nn.Module:
    """A timm model without its classifier; weights only from a local file (`pretrained_cfg_overlay`)."""
    try:
        import timm
    except ImportError as error:
        raise WorkbenchError(
            f"model.backbone.name={TIMM_PREFIX}{name} needs the timm package: "
            "pip install 'childsafe-workbench[timm]' (or pip install 'timm>=1.0')."
        ) from error
    if not timm.is_model(name):
        options = [TIMM_PREFIX + option for option in timm.list_models()]
        raise _unknown(TIMM_PREFIX + name, options, f"timm has no such model; list them with {LIST_TIMM}.")
    if weights and not _is_file(weights):
        raise WorkbenchError(
            f"model.backbone.weights={weights!r}: a timm backbone reads its weights from a file only; "
            "give the path of its pytorch_model.bin, .pth or .safetensors."
        )
    pretrained = {"pretrained": True, "pretrained_cfg_overlay": {"file": weights}} if weights else {}

    def create(**options) -> nn.Module:
        try:  # vision transformers take the image size; convolutional models refuse the argument
            return timm.create_model(name, num_classes=0, img_size=image_size, **options)
        except TypeError as error:
            if "img_size" not in str(error):
                raise
            return timm.create_model(name, num_classes=0, **options)

    if weights:
        state = _read_file(Path(weights))  # also checks the file exists before timm tries
        try:
            model = create(**pretrained)
        except RuntimeError:  # timm's strict load: name the first mismatch ourselves
            reference = timm.create_model(name, pretrained=False).state_dict()
            _check_architecture(f"{TIMM_PREFIX}{name}", reference, state, weights)
            raise
    else:
        model = create()
    model.out_features = model.num_features
    return model


def build_backbone(name: str, image_size: int, weights: str | None = None) -> nn.Module:
    """Return a module mapping (B, 3, H, W) floats to (B, F) features, with `.out_features` = F."""
    if name == "small_cnn":
        if weights:
            raise WorkbenchError("model.backbone.weights must be null for small_cnn: it has no pretrained weights.")
        return SmallCNN(image_size)
    if name.startswith(TIMM_PREFIX):
        return _timm_backbone(name.removeprefix(TIMM_PREFIX), image_size, weights)
    return _torchvision_backbone(name, image_size, weights)
