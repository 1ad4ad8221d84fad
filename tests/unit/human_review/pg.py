"""A throwaway PostgreSQL server (Debian's package) on 127.0.0.1 and a free port, for tests and benchmarks.

The server refuses to run as root, so as root initdb/postgres run through `runuser -u postgres`
on a temp dir owned by postgres. Stopped by the postmaster's pid.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (scripts/system-deps.sh installs it)")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="lorafleet-pg-"))
        self.port = free_port()
        self.pid: int | None = None
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> PgServer:
        if self._as:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = self.dir / "data"
        subprocess.run([*self._as, str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        subprocess.run([*self._as, str(self.bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                        str(self.dir / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True)
        self.pid = int((data / "postmaster.pid").read_text().split()[0])
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.pid is not None:
            pidfile = self.dir / "data" / "postmaster.pid"
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGQUIT)  # immediate shutdown: the data is thrown away anyway
            # The postmaster removes its pid file on exit (the pid may linger as an unreaped zombie).
            for _ in range(300):
                if not pidfile.exists():
                    break
                time.sleep(0.1)
            self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)
