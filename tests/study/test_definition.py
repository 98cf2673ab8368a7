"""The study file and its search space (``study/definition/``): choice labels, factorial entries, flags and
overrides, classes swapped by an override or a choice, and bad input refused in one line before any trial."""

from __future__ import annotations

import pytest
import yaml

from dyt_lab.cli import main
from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.study_file import Distribution, load_spec
from tests.helpers import last_line
from tests.study.helpers import BASE, TINY, write_study


def test_search_space_labels_list_choices_and_maps_them_back():
    space = SearchSpace({"model.placement": ["all", ["stage1", "stage2"]],
                         "model.alpha_init": Distribution(type="float", low=0.05, high=5.0, log=True)})
    assert space.distributions["model.placement"].choices == ("all", "stage1+stage2")
    assert space.configuration({"model.placement": "stage1+stage2", "model.alpha_init": 0.5}).flags() == [
        '--model.placement=["stage1", "stage2"]', "--model.alpha_init=0.5"]
    assert [label for label, _ in space.probes()["model.alpha_init"]] == [0.05, 5.0]


def test_a_factorial_entry_is_every_combination_in_the_order_written_and_each_option_a_factor():
    from dyt_lab.study.definition.design import design_cells, varying_factors

    space = SearchSpace({"model.rules": Distribution(type="categorical", factorial={
        "downsample": ["batchnorm", "dyt"], "stem": ["batchnorm", "dyt"], "stage1": ["batchnorm", "dyt"]})})
    values = [space.configuration({"model.rules": label}).values["model.rules"]
              for label in space.distributions["model.rules"].choices]
    assert len(values) == 8 and all(list(v) == ["downsample", "stem", "stage1"] for v in values)
    assert {tuple(v.values()) for v in values} == {(a, b, c) for a in ("batchnorm", "dyt") for b in ("batchnorm", "dyt")
                                                   for c in ("batchnorm", "dyt")}
    assert space.configuration({"model.rules": space.distributions["model.rules"].choices[0]}).flags()[0].startswith(
        '--model.rules={"downsample": ')  # the flag keeps the written order: the first rule matches first
    assert varying_factors(design_cells(space)) == ["downsample", "stem", "stage1"]


def test_study_file_keys_are_flags_and_override_flags_set_one_dotted_key(tmp_path):

    path = write_study(tmp_path, "flags", base={"configs": [BASE], "overrides": {"trainer": {"max_epochs": 2}}})
    spec = load_spec(["--config", str(path), "--n_trials", "7", "--sampler.name=random",
                      "--base.overrides.trainer.accelerator=cpu", "--base.overrides.trainer.precision", "32"])
    assert (spec.n_trials, spec.sampler.name, spec.study_name) == (7, "random", "flags")
    assert spec.base.overrides == {"trainer.max_epochs": 2, "trainer.accelerator": "cpu", "trainer.precision": "32"}


def test_an_override_that_swaps_a_class_acts_as_the_same_mapping_in_a_config_file(tmp_path):
    """``data: {class_path: ...}`` in base.overrides stays data (it was built and JSON-encoded) and means
    what it means in a config file listed under base.configs."""
    from dyt_lab.runs import load_run
    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.engine.objective import base_args
    from dyt_lab.study.engine.precheck import check_trials

    swap = {"class_path": "dyt_lab.data.MNIST5k", "init_args": {"batch_size": 32, "val_fraction": 0.2}}
    callbacks = [{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"}]
    path = write_study(tmp_path, "swap", base={"configs": [BASE], "overrides": {
        **TINY, "data": swap, "trainer": {"callbacks": callbacks}}})
    spec = load_spec(["--config", str(path)])
    assert spec.base.overrides["data"] == swap and spec.base.overrides["trainer.callbacks"] == callbacks
    check_trials(spec, SearchSpace(spec.search_space), gpus=0)  # the up-front check builds it

    (tmp_path / "swap_data.yaml").write_text(yaml.safe_dump({"data": swap}))
    from_overrides = load_run(base_args(spec)).datamodule
    from_file = load_run(["--config", BASE, "--config", str(tmp_path / "swap_data.yaml")]).datamodule
    assert type(from_overrides).__name__ == "MNIST5k" and dict(from_overrides.hparams) == dict(from_file.hparams)
    assert from_overrides.hparams["batch_size"] == 32 and from_overrides.hparams["val_fraction"] == 0.2


@pytest.mark.parametrize("form", ["list", "categorical"])
def test_a_choice_that_swaps_a_class_stays_data_and_builds_as_in_a_config_file(tmp_path, form):
    """``data: [{class_path: ...}, ...]`` in search_space stays data (the study parser built it, and the
    space could not label it), and each choice means what it means in a config file."""
    from dyt_lab.runs import load_run
    from dyt_lab.study.engine.objective import base_args
    from dyt_lab.study.engine.precheck import check_trials

    swaps = [{"class_path": "dyt_lab.data.MNIST5k", "init_args": {"batch_size": 32, "val_fraction": 0.2}},
             {"class_path": "dyt_lab.data.Digits", "init_args": {"batch_size": 16}}]
    entry = swaps if form == "list" else {"type": "categorical", "choices": swaps}
    spec = load_spec(["--config", str(write_study(tmp_path, "swap", search_space={"data": entry}))])
    space = SearchSpace(spec.search_space)
    assert [space.configuration({"data": label}).values["data"] for label in space.distributions["data"].choices] == swaps
    check_trials(spec, space, gpus=0)  # the up-front check builds each choice

    (tmp_path / "swap_data.yaml").write_text(yaml.safe_dump({"data": swaps[0]}))
    flags = space.configuration({"data": space.distributions["data"].choices[0]}).flags()
    from_choice = load_run([*base_args(spec), *flags]).datamodule
    from_file = load_run(["--config", BASE, "--config", str(tmp_path / "swap_data.yaml")]).datamodule
    assert type(from_choice).__name__ == "MNIST5k" and dict(from_choice.hparams) == dict(from_file.hparams)


BAD = {
    "key": ({"search_space": {"model.alpah_init": [0.1]}},
            "error: search_space key 'model.alpah_init' is not a key of the base config (did you mean "
            "'model.alpha_init'?)"),
    "low_high": ({"search_space": {"model.alpha_init": {"type": "float", "low": 5, "high": 0.1}}},
                 "error: search_space 'model.alpha_init': low 5.0 is greater than high 0.1"),
    "log_low": ({"search_space": {"model.alpha_init": {"type": "float", "low": 0, "high": 1, "log": True}}},
                "error: search_space 'model.alpha_init': log scale needs low > 0, got low=0.0"),
    "empty": ({"search_space": {"model.norm": []}},
              "error: search_space 'model.norm': a categorical needs at least one choice, got none"),
    "sampler": ({"sampler": {"name": "tpee"}}, "error: unknown sampler 'tpee'; valid: tpe, random, grid, or"),
    "pruner": ({"pruner": {"name": "medain"}}, "error: unknown pruner 'medain'; valid: median, hyperband, none, or"),
    "storage": ({"storage": "sqlite:////nonexistent/folder/study.db"},
                "error: storage 'sqlite:////nonexistent/folder/study.db' cannot be opened: "),
    "placement": ({"search_space": {"model.placement": ["all", "stage4"]}},
                  "error: search_space 'model.placement' = 'stage4': placement 'stage4' is neither a ResNet preset"),
    "seeds_empty": ({"seeds": []}, "error: seeds must be a non-empty list of integers, got []"),
    "seeds_text": ({"seeds": ["a"]}, "error: study file: "),
    "seeds_twice": ({"seeds": [0, 0]}, "error: seeds lists a seed twice: [0, 0]"),
    "isolation": ({"isolation": "thread"}, "error: study file: "),
    "reference_factor": ({"reference": {"scale": "alpha"}},
                         "error: reference: 'scale' is not a factor of this design; factors: model.norm"),
    "reference_level": ({"reference": {"model.norm": "batchnorm"}},
                        "error: reference: model.norm='batchnorm' is not a level of the design; levels: derf, dyt"),
    "gap_from_alone": ({"gap_from": {"model.norm": "dyt"}}, "error: gap_from needs a reference"),
    "factored_option": ({"search_space": {"model.norm": [{"name": "factored", "scale": "std"}]}},
                        "error: search_space 'model.norm' = '{\"name\":\"factored\",\"scale\":\"std\"}': "),
    "factored_cell": ({"search_space": {"model.norm": [{"name": "factored", "center": "none", "scale": "alpha"},
                                                       {"name": "factored", "center": "batch", "scale": "batch_std"}]},
                       "reference": {"center": "batch", "scale": "alpha"}},
                      "error: reference: no configuration of the design has center=batch, scale=alpha"),
    "factorial_empty": ({"search_space": {"model.rules": {"factorial": {"stem": []}}}},
                        "error: search_space 'model.rules': factorial maps each option to a non-empty list"),
    "margin_negative": ({"margin": -0.01}, "error: margin: equivalence margin -0.01 must be a finite number >= 0"),
    "margin_text": ({"margin": "half"}, "error: study file: "),
    "overrides_list": ({"base": {"configs": [BASE], "overrides": ["trainer.max_epochs", 2]}},
                       "error: study file: --base.overrides: Not of type Overrides: expected a mapping of config keys"),
    "override_class_unknown": ({"base": {"configs": [BASE], "overrides": {"data": {"class_path": "dyt_lab.data.Nope"}}}},
                               "error: the base config is refused by the dyt-lab fit parser: --data "),
    # values the parser takes and only the Trainer refuses: the check builds it as fit does
    "trainer_searched": ({"search_space": {"trainer.max_epochs": [2, -5]}},
                         "error: search_space 'trainer.max_epochs' = -5: --trainer: `max_epochs` must be a "
                         "non-negative integer or -1"),
    "trainer_override": ({"base": {"configs": [BASE], "overrides": {**TINY, "trainer.accumulate_grad_batches": 0}}},
                         "error: the base config: --trainer.accumulate_grad_batches must be a positive integer, got 0"),
    "accelerator": ({"base": {"configs": [BASE], "overrides": {**TINY, "trainer.accelerator": "tpuu"}}},
                    "error: the base config: --trainer: You selected an invalid accelerator name: `accelerator='tpuu'`"),
    # an objective the model never logs when a validation epoch ends: refused now, not after a trial's first epoch
    "metric_misspelt": ({"objective": {"metric": "val/accuracy"}},
                        "error: objective.metric 'val/accuracy' is not a metric ResNetClassifier logs (did you mean "
                        "'val/acc'?); it logs train/acc, train/loss, train/loss_epoch, val/acc, val/acc_best, "
                        "val/acc_top5, val/loss"),
    "metric_test_split": ({"objective": {"metric": "test/acc"}},
                          "error: objective.metric 'test/acc' is logged only by the test after fit, but a trial is "
                          "judged (and pruned) after each validation epoch: use val/acc"),
}


@pytest.mark.parametrize("case", [*BAD, "report", "yaml_syntax"])
def test_bad_input_is_refused_in_one_line_before_any_trial(tmp_path, capsys, case):
    if case == "report":
        args, expected = ["study", "report", "nosuch", "--root", str(tmp_path / "studies")], \
            "error: no study 'nosuch' under"
    elif case == "yaml_syntax":  # a list left open on line 2, seen on line 3: the file and place, as fit says it
        path = write_study(tmp_path, "bad")
        path.write_text(path.read_text().replace("base:\n", "base:\n  configs: [a.yaml\n", 1))
        args, expected = ["study", "run", "--config", str(path)], \
            f"error: study file '{path}' is not valid YAML at line 3, column 10: "
    else:
        keys, expected = BAD[case]
        args = ["study", "run", "--config", str(write_study(tmp_path, "bad", **keys))]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert last_line(err).startswith(expected) and "Traceback" not in err
    assert not (tmp_path / "studies" / "bad" / "trials").exists()


def test_bad_input_names_the_wrong_value_and_the_valid_choices(tmp_path, capsys):
    args = ["study", "run", "--config", str(write_study(tmp_path, "bad", seeds=["a"]))]
    with pytest.raises(SystemExit):
        main(args)
    assert "seeds" in last_line(capsys.readouterr().err)
    args = ["study", "run", "--config", str(write_study(tmp_path, "bad", isolation="thread"))]
    with pytest.raises(SystemExit):
        main(args)
    line = last_line(capsys.readouterr().err)
    assert "isolation" in line and "warm" in line and "process" in line and "thread" in line
