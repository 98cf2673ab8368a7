"""``dyt-lab study holdout``: a pre-registered claims file run on fresh seeds, its report, and its refusals.

One tiny family study (two norms, seeds 0-1, ResNet-tiny on digits, a few batches) and one holdout of it
(seeds 5-6) run once per module as a user runs them; every refusal is checked to write nothing.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import optuna
import pytest
import yaml

from dyt_lab.cli import main
from dyt_lab.predictions import ARCHIVE, PREDICTIONS_FILE
from dyt_lab.study.attributes import HOLDOUT
from dyt_lab.study.definition.claims import CLAIMS_FILE
from tests.helpers import last_line, run_cli, shared_folder
from tests.study.helpers import BASE, TINY

CLAIMS = {"name": "ho", "family": ["fam"], "selection": "both arms at the family's settings",
          "base": {"configs": [BASE], "overrides": TINY},
          # keys that only go together (alpha_rule data needs a DyT norm): each arm is checked whole, not key by key
          "arms": {"bn": {"overrides": {"model.norm": "batchnorm", "model.alpha_rule": "constant"}},
                   "dyt": {"overrides": {"model.norm": "dyt", "model.alpha_rule": "data"}}},
          "claims": [{"name": "dyt_matches_bn", "arm": "dyt", "against": "bn", "test": "equivalent"},
                     {"name": "bn_better", "arm": "bn", "against": "dyt", "test": "better"}],
          "seeds": [5, 6], "margin": 0.005, "root": "studies"}


# The family: two arms tuned alike (the same random draws of the shared learning rate), DyT with its own alpha0.
FAMILY = {"study_name": "fam", "root": "studies", "base": {"configs": [BASE], "overrides": TINY},
          "search_space": {"model.optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True}},
          "arms": {"bn": {"overrides": {"model.norm": "batchnorm"}},
                   "dyt": {"overrides": {"model.norm": "dyt"},
                           "search_space": {"model.alpha_init": {"type": "float", "low": 0.3, "high": 1.0}}}},
          "sampler": {"name": "random", "seed": 0}, "pruner": {"name": "none"}, "n_trials": 1, "seeds": [0, 1]}


def write_claims(folder: Path, file: str = "claims.yaml", **changes) -> Path:
    path = folder / file
    path.write_text(yaml.safe_dump({**CLAIMS, **changes}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A family study tuned arm by arm and one holdout of it, run to their end from a user's shell, once."""
    return shared_folder(tmp_path_factory, "holdout", run_family_and_holdout)


def run_family_and_holdout(folder: Path) -> None:
    (folder / "fam.yaml").write_text(yaml.safe_dump(FAMILY))
    result = run_cli(["study", "run", "--config", "fam.yaml"], cwd=folder, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(["study", "report", "fam"], cwd=folder, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(["study", "holdout", str(write_claims(folder))], cwd=folder, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    (folder / "holdout_stdout.txt").write_text(result.stdout)


def refusal(capsys, folder: Path, monkeypatch, *argv: str) -> str:
    monkeypatch.chdir(folder)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", *argv])
    assert exit_info.value.code == 2
    return last_line(capsys.readouterr().err)


@pytest.mark.slow
def test_arms_are_tuned_alike_and_reported_with_their_budgets(ran):
    lrs = {}
    for arm in ("bn", "dyt"):
        study = optuna.load_study(study_name=f"fam.{arm}", storage=f"sqlite:///{ran}/studies/fam.{arm}/study.db")
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert sorted(t.user_attrs["seed"] for t in complete) == [0, 1]
        lrs[arm] = {t.params["model.optimizer.lr"] for t in complete}
        assert ("model.alpha_init" in complete[0].params) == (arm == "dyt")
    assert lrs["bn"] == lrs["dyt"] and len(lrs["bn"]) == 1  # the same draw of the shared key for both arms
    report = (ran / "studies" / "fam" / "report.md").read_text()
    assert "Budgets are **equal**" in report
    budget = [line.split("|")[1:5] for line in report.splitlines() if line.startswith(("| bn ", "| dyt "))][:2]
    assert [[cell.strip() for cell in row] for row in budget] == [["bn", "1", "2", "0, 1"], ["dyt", "1", "2", "0, 1"]]
    assert "## Edges of the searched ranges" in report and "- dyt: " in report
    assert "| dyt - bn |" in report and "exploratory" in report


@pytest.mark.slow
def test_holdout_records_its_claims_and_reports_confirmatory_verdicts(ran):
    claims_path = ran / "claims.yaml"
    study = optuna.load_study(study_name="ho", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(ran / "studies" / "ho" / "journal.log"))))
    record = study.user_attrs[HOLDOUT]
    assert record["sha256"] == hashlib.sha256(claims_path.read_bytes()).hexdigest()
    assert (ran / "studies" / "ho" / CLAIMS_FILE).read_text() == claims_path.read_text()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted((t.params["model.norm"], t.user_attrs["seed"]) for t in complete) == \
        [("batchnorm", 5), ("batchnorm", 6), ("dyt", 5), ("dyt", 6)]
    assert all((ran / t.user_attrs["run_dir"] / PREDICTIONS_FILE).is_file() for t in complete)
    archived = {p.stem for p in (ran / "studies" / "ho" / ARCHIVE).glob("*.npz")}  # what docs/results can ship
    assert archived == {Path(t.user_attrs["run_dir"]).name for t in complete}

    report = (ran / "studies" / "ho" / "report.md").read_text()
    assert report in (ran / "holdout_stdout.txt").read_text()  # printed as written
    rows = [line for line in report.splitlines() if line.startswith("| dyt_matches_bn") or line.startswith("| bn_better")]
    assert len(rows) == 2 and all("(confirmatory)" in row for row in rows)
    assert "seed-only 95% CI" in report and "seeds × images 95% CI" in report and "McNemar" in report
    # The two claims are mirror images: the same |Δ|, opposite signs.
    deltas = [float(row.split("|")[4]) for row in rows]
    assert deltas[0] == pytest.approx(-deltas[1]) and deltas[0] != 0


@pytest.mark.slow
def test_holdout_refuses_a_second_look(ran, capsys, monkeypatch):
    before = sorted(p.name for p in (ran / "studies").iterdir())
    # the same claims again, under their own name: they ran already
    assert "has run these claims on seeds [5, 6] already" in refusal(capsys, ran, monkeypatch, "holdout", "claims.yaml")
    # the same claims under another name, on a seed the first holdout used
    line = refusal(capsys, ran, monkeypatch, "holdout", str(write_claims(ran, "again.yaml", name="ho2", seeds=[6, 7])))
    assert "these claims ran already as holdout 'ho' on seeds [6]" in line
    line = refusal(capsys, ran, monkeypatch, "holdout", str(write_claims(ran, "changed.yaml", margin=0.01)))
    assert "holdout 'ho' ran with another claims file" in line
    assert "seeds [0] were run by study 'fam'" in refusal(
        capsys, ran, monkeypatch, "holdout", str(write_claims(ran, "reused.yaml", name="ho3", seeds=[0, 7])))
    assert sorted(p.name for p in (ran / "studies").iterdir()) == before  # nothing written


@pytest.mark.slow
def test_holdout_report_needs_every_run_s_predictions(ran, capsys, monkeypatch):
    run_dir = next((ran / "studies" / "ho" / "trials").glob("*seed=6")).relative_to(ran)  # as the study records it
    copies = [ran / run_dir / PREDICTIONS_FILE, ran / "studies" / "ho" / ARCHIVE / f"{run_dir.name}.npz"]
    saved = [path.read_bytes() for path in copies]
    for path in copies:  # neither the run's own file nor the holdout's archived copy
        path.unlink()
    try:
        line = refusal(capsys, ran, monkeypatch, "report", "ho")
    finally:
        for path, data in zip(copies, saved):
            path.write_bytes(data)
    assert line.startswith(f"error: run '{run_dir}' has no {PREDICTIONS_FILE}")


@pytest.mark.slow
def test_a_shipped_holdout_reports_from_its_archived_predictions(ran, tmp_path, monkeypatch):
    """docs/results ships a holdout's journal and the predictions it archived (predictions/RUN.npz), not its
    run folders: the report from there is the report of the run."""
    shipped = tmp_path / "studies" / "ho"
    shipped.mkdir(parents=True)
    for name in ("journal.log", CLAIMS_FILE):
        shutil.copy(ran / "studies" / "ho" / name, shipped / name)
    shutil.copytree(ran / "studies" / "ho" / ARCHIVE, shipped / ARCHIVE)  # the holdout archived them
    monkeypatch.chdir(tmp_path)  # the recorded run folders (studies/ho/trials/...) are not here
    main(["study", "report", "ho"])
    claims = lambda path: [line for line in path.read_text().splitlines() if line.startswith("| ")]  # noqa: E731
    assert claims(shipped / "report.md") == claims(ran / "studies" / "ho" / "report.md")


BAD_CLAIMS = {
    "unknown_arm": ({"claims": [{"name": "x", "arm": "dytt", "against": "bn"}]},
                    "claim 'x' arm 'dytt' is not an arm; arms: bn, dyt"),
    "zero_margin": ({"margin": 0}, "margin 0.0 must be > 0"),
    "negative_margin": ({"margin": -0.01}, "must be a finite number >= 0"),
    "self_comparison": ({"claims": [{"name": "x", "arm": "bn", "against": "bn"}]}, "compares arm 'bn' with itself"),
    "bad_test": ({"claims": [{"name": "x", "arm": "dyt", "against": "bn", "test": "same"}]}, "same"),
    "no_selection": ({"selection": " "}, "selection is empty"),
    "missing_family": ({"family": ["famm"]}, "family study 'famm' has no folder"),
    "searched_arm": ({"arms": {"bn": {"overrides": {"model.norm": "batchnorm"}},
                               "dyt": {"overrides": {"model.norm": "dyt"},
                                       "search_space": {"model.alpha_init": [0.5, 1.0]}}}},
                     "arms.dyt.search_space is set"),
    "unset_key": ({"arms": {"bn": {"overrides": {"model.norm": "batchnorm"}},
                            "dyt": {"overrides": {"model.norm": "dyt", "model.alpha_init": 1.0}}}},
                  "arm(s) ['bn'] do not set 'model.alpha_init'"),
    "unknown_key": ({"name": "ho_key", "arms": {"bn": {"overrides": {"model.norm": "batchnorm", "model.optimizer.lrr": 0.1}},
                                                "dyt": {"overrides": {"model.norm": "dyt", "model.optimizer.lrr": 0.2}}},
                     "seeds": [8, 9]}, "'model.optimizer.lrr' is not a key of the base config (did you mean "
                                       "'model.optimizer.lr'?)"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_bad_claims_file_is_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch):
    (tmp_path / "studies" / "fam").mkdir(parents=True)
    (tmp_path / "studies" / "fam" / "study.yaml").write_text(yaml.safe_dump(
        {"study_name": "fam", "base": {"configs": [BASE]}, "search_space": {"model.norm": ["dyt"]}, "seeds": [0, 1]}))
    changes, expected = BAD_CLAIMS[case]
    line = refusal(capsys, tmp_path, monkeypatch, "holdout", str(write_claims(tmp_path, **changes)))
    assert line.startswith("error: ") and expected in line and "\n" not in line
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == ["fam"]


@pytest.mark.slow
def test_compare_adds_the_test_set_s_sampling_to_its_intervals(ran, capsys, monkeypatch):
    monkeypatch.chdir(ran)
    main(["study", "compare", "fam.dyt", "fam.bn"])
    written = (ran / "studies" / "fam.dyt" / "versus_fam.bn.md").read_text()
    seed_only, crossed = written.split("## Over seeds and test images")
    row = next(line for line in crossed.splitlines() if line.startswith("| model.optimizer.lr="))
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    delta_points = float(cells[1])
    seed_row = next(line for line in seed_only.splitlines() if line.startswith("| model.optimizer.lr="))
    assert delta_points == pytest.approx(100 * float(seed_row.split("|")[5]), abs=0.01)  # the same Δ, in points
    low, high = (float(x) for x in cells[3].strip("[]").split(","))
    assert low <= delta_points <= high and (high - low) > 0  # images add width even where two seeds agree
    assert "paired by seed ([0, 1]) and by test image (180 images)" in crossed


def test_a_best_at_the_edge_of_its_range_is_named_with_a_wider_range():
    from dyt_lab.study.definition.space import SearchSpace
    from dyt_lab.study.definition.study_file import Distribution
    from dyt_lab.study.report.arms import edges

    space = SearchSpace({"lr": Distribution(type="float", low=0.001, high=0.1, log=True),
                         "wd": Distribution(type="float", low=0.0, high=0.3),
                         "rate": [0.001, 0.002, 0.004, 0.008]})
    found = edges({"lr": 0.09, "wd": 0.15, "rate": 0.008}, space)
    assert found == ["lr=0.09 at the high edge of [0.001, 0.1]: try high=0.4",
                     "rate=0.008 is the highest of its choices"]
    assert edges({"lr": 0.01, "wd": 0.01, "rate": 0.002}, space) == ["wd=0.01 at the low edge of [0, 0.3]: the range's "
                                                                     "natural end"]


def test_the_family_may_live_in_another_folder_and_its_seeds_still_count(tmp_path, capsys, monkeypatch):
    shipped = tmp_path / "docs" / "results" / "fam.bn"
    shipped.mkdir(parents=True)
    (shipped / "study.yaml").write_text(yaml.safe_dump(
        {"study_name": "fam.bn", "base": {"configs": [BASE]}, "search_space": {"model.norm": ["dyt"]}, "seeds": [0, 5]}))
    (tmp_path / "studies").mkdir()
    claims = str(write_claims(tmp_path))
    assert "family study 'fam' has no folder" in refusal(capsys, tmp_path, monkeypatch, "holdout", claims)
    line = refusal(capsys, tmp_path, monkeypatch, "holdout", claims, "--family_root", str(tmp_path / "docs" / "results"))
    assert "seeds [5] were run by study 'fam.bn' (seeds [0, 5])" in line
    assert "is not a folder" in refusal(capsys, tmp_path, monkeypatch, "holdout", claims, "--family_root", "nowhere")
    assert sorted(p.name for p in (tmp_path / "studies").iterdir()) == []
