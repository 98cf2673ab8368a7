"""Tests of dyt_lab/diagnostics/: hooks, statistics, callbacks and the probe."""
