"""convert_norms on real torchvision and timm models."""

import pytest
import torch
import torchvision
from torch import nn

from dyt_lab.norms import ChannelAlphaDyT, DyT, NormError, convert_norms


def test_vit_b_16_all_layernorms_replaced():
    model = torchvision.models.vit_b_16().eval()
    replaced = convert_norms(model, to="dyt")
    assert len(replaced) == 25
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert sum(isinstance(m, DyT) for m in model.modules()) == 25
    assert "encoder.ln" in replaced and "encoder.layers.encoder_layer_0.ln_1" in replaced
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_resnet18_all_batchnorms_replaced_and_sites_filter():
    model = torchvision.models.resnet18()
    replaced = convert_norms(model, to={"name": "dyt", "alpha_init": 0.2}, kinds=("batchnorm",))
    assert len(replaced) == 20
    dyts = [m for m in model.modules() if isinstance(m, DyT)]
    assert len(dyts) == 20 and all(not m.channels_last and m.alpha.item() == pytest.approx(0.2) for m in dyts)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)

    subset = torchvision.models.resnet18()
    replaced = convert_norms(subset, to="dyt_channel_alpha", kinds="batchnorm", sites=["layer4.*"])
    assert replaced == [
        "layer4.0.bn1", "layer4.0.bn2", "layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2",
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in subset.modules()) == 15
    assert isinstance(subset.layer4[0].downsample[1], ChannelAlphaDyT)
    assert subset(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_keeps_device_dtype_and_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)).double().eval()
    convert_norms(model, to="dyt")
    assert model[1].alpha.dtype == torch.float64 and not model[1].training


def test_timm_channels_first_layernorm_is_recognised():
    import timm  # a dev dependency, installed by `make test`
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=10)
    replaced = convert_norms(model, to="dyt")
    stem_norm = model.get_submodule("stem.1")
    assert "stem.1" in replaced and isinstance(stem_norm, DyT) and not stem_norm.channels_last
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_nothing_to_replace_is_an_error():
    with pytest.raises(NormError, match="found no layernorm module in Sequential; nothing to replace"):
        convert_norms(nn.Sequential(nn.Linear(2, 2)), to="dyt")
    with pytest.raises(NormError, match=r"found no batchnorm module at sites \['nope\.\*'\]"):
        convert_norms(torchvision.models.resnet18(), to="dyt", kinds="batchnorm", sites=["nope.*"])
    with pytest.raises(NormError, match="unknown kind 'ln' for convert_norms; valid kinds: layernorm"):
        convert_norms(nn.Sequential(nn.LayerNorm(2)), to="dyt", kinds="ln")
