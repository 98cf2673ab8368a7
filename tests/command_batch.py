"""Run many ``dyt-lab`` commands as separate processes forked from one warm interpreter.

    python tests/command_batch.py cases.json results.json

``cases.json`` maps a case name to ``{"argv": [...], "cwd": "..."}``. Each case runs in its own
process, forked after torch, Lightning and dyt_lab are imported (what a fresh ``dyt-lab`` spends
most of its start on), with its own working folder and stdout/stderr files, through the same
``dyt_lab.cli.main`` the console script calls; its exit status is the process's. ``results.json``
maps each name to ``{"code", "stdout", "stderr", "seconds"}``. Two cases run at a time.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

PARALLEL = 2
TIMEOUT_S = 120


def run_case(argv: list[str], cwd: str, out: str, err: str) -> None:
    """In the forked child: run ``dyt-lab ARGV`` in ``cwd`` and exit with its status."""
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = ["dyt-lab", *argv]
    code = 0
    try:
        from dyt_lab.cli import main

        main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if isinstance(stop.code, str):
            print(stop.code, file=sys.stderr)
    except BaseException:  # what python itself would do with an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(cases_file: str, results_file: str) -> None:
    import optuna  # noqa: F401  the study commands

    import dyt_lab.cli  # noqa: F401  the warm part every child shares
    import dyt_lab.runs  # noqa: F401

    cases = json.loads(open(cases_file).read())
    results, running, pending = {}, {}, list(cases.items())
    while pending or running:
        while pending and len(running) < PARALLEL:
            name, case = pending.pop(0)
            out, err = (os.path.join(case["cwd"], f".{stream}.txt") for stream in ("stdout", "stderr"))
            pid = os.fork()
            if pid == 0:
                run_case(case["argv"], case["cwd"], out, err)
            running[pid] = (name, out, err, time.monotonic())
        for pid, (name, out, err, start) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() - start > TIMEOUT_S:
                os.kill(pid, 9)
                done, status = os.waitpid(pid, 0)
            if done:
                del running[pid]
                results[name] = {"code": os.waitstatus_to_exitcode(status), "stdout": open(out).read(),
                                 "stderr": open(err).read(), "seconds": round(time.monotonic() - start, 2)}
                os.remove(out)
                os.remove(err)
        time.sleep(0.02)
    with open(results_file, "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
