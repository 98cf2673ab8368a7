"""Optuna studies over dyt-lab fit configs: search space, one fit process per trial, workers, report.

Entry point: ``dyt-lab study run | resume | report`` (``dyt_lab.study.cli``). Submodules import
Optuna and Lightning lazily where they can, so ``import dyt_lab.study`` itself is cheap.
"""
