"""``dyt-lab study confirm`` (``engine/confirm.py``, ``engine/sequential.py``): a seeded search (a 2 x 2 design,
2 paired seeds) run once per module, then its report, confirmations on fresh seeds, a confirmation in another
setting and its comparison, the ablation, sequential seeds, and the refusals; the choice of arms and the
alpha-spending levels on their own."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dyt_lab.cli import main
from dyt_lab.errors import ConfigError
from dyt_lab.study.definition.space import SearchSpace
from tests.helpers import last_line, run_cli
from tests.study.helpers import ALPHA_POINT, BN_POINT, load, write_study


@pytest.fixture(scope="module")
def seeded_study(tmp_path_factory):
    """A 2 x 2 design (BN's scale or DyT's alpha in the factored norm x two learning rates), 2 paired seeds."""
    folder = tmp_path_factory.mktemp("seeded")
    path = write_study(folder, "seeded", n_trials=4, seeds=[0, 1],
                       search_space={"model.norm": [BN_POINT, ALPHA_POINT], "model.optimizer.lr": [0.003, 0.001]},
                       reference={"scale": "batch_std"}, gap_from={"scale": "alpha"})
    result = run_cli(["study", "run", "--config", str(path)], cwd=folder, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return folder, result.stdout


@pytest.mark.slow
def test_seeds_run_every_configuration_once_per_seed_paired(seeded_study):
    folder, stdout = seeded_study
    study = load(folder, "seeded")
    assert "4/4 configurations x 2 seeds (8 complete)" in stdout
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and len(study.trials) == 8
    by_config: dict[str, set] = {}
    for t in study.trials:
        by_config.setdefault(json.dumps(t.params, sort_keys=True), set()).add(t.user_attrs["seed"])
        run_dir = Path(t.user_attrs["run_dir"])
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed_everything"] == t.user_attrs["seed"]
        assert f"--seed_everything={t.user_attrs['seed']}" in (run_dir / "command.txt").read_text()
        assert 0 < t.user_attrs["fit_s"] < t.user_attrs["wall_time_s"]  # the callback timed the fit
        assert t.user_attrs["last_epoch"]["train/loss_epoch"] > 0 and "val/acc" in t.user_attrs["last_epoch"]
    assert list(by_config.values()) == [{0, 1}] * 4  # the same seeds for every configuration


@pytest.mark.slow
def test_report_of_a_seeded_study_compares_means_with_intervals(seeded_study, capsys):
    folder, _ = seeded_study
    main(["study", "report", "seeded", "--root", str(folder / "studies")])
    out = folder / "studies" / "seeded"
    report = (out / "report.md").read_text()
    assert "## Configurations (mean over seeds)" in report and "Δ row − reference [95% CI]" in report
    rows = [r for r in report.splitlines() if r.startswith(("| BatchNorm", "| BN center only"))]
    assert len(rows) == 4 and sum("| reference" in r for r in rows) == 2  # BN is its own reference at each lr
    assert "## Factor effects" in report and "alpha - batch_std" in report  # arm - reference, as Δ
    assert "`dyt-lab study confirm seeded --top 3 --seeds 10..14`" in report  # one norm name: the top three
    assert "## The gap, factor by factor" in report and "scale (alpha -> batch_std)" in report
    assert (out / "main_effects.png").stat().st_size > 0
    seed_runs = (out / "seed_runs.csv").read_text().strip().splitlines()
    assert len(seed_runs) == 9 and seed_runs[0].startswith("center,name,scale,squash,")  # header + 8 seed runs


def search_values(folder: Path) -> dict[str, list]:
    """The seeded search's values by configuration (its params as sorted JSON), one per seed run."""
    values: dict[str, list] = {}
    for t in load(folder, "seeded").trials:
        values.setdefault(json.dumps(t.params, sort_keys=True), []).append(t.value)
    return values


@pytest.mark.slow
def test_confirm_reruns_the_best_and_the_reference_on_fresh_seeds_and_resumes(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    means = search_values(folder)
    best_alpha = max((k for k in means if "alpha" in k and "batch_std" not in k), key=lambda k: sum(means[k]))
    best_bn = max((k for k in means if "batch_std" in k), key=lambda k: sum(means[k]))
    args = ["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1"]
    main(args)
    assert "2/2 configurations x 2 seeds (4 complete)" in capsys.readouterr().out
    confirmed = optuna.load_study(study_name="seeded.confirm", storage=f"sqlite:///{folder / 'studies' / 'seeded.confirm' / 'study.db'}")
    runs = {(json.dumps(t.params, sort_keys=True), t.user_attrs["seed"]) for t in confirmed.trials}
    assert runs == {(k, s) for k in (best_alpha, best_bn) for s in (5, 6)}  # the winner and BN at its best
    assert all(t.state == TrialState.COMPLETE and 0 <= t.user_attrs["test"]["test/acc"] <= 1 for t in confirmed.trials)
    main(args)  # again: everything ran, so it resumes to its end and runs nothing
    assert "(4 complete)" in capsys.readouterr().out and len(confirmed.get_trials()) == 4
    main(["study", "report", "seeded", "--root", root])
    report = (folder / "studies" / "seeded" / "report.md").read_text()
    assert "## Confirmed on fresh seeds" in report and "seeds [5, 6]" in report and "confirmed test/acc mean" in report
    assert "the best configuration of the search and its best reference configuration" in report
    assert "Not confirmed" not in report
    # the confirmed difference again with the test images' sampling: the same Δ, in points
    seed_level = next(line for line in report.splitlines() if line.startswith("- ") and "p = " in line)
    crossed = report.split("The same differences over seeds × test images")[1].splitlines()
    crossed_line = next(line for line in crossed if line.startswith("- "))
    assert float(crossed_line.split(": ")[1].split(" points")[0]) == pytest.approx(
        100 * float(seed_level.split(": ")[1].split(" ")[0]), abs=0.01)
    assert "seeds [5, 6], 180 images" in report


@pytest.mark.parametrize("args, expected", [
    (["nosuch", "--top", "1", "--seeds", "5..6"], "error: no study 'nosuch' to confirm"),
    (["seeded", "--top", "9", "--seeds", "5..6"], "error: --top 9: study 'seeded' has 2 completed configurations"),
    (["seeded", "--top", "1", "--seeds", "1..3"], "error: --seeds 1..3 overlaps the seeds the search ran ([1])"),
    (["seeded", "--top", "1", "--seeds", "five"], "error: --seeds 'five': give a range like 10..14"),
    (["seeded", "--top", "x"], "error: study confirm: "),
    (["seeded", "--top", "1", "--seeds", "5..6", "--base.overrides.trainer.max_epochs=1"],
     "error: --config and --base.overrides.* change the setting: give --tag NAME"),
    (["seeded", "--top", "1", "--seeds", "5..6", "--tag", "x", "--config", "nosuch.yaml"],
     "error: --config 'nosuch.yaml' is not a file"),
    (["seeded", "--top", "1", "--seeds", "5..6", "--tag", "a b"], "error: --tag 'a b' must be letters"),
    (["seeded", "--ablate", "--per", "name", "--seeds", "5..6"], "error: --ablate takes the single best configuration"),
])
@pytest.mark.slow
def test_confirm_refuses_bad_input_in_one_line_and_writes_nothing(seeded_study, capsys, args, expected):
    folder, _ = seeded_study
    before = sorted(p.name for p in (folder / "studies").iterdir())
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", *args, "--root", str(folder / "studies")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and last_line(err).startswith(expected) and "Traceback" not in err
    assert sorted(p.name for p in (folder / "studies").iterdir()) == before


@pytest.mark.slow
def test_confirm_elsewhere_reruns_the_same_winners_with_the_other_setting_and_compare_pairs_them(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1"])
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--workers", "1",
          "--tag", "short", "--base.overrides.trainer.max_epochs=1"])
    capsys.readouterr()
    plain, short = load(folder, "seeded.confirm"), load(folder, "seeded.confirm.short")
    as_key = lambda t: (json.dumps(t.params, sort_keys=True), t.user_attrs["seed"])  # noqa: E731
    assert {as_key(t) for t in short.trials} == {as_key(t) for t in plain.trials}  # the same winners and seeds
    for trial in short.trials:  # ... in the other setting: one epoch instead of two
        assert yaml.safe_load((Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text())["trainer"]["max_epochs"] == 1
        assert trial.user_attrs["epochs"] == 1
    main(["study", "report", "seeded.confirm.short", "--root", root])
    report = (folder / "studies" / "seeded.confirm.short" / "report.md").read_text()
    assert "A confirmation of study `seeded`" in report and "Not confirmed" not in report
    assert "with `trainer.max_epochs=1` after the search's configs" in report
    with pytest.raises(SystemExit) as exit_info:  # the same tag in another setting would mix two settings
        main(["study", "confirm", "seeded", "--top", "1", "--seeds", "5..6", "--root", root, "--tag", "short",
              "--base.overrides.trainer.max_epochs=3"])
    assert exit_info.value.code == 2 and "give another --tag for another setting" in last_line(capsys.readouterr().err)
    assert len(load(folder, "seeded.confirm.short").trials) == 4

    main(["study", "compare", "seeded.confirm.short", "seeded.confirm", "--root", root])
    written = (folder / "studies" / "seeded.confirm.short" / "versus_seeded.confirm.md").read_text()
    assert written.strip() in capsys.readouterr().out
    test_acc = lambda study: {(json.dumps(t.params, sort_keys=True), t.user_attrs["seed"]): t.user_attrs["test"]["test/acc"]  # noqa: E731
                              for t in study.trials}
    ours, theirs = test_acc(short), test_acc(plain)
    configs = sorted({k for k, _ in theirs})
    best = max(configs, key=lambda c: theirs[(c, 5)] + theirs[(c, 6)])
    for config in configs:  # each row's Δ is the mean of its two per-seed differences to the other study's best
        delta = sum(ours[(config, s)] - theirs[(best, s)] for s in (5, 6)) / 2
        assert sum(f"| {delta:+.4f} |" in row for row in written.splitlines()) >= 1
    seed_level = written.split("## Over seeds and test images")[0]  # then the same pairs with the test images
    rows = [[cell.strip() for cell in row.split("|")[1:-1]] for row in seed_level.splitlines() if row.startswith("| ")]
    assert [r[1] for r in rows[2:]] == ["2", "2"]  # header, rule, then two configurations of two pairs each

    with pytest.raises(SystemExit) as exit_info:  # the search ran seeds 0-1, the confirmation 5-6: no pair
        main(["study", "compare", "seeded", "seeded.confirm", "--root", root])
    assert exit_info.value.code == 2
    assert "share no seed: nothing to pair" in last_line(capsys.readouterr().err)


@pytest.mark.slow
def test_ablate_runs_the_best_and_each_one_factor_neighbour_against_it(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    search = load(folder, "seeded")
    means = search_values(folder)
    best = json.loads(max((k for k in means if "batch_std" not in k), key=lambda k: sum(means[k])))  # not the reference
    norms = {t.params["model.norm"] for t in search.trials}
    rates = {t.params["model.optimizer.lr"] for t in search.trials}
    expected = [best, {**best, "model.norm": (norms - {best["model.norm"]}).pop()},
                {**best, "model.optimizer.lr": (rates - {best["model.optimizer.lr"]}).pop()}]
    main(["study", "confirm", "seeded", "--ablate", "--seeds", "8..9", "--root", root, "--workers", "1"])
    assert "3/3 configurations x 2 seeds (6 complete)" in capsys.readouterr().out
    ablation = load(folder, "seeded.confirm.ablation")
    ran = sorted({json.dumps(t.params, sort_keys=True) for t in ablation.trials})
    assert ran == sorted(json.dumps(e, sort_keys=True) for e in expected)
    assert ablation.user_attrs["design"]["reference"] == {"scale": "alpha", "model.optimizer.lr": best["model.optimizer.lr"]}
    main(["study", "report", "seeded.confirm.ablation", "--root", root])
    report = (folder / "studies" / "seeded.confirm.ablation" / "report.md").read_text()
    assert "its one-factor neighbours, each compared with the best" in report
    assert sum("| reference" in row for row in report.splitlines()) == 1  # the best is the one reference


@pytest.mark.slow
def test_confirm_with_seeds_auto_adds_seeds_look_by_look_at_the_spent_level(seeded_study, capsys):
    folder, _ = seeded_study
    root = str(folder / "studies")
    main(["study", "confirm", "seeded", "--top", "1", "--seeds", "auto", "--max_seeds", "4", "--batch", "2",
          "--root", root, "--workers", "1", "--tag", "seq"])
    out = capsys.readouterr().out
    study = load(folder, "seeded.confirm.seq")
    record = study.user_attrs["sequential"]
    assert record["max_seeds"] == 4 and record["spending"] == "obrien_fleming"
    looks = record["looks"]
    assert [look["seeds"] for look in looks] in ([2], [2, 4])  # it stops at the first look that decides all
    seeds_run = {t.user_attrs["seed"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert seeds_run == set(range(10, 10 + looks[-1]["seeds"]))
    assert looks[0]["level"] < 0.01 and f"look 1: 2 seeds, level {looks[0]['level']:.2g}" in out
    assert (len(looks) == 1) == all(v in ("better", "worse", "equivalent") for v in looks[0]["verdicts"].values())


def test_confirm_chooses_the_top_k_or_every_arm_at_its_best():

    from dyt_lab.study.engine.confirm import choose

    study = optuna.create_study(direction="maximize")
    space = SearchSpace({"model.norm": ["batchnorm", "dyt", "derf"], "model.optimizer.lr": [0.002, 0.008]})
    dists = space.distributions
    means = {("batchnorm", 0.002): 0.97, ("batchnorm", 0.008): 0.98, ("dyt", 0.002): 0.88, ("dyt", 0.008): 0.94,
             ("derf", 0.002): 0.90, ("derf", 0.008): 0.93}
    for (norm, lr), mean in means.items():
        for seed, shift in ((0, -0.01), (1, 0.01)):
            study.add_trial(optuna.trial.create_trial(params={"model.norm": norm, "model.optimizer.lr": lr},
                                                      distributions=dists, value=mean + shift, user_attrs={"seed": seed}))
    picked = lambda chosen: [(e["levels"]["model.norm"], e["levels"]["model.optimizer.lr"]) for e in chosen]  # noqa: E731
    assert picked(choose(study, space, 2, {"model.norm": "batchnorm"})) == [("dyt", 0.008), ("derf", 0.008), ("batchnorm", 0.008)]
    assert picked(choose(study, space, 1, None, per="model.norm")) == [("batchnorm", 0.008), ("dyt", 0.008), ("derf", 0.008)]
    with pytest.raises(ConfigError, match="--per 'norm' is not a factor of study .*; factors: model.norm, model.optimizer.lr"):
        choose(study, space, 1, None, per="norm")


def test_confirm_of_a_study_with_no_finished_trial_is_one_line(tmp_path, capsys):
    folder = tmp_path / "studies" / "empty"
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(write_study(tmp_path, "empty", seeds=[0, 1]).read_text())
    optuna.create_study(study_name="empty", storage=f"sqlite:///{folder / 'study.db'}")
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", "empty", "--top", "1", "--seeds", "5..6", "--root", str(tmp_path / "studies")])
    assert exit_info.value.code == 2
    assert last_line(capsys.readouterr().err) == "error: study 'empty' has no completed trial to confirm"


def test_alpha_spending_releases_little_early_and_all_of_alpha_by_the_last_look():
    from dyt_lab.study.engine.sequential import look_levels, spent

    levels = look_levels(batch=5, max_seeds=20)
    assert [n for n, _ in levels] == [5, 10, 15, 20]
    assert sum(level for _, level in levels) == pytest.approx(0.05)
    assert spent(1.0) == pytest.approx(0.05) and levels[0][1] < 1e-4 < levels[1][1] < levels[-1][1]
    assert [n for n, _ in look_levels(batch=3, max_seeds=7)] == [3, 6, 7]  # the last look takes what is left


@pytest.mark.parametrize("args, expected", [
    (["--seeds", "auto"], "error: --seeds auto needs --max_seeds N"),
    (["--seeds", "auto", "--max_seeds", "4", "--batch", "1"], "error: --batch 1: give 2 or more"),
    (["--seeds", "10..11", "--max_seeds", "4"], "error: --max_seeds and --batch go with --seeds auto"),
])
def test_seeds_auto_bad_input_is_one_line(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "confirm", "nosuch", "--root", str(tmp_path), *args])
    assert exit_info.value.code == 2 and last_line(capsys.readouterr().err).startswith(expected)
