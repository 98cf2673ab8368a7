"""The registry builds every (norm x layout) pair it lists and refuses the rest in one line."""

import functools
import math
from typing import get_args

import pytest
import torch
from torch import nn

from dyt_lab.norms import (
    LAYOUTS,
    NORMS,
    DyT,
    FactoredNorm,
    NormError,
    PointwiseNorm,
    available_norms,
    build_norm,
    choices_of,
    named_points,
    norm_factory,
    norm_name,
)
from dyt_lab.norms.options import VOCABULARY


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


def test_choices_of_names_each_fixed_option_and_its_values():
    assert choices_of("factored") == {
        "center": ("none", "batch"), "scale": ("none", "batch_std", "running_std", "alpha", "alpha_channel"),
        "squash": ("none", "tanh", "erf")}
    general = choices_of("dyt_general")
    assert list(general) == ["squash", "alpha", "shift", "center"] and general["center"] == ("none", "sample", "batch")
    assert choices_of("dyt") == choices_of("BN") == {}  # names and aliases alike; no option of fixed values
    for name in available_norms():  # one vocabulary: a layer takes all of an option's values or a subset
        for option, values in choices_of(name).items():
            assert set(values) <= set(get_args(VOCABULARY[option])), (name, option)
    with pytest.raises(NormError, match="unknown norm 'dty'"):
        choices_of("dty")


def test_the_named_dyt_norms_formulas_are_read_from_their_presets():
    formulas = {name: NORMS[name].formula for name in ("dyt", "dyt_shift", "dyt_channel_shift", "dyt_channel_alpha",
                                                        "derf", "dyt_centered")}
    assert formulas == {
        "dyt": "w * tanh(a * x) + b", "dyt_shift": "w * tanh(a * x + s) + b",
        "dyt_channel_shift": "w * tanh(a * x + s_c) + b", "dyt_channel_alpha": "w * tanh(a_c * x) + b",
        "derf": "w * erf(a * x + s) + b", "dyt_centered": "w * tanh(a * (x - mean_batch)) + b"}
    assert NORMS["dyt_channel_shift"].params == "a: scalar; s, w, b: (C,)"
    assert NORMS["dyt_centered"].params == "a: scalar; w, b: (C,); running mean"


def test_a_registry_class_as_spec_follows_the_layout():
    assert build_norm(FactoredNorm, 4, "channels_first").channels_last is False
    assert build_norm(PointwiseNorm, 4, "channels_first").channels_last is False


def test_named_points_are_points_of_the_choices_in_their_order():
    points, choices = named_points("factored"), choices_of("factored")
    for point in points:
        assert len(point) == len(choices) and all(v in values for v, values in zip(point, choices.values()))
    # the points test_factored shows equal to the layers they are named after
    assert points[("batch", "batch_std", "none")] == "BatchNorm" and points[("none", "alpha", "tanh")] == "DyT"
    assert points[("batch", "alpha", "tanh")] == "dyt_centered"
    assert named_points("dyt_general") == named_points("ln") == {}
