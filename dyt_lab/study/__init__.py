"""Optuna studies over dyt-lab fit configs, by role, lowest first:

- ``definition/``: what a study is (study file, search space, design, storage, sampler and pruner);
- ``trial/``: what runs inside a trial's own fit process (pruning callback, protocol);
- ``report/``: ``dyt-lab study report`` (tables, statistics, plots); it never imports the engine;
- ``engine/``: how a study runs (check, runner, workers, objective, launch, liveness, seeds, confirm);
- ``optuna_internals.py``: every Optuna internal the others rely on, each with its reason.

Entry point: ``dyt-lab study run | resume | report | confirm`` (``dyt_lab.study.cli``). Submodules import
Optuna and Lightning lazily where they can, so ``import dyt_lab.study`` itself is cheap.
"""
