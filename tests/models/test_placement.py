"""Placement rules written as one ordered mapping ``{pattern: norm, ...}`` as well as a list of one-key mappings."""

from __future__ import annotations

import functools

import pytest
import torch

from dyt_lab.models import PlacementError, ViT, describe_placement
from dyt_lab.models.placement import rule_pairs
from dyt_lab.runs import load_run
from tests.helpers import RESNET_DIGITS, digits_resnet

# This file's model: BatchNorm wherever no rule says otherwise, built from seed 0.
_resnet = functools.partial(digits_resnet, seed=0, norm="batchnorm")


def test_rule_pairs_keep_the_order_written():
    assert rule_pairs({"b": "dyt", "a": "ln"}) == [("b", "dyt"), ("a", "ln")]
    assert rule_pairs([{"b": "dyt"}, {"a": "ln"}]) == [("b", "dyt"), ("a", "ln")]
    assert rule_pairs(None) == [] and rule_pairs({}) == []


@pytest.mark.parametrize("rules", [
    {"downsample": "dyt", "stem": {"name": "derf", "alpha_init": 1.0}, "stage1": "dyt_centered"},
    {"layer3.*": "rmsnorm", "stage2": "dyt"},
])
def test_an_ordered_mapping_builds_the_same_model_as_the_equivalent_list(rules):
    as_list = [{key: spec} for key, spec in rules.items()]
    a, b = _resnet(rules=rules), _resnet(rules=as_list)
    assert describe_placement(a) == describe_placement(b)
    assert describe_placement(a) != describe_placement(_resnet())  # the rules did something
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for key in state_a:
        torch.testing.assert_close(state_a[key], state_b[key], rtol=0, atol=0, msg=key)


def test_the_first_matching_key_wins_in_the_mappings_order():
    # downsample sites are in the stage globs too (layer2.0.downsample.norm matches layer2.*)
    first = describe_placement(_resnet(rules={"downsample": "dyt", "stage2": "rmsnorm"}))
    assert first["layer2.0.downsample.norm"] == "dyt(alpha_init=0.5)"
    assert first["layer2.0.norm1"] == first["layer2.0.norm2"] == "rmsnorm"
    assert first["layer3.0.downsample.norm"] == "dyt(alpha_init=0.5)" and first["layer3.0.norm1"] == "batchnorm"
    second = describe_placement(_resnet(rules={"stage2": "rmsnorm", "downsample": "dyt"}))
    assert second["layer2.0.downsample.norm"] == "rmsnorm"
    assert second["layer3.0.downsample.norm"] == "dyt(alpha_init=0.5)"


def test_mapping_rules_take_the_model_wide_alpha_init_and_come_before_placement():
    model = ViT("vit_digits", num_classes=10, in_channels=1, norm="dyt", placement="all",
                rules={"final": "layernorm", "attn": {"name": "dyt", "alpha_init": 2.0}}, alpha_init=0.25)
    table = describe_placement(model)
    assert table["norm"] == "layernorm" and table["blocks.0.norm1"] == "dyt(alpha_init=2)"
    assert table["blocks.0.norm2"] == "dyt(alpha_init=0.25)"


@pytest.mark.parametrize(("rules", "message"), [
    ({"stem": "dyt", "stage9": "dyt"}, "--model.rules 'stage9': neither a preset of this ResNet"),
    ({"": "dyt"}, "non-empty string"),
    ([{"stem": "dyt", "stage1": "dyt"}], "one-key mapping"),
    ("stem", "a mapping {pattern: norm, ...} or a list"),
])
def test_bad_rules_are_one_clear_error(rules, message):
    with pytest.raises(PlacementError, match=message.replace("{", r"\{").replace("}", r"\}")):
        _resnet(rules=rules)


def test_an_ordered_mapping_from_the_command_line():
    run = load_run(["--config", str(RESNET_DIGITS), "--model.rules",
                    "{downsample: dyt, stem: batchnorm, stage2: rmsnorm, stage1: dyt_centered}"])
    assert list(run.model.hparams.rules) == ["downsample", "stem", "stage2", "stage1"]
    table = describe_placement(run.model.net)
    assert table["stem.norm"] == "batchnorm" and table["layer1.0.norm1"] == "dyt_centered(alpha_init=0.5)"
    assert table["layer2.0.downsample.norm"] == "dyt(alpha_init=0.5)" and table["layer2.0.norm1"] == "rmsnorm"
    assert table["layer3.0.norm1"] == "dyt(alpha_init=0.5)"  # the config's norm: dyt
