"""ViT and ResNet: parameter counts, every norm at every site, placement, state and modes."""

import re

import pytest
import torch
import torchvision
from torch import nn

from dyt_lab.errors import ConfigError
from dyt_lab.models import ResNet, ViT, describe_placement, format_placement
from dyt_lab.norms import NORMS, CenteredDyT, DyT, available_norms
from tests.helpers import digits_resnet, digits_vit


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (lambda: ViT("vit_b_16"), torchvision.models.vit_b_16),
        (lambda: ViT("vit_l_16"), torchvision.models.vit_l_16),
        (lambda: ResNet("resnet18"), torchvision.models.resnet18),
        (lambda: ResNet("resnet34"), torchvision.models.resnet34),
        (lambda: ResNet("resnet50"), torchvision.models.resnet50),
    ],
)
def test_parameter_counts_equal_torchvision(ours, theirs):
    with torch.device("meta"):  # no memory, no init time: only shapes are counted
        assert _count(ours()) == _count(theirs())


@pytest.mark.parametrize(("preset", "timm_name"), [("vit_tiny", "vit_tiny_patch16_224"),
                                                   ("vit_small", "vit_small_patch16_224")])
def test_parameter_counts_equal_timm(preset, timm_name):
    import timm  # a dev dependency, installed by `make test`

    with torch.device("meta"):
        assert _count(ViT(preset)) == _count(timm.create_model(timm_name, pretrained=False))


@pytest.mark.parametrize(("preset", "millions"), [("resnet20", 0.27), ("resnet32", 0.46), ("resnet56", 0.85)])
def test_cifar_resnets_match_he_et_al(preset, millions):
    assert _count(ResNet(preset, num_classes=10)) / 1e6 == pytest.approx(millions, rel=0.03)


@pytest.mark.parametrize("norm", available_norms())
@pytest.mark.parametrize(("family", "layout"), [(digits_vit, "channels_last"), (digits_resnet, "channels_first")])
def test_forward_backward_with_every_norm(family, layout, norm):
    if layout not in NORMS[norm].layouts:
        with pytest.raises(ConfigError, match=f"norm '{norm}' does not support layout '{layout}'"):
            family(norm=norm)
        return
    model = family(norm=norm)
    assert set(describe_placement(model).values()) == {
        f"{norm}(alpha_init=0.5)" if norm.startswith(("dyt", "derf")) else norm}
    x = torch.randn(4, 1, 8, 8)
    loss = model(x).logsumexp(dim=1).mean()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert torch.isfinite(loss)


def test_site_names():
    vit = digits_vit()
    assert list(vit.norm_sites()) == [f"blocks.{i}.norm{k}" for i in range(4) for k in (1, 2)] + ["norm"]
    assert set(vit.norm_sites().values()) == {"channels_last"}
    resnet = ResNet("resnet18")
    sites = resnet.norm_sites()
    assert len(sites) == 20 and set(sites.values()) == {"channels_first"}
    assert list(sites)[:4] == ["stem.norm", "layer1.0.norm1", "layer1.0.norm2", "layer1.1.norm1"]
    assert "layer2.0.downsample.norm" in sites and "layer1.0.downsample.norm" not in sites
    assert "layer4.1.norm3" in ResNet("resnet50").norm_sites()
    assert all(isinstance(resnet.get_submodule(s), nn.BatchNorm2d) for s in sites)


def _sites_with(model, cls):
    return [s for s in model.norm_sites() if isinstance(model.get_submodule(s), cls)]


def test_vit_presets_select_expected_sites():
    assert _sites_with(digits_vit(norm="dyt", placement="attn"), DyT) == [f"blocks.{i}.norm1" for i in range(4)]
    assert _sites_with(digits_vit(norm="dyt", placement="mlp"), DyT) == [f"blocks.{i}.norm2" for i in range(4)]
    assert _sites_with(digits_vit(norm="dyt", placement="final"), DyT) == ["norm"]
    assert len(_sites_with(digits_vit(norm="dyt", placement=["attn", "final"]), DyT)) == 5
    assert _sites_with(digits_vit(norm="dyt", placement="blocks.3.*"), DyT) == ["blocks.3.norm1", "blocks.3.norm2"]


def test_resnet_presets_select_expected_sites():
    r18 = ResNet("resnet18", norm="dyt", placement=["stage3", "stage4"])  # presets compose
    assert _sites_with(r18, DyT) == [s for s in r18.norm_sites() if s.startswith(("layer3", "layer4"))]
    assert len(_sites_with(r18, DyT)) == 10
    assert _sites_with(ResNet("resnet18", norm="dyt", placement="stem"), DyT) == ["stem.norm"]
    assert _sites_with(ResNet("resnet18", norm="dyt", placement="downsample"), DyT) == [
        "layer2.0.downsample.norm", "layer3.0.downsample.norm", "layer4.0.downsample.norm"]
    last50 = _sites_with(ResNet("resnet50", norm="dyt", placement="last_in_block"), DyT)
    assert len(last50) == 16 and all(s.endswith("norm3") for s in last50)
    last18 = _sites_with(ResNet("resnet18", norm="dyt", placement="last_in_block"), DyT)
    assert len(last18) == 8 and all(s.endswith("norm2") for s in last18)
    first = _sites_with(ResNet("resnet18", norm="dyt", placement="first_in_block"), DyT)
    assert len(first) == 8 and all(s.endswith(".norm1") for s in first)


def test_mixed_model_has_exactly_the_norms_asked_for():
    model = ResNet("resnet20", num_classes=10, norm={"name": "dyt", "alpha_init": 0.3},
                   rules=[{"stem": "batchnorm"}, {"layer3.*.norm1": "dyt_centered"}])
    table = describe_placement(model)
    assert table["stem.norm"] == "batchnorm"
    assert {table[s] for s in table if s.startswith("layer3") and s.endswith("norm1")} == {"dyt_centered(alpha_init=0.5)"}
    others = [s for s in table if s != "stem.norm" and not (s.startswith("layer3") and s.endswith("norm1"))]
    assert {table[s] for s in others} == {"dyt(alpha_init=0.3)"}
    assert re.search(r"^stem\.norm +channels_first +batchnorm$", format_placement(model), re.M)


def test_model_wide_alpha_init_applies_unless_the_spec_sets_one():
    model = digits_vit(norm="dyt", base_norm={"name": "derf", "alpha_init": 2.0}, placement="attn", alpha_init=0.1)
    table = describe_placement(model)
    assert table["blocks.0.norm1"] == "dyt(alpha_init=0.1)" and table["blocks.0.norm2"] == "derf(alpha_init=2)"


@pytest.mark.parametrize("family", [digits_vit, digits_resnet])
def test_state_dict_round_trip(family):
    a = family(norm="dyt_channel_shift").eval()
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    b = family(norm="dyt_channel_shift").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize("norm", ["batchnorm", "dyt_centered"])
def test_batch_statistics_sites_differ_between_train_and_eval(norm):
    model = digits_resnet(norm=norm)
    x = torch.randn(8, 1, 8, 8) * 3 + 2
    model.train()
    alone_train = model(x[:1])
    in_batch_train = model(x)[:1]
    assert not torch.allclose(alone_train, in_batch_train, atol=1e-4)  # train: depends on the batch
    model.eval()
    torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=1e-4)  # eval: running stats
    site = model.get_submodule("layer1.0.norm1")
    assert torch.any(site.running_mean != 0)
    assert isinstance(site, CenteredDyT if norm == "dyt_centered" else nn.BatchNorm2d)


def test_drop_path_and_zero_init_residual():
    vit = ViT("vit_digits", num_classes=10, in_channels=1, drop_path=0.2)
    assert vit.blocks[0].drop_path.p == 0.0 and vit.blocks[-1].drop_path.p == pytest.approx(0.2)
    resnet = digits_resnet(norm="dyt", zero_init_residual=True)
    assert torch.all(resnet.layer1[0].norm2.weight == 0) and torch.all(resnet.layer1[0].norm1.weight == 1)


def test_cls_token_and_avg_pool():
    assert digits_vit(pool="cls").pos_embed.shape == (1, 17, 64)
    assert digits_vit(pool="avg").pos_embed.shape == (1, 16, 64) and digits_vit().cls_token is None


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: digits_vit(norm="dyt", rules=[{"blocks.9.*": "layernorm"}]),
         "--model.rules 'blocks.9.*': neither a preset of this ViT nor a pattern matching a site; its presets: all, attn"),
        (lambda: digits_vit(norm="dyt", placement="attention"), "placement 'attention' is neither a ViT preset"),
        (lambda: ResNet("resnet20", placement="stage4"), "placement 'stage4' is neither a ResNet preset"),
        (lambda: ViT("vit_huge"), "unknown ViT preset 'vit_huge'; valid presets: vit_b_16, vit_l_16"),
        (lambda: ResNet("resnet101"), "unknown ResNet preset 'resnet101'; valid presets: resnet18"),
        (lambda: ViT("vit_b_16", image_size=28), "ViT patch_size 16 does not divide image_size 28; "
                                                  "valid patch sizes: 1, 2, 4, 7, 14, 28"),
        (lambda: digits_vit(depth=0), "ViT depth must be a positive integer, got 0"),
        (lambda: digits_vit(dim=100, heads=3), "ViT dim 100 is not divisible by heads 3"),
        (lambda: digits_resnet(layers=[1, 1], widths=[8, 16, 32]), "must be lists of the same length"),
        (lambda: digits_resnet(widths=[16, -2, 8]), "ResNet widths[1] must be a positive integer, got -2"),
        (lambda: digits_vit(norm="dty"), "unknown norm 'dty' (did you mean 'dyt'?)"),
        (lambda: digits_resnet(rules=["stem"]), "a placement rule is a one-key mapping {pattern: norm}"),
    ],
)
def test_bad_model_arguments_get_one_clear_line(build, message):
    with pytest.raises(ConfigError) as err:
        build()
    assert message in str(err.value) and "\n" not in str(err.value)
