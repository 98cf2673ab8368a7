"""Imported last by a worker's fork server: make every trial it forks start as a second trial would.

A trial forked from a fork server that has only imported its libraries still pays, in every trial,
what a process pays on its first parse of a config: jsonargparse resolves each class of the config
(its signature, its docstring, its source) and imports what it names. Here the fork server parses the
study's base config once, as each trial parses it (``build.parse_once``: nothing is built, no torch
operation runs), and then freezes its heap (``gc.freeze``), so that a trial's garbage collections do
not walk, and copy, every object it inherited. What a trial runs is unchanged: it parses its whole
config itself, as ``dyt-lab fit`` does, and only finds these caches warm.

The fit arguments come in the environment variable ``WARM_ARGS_ENV`` (JSON): Python's fork server runs
nothing but the imports it is given, and takes its worker's environment when it starts.
"""

from __future__ import annotations

import gc
import json
import os

WARM_ARGS_ENV = "DYT_LAB_WARM_FIT"

if WARM_ARGS_ENV in os.environ:  # set by launch.warm_up for its fork server alone; any other import does nothing
    from dyt_lab.study.engine.build import parse_once

    if fit_args := json.loads(os.environ[WARM_ARGS_ENV]):
        parse_once(fit_args)
    gc.collect()
    gc.freeze()
