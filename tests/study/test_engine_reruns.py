"""The same command again (``engine/prepare.py``, ``engine/confirm.py``): a rerun retries the failed runs, a
confirmation resumes or is extended, and a study file that changes a study's search space or objective is
refused in one line. Trial processes are stand-ins that have already ended (the ``fake_runs`` fixture)."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from dyt_lab.study.definition.space import SearchSpace
from dyt_lab.study.definition.storage import open_storage
from dyt_lab.study.definition.study_file import SPEC_FILE, load_spec
from tests.study.helpers import FAILED, one_error_line, run_failed, run_ok, trials_of, write_journal_study


def test_a_rerun_retries_each_failed_run_and_fails_in_one_line_until_every_run_has_completed(
        tmp_path, capsys, fake_runs):
    """A seeded grid whose runs failed (an objective metric misspelt: nothing was measured, so it may be
    fixed) runs again with the same command: every failed (configuration, seed) is queued again once, on
    its own grid point and seed, until each has a completed run; until then the command ends in one line."""
    path = write_journal_study(tmp_path, "rerun", sampler={"name": "grid"}, seeds=[0, 1], n_trials=2,
                       objective={"metric": "val/accuracy"})
    run = ["study", "run", "--config", str(path)]
    fake_runs.trials = [FAILED]
    line, out = run_failed(capsys, run)
    assert "study rerun: 2/2 configurations x 2 seeds (4 fail)" in out
    assert line.startswith("error: study rerun: 4 runs have no completed trial: trial 0 (model.norm=") and \
        line.endswith("seed=0) failed: exit code 1: no output (and 3 more); fix the cause, then run the same "
                      "command again: it retries them")

    fake_runs.trials = [{}, FAILED, {}]  # the metric fixed; one of the four fails again
    line, out = run_failed(capsys, [*run, "--objective.metric", "val/acc"])
    assert "study rerun: 2/2 configurations x 2 seeds (3 complete, 1 fail), 4 failed runs retried" in out
    assert line.startswith("error: study rerun: 1 run has no completed trial: trial 5 (")
    fake_runs.started = 0
    fake_runs.trials = [{}]
    out = run_ok(capsys, [*run, "--objective.metric", "val/acc"])
    assert "study rerun: retrying 1 failed run with no completed trial (failed: trial 5)" in out
    assert "study rerun: 2/2 configurations x 2 seeds (4 complete), 1 failed run retried" in out
    assert fake_runs.started == 1
    out = run_ok(capsys, [*run, "--objective.metric", "val/acc"])  # done: nothing runs, nothing is retried
    assert "2/2 configurations x 2 seeds (4 complete)\n" in out and fake_runs.started == 1

    trials = trials_of(str(tmp_path / "studies" / "rerun" / "journal.log"), "rerun")
    assert len(trials) == 9  # 4 failed, 4 retries of which one failed, its retry
    done = [(t.params["model.norm"], t.user_attrs["seed"]) for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(done) == sorted((norm, seed) for norm in ("dyt", "derf") for seed in (0, 1))  # each once
    for retry in trials[4:]:
        parent = trials[retry.user_attrs["retry_of"]]
        assert parent.state == TrialState.FAIL and retry.params == parent.params
        assert retry.user_attrs["seed"] == parent.user_attrs["seed"]


def test_a_rerun_retries_only_as_many_configurations_as_n_trials_has_room_for_and_never_a_diverged_one(
        tmp_path, capsys, fake_runs):
    """n_trials counts configurations that completed (or diverged: a result, not a fault): a failed one is
    retried while there is room; a diverged run is neither retried nor an error."""
    path = write_journal_study(tmp_path, "room", sampler={"name": "grid"}, n_trials=3,
                       search_space={"model.norm": ["dyt", "derf", "dyt_shift"]})
    run = ["study", "run", "--config", str(path)]
    diverged = {"code": 3, "result": {"history": {}, "epochs": 1, "error": "diverged at step 1: loss=nan",
                                      "kind": "diverged"}}
    fake_runs.trials = [FAILED, diverged, {}]
    line, out = run_failed(capsys, run)
    assert "study room: 3/3 trials (1 complete, 1 fail, 1 diverged)" in out
    assert line.startswith("error: study room: 1 run has no completed trial: trial 0 (model.norm=")
    line, _ = run_failed(capsys, [*run, "--n_trials", "2"])  # room for 2: the diverged and the complete one
    assert line.endswith("failed: exit code 1: no output; fix the cause, then run the same command again with "
                         "--n_trials above 2 to retry it (configurations that completed fill n_trials)")
    fake_runs.trials = [{}]
    out = run_ok(capsys, run)
    assert "study room: 3/3 trials (2 complete, 1 diverged), 1 failed run retried" in out
    trials = trials_of(str(tmp_path / "studies" / "room" / "journal.log"), "room")
    assert [t.user_attrs.get("retry_of") for t in trials] == [None, None, None, 0]
    assert trials[3].params == trials[0].params and trials[3].state == TrialState.COMPLETE


def searched_study(tmp_path: Path) -> str:
    """A finished seeded search (3 norms x seeds 0, 1; dyt best, then derf), as `study run` leaves it; its root."""
    spec = load_spec(["--config", str(write_journal_study(tmp_path, "search", seeds=[0, 1],
                                                  search_space={"model.norm": ["dyt", "derf", "dyt_shift"]}))])
    spec.folder.mkdir(parents=True)
    (spec.folder / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict()))
    study = optuna.create_study(study_name="search", storage=open_storage(str(spec.folder / "journal.log")),
                                direction="maximize")
    dists = SearchSpace(spec.search_space).distributions
    for norm, value in (("dyt", 0.9), ("derf", 0.8), ("dyt_shift", 0.7)):
        for seed in (0, 1):
            study.add_trial(optuna.trial.create_trial(params={"model.norm": norm}, distributions=dists, value=value,
                                                      user_attrs={"seed": seed}))
    return spec.root


def test_confirm_resumes_the_same_command_refuses_another_choice_and_extend_adds_it(tmp_path, capsys, fake_runs):
    root = searched_study(tmp_path)
    confirm = ["study", "confirm", "search", "--root", root]
    out = run_ok(capsys, [*confirm, "--top", "1", "--seeds", "10..11"])
    assert "study search.confirm: 1/1 configurations x 2 seeds (2 complete)" in out
    out = run_ok(capsys, [*confirm, "--top", "1", "--seeds", "10..11"])  # again: resumes, runs nothing
    assert "1/1 configurations x 2 seeds (2 complete)" in out and fake_runs.started == 2
    asked = "run it as it ran to resume it, or add --extend to add the new configurations and seeds to it"
    assert one_error_line(capsys, [*confirm, "--top", "2", "--seeds", "10..11"]) == (
        f"error: study 'search.confirm' ran with --top 1 --seeds 10..11; this command asks for --top 2 --seeds "
        f"10..11: {asked}")
    assert "asks for --top 1 --seeds 10..14 (the default):" in one_error_line(capsys, [*confirm, "--top", "1"])
    assert "asks for --top 1 --seeds 40..41:" in one_error_line(capsys, [*confirm, "--top", "1", "--seeds", "40..41"])
    assert "asks for --top 1 --per model.norm --seeds 10..11:" in one_error_line(
        capsys, [*confirm, "--top", "1", "--per", "model.norm", "--seeds", "10..11"])
    assert fake_runs.started == 2

    out = run_ok(capsys, [*confirm, "--top", "2", "--seeds", "10..12", "--extend"])
    assert "study search.confirm: extending it from --top 1 --seeds 10..11 with --top 2 --seeds 10..12: 1 more " \
           "configuration, 1 more seed" in out
    assert "study search.confirm: 2/2 configurations x 3 seeds (6 complete)" in out and fake_runs.started == 6
    confirmed = optuna.load_study(study_name="search.confirm",
                                  storage=open_storage(str(Path(root) / "search.confirm" / "journal.log")))
    assert sorted((t.params["model.norm"], t.user_attrs["seed"]) for t in confirmed.trials) == \
        sorted((norm, seed) for norm in ("dyt", "derf") for seed in (10, 11, 12))
    record = confirmed.user_attrs["confirms"]
    assert record["top"] == 2 and [c["params"] for c in record["configurations"]] == [{"model.norm": "dyt"},
                                                                                      {"model.norm": "derf"}]
    assert record["extended_from"] == [{"top": 1, "per": None, "ablate": False, "seeds": [10, 11]}]
    assert confirmed.user_attrs["design"]["seeds"] == [10, 11, 12]
    run_ok(capsys, [*confirm, "--top", "2", "--seeds", "10..12"])  # the extended command resumes it
    assert fake_runs.started == 6
    assert "ran with --top 2 --seeds 10..12; this command asks for --top 1 --seeds 10..11:" in one_error_line(
        capsys, [*confirm, "--top", "1", "--seeds", "10..11"])


def test_a_changed_search_space_is_one_line_before_any_trial_and_the_study_keeps_its_trials(tmp_path, capsys):
    """Optuna refuses a categorical whose choices differ from those a study's trials recorded (and a key whose
    kind or log flag changed): a study file that adds a norm to a study that ran would fail every new trial.
    It is refused in one line instead; so are a range, a key added or dropped, and another objective, which
    Optuna would take, but which would mix two designs in one study (a retried point would not be its own)."""
    alpha = {"type": "float", "low": 0.1, "high": 1.0}
    path = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha})
    spec = load_spec(["--config", str(path)])
    space = SearchSpace(spec.search_space)
    url = str(spec.folder / "journal.log")
    spec.folder.mkdir(parents=True)
    study = optuna.create_study(study_name="grown", storage=open_storage(url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={"model.norm": "dyt", "model.alpha_init": 0.5}, value=0.9,
                                              distributions=dict(space.distributions)))
    design = {"seeds": None, "marker": "the design it ran with"}
    study.set_user_attr("design", design)
    study.set_user_attr("objective", {"metric": "val/acc", "value": "best"})
    before = (spec.folder / "journal.log").read_bytes()

    grown = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf", "dyt_shift"], "model.alpha_init": alpha})
    line = one_error_line(capsys, ["study", "run", "--config", str(grown)])
    assert line == ("error: study 'grown' exists with other choices for model.norm: this study file adds dyt_shift; "
                    "a study cannot change that: give the new design its own --study_name, or keep what it was "
                    "started with (dyt, derf)")
    shrunk = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt"]})
    assert "this study file drops derf;" in one_error_line(capsys, ["study", "run", "--config", str(shrunk)])
    reordered = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["derf", "dyt"]})
    assert "this study file reorders them;" in one_error_line(capsys, ["study", "run", "--config", str(reordered)])
    logged = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha | {"log": True}})
    line = one_error_line(capsys, ["study", "run", "--config", str(logged)])
    assert line.startswith("error: study 'grown' exists with another kind of model.alpha_init (") and \
        line.endswith("keep what it was started with (float 0.1 to 1.0)")
    widened = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"],
                                                           "model.alpha_init": alpha | {"high": 2.0}})
    assert one_error_line(capsys, ["study", "run", "--config", str(widened)]) == (
        "error: study 'grown' exists with another range for model.alpha_init: this study file has float 0.1 to 2.0; "
        "a study cannot change that: give the new design its own --study_name, or keep what it was started with "
        "(float 0.1 to 1.0)")
    added = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha,
                                                         "model.optimizer.lr": [0.001, 0.003]})
    assert "exists with other search_space keys: this study file adds model.optimizer.lr;" in \
        one_error_line(capsys, ["study", "run", "--config", str(added)])
    dropped = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"]})
    assert "exists with search_space key model.alpha_init: this study file drops it;" in \
        one_error_line(capsys, ["study", "run", "--config", str(dropped)])
    same = write_journal_study(tmp_path, "grown", search_space={"model.norm": ["dyt", "derf"], "model.alpha_init": alpha})
    assert one_error_line(capsys, ["study", "run", "--config", str(same), "--objective.metric", "val/loss"]) == (
        "error: study 'grown' was run with objective val/acc, maximize, best; this study file asks for val/loss, "
        "maximize, best: its finished trials were measured by the first; keep the objective it was run with, or "
        "give the new one its own --study_name")
    line = one_error_line(capsys, ["study", "run", "--config", str(same), "--objective.direction", "minimize",
                                   "--objective.value", "last"])
    assert "asks for val/acc, minimize, last: a study's direction cannot change;" in line
    after = optuna.load_study(study_name="grown", storage=open_storage(url))
    assert [t.state for t in after.trials] == [TrialState.COMPLETE] and after.user_attrs["design"] == design
    assert (spec.folder / "journal.log").read_bytes().startswith(before)  # only loads were appended
    assert not (spec.folder / SPEC_FILE).exists() and not (spec.folder / "trials").exists()
