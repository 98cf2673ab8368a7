"""A study on a real PostgreSQL server, as several machines share one: two `dyt-lab study run`
processes under two hostnames on one database, one killed with kill -9 mid-trial and run again;
processes opening a fresh database at once; and the one-line errors for a missing driver, an
unreachable server and a wrong password, the password never printed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dyt_lab.study.definition.space import saved_space
from dyt_lab.study.engine.liveness import pid_alive
from dyt_lab.study.engine.objective import trial_dir_name
from dyt_lab.study.trial.protocol import RESULT_FILE
from tests.helpers import cli_refusal, free_port
from tests.study.helpers import BASE, TINY, counted, write_study
from tests.study.postgres_server import PostgresServer, ServerUnavailable


@pytest.fixture(scope="session")
def postgres():
    """A fresh server on a free loopback port for this test session, stopped and deleted after it."""
    try:
        server = PostgresServer()
    except ServerUnavailable as why:
        pytest.skip(f"no PostgreSQL server: {why}")
    yield server.start()
    server.stop()


def test_a_missing_driver_says_what_to_install(capsys, monkeypatch):
    for module in ("psycopg", "psycopg2"):  # None in sys.modules: `import psycopg` fails as if not installed
        monkeypatch.setitem(sys.modules, module, None)
    line = cli_refusal(capsys, ["study", "report", "s", "--storage", "postgresql://u:secret@127.0.0.1:1/db"])[0]
    assert line.startswith("error: storage 'postgresql://u:***@127.0.0.1:1/db' cannot be opened: its database "
                           "driver 'psycopg")  # psycopg (SQLAlchemy >= 2.1) or psycopg2 (older)
    assert line.endswith("is not installed: pip install -e '.[postgres]'") and "secret" not in line


def test_an_unreachable_server_is_one_line_with_the_password_masked(capsys):
    url = f"postgresql://u:secret@127.0.0.1:{free_port()}/db"  # a free port: nothing listens there
    line = cli_refusal(capsys, ["study", "report", "s", "--storage", url])[0]
    assert line.startswith(f"error: storage '{url.replace('secret', '***')}' cannot be opened: ")
    assert "Connection refused" in line and "secret" not in line


def test_a_wrong_password_or_study_name_is_one_line_with_the_password_masked(postgres, capsys):
    line = cli_refusal(capsys, ["study", "report", "s", "--storage", postgres.url(password="wrong-pw")])[0]
    assert line.startswith(f"error: storage '{postgres.url(password='***')}' cannot be opened: ")
    assert "password authentication failed" in line and "wrong-pw" not in line
    line = cli_refusal(capsys, ["study", "report", "nosuch", "--storage", postgres.url()])[0]
    assert line.startswith(f"error: no study 'nosuch' in storage '{postgres.url(password='***')}'; it holds: ")
    assert postgres.url() not in line


def test_machines_starting_together_on_a_fresh_database_all_open_it(postgres, tmp_path):
    # Each creates Optuna's tables if missing; unguarded, most of them fail on a duplicate key.
    postgres.create_database("fresh")
    code = "import sys; from dyt_lab.study.definition.storage import open_storage; open_storage(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, postgres.url(database="fresh")], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(errors)


def as_machine(name: str) -> list[str]:
    """A command prefix that runs a command with hostname ``name`` (its own UTS namespace), so two
    processes here look like two machines: a trial's worker is then known dead only by its heartbeat,
    not by its pid. Empty where no namespace can be made (both then run as this host)."""
    rename = ["sh", "-c", f'hostname {name} && exec "$@"', "sh"]
    for unshare in (["unshare", "--uts"], ["unshare", "--user", "--map-root-user", "--uts"]):
        try:
            if subprocess.run([*unshare, *rename, "true"], capture_output=True, timeout=10).returncode == 0:
                return [*unshare, *rename]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return []


def wait_for(what: str, condition, procs: list[subprocess.Popen], logs: list[Path], timeout: float = 180):
    """Poll ``condition`` until it is true; fail with the workers' output if one exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [p for p in procs if p.poll() is not None]
        if ended or time.monotonic() > deadline:
            tails = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
            pytest.fail(f"waiting for {what}: " + ("a worker exited" if ended else "timed out") + f"\n{tails}")
        time.sleep(0.2)


def trials_so_far(name: str, url: str) -> list:
    """The study's trials so far: none while no machine has created it yet."""
    try:
        return optuna.load_study(study_name=name, storage=url).trials
    except KeyError:  # the study is not created yet
        return []


@pytest.mark.slow
def test_two_machines_on_postgres_kill_9_one_and_rerun_it(postgres, tmp_path):
    name, url = "two_machines", postgres.url()
    # Heartbeats every second and dead after 4 s without one: the kill is found in seconds.
    # A gets exactly one trial of the three, and the test must see it between its first epoch and its end: with
    # 4 epochs (about 4 s) a full suite on 2 cores beside another job missed that window once (A finished its
    # only trial between two looks, then exited with the study full). 12 epochs make the window about 12 s.
    path = write_study(tmp_path, name, n_trials=3, storage=url, heartbeat_interval=1, grace_period=4,
                       search_space={"model.norm": ["dyt", "derf", "dyt_shift"]},
                       base={"configs": [BASE], "overrides": {**TINY, "trainer.max_epochs": 12}})
    # No fused C++ kernel: its first build (tens of seconds) is not what this test is about.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLCONFIGDIR": str(tmp_path / ".mpl"), "OMP_NUM_THREADS": "1",
           "DYT_LAB_NO_KERNEL": "1"}
    env.pop("DYT_LAB_DEBUG", None)
    logs = {m: tmp_path / f"{m}.log" for m in ("machine-a", "machine-b", "machine-a-again")}
    hosts = {m: as_machine(m.removesuffix("-again")) for m in logs}
    procs: list[subprocess.Popen] = []

    def start(machine: str) -> subprocess.Popen:
        # Its own process group, so kill -9 of the group takes the trial (and the fork server) too.
        command = [*hosts[machine], sys.executable, "-m", "dyt_lab", "study", "run", "--config", str(path),
                   "--workers", "1"]
        procs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdout=logs[machine].open("w"),
                                      stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    try:
        a, b = start("machine-a"), start("machine-b")
        of_a = lambda t: t.user_attrs.get("worker", "").endswith(f":{a.pid}")  # noqa: E731  (tags are host:pid)

        def a_mid_trial() -> bool:  # machine B has started a trial, and machine A's has finished an epoch
            now = trials_so_far(name, url)
            return any(not of_a(t) for t in now if "worker" in t.user_attrs) and any(
                of_a(t) and t.state == TrialState.RUNNING and (Path(t.user_attrs["run_dir"]) / RESULT_FILE).is_file()
                for t in now if "run_dir" in t.user_attrs)

        frozen: list = []  # A's running trial, once A is stopped

        def a_stopped_mid_trial() -> bool:
            # SIGSTOP first, then look again: a stopped machine cannot finish the trial between the look and the
            # kill (under load, a 4-epoch trial did, once). If it finished before the stop, A goes on.
            if not a_mid_trial():
                return False
            os.killpg(a.pid, signal.SIGSTOP)
            frozen[:] = [t for t in trials_so_far(name, url) if of_a(t) and t.state == TrialState.RUNNING]
            if not frozen:
                os.killpg(a.pid, signal.SIGCONT)
            return bool(frozen)

        wait_for("a trial on each machine, A's mid-run", a_stopped_mid_trial, [a, b],
                 [logs["machine-a"], logs["machine-b"]])
        killed = frozen[0]
        os.killpg(a.pid, signal.SIGKILL)
        a.wait()
        killed_at = time.monotonic()
        while pid_alive(killed.user_attrs["trial_pid"]):  # the trial died with its machine's worker
            assert time.monotonic() < killed_at + 20, "the trial process outlived its killed worker"
            time.sleep(0.2)
        again = start("machine-a-again")  # machine A comes back while B goes on
        assert again.wait(timeout=240) == 0, logs["machine-a-again"].read_text()[-3000:]
        assert b.wait(timeout=240) == 0, logs["machine-b"].read_text()[-3000:]
    finally:  # a failed assertion must not leave a study training on
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    study = optuna.load_study(study_name=name, storage=url)
    dead = study.trials[killed.number]
    reason = dead.user_attrs.get("fail_reason") or ""
    assert dead.state == TrialState.FAIL and "died" in reason, dead.user_attrs
    if hosts["machine-b"] and f"trial {killed.number} FAILED: its worker died" in logs["machine-b"].read_text():
        assert "heartbeat" in reason  # machine B cannot see A's processes: only the heartbeat told it
    kept = counted(study)
    assert len(kept) == 3 and all(t.state == TrialState.COMPLETE for t in kept)  # n_trials complete
    assert sorted(t.params["model.norm"] for t in kept) == ["derf", "dyt", "dyt_shift"]  # each grid point once
    runs = Counter(json.dumps(t.params) for t in study.trials)  # nothing else failed, was lost or ran twice:
    assert sorted(runs.values()) == [1, 1, 2] and runs[json.dumps(dead.params)] == 2  # only the killed one re-ran
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.params == dead.params and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["worker"] != dead.user_attrs["worker"]
    if hosts["machine-a"]:  # two hostnames: both machines ran trials
        assert {t.user_attrs["worker"].split(":")[0] for t in study.trials} == {"machine-a", "machine-b"}
    trial_dirs = sorted(p.name for p in (tmp_path / "studies" / name / "trials").iterdir())
    space = saved_space(tmp_path / "studies" / name)
    assert trial_dirs == [trial_dir_name(t, space.configuration(t.params)) for t in study.trials]  # one folder each
