"""The names under which a study stores what it knows in Optuna's storage, in one place.

A study's records outlive the code that wrote them (a study resumes, a report reads one run weeks
earlier), so a name here is part of the storage format: rename one and old studies read as empty.
The engine writes them, the report and the trial's process read them.
"""

from __future__ import annotations

# Study attributes (study.user_attrs), written once when the study is created or confirmed.
OBJECTIVE = "objective"  # {"metric": "val/acc", "value": "best"}: what the study optimises
DESIGN = "design"  # {"seeds", "reference", "gap_from", "margin"}: how its report pairs and compares
SEARCH_SPACE = "search_space"  # the searched keys' Optuna distributions (as JSON), from creation
CONFIRMS = "confirms"  # of a confirmation: which study, configurations, seeds, setting
SEQUENTIAL = "sequential"  # of a sequential confirmation: max_seeds, batch, its looks
HOLDOUT = "holdout"  # of a holdout: the claims file's path, SHA-256 and text

# Trial attributes (trial.user_attrs).
CONFIGURATION = "configuration"  # the configuration's searched values, as text: what a seed run repeats
SEED = "seed"  # the seed_everything of this seed run
CONFIG = "config"  # the run's resolved config (its short keys)
RUN_DIR = "run_dir"  # the run's folder: checkpoints, TensorBoard events, predictions
TEST_METRICS = "test"  # the best checkpoint's test metrics (test/acc, test/loss)
LAST_METRICS = "last_epoch"  # the last epoch's metrics (val/acc, train/loss_epoch, ...)
EPOCHS = "epochs"  # epochs the run trained
WALL_TIME = "wall_time_s"  # seconds from start to end, process start included
FIT_TIME = "fit_s"  # seconds inside fit
EXIT_CODE = "exit_code"  # the fit process's exit status
FAIL_REASON = "fail_reason"  # one line: why the trial failed (None once a rerun succeeds)
RETRY_OF = "retry_of"  # the number of the failed trial this rerun retries
WORKER = "worker"  # "host:pid" of the worker process that runs the trial
TRIAL_PID = "trial_pid"  # pid of the trial's own fit process

# Trial system attribute (trial.system_attrs): the journal's heartbeat, time.time() of the last beat.
HEARTBEAT = "dyt_lab:heartbeat"
