"""The bad-input table: every mistake a user can type gets one line naming it, a non-zero exit, no traceback.

Each case is a real ``dyt-lab`` command in its own process and working folder. The processes are
forked from one warm interpreter (tests/command_batch.py), so the table costs one Lightning import
rather than one per case. Each case also asserts that the failed command left nothing behind: no
run folder, no half-written file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from dyt_lab.errors import EXIT_CONFIG_ERROR
from tests.helpers import mount_tmpfs, unmount

REPO = Path(__file__).resolve().parent.parent
QUICK = str(REPO / "configs" / "quickstart.yaml")
RESNET = str(REPO / "configs" / "experiments" / "resnet_bn_vs_dyt_digits.yaml")
STUDY = "configs/study/vit_alpha_init.yaml"  # its base configs are named from the repository root
FIT = ["fit", "--config", QUICK]
TIMM = [*FIT, "--config", str(REPO / "configs" / "model" / "timm_resnet18.yaml")]  # timm's resnet18 by name
# Lines Lightning or dyt_lab print on every start; they are not part of the error message.
CHATTER = ("Seed set to", "GPU available", "TPU available", "HPU available", "💡 Tip", "Tip:", "Using default")
# Lines that must not precede an error at all: the seed is not what went wrong (test_no_seed_line_before_a_mistake)
NEVER_BEFORE_AN_ERROR = ("Seed set to",)

# name: (argv, the text the message must hold). Paths are relative to each case's working folder,
# which holds the files that `inputs` below writes.
CASES: dict[str, tuple[list[str], str]] = {
    # jsonargparse refusals: parse time, before anything is built
    "alpha_init_not_a_number": ([*FIT, "--model.alpha_init", "abc"], "'abc'"),
    "precision_unknown": ([*FIT, "--trainer.precision", "17"], "'17'"),
    "optimizer_class_unknown": ([*FIT, "--model.optimizer", "torch.optim.Nope"], "Nope"),
    "seed_not_a_number": ([*FIT, "--seed_everything", "abc"], "'abc'"),
    "model_argument_misspelt": ([*FIT, "--model.nrom", "dyt"], "nrom"),
    "config_missing": (["fit", "--config", "configs/nope.yaml"], "nope.yaml"),
    "config_unknown_top_key": (["fit", "--config", QUICK, "--config", "unknown_key.yaml"], "bogus"),
    "config_yaml_syntax": (["fit", "--config", "bad_syntax.yaml"], "bad_syntax.yaml"),
    "config_value_wrong_type": (["fit", "--config", QUICK, "--config", "wrong_type.yaml"], "'ten'"),
    "max_epochs_not_a_number": ([*FIT, "--trainer.max_epochs", "x"], "'x'"),
    "flag_unknown": ([*FIT, "--nope", "1"], "--nope"),
    "trainer_flag_misspelt": ([*FIT, "--trainer.max_epocs", "3"], "max_epocs"),
    "subcommand_unknown": (["fitt", "--config", QUICK], "fitt"),
    "command_misspelt": (["studdy"], "unknown command 'studdy' (did you mean 'study'?); dyt-lab commands: fit, "
                                     "validate, test, predict, study, probe, norms"),
    "model_class_unknown": ([*FIT, "--model", "nope.Class"], "nope.Class"),
    "data_class_unknown": ([*FIT, "--data", "nope.Class"], "nope.Class"),
    "lr_not_a_number": ([*FIT, "--model.optimizer.init_args.lr", "fast"], "'fast'"),
    "optimizer_argument_unknown": ([*FIT, "--model.optimizer.init_args.momentum_x", "1"], "momentum_x"),
    "callback_class_unknown": ([*FIT, "--trainer.callbacks+=nope.CB"], "nope.CB"),
    "gradient_clip_not_a_number": ([*FIT, "--trainer.gradient_clip_val", "abc"], "'abc'"),
    "checkpoint_mode_unknown": ([*FIT, "--checkpoint.mode", "maxx"], "maxx"),
    "divergence_check_zero": ([*FIT, "--divergence.check_every_n_steps", "0"], "0"),
    # dyt_lab's own checks, when the model and data are built
    "depth_zero": ([*FIT, "--model.depth", "0"], "got 0"),
    "norm_unknown": ([*FIT, "--model.norm", "nope"], "'nope'"),
    "base_norm_unknown": ([*FIT, "--model.base_norm", "nope"], "'nope'"),
    "placement_unknown": ([*FIT, "--model.placement", "bogus"], "bogus"),
    "rules_preset_the_model_lacks": (["fit", "--config", RESNET, "--model.rules", "{stage4: batchnorm}"],
                                     "--model.rules 'stage4': neither a preset of this ResNet nor a pattern matching "
                                     "a site; its presets: all, stem, downsample, first_in_block, last_in_block, "
                                     "stage1, stage2, stage3; sites look like: stem.norm"),
    "alpha_rule_unknown": ([*FIT, "--model.alpha_rule", "stage"], "'stage': expected one of 'constant', 'depth', 'data'"),
    "alpha_rule_without_dyt": (["fit", "--config", RESNET, "--model.norm", "batchnorm", "--model.alpha_rule", "data"],
                               "alpha_rule 'data' needs a DyT-family norm at some site"),
    "preset_unknown": ([*FIT, "--model.preset", "vit_nope"], "vit_nope"),
    "pool_unknown": ([*FIT, "--model.pool", "max"], "max"),
    "heads_do_not_divide_dim": ([*FIT, "--model.dim", "30", "--model.heads", "4"], "30"),
    "resnet_norm_unknown": (["fit", "--config", RESNET, "--model.norm", "nope"], "'nope'"),
    "resnet_preset_unknown": (["fit", "--config", RESNET, "--model.preset", "resnet7"], "resnet7"),
    # batch-free options: a model without such sites, a value that cannot work, an unknown name
    "vit_weight_standardization": ([*FIT, "--model.weight_standardization", "true"],
                                   "no such argument 'weight_standardization' for dyt_lab.training.ViTClassifier"),
    "vit_branch_gain": ([*FIT, "--model.branch_gain", "0"], "no such argument 'branch_gain'"),
    "recipe_unknown": (["fit", "--config", RESNET, "--model.recipe", "bn_fre"],
                       "--model.recipe 'bn_fre': unknown recipe (did you mean 'bn_free'?); valid recipes: bn_free"),
    "nf_alpha_negative": (["fit", "--config", RESNET, "--model.nf_alpha", "-0.2"],
                          "nf_alpha must be a finite number > 0"),
    "agc_lambda_negative": (["fit", "--config", RESNET, "--trainer.callbacks+=dyt_lab.training.clipping."
                             "AdaptiveGradientClipping", "--trainer.callbacks.clipping=-0.01"],
                            "clipping (lambda) must be a finite number > 0"),
    "agc_negative": (["fit", "--config", RESNET, "--model.agc", "-1"],
                     "agc (the clipping lambda) must be a finite number > 0"),
    "resnet_alpha_rule_unknown": (["fit", "--config", RESNET, "--model.alpha_rule", "stage"],
                                  "'stage': expected one of 'constant', 'depth', 'data'"),
    "dyt_general_center_unknown": (["fit", "--config", RESNET, "--model.norm", "{name: dyt_general, center: channel}"],
                                   "center must be one of none, sample, batch; got 'channel'"),
    "batch_size_negative": ([*FIT, "--data.batch_size", "-1"], "-1"),
    "val_fraction_above_one": ([*FIT, "--data.val_fraction", "1.5"], "1.5"),
    "val_fraction_zero": ([*FIT, "--data.val_fraction", "0"], "0"),
    "num_workers_negative": ([*FIT, "--data.num_workers", "-1"], "-1"),
    # checked by torch or Lightning only: refused before any run folder exists
    "lr_negative": ([*FIT, "--model.optimizer.init_args.lr", "-0.1"], "-0.1"),
    "weight_decay_negative": ([*FIT, "--model.optimizer.init_args.weight_decay", "-1"], "-1"),
    "beta_above_one": ([*FIT, "--model.optimizer.init_args.betas", "[2.0, 0.9]"], "2.0"),
    "label_smoothing_above_one": ([*FIT, "--model.label_smoothing", "2"], "2"),
    "warmup_fraction_above_one": ([*FIT, "--model.scheduler.init_args.warmup_fraction", "2"], "2"),
    "min_lr_ratio_negative": ([*FIT, "--model.scheduler.init_args.min_lr_ratio", "-1"], "-1"),
    "max_epochs_negative": ([*FIT, "--trainer.max_epochs", "-5"], "-5"),
    "accelerator_unknown": ([*FIT, "--trainer.accelerator", "tpuu"], "tpuu"),
    "strategy_unknown": ([*FIT, "--trainer.strategy", "nope"], "nope"),
    "devices_zero": ([*FIT, "--trainer.devices", "0"], "0"),
    "accumulate_zero": ([*FIT, "--trainer.accumulate_grad_batches", "0"], "0"),
    "limit_batches_negative": ([*FIT, "--trainer.limit_train_batches", "-1"], "-1"),
    "save_dir_read_only": ([*FIT, "--trainer.logger.init_args.save_dir", "read_only/runs"], "read_only"),
    # data that is not there or cannot train a classifier
    "imagefolder_missing": ([*FIT, "--data", "dyt_lab.data.ImageFolder", "--data.data_dir", "nope_dir"],
                            "nope_dir"),
    "imagefolder_one_class": ([*FIT, "--data", "dyt_lab.data.ImageFolder", "--data.data_dir", "one_class"],
                              "1 class folder"),
    "imagefolder_no_images": ([*FIT, "--data", "dyt_lab.data.ImageFolder", "--data.data_dir", "no_images",
                               "--data.num_workers", "0"], "no_images"),
    "imagefolder_no_train_folder": ([*FIT, "--data", "dyt_lab.data.ImageFolder", "--data.data_dir", "empty"],
                                    "no train/ folder"),
    "cifar10_offline": ([*FIT, "--data", "dyt_lab.data.CIFAR10", "--data.data_dir", "cifar", "--data.download",
                         "true"], "could not download CIFAR10"),
    "cifar10_not_downloaded": ([*FIT, "--data", "dyt_lab.data.CIFAR10", "--data.data_dir", "empty",
                                "--data.download", "false"], "download"),
    "fashion_mnist_no_files": ([*FIT, "--data", "dyt_lab.data.FashionMNIST", "--data.data_dir", "empty"],
                               "empty holds no Fashion-MNIST files"),
    # checkpoints: missing, a folder, corrupt, truncated
    "fit_ckpt_missing": ([*FIT, "--ckpt_path", "missing.ckpt"], "missing.ckpt"),
    "fit_ckpt_folder": ([*FIT, "--ckpt_path", "empty"], "'empty' is not a file"),
    "fit_ckpt_corrupt": ([*FIT, "--ckpt_path", "run/checkpoints/corrupt.ckpt"], "corrupt.ckpt"),
    "fit_ckpt_truncated": ([*FIT, "--ckpt_path", "run/checkpoints/truncated.ckpt"], "truncated.ckpt"),
    "validate_ckpt_missing": (["validate", "--ckpt_path", "missing.ckpt"], "'missing.ckpt' does not exist"),
    "validate_ckpt_corrupt": (["validate", "--ckpt_path", "run/checkpoints/corrupt.ckpt"], "corrupt.ckpt"),
    "test_ckpt_truncated": (["test", "--ckpt_path", "run/checkpoints/truncated.ckpt"], "truncated.ckpt"),
    "test_ckpt_corrupt_with_config": (["test", *FIT[1:], "--ckpt_path", "run/checkpoints/corrupt.ckpt"],
                                      "corrupt.ckpt"),
    "predict_ckpt_missing": (["predict", *FIT[1:], "--ckpt_path", "missing.ckpt"], "missing.ckpt"),
    "probe_ckpt_corrupt": (["probe", "--ckpt_path", "run/checkpoints/corrupt.ckpt"], "corrupt.ckpt"),
    "probe_config_missing": (["probe", "--config", "nope.yaml"], "nope.yaml"),
    "probe_num_points_zero": (["probe", *FIT[1:], "--num_points", "0"], "--num_points must be at least 1, got 0"),
    "probe_probe_size_not_a_number": (["probe", *FIT[1:], "--probe_size", "x"], "'x'"),
    "probe_flag_unknown": (["probe", *FIT[1:], "--nope"], "--nope"),
    "probe_nothing_to_probe": (["probe"], "give --config, --ckpt_path or both"),
    # studies
    "study_config_missing": (["study", "run", "--config", "nope.yaml"], "nope.yaml"),
    "study_key_unknown": (["study", "run", "--config", STUDY, "--n_trialz", "3"],
                          "--n_trialz 3 (did you mean --n_trials?)"),
    "study_file_key_misspelt": (["study", "run", "--config", STUDY, "--config", "study_typo.yaml"],
                                "study file: Option 'n_trial' is not accepted (did you mean 'n_trials'?)"),
    "study_file_nested_key_misspelt": (["study", "run", "--config", STUDY, "--config", "study_nested_typo.yaml"],
                                       "'objective' does not accept option 'metirc' (did you mean 'objective.metric'?)"),
    "study_trials_zero": (["study", "run", "--config", STUDY, "--n_trials", "0"], "0"),
    "study_workers_zero": (["study", "run", "--config", STUDY, "--workers", "0"], "0"),
    "study_storage_unknown_dialect": (["study", "run", "--config", STUDY, "--storage", "nosuchdb://x"],
                                      "nosuchdb"),
    "study_report_unknown": (["study", "report", "nope_study"], "nope_study"),
    "study_resume_unknown": (["study", "resume", "nope_study"], "nope_study"),
    "study_command_unknown": (["study", "runn"], "runn"),
    "study_objective_misspelt": (["study", "run", "--config", STUDY, "--objective.metric", "val/accuracy"],
                                 "'val/accuracy' is not a metric ViTClassifier logs (did you mean 'val/acc'?)"),
    "confirm_workers_zero": (["study", "confirm", "nope_study", "--workers", "0"], "--workers 0: give 1 or more"),
    "confirm_ablate_with_top": (["study", "confirm", "nope_study", "--ablate", "--top", "2"],
                                "--ablate with --top 2: "),
    "compare_a_study_with_itself": (["study", "compare", "nope_study", "nope_study"], "a study against itself"),
    # timm and torchvision models: a name, an argument, a conversion that does not fit the network
    "timm_name_unknown": ([*TIMM, "--model.net.init_args.name", "resnet19"], "'resnet19' (did you mean 'resnet18'"),
    "timm_argument_unknown": ([*TIMM, "--model.net.init_args.kwargs", "{drop_rat: 0.1}"],
                              "'drop_rat'; did you mean 'drop_rate'?"),
    "timm_image_too_small": ([*TIMM, "--model.net.init_args.name", "vit_tiny_patch16_224"],
                             "cannot take the data's 1x8x8 images"),
    "timm_class_norm_layer": ([*FIT, "--config", "timm_vit_class.yaml", "--model.net.init_args.norm_layer",
                               "dyt_lab.norms.DyT"], "norm_layer: leave it out"),
    "timm_class_block": ([*FIT, "--config", "timm_resnet_class.yaml"], "timm.models.resnet.BasicBlock"),
    "convert_matches_no_norm": ([*TIMM, "--model.convert", "{to: dyt, kinds: [layernorm]}"],
                                "no layernorm module in ResNet; nothing to replace; its norms: batchnorm (20)"),
    "convert_site_unknown": ([*TIMM, "--model.convert", "{to: dyt, sites: [layer4.*, layer5.*]}"],
                             "sites ['layer5.*'] in ResNet; its norm sites: bn1, layer1.*.bn1"),
    "convert_kind_unknown": ([*TIMM, "--model.convert", "{to: dyt, kinds: [ln]}"],
                             "unknown kind 'ln' for convert_norms; valid kinds: layernorm"),
    "convert_norm_unknown": ([*TIMM, "--model.convert", "{to: dytt}"], "'dytt' (did you mean 'dyt'?)"),
    "convert_key_misspelt": ([*TIMM, "--model.convert", "{to: dyt, site: [layer4.*]}"], "'site'"),
    "convert_not_a_mapping": ([*TIMM, "--model.convert", "dyt"],
                              "--model.convert 'dyt': expected a NormConversion mapping {to, kinds, sites} or None, "
                              "e.g. {to: dyt, kinds: [batchnorm], sites: [layer4.*]}"),
}


def inputs(folder: Path) -> None:
    """The files the cases read, in a case's working folder."""
    (folder / "configs").symlink_to(REPO / "configs")
    (folder / "unknown_key.yaml").write_text("trainer:\n  max_epochs: 1\nbogus: 3\n")
    (folder / "bad_syntax.yaml").write_text("trainer:\n  max_epochs: [1\n model: x\n")
    (folder / "wrong_type.yaml").write_text("trainer:\n  max_epochs: ten\n")
    (folder / "study_typo.yaml").write_text("n_trial: 3\n")
    (folder / "study_nested_typo.yaml").write_text("objective:\n  metirc: val/loss\n")
    net = "model:\n  class_path: dyt_lab.training.ImageClassifier\n  init_args:\n    net:\n      class_path: "
    (folder / "timm_vit_class.yaml").write_text(  # timm's own classes, injected by class path
        f"{net}timm.models.vision_transformer.VisionTransformer\n      init_args: {{img_size: 8, patch_size: 2, "
        "in_chans: 1, num_classes: 10, embed_dim: 32, depth: 1, num_heads: 2}\n")
    (folder / "timm_resnet_class.yaml").write_text(
        f"{net}timm.models.resnet.ResNet\n      init_args: {{block: timm.models.resnet.BasicBlock, "
        "layers: [1, 1, 1, 1], in_chans: 1, num_classes: 10}\n")
    for name in ("a", "b"):
        (folder / "no_images" / "train" / name).mkdir(parents=True)
        (folder / "no_images" / "val" / name).mkdir(parents=True)
    for split in ("train", "val"):
        (folder / "one_class" / split / "only").mkdir(parents=True)
    (folder / "empty").mkdir()
    (folder / "read_only").mkdir()
    run = folder / "run" / "checkpoints"
    run.mkdir(parents=True)
    (folder / "run" / "config.yaml").write_text(Path(QUICK).read_text())
    (run / "corrupt.ckpt").write_bytes(b"this is not a checkpoint\n" * 40)
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "epoch": 0}, run / "whole.ckpt")
    whole = (run / "whole.ckpt").read_bytes()
    (run / "truncated.ckpt").write_bytes(whole[: len(whole) // 2])  # a write cut off by a full disk or a kill
    (run / "whole.ckpt").unlink()


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not {".mpl", "configs"} & set(p.parts)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, worker_id) -> dict[str, dict]:
    """Every case's outcome, computed once per test session whichever xdist workers run the table.

    The first worker to get here runs the table under a file lock and leaves the outcomes in the
    session's folder, which all workers share; the others wait for them (xdist's own recipe for a
    fixture that runs once; its --dist loadgroup does not group tests under pytest 9.2, xdist #1386).
    """
    if worker_id == "master":  # no xdist: this process's own folder
        return run_table(tmp_path_factory.getbasetemp() / "bad_input")
    shared = tmp_path_factory.getbasetemp().parent / "bad_input"
    with FileLock(f"{shared}.lock"):
        if (shared / "outcomes.json").is_file():
            return json.loads((shared / "outcomes.json").read_text())
        return run_table(shared)


def run_table(root: Path) -> dict[str, dict]:
    """Run every case; per case: exit code, stdout, stderr, and the files it added or removed."""
    root.mkdir()
    cases, before, mounted = {}, {}, []
    for name, (argv, _) in CASES.items():
        folder = root / name
        folder.mkdir()
        inputs(folder)
        if name == "save_dir_read_only" and mount_tmpfs(folder / "read_only", "64k", read_only=True) is None:
            mounted.append(folder / "read_only")
        before[name] = listing(folder)
        cases[name] = {"argv": argv, "cwd": str(folder)}
    (root / "cases.json").write_text(json.dumps(cases))
    env = {"PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(root / ".mpl"), "OMP_NUM_THREADS": "1",
           "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "HOME": str(root)}
    try:
        subprocess.run([sys.executable, str(REPO / "tests" / "command_batch.py"), str(root / "cases.json"),
                        str(root / "results.json")], cwd=root, env=env, check=True, timeout=600)
    finally:
        for folder in mounted:
            unmount(folder)
    results = json.loads((root / "results.json").read_text())
    for name in CASES:
        results[name]["changed"] = sorted(listing(root / name) ^ before[name])
        results[name]["read_only_mounted"] = root / name / "read_only" in mounted
    (root / "outcomes.json").write_text(json.dumps(results))
    return results


def message_lines(result: dict) -> list[str]:
    text = result["stderr"] + result["stdout"]
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith(CHATTER)]


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first case waits for the whole table to run
@pytest.mark.parametrize("name", list(CASES))
def test_a_mistake_is_one_line_naming_it(outcomes, name):
    result, (argv, named) = outcomes[name], CASES[name]
    if name == "save_dir_read_only" and not result["read_only_mounted"]:
        pytest.skip("cannot mount a read-only file system here (not root?)")
    lines = message_lines(result)
    assert result["code"] == EXIT_CONFIG_ERROR, (argv, result["code"], lines[-5:])
    assert "Traceback" not in result["stderr"], result["stderr"][-2000:]
    assert 1 <= len(lines) <= 3, lines
    assert any(line.startswith("error:") for line in lines), lines
    assert named in " ".join(lines), (named, lines)
    assert not result["changed"], f"left behind: {result['changed']}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_no_seed_line_before_a_mistake(outcomes):
    """Lightning's "Seed set to 0" came before every error found once the seed was set: not what went wrong."""
    said = {name: [line for line in (r["stderr"] + r["stdout"]).splitlines() if line.startswith(NEVER_BEFORE_AN_ERROR)]
            for name, r in outcomes.items()}
    assert not {name: lines for name, lines in said.items() if lines}
