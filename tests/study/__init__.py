"""Tests of dyt_lab/study/: definition, engine, trial and report (test_definition.py, test_engine_*.py, test_trial.py,
test_report*.py), and studies on PostgreSQL; shared fixtures in conftest.py, plain helpers in helpers.py."""
