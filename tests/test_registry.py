"""The registry builds every (norm x layout) pair it lists and refuses the rest in one line."""

import functools
import math

import pytest
import torch
from torch import nn

from dyt_lab.norms import LAYOUTS, NORMS, DyT, NormError, available_norms, build_norm, norm_factory, norm_name


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", available_norms())
def test_every_pair_builds_or_names_the_pair(name, layout):
    if layout in NORMS[name].layouts:
        layer = build_norm(name, 8, layout)
        x = torch.randn(2, 5, 8) if layout == "channels_last" else torch.randn(2, 8, 3, 3)
        assert layer(x).shape == x.shape
        assert norm_name(layer) == name
    else:
        with pytest.raises(NormError) as err:
            build_norm(name, 8, layout)
        message = _one_line(err)
        assert name in message and layout in message and "supports" in message


def test_spec_forms():
    assert isinstance(build_norm("dyt", 4, "channels_last"), DyT)
    assert build_norm("LN", 4, "channels_last").__class__ is nn.LayerNorm  # aliases, any case
    assert build_norm({"name": "dyt", "alpha_init": 2.0}, 4, "channels_last").alpha.item() == 2.0
    assert build_norm(DyT, 4, "channels_first").channels_last is False  # registry class follows layout
    assert isinstance(build_norm(nn.BatchNorm2d, 4, "channels_first"), nn.BatchNorm2d)  # any class
    partial = functools.partial(nn.GroupNorm, 2)
    assert build_norm(lambda c: partial(c), 4, "channels_first").num_groups == 2  # any callable
    factory = norm_factory({"name": "derf", "alpha_init": 0.3}, "channels_first")
    assert factory(16).alpha.item() == pytest.approx(0.3) and factory(16).weight.shape == (16,)


def test_groupnorm_lowers_groups_to_divide_channels():
    assert build_norm("groupnorm", 48, "channels_first").num_groups == 16
    assert build_norm({"name": "gn", "num_groups": 4}, 48, "channels_first").num_groups == 4


@pytest.mark.parametrize(
    ("spec", "num_features", "expected"),
    [
        ("dty", 4, "unknown norm 'dty' (did you mean 'dyt'?); valid names: layernorm"),
        ({"name": "dyt", "alpha": 1.0}, 4, "unknown option 'alpha' for norm 'dyt'; valid options: alpha_init"),
        ({"alpha_init": 1.0}, 4, "a norm mapping needs a 'name' key"),
        ("dyt", 0, "num_features must be a positive integer, got 0"),
        ("layernorm", -3, "num_features must be a positive integer, got -3"),
        ("dyt", 2.5, "num_features must be a positive integer, got 2.5"),
        ({"name": "dyt", "alpha_init": math.nan}, 4, "alpha_init must be a finite number, got nan"),
        ({"name": "derf", "alpha_init": math.inf}, 4, "alpha_init must be a finite number, got inf"),
        ({"name": "dyt", "alpha_init": "big"}, 4, "alpha_init must be a finite number, got 'big'"),
        (3, 4, "a norm name must be a string, got 3"),
    ],
)
def test_bad_specs_get_one_clear_line(spec, num_features, expected):
    with pytest.raises(NormError) as err:
        build_norm(spec, num_features, "channels_last")
    assert expected in _one_line(err)


def test_unknown_layout():
    with pytest.raises(NormError) as err:
        build_norm("dyt", 4, "nhwc")
    assert "unknown layout 'nhwc'; valid layouts: channels_last, channels_first" in _one_line(err)


def test_norm_factory_fails_fast():
    with pytest.raises(NormError, match="unknown option 'eps' for norm 'dyt'"):
        norm_factory({"name": "dyt", "eps": 1e-6}, "channels_last")
