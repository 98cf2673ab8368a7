"""A throwaway PostgreSQL server on loopback for the tests: a fresh data folder, a free port, a user
with a password, one database; stopped and deleted at the end.

The server binaries come from PATH or Debian's /usr/lib/postgresql/VERSION/bin (``.ci/run`` installs
them when missing). PostgreSQL refuses to run as root, so as root it runs as the ``postgres`` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.helpers import free_port

USER, PASSWORD, DATABASE = "dyt", "s3cret-pw", "dyt_lab_test"


class ServerUnavailable(RuntimeError):
    """Nothing here can run a PostgreSQL server; the message says why (the tests skip with it)."""


def server_bin() -> Path:
    """The folder holding initdb and pg_ctl: PATH first, else the newest Debian version."""
    found = shutil.which("initdb")
    if found:  # resolved: a link in /usr/local/bin leads to the folder that also has createdb
        return Path(found).resolve().parent
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not debian:
        raise ServerUnavailable("no PostgreSQL server here (initdb is neither on PATH nor in "
                                "/usr/lib/postgresql/*/bin); install Debian's postgresql, as .ci/run does")
    return Path(debian[-1]).parent


class PostgresServer:
    """Start with ``start()``, connect with ``url()``, end with ``stop()``."""

    def __init__(self) -> None:
        self.bin = server_bin()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse root
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable("running as root, and there is no 'postgres' user to run the server as") from None
            if not shutil.which("runuser"):
                raise ServerUnavailable("running as root, and there is no runuser to run the server as 'postgres'")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.folder = Path(tempfile.mkdtemp(prefix="dyt-lab-pg-"))
        self.data, self.log = self.folder / "data", self.folder / "server.log"
        self.port = free_port()

    def _run(self, *command: str, **env: str) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env})
        if done.returncode:
            log = self.log.read_text()[-2000:] if self.log.is_file() else ""
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}{log}")

    def start(self) -> PostgresServer:
        try:
            self._start()
        except BaseException:
            self.stop()  # a half-started server must not outlive the tests
            raise
        return self

    def _start(self) -> None:
        if self.as_user:
            shutil.chown(self.folder, "postgres")
        pwfile = self.folder / "password"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            shutil.chown(pwfile, "postgres")
        # Password auth on every connection, so a wrong password is refused as on a real server.
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        # Loopback only; the socket in our folder (Debian's /var/run/postgresql may not exist);
        # no fsync: a test database need not survive a power cut.
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off " \
                  "-c synchronous_commit=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")
        self.create_database(DATABASE)

    def create_database(self, name: str) -> None:
        """An empty database ``name``, owned by the test user."""
        createdb = self.bin / "createdb" if (self.bin / "createdb").is_file() else shutil.which("createdb") or "createdb"
        self._run(str(createdb), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name, PGPASSWORD=PASSWORD)

    def url(self, password: str = PASSWORD, database: str = DATABASE) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").is_file():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)
