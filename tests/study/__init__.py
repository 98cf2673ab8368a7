"""Tests of dyt_lab/study/: test_definition.py, test_engine_*.py, test_trial.py, test_report*.py, test_holdout.py,
test_optuna_internals.py, test_postgres.py. Fixtures in conftest.py; plain helpers in helpers.py (the tiny
study file, stand-in trials, one-line refusals) and synthetic.py (seed tables from a known model)."""
