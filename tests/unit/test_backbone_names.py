"""Backbones by name: any torchvision classifier, timm:<name>, and weights from local files only."""

import builtins

import pytest
import timm
import torch
import torchvision

from core.errors import WorkbenchError
from models.backbones import build_backbone

SIZE = 32


@pytest.mark.parametrize("name", ["regnet_y_400mf", "timm:test_vit", "timm:resnet10t"])
def test_names_beyond_the_recommended_list_build(name):
    backbone = build_backbone(name, image_size=SIZE).eval()
    with torch.no_grad():
        assert backbone(torch.randn(2, 3, SIZE, SIZE)).shape == (2, backbone.out_features)


def test_unknown_torchvision_name_suggests_close_ones_and_says_how_to_list_timm():
    with pytest.raises(WorkbenchError) as error:
        build_backbone("resnet5O", image_size=SIZE)
    message = str(error.value)
    assert "'resnet50'" in message and "efficientnet_v2_s" in message and "timm.list_models()" in message


def test_unknown_timm_name_says_how_to_list_them():
    with pytest.raises(WorkbenchError, match=r"timm:vit_tinyy.*Did you mean.*vit_tiny.*timm\.list_models"):
        build_backbone("timm:vit_tinyy_patch16_224", image_size=SIZE)


def test_timm_missing_names_the_package(monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(WorkbenchError, match=r"needs the timm package: pip install 'childsafe-workbench\[timm\]'"):
        build_backbone("timm:resnet10t", image_size=SIZE)


def test_torchvision_weights_from_a_path_are_loaded(tmp_path):
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone("resnet18", image_size=SIZE, weights=str(path))
    assert torch.equal(loaded.conv1.weight, source.conv1.weight)
    assert torch.equal(loaded.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)


@pytest.mark.parametrize("name", ["test_vit", "resnet10t"])
def test_timm_weights_from_a_file_are_loaded(tmp_path, name):
    torch.manual_seed(1)
    source = timm.create_model(name, img_size=SIZE) if "vit" in name else timm.create_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    loaded = build_backbone(f"timm:{name}", image_size=SIZE, weights=str(path))
    first = next(iter(source.state_dict()))
    assert torch.equal(loaded.state_dict()[first], source.state_dict()[first])
    assert not torch.equal(
        build_backbone(f"timm:{name}", image_size=SIZE).state_dict()[first], source.state_dict()[first]
    )


@pytest.mark.parametrize(
    ("name", "wrong", "key"), [("resnet18", "resnet34", "'layer1.2"), ("timm:resnet10t", "resnet18", "'conv1.")]
)
def test_weights_of_another_architecture_name_the_first_mismatched_key(tmp_path, name, wrong, key):
    path = tmp_path / "wrong.pth"
    torch.save(torchvision.models.get_model(wrong).state_dict(), path)
    with pytest.raises(WorkbenchError, match=rf"does not fit model.backbone.name='{name}': {key}"):
        build_backbone(name, image_size=SIZE, weights=str(path))


def test_a_missing_weights_file_is_named(tmp_path):
    with pytest.raises(WorkbenchError, match=r"missing\.pth'?: no such file"):
        build_backbone("timm:resnet10t", image_size=SIZE, weights=str(tmp_path / "missing.pth"))
