"""The report's sections and plots built from seed tables (``factor_sections.py``, ``comparison.py``,
``plots.py``): what each shows and in which order, factors of three or four levels, one configuration, and no
warnings on the way."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.study.synthetic import depth_table


def test_the_reports_effects_show_every_coefficient_of_a_term_with_a_factor_of_three_levels():
    """A 3-level factor's main effect is its three level effects, and its interaction with a 2-level factor
    (real here, so Holm keeps it) all six coefficients, not one with the whole term's p beside it."""
    from dyt_lab.study.report.factor_sections import effects_section

    rng = np.random.default_rng(4)
    table = pd.DataFrame([{"center": c, "width": w, "seed": s} for c in ["none", "batch"]
                          for w in ["a", "b", "c"] for s in range(3)])
    table["value"] = (table["width"].map({"a": 0.0, "b": 0.3, "c": 0.6})
                      + np.where((table["center"] == "batch") & (table["width"] == "c"), 0.2, 0.0)
                      + rng.normal(0, 0.01, len(table)))
    lines = "\n".join(effects_section(table, ["center", "width"])).split("Type-II ANOVA")[0]  # the effects table
    rows = [line for line in lines.splitlines() if line.startswith("| ") and "term" not in line and "---" not in line]
    terms = [row.split("|")[1].strip() for row in rows]
    assert terms.count("center") == 1  # two levels: the difference
    assert terms.count("width") == 3 and terms.count("center:width") == 6
    assert "p (Holm, term)" in lines


def test_a_numeric_factor_with_four_levels_gets_a_response_plot(tmp_path):
    from dyt_lab.study.report.factor_sections import response_factor
    from dyt_lab.study.report.plots import response_plot

    rows = [{"name": "dyt", "alpha_init": a, "lr": lr, "seed": s, "value": 0.9 - abs(np.log10(a)) / 10 + s / 1000,
             "loss": 0.1 + abs(np.log10(a))} for a in (0.1, 0.5, 1.0, 5.0) for lr in (0.002, 0.008) for s in range(3)]
    rows += [{"name": "batchnorm", "alpha_init": "-", "lr": lr, "seed": s, "value": 0.98 + s / 1000, "loss": 0.01}
             for lr in (0.002, 0.008) for s in range(3)]
    table = pd.DataFrame(rows)
    assert response_factor(table, ["name", "alpha_init", "lr"]) == "alpha_init"
    assert response_factor(table[table["alpha_init"].isin(["-", 0.1, 0.5])], ["name", "alpha_init", "lr"]) is None
    path = response_plot(table, ["name", "alpha_init", "lr"], "alpha_init", {"name": "batchnorm"}, tmp_path,
                         "val/acc", "loss")
    assert path == tmp_path / "alpha_init_response.png" and path.stat().st_size > 10_000


def test_the_report_of_a_study_with_one_configuration_summarizes_it(tmp_path):
    import optuna
    from optuna.distributions import CategoricalDistribution

    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.report.comparison import replicated_sections

    study = optuna.create_study(direction="maximize")
    for seed, value in enumerate((0.97, 0.98, 0.975)):
        study.add_trial(optuna.trial.create_trial(params={"model.norm": "batchnorm"}, value=value, user_attrs={"seed": seed},
                                                  distributions={"model.norm": CategoricalDistribution(["batchnorm"])}))
    space = SearchSpace({"model.norm": ["batchnorm"]})
    sections, _ = replicated_sections(study, space, {"seeds": [0, 1, 2]}, tmp_path, "val/acc", margin=0.005)
    table = next(s for s in sections if s.startswith("| configuration"))
    assert "| model.norm=batchnorm |" in table and "0.9750 ± 0.0050" in table  # named by what it is


def test_a_list_of_norms_crossed_with_presets_is_one_factor_and_its_interaction_is_tested():
    """BatchNorm sets no alpha0, so a norm list's name and alpha_init are never crossed: the report makes them
    one factor, and norm x preset (does the gap change with depth?) comes out of the saturated model."""
    from dyt_lab.study.report.factor_sections import crossed, effects_section

    rng = np.random.default_rng(5)
    arms = [("batchnorm", "-"), ("dyt", "0.5"), ("dyt", "1.0")]
    table = pd.DataFrame([{"name": n, "alpha_init": a, "preset": p, "seed": s} for n, a in arms
                          for p in ["tiny", "deep"] for s in range(3)])
    gap = {("batchnorm", "tiny"): 0.0, ("batchnorm", "deep"): 0.0, ("dyt", "tiny"): -0.03, ("dyt", "deep"): -0.09}
    table["value"] = [0.95 + gap[(n, p)] + rng.normal(0, 0.002) for n, p in zip(table["name"], table["preset"])]
    merged, factors = crossed(table, ["name", "alpha_init", "preset"])
    assert factors == ["name, alpha_init", "preset"]
    assert sorted(merged["name, alpha_init"].unique()) == ["batchnorm, -", "dyt, 0.5", "dyt, 1.0"]
    anova = "\n".join(effects_section(merged, factors)).split("Type-II ANOVA")[1]
    interaction = next(line for line in anova.splitlines() if line.startswith("| name, alpha_init:preset"))
    assert float(interaction.split("|")[3]) > 100  # F of a 6-point change of the gap against 0.2-point noise
    assert crossed(table, ["preset", "seed"])[1] == ["preset", "seed"]  # crossed already: unchanged


def test_the_report_shows_the_gap_across_depth_in_the_study_files_order():
    from dyt_lab.study.report.factor_sections import crossed, gap_change_section
    from dyt_lab.study.report.seed_runs import TEST

    table = depth_table(change=0.03).assign(**{TEST: np.nan})
    table["name"], table["alpha_init"] = zip(*table["name, alpha_init"].str.split(", "))  # as crossed() leaves it
    lines = gap_change_section(table, ["name, alpha_init", "preset"], {"name": "batchnorm"},
                               {"preset": ["tiny", "deep"]}, "val/acc")
    rows = [line for line in "\n".join(lines).splitlines() if line.startswith("| dyt")]
    assert len(rows) == 2 and not any(line.startswith("test/acc") for line in lines)  # no test split: no table
    cells = [c.strip() for c in rows[0].split("|")]
    assert cells[4] == "tiny -> deep" and cells[7].startswith("-0.03") and float(cells[8]) < 0.01
    assert gap_change_section(table, ["name, alpha_init", "preset"], {"center": "batch"}, {}, "val/acc") == []
    # BatchNorm's deep cell not yet run: crossed() merges the norm with the preset, and the reference is
    # "batchnorm, tiny"; a "gap" to it at depth would be a depth effect, so the section says why it is absent
    two_rates = pd.concat([table.assign(lr=0.002), table.assign(lr=0.008)])
    running = two_rates[(two_rates["alpha_init"] != "1.0") & ~((two_rates["name"] == "batchnorm")
                                                              & (two_rates["preset"] == "deep"))]
    merged, factors = crossed(running, ["name", "preset", "lr"])
    assert factors == ["name, preset", "lr"]
    assert gap_change_section(merged, factors, {"name": "batchnorm"}, {}, "val/acc")[1].startswith("Not shown")
    # one seed run of a second seed: a full factorial with no residual degrees of freedom left
    sparse = table[(table["seed"] == 0) | ((table["seed"] == 1) & (table["name"] == "batchnorm")
                                           & (table["preset"] == "tiny"))]
    lines = gap_change_section(sparse, ["name, alpha_init", "preset"], {"name": "batchnorm"}, {}, "val/acc")
    assert lines[-1].startswith("No gap changes for val/acc: cell means:")


def test_the_effects_table_is_built_without_a_pandas_warning():
    """Masks of the whole effects table applied to a subset of it made pandas warn twice in every report."""
    import warnings

    from dyt_lab.study.report.factor_sections import effects_section

    table = depth_table(change=0.03)  # an interaction (the planted change) that survives Holm
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lines = effects_section(table, ["name, alpha_init", "preset"])
    assert any("name, alpha_init:preset" in line for line in lines)


def test_every_difference_the_report_shows_is_arm_minus_reference_and_its_header_says_so():
    """DyT at alpha0 0.5 is about 4 points below BatchNorm in the tiny net and 7 in the deep one: the same negative
    numbers in the configurations table and the gap table, and a negative contrast in the effects."""
    from dyt_lab.study.report.comparison import configurations_section
    from dyt_lab.study.report.factor_sections import effects_section, gap_change_section
    from dyt_lab.study.report.seed_runs import EXTRA, TEST

    table = depth_table(change=0.03).assign(**{TEST: np.nan, **{c: np.nan for c in EXTRA.values()}})
    table["name"], table["alpha_init"] = zip(*table["name, alpha_init"].str.split(", "))
    factors, reference = ["name, alpha_init", "preset"], {"name": "batchnorm"}
    configs = configurations_section(table, factors, {"name, alpha_init": "batchnorm, -"}, "maximize", 0.005, "val/acc")
    cells = [[c.strip() for c in line.split("|")] for line in configs.splitlines()]
    delta = {(r[1], r[2]): r[cells[0].index("Δ row − reference [95% CI]")].split()[0] for r in cells[2:]}
    assert delta[("dyt, 0.5", "tiny")].startswith("-0.03") and delta[("dyt, 0.5", "deep")].startswith("-0.07")
    lines = gap_change_section(table, factors, reference, {"preset": ["tiny", "deep"]}, "val/acc")
    assert lines[1].startswith("Δ = arm − reference in val/acc")
    gap = [c.strip() for c in next(line for line in lines[-1].splitlines() if line.startswith("| dyt, 0.5")).split("|")]
    assert gap[5].split()[0] == delta[("dyt, 0.5", "tiny")] and gap[6].split()[0] == delta[("dyt, 0.5", "deep")]
    assert gap[7].startswith("-0.03")  # the planted change: 3 points more lost in the deep net
    two = table[table["alpha_init"] != "1.0"].assign(norm=lambda t: t["name"])
    effects = "\n".join(effects_section(two, ["norm", "preset"], {"norm": "batchnorm"}))
    assert "| dyt - batchnorm" in effects and "batchnorm - dyt" not in effects


def test_the_configurations_table_shows_a_differences_interval_uncut():
    """Two seeds, one of them a collapse: the t-interval on one degree of freedom runs past -1 and +1, and the table
    says so rather than printing [-1.0000, +1.0000], which reads like a measurement at the metric's bounds."""
    from dyt_lab.study.report.comparison import configurations_section
    from dyt_lab.study.report.seed_runs import EXTRA, TEST

    table = pd.DataFrame({"norm": ["bn", "bn", "dyt", "dyt"], "seed": [0, 1, 0, 1], "value": [0.9, 0.95, 0.1, 0.9],
                          TEST: np.nan, **{c: np.nan for c in EXTRA.values()}})
    text = configurations_section(table, ["norm"], {"norm": "bn"}, "maximize", 0.005, "val/acc")
    row = next(line for line in text.splitlines() if line.startswith("| dyt"))
    low, high = (float(x) for x in row.split("-0.4250 [")[1].split("]")[0].split(", "))
    assert low < -1 and high > 1  # mean -0.425, sd of the differences 0.53, t(1) = 12.7


def test_the_response_plots_loss_intervals_stay_at_or_above_zero(tmp_path, monkeypatch):
    """A loss near 0 with one wild seed: its t-interval runs below 0, which a loss cannot; the plot clips it at 0
    and its title says so."""
    from dyt_lab.study.report import plots

    drawn = {}

    def keep(axes, path):  # the axes as drawn, before saving
        drawn["axes"] = axes
        return path

    monkeypatch.setattr(plots, "save_figure", keep)
    rows = [{"name": "dyt", "alpha_init": a, "seed": s, "value": 0.9 + s / 1000, "loss": [0.01, 0.02, 0.3][s] * a}
            for a in (0.1, 0.5, 1.0, 5.0) for s in range(3)]
    rows += [{"name": "batchnorm", "alpha_init": "-", "seed": s, "value": 0.95, "loss": [0.01, 0.02, 0.3][s]} for s in range(3)]
    plots.response_plot(pd.DataFrame(rows), ["name", "alpha_init"], "alpha_init", {"name": "batchnorm"}, tmp_path,
                        "val/acc", "loss")
    loss = drawn["axes"][0, 1]
    lows = [segment[:, 1].min() for bars in loss.collections for segment in bars.get_segments()]
    assert lows and min(lows) >= 0.0
    assert all(patch.get_y() >= 0.0 for patch in loss.patches)  # the reference's band too
    assert "clipped at 0" in loss.get_title(loc="left")
    assert "clipped to [0, 1]" in drawn["axes"][0, 0].get_title(loc="left")


def test_a_single_configuration_is_named_by_its_levels_and_gets_no_factor_effects(tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution

    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.definition.study_file import Distribution
    from dyt_lab.study.report.comparison import replicated_sections

    study = optuna.create_study(direction="maximize")
    for seed, value in enumerate((0.97, 0.98, 0.975)):
        study.add_trial(optuna.trial.create_trial(params={"model.optimizer.lr": 0.0034567891}, value=value,
                                                  user_attrs={"seed": seed},
                                                  distributions={"model.optimizer.lr": FloatDistribution(0.001, 0.01)}))
    space = SearchSpace({"model.optimizer.lr": Distribution(type="float", low=0.001, high=0.01)})
    sections, _ = replicated_sections(study, space, {"seeds": [0, 1, 2]}, tmp_path, "val/acc", margin=0.005)
    assert "| model.optimizer.lr=0.003457 |" in "\n".join(sections)  # what it is, to 4 digits
    assert "## Factor effects" not in sections  # one configuration has no factor to estimate
