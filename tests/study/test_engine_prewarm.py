"""A trial forked from a warmed fork server builds exactly what a trial forked from a cold one builds.

The fork server of ``isolation: warm`` parses the study's base config once before it forks any trial
(``engine/prewarm.py``), so each trial finds jsonargparse's caches warm. A trial still parses its whole
config itself; these tests pin that the caches change nothing it builds: the config it saves (what
config.yaml holds), its model's hyperparameters (what hparams.yaml and the checkpoint hold) and the
metrics of a one-batch fit, for searched values that swap a class (``class_path``) and a norm given as
a mapping, each trial after others that drew other values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import RESNET_DIGITS, ROOT

# Not tests.study.helpers' BASE: the process that forks the trials imports this module, and the study's helpers
# would import dyt_lab.cli (and Lightning) into it before the fork server's own warm-up.
BASE = str(RESNET_DIGITS)

ONE_BATCH = {"trainer.max_epochs": 1, "trainer.limit_train_batches": 1, "trainer.limit_val_batches": 1,
             "trainer.limit_test_batches": 1, "trainer.enable_model_summary": False}
SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}}
ADAMW = {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.002}}
GENERAL = {"name": "dyt_general", "squash": "tanh", "alpha": "scalar", "shift": "scalar", "center": "sample"}
# Each trial after others that drew other values: a class swapped back and forth, a mapping after a name.
CONFIGURATIONS = [{"model.norm": GENERAL, "model.optimizer": SGD, "model.alpha_init": 0.3},
                  {"model.norm": "dyt", "model.optimizer": ADAMW, "model.alpha_init": 1.7},
                  {"model.norm": GENERAL, "model.optimizer": ADAMW, "model.alpha_init": 0.5}]


def unique(values: list) -> list:
    """``values`` without repeats, in their order (a categorical lists each choice once)."""
    return [v for i, v in enumerate(values) if v not in values[:i]]


def trial_args(folder: Path) -> tuple[list[str], list[list[str]]]:
    """The base's fit arguments and each configuration's whole fit arguments, as a study's worker makes them."""
    from dyt_lab.study.definition.space import SearchSpace, choice_label, config_flag
    from dyt_lab.study.definition.study_file import TRIALS, load_spec
    from dyt_lab.study.engine.objective import base_args, study_args
    from dyt_lab.study.trial.protocol import SEED_KEY

    study = {"study_name": "warm", "root": str(folder / "studies"), "seeds": [3],
             "base": {"configs": [BASE], "overrides": ONE_BATCH},
             "search_space": {key: unique([c[key] for c in CONFIGURATIONS]) for key in CONFIGURATIONS[0]},
             "sampler": {"name": "random"}, "pruner": {"name": "none"}, "n_trials": 3}
    (folder / "warm.yaml").write_text(yaml.safe_dump(study))
    spec = load_spec(["--config", str(folder / "warm.yaml")])
    space = SearchSpace(spec.search_space)
    trials = []
    for number, values in enumerate(CONFIGURATIONS):
        configuration = space.configuration({key: choice_label(value) for key, value in values.items()})
        assert configuration.values == values  # the stored labels map back to the values written
        run_dir = spec.folder / TRIALS / f"trial_{number:04d}"
        trials.append([*base_args(spec), *configuration.flags(), config_flag(SEED_KEY, spec.seeds[0]),
                       *study_args(spec, run_dir)])
    return base_args(spec), trials


class Built(Exception):
    """What a trial's fit built and measured, raised as the fit ends (before any test pass)."""


def built_fit(args: list[str], out: str) -> None:
    """In a forked trial process: build ``fit ARGS`` as ``dyt-lab fit`` does, run one batch of it, and write
    its whole config, its model's hyperparameters and its metrics to ``out`` (JSON), whether it inherited
    a frozen heap (a fork server that ran prewarm) and how many threads its parent runs (Linux)."""
    import gc

    import torch

    from dyt_lab.runs import DytLabCLI

    torch.set_num_threads(1)

    class Record(DytLabCLI):
        def after_fit(self) -> None:
            hparams = {key: repr(value) for key, value in self.model.hparams.items()}
            metrics = {key: float(value) for key, value in self.trainer.callback_metrics.items()}
            raise Built(json.dumps({"config": self.parser.dump(self.config, skip_none=False), "hparams": hparams,
                                    "metrics": metrics, "frozen": gc.get_freeze_count() > 0,
                                    "parent_threads": parent_threads}))

    status = Path(f"/proc/{os.getppid()}/status").read_text()
    parent_threads = int(status.split("Threads:")[1].split()[0])

    try:
        Record(args=["fit", *args], save_config_kwargs={"overwrite": True})
    except Built as built:
        Path(out).write_text(str(built))


def forked_trials(mode: str, base: list[str], trials: list[list[str]], folder: str) -> None:
    """``warm``: each trial a child of the study's own warmed fork server (``launch.warm_up``), one after
    another; ``cold``: each a child of a process that only imported what a trial imports, as before."""
    if mode == "warm":
        from dyt_lab.study.engine.launch import warm_up

        context = warm_up(base)
        for number, args in enumerate(trials):
            child = context.Process(target=built_fit, args=(args, f"{folder}/warm_{number}.json"))
            child.start()
            child.join()
        return
    import importlib

    from dyt_lab.study.engine.launch import WARM_IMPORTS

    for module in WARM_IMPORTS:
        importlib.import_module(module)
    for number, args in enumerate(trials):
        pid = os.fork()
        if pid == 0:
            built_fit(args, f"{folder}/cold_{number}.json")
            os._exit(0)
        os.waitpid(pid, 0)


@pytest.mark.slow
def test_a_trial_of_a_warmed_fork_server_builds_what_a_cold_process_builds(tmp_path):
    base, trials = trial_args(tmp_path)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    for mode in ("warm", "cold"):
        code = f"from tests.study.test_engine_prewarm import forked_trials; forked_trials({mode!r}, {base!r}, {trials!r}, " \
               f"{str(tmp_path)!r})"
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    for number, configuration in enumerate(CONFIGURATIONS):
        warm, cold = (json.loads((tmp_path / f"{mode}_{number}.json").read_text()) for mode in ("warm", "cold"))
        assert (warm.pop("frozen"), cold.pop("frozen")) == (True, False)  # the fork server did parse first
        # ... and started no thread (an OpenMP pool, a torch op's) that a fork would leave broken in the trial
        assert warm.pop("parent_threads") == 1 and cold.pop("parent_threads") >= 1
        assert warm == cold
        config = yaml.safe_load(warm["config"])["fit"]
        assert config["model"]["init_args"]["optimizer"]["class_path"] == configuration["model.optimizer"]["class_path"]
        assert config["model"]["init_args"]["norm"] == configuration["model.norm"]
        assert config["model"]["init_args"]["alpha_init"] == configuration["model.alpha_init"]
        assert "val/loss" in warm["metrics"]
