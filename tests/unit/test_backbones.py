import pytest
import torch

from core.errors import WorkbenchError
from models.backbones import BACKBONES, TORCHVISION_BACKBONES, build_backbone


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "mobilenet_v3_small"])
def test_backbone_maps_images_to_declared_features(name):
    backbone = build_backbone(name, image_size=64).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, backbone.out_features)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TORCHVISION_BACKBONES if n not in ("resnet18", "mobilenet_v3_small")])
def test_every_listed_backbone_builds(name):
    backbone = build_backbone(name, image_size=64).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, backbone.out_features)


def test_unknown_backbone_lists_the_valid_names():
    with pytest.raises(WorkbenchError) as error:
        build_backbone("resnet19", image_size=64)
    assert "model.backbone.name='resnet19'" in str(error.value)
    assert all(name in str(error.value) for name in BACKBONES)


def test_missing_pretrained_weights_say_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WorkbenchError) as error:
        build_backbone("resnet18", image_size=64, weights="ResNet18_Weights.IMAGENET1K_V1")
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in str(error.value)


def test_cached_pretrained_weights_are_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = build_backbone("resnet18", image_size=64)
    import torchvision

    source = torchvision.models.resnet18()
    path = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    loaded = build_backbone("resnet18", image_size=64, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert not torch.equal(loaded.conv1.weight, reference.conv1.weight)
