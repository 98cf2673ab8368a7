"""``dyt-lab study report`` and ``compare`` (``study/report/``): the pruned study's report, and reports of
studies written straight into storage (no training): importances, intervals, plots, no warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
import yaml

from dyt_lab.cli import main
from dyt_lab.study.definition.space import SearchSpace
from tests.study.helpers import ALPHA_POINT, BN_POINT


@pytest.mark.slow
def test_report_writes_its_files_and_lists_every_trial(pruned_study, capsys):
    folder, _ = pruned_study
    main(["study", "report", "pruned", "--root", str(folder / "studies")])
    printed = capsys.readouterr().out
    out = folder / "studies" / "pruned"
    for name in ("report.md", "trials.csv", "history.png", "objective_vs_model.alpha_init.png",
                 "objective_vs_model.optimizer.lr.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert sorted(int(r.split("|")[1]) for r in rows) == list(range(4))
    assert "## Best trial" in report and "```yaml" in report and "## Parameter importances" in report
    assert "optuna-dashboard sqlite:///" in printed and "tensorboard --logdir" in printed
    assert "diverged at step" in report and "| pruned " in report
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 5  # header + 4 trials


def made_study(root: Path, name: str, search_space: dict, runs: list[tuple[dict, int, float, float]],
               reference: dict | None = None, metric: str = "val/acc") -> str:
    """A seeded study written straight into storage, no training: each run is (params, seed, value, last
    training loss). For report tests that need a study of a known shape in well under a second."""
    from optuna.trial import create_trial

    space, folder = SearchSpace(search_space), root / name
    folder.mkdir(parents=True)
    (folder / "study.yaml").write_text(yaml.safe_dump({"search_space": search_space}))
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("objective", {"metric": metric, "value": "best"})
    study.set_user_attr("design", {"seeds": sorted({s for _, s, _, _ in runs}), "reference": reference,
                                   "gap_from": None, "margin": 0.005})
    for params, seed, value, loss in runs:
        study.add_trial(create_trial(params=params, distributions={k: space.distributions[k] for k in params},
                                     value=value, user_attrs={"seed": seed, "last_epoch": {
                                         "val/acc": value, "train/loss_epoch": loss}}))
    return str(root)


def section(report: str, title: str) -> str:
    """The text of one ``## title`` section of a report."""
    return report.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


NORM_LR = {"model.norm": ["dyt", "derf"], "model.optimizer.lr": [0.003, 0.001], "model.alpha_init": [0.5, 1.0]}

# dyt beats derf by 4 points, the higher lr adds 1; seed 1 a point above seed 0; alpha_init held at 0.5
NORM_LR_RUNS = [({"model.norm": n, "model.optimizer.lr": lr, "model.alpha_init": 0.5}, s,
                 0.80 + 0.04 * (n == "dyt") + 0.01 * (lr == 0.003) + 0.01 * s + 0.003 * (n == "dyt" and s == 1), 0.3 + 0.1 * s)
                for n in ("dyt", "derf") for lr in (0.003, 0.001) for s in (0, 1, 2)]


def test_importances_rank_only_the_keys_that_varied_and_say_when_fewer_than_two_did(tmp_path, capsys):
    root = made_study(tmp_path, "held", NORM_LR, NORM_LR_RUNS)
    main(["study", "report", "held", "--root", root])
    table = section((tmp_path / "held" / "report.md").read_text(), "Parameter importances")
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| model.")]
    assert sorted(rows) == ["model.norm", "model.optimizer.lr"]  # alpha_init took one value: no share
    one = [run for run in NORM_LR_RUNS if run[0]["model.optimizer.lr"] == 0.003]
    main(["study", "report", "one", "--root", made_study(tmp_path, "one", NORM_LR, one)])
    table = section((tmp_path / "one" / "report.md").read_text(), "Parameter importances")
    assert "only `model.norm` varied" in table and "`model.alpha_init`, `model.optimizer.lr` held one value" in table
    assert "| model.norm" not in table and not (tmp_path / "one" / "importances.png").exists()
    capsys.readouterr()


def test_compare_shows_the_real_interval_and_names_a_single_configuration(tmp_path, capsys):
    """One arm loses about 0.47 on two seeds; the other is 8 images of 500 below the reference on both seeds, which
    float32 turns into two differences 6e-8 apart. That near-tie read as a zero-width interval (and 'worse'),
    made Bartlett refuse to pool, and the first arm's t-interval on one degree of freedom was cut to [-1.0000, ...]."""
    import numpy as np

    f32 = lambda k: float(np.float32(k / 500))  # noqa: E731  an accuracy as a run logs it
    space = {"model.norm": ["dyt", "derf"], "model.alpha_init": [0.5]}
    ours = [({"model.norm": "dyt", "model.alpha_init": 0.5}, 0, f32(422) - 0.4, 1.0),
            ({"model.norm": "dyt", "model.alpha_init": 0.5}, 1, f32(421) - 0.53, 1.0),
            ({"model.norm": "derf", "model.alpha_init": 0.5}, 0, f32(414), 1.0),
            ({"model.norm": "derf", "model.alpha_init": 0.5}, 1, f32(413), 1.0)]
    theirs = [({"model.norm": "dyt"}, s, f32(422 - s), 1.0) for s in (0, 1)]
    made_study(tmp_path, "ours", space, ours)
    root = made_study(tmp_path, "theirs", {"model.norm": ["dyt"]}, theirs)
    main(["study", "compare", "ours", "theirs", "--root", root])
    text = (tmp_path / "ours" / "versus_theirs.md").read_text()
    capsys.readouterr()
    assert "the only one" not in text and "best configuration of `theirs` (model.norm=dyt, mean" in text
    rows = {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines()
                              if line.startswith("| model.norm="))}
    low, high = (float(x) for x in rows["model.norm=dyt"][5].strip("[]").split(", "))
    assert rows["model.norm=dyt"][4] == "-0.4650" and -1 < low < high < 0  # pooled over both arms: 2 df
    low, high = (float(x) for x in rows["model.norm=derf"][5].strip("[]").split(", "))
    assert low < -0.016 < high and high - low > 0.1  # the tie takes the pooled spread: no zero width


def figure_texts(monkeypatch) -> dict[str, dict]:
    """Record, per file name, the texts of every figure the report's plots save: titles, axis labels, legends, ticks."""
    from dyt_lab.study.report import plots

    seen: dict[str, dict] = {}
    save = plots.save_figure

    def recording(ax_or_axes, path):
        axes = list(ax_or_axes.flat) if hasattr(ax_or_axes, "flat") else [ax_or_axes]
        seen[path.name] = {"legend": [t.get_text() for ax in axes if ax.get_legend() for t in ax.get_legend().get_texts()],
                           "labels": [ax.get_xlabel() for ax in axes] + [ax.get_ylabel() for ax in axes],
                           "yticks": [t.get_text() for t in axes[0].get_yticklabels()]}
        return save(ax_or_axes, path)

    monkeypatch.setattr(plots, "save_figure", recording)
    return seen


def test_a_seeded_reports_plots_are_per_configuration_and_its_files_are_the_files_there(tmp_path, monkeypatch, capsys):
    seen = figure_texts(monkeypatch)
    space = {"model.optimizer.lr": [0.003, 0.001], "model.alpha_init": [0.5, 1.0]}
    runs = [({"model.optimizer.lr": lr, "model.alpha_init": a}, s, 0.8 + 0.03 * (lr == 0.003) - 0.02 * (a == 1.0)
             + 0.004 * s + 0.001 * (s == 1 and a == 0.5), 0.2) for lr in (0.003, 0.001) for a in (0.5, 1.0) for s in range(3)]
    main(["study", "report", "plain", "--root", made_study(tmp_path, "plain", space, runs)])
    capsys.readouterr()
    folder = tmp_path / "plain"
    report = (folder / "report.md").read_text()
    listed = [line[3:-1] for line in section(report, "Files").splitlines() if line.startswith("- `")]
    assert listed and all((folder / name).is_file() for name in listed)
    assert "placement" not in section(report, "Files")  # no norm or placement key: no such plot, and no line of it
    assert not list(folder.glob("objective_vs_*.png"))  # Optuna's slices plot one seed run per point
    assert len(seen["configurations.png"]["yticks"]) == 4 and "95% t-interval over seeds" in seen["configurations.png"]["labels"][0]
    assert "`configurations.png`" in section(report, "Configurations (mean over seeds)")
    assert seen["importances.png"]["legend"] == ["val/acc (best)"]  # the metric, not "Objective Value"
    assert seen["main_effects.png"]["legend"] == ["mean, 95% t-interval over seeds"]


def test_the_report_of_a_factorial_with_a_reference_prints_no_warning(tmp_path, capsys):
    """What a new user saw: pandas' reindexing warning twice per report, and matplotlib's tight-layout one for the
    placement x variant heatmap of norm specs (long labels). A whole report, warnings as errors."""

    from dyt_lab.study.definition.space import choice_label

    space = {"model.norm": [BN_POINT, ALPHA_POINT], "model.optimizer.lr": [0.003, 0.001]}
    runs = [({"model.norm": choice_label(norm), "model.optimizer.lr": lr}, s,
             0.9 + 0.05 * (norm is BN_POINT) + 0.01 * (lr == 0.003) + 0.003 * s + 0.002 * (s == 1 and norm is ALPHA_POINT), 0.1)
            for norm in (BN_POINT, ALPHA_POINT) for lr in (0.003, 0.001) for s in range(3)]
    root = made_study(tmp_path, "fact", space, runs, reference={"scale": "batch_std"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        main(["study", "report", "fact", "--root", root])
    report = (tmp_path / "fact" / "report.md").read_text()
    capsys.readouterr()
    assert "## Factor effects" in report and "| alpha - batch_std |" in report
    assert (tmp_path / "fact" / "placement_x_variant.png").is_file()
