"""A throwaway PostgreSQL server for tests: initdb in a temporary folder, listening on 127.0.0.1 only.

Uses the server programs installed on the machine (Debian's postgresql package puts them under
/usr/lib/postgresql/<version>/bin). PostgreSQL refuses to run as root, so under root it runs as the
`postgres` system user that package creates. Trust authentication, no fsync: for tests, never for data.
Not here: installing PostgreSQL (a missing server is an error that says how to install it).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "install PostgreSQL's server (Debian/Ubuntu: `apt-get install postgresql`)"


def _bin_dir() -> Path:
    debian = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found = sorted(debian, key=lambda p: [int(n) for n in Path(p).parts[-3].split(".")])  # newest version last
    initdb = found[-1] if found else shutil.which("initdb")
    if initdb is None:
        raise RuntimeError(f"no PostgreSQL server programs (initdb, pg_ctl) found: {INSTALL_HINT}")
    return Path(initdb).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    folder: Path
    port: int
    as_user: list[str]  # the command prefix that runs a program as the server's owner
    databases: int = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def new_database(self) -> str:
        """Create an empty database and return its URL (a fresh one per test keeps tests independent)."""
        import psycopg

        self.databases += 1
        name = f"test_{self.databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.folder / "data"),
                        "-m", "immediate", "-w"], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


def start_postgres() -> PostgresServer:
    """Start a fresh server; the caller stops it. Raises RuntimeError saying why when it cannot."""
    bin_dir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="openhcx-pg-"))  # under /tmp: the postgres user can reach it
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            shutil.chown(folder, "postgres")
        except LookupError:
            shutil.rmtree(folder)
            raise RuntimeError(f"as root, the server needs a `postgres` system user: {INSTALL_HINT}") from None
        as_user = ["runuser", "-u", "postgres", "--"]
    server = PostgresServer(bin_dir, folder, _free_port(), as_user)
    data, log = folder / "data", folder / "server.log"
    options = (f"-c listen_addresses=127.0.0.1 -c port={server.port} -c unix_socket_directories={folder} "
               "-c fsync=off -c max_connections=100")
    for cmd in ([str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
                [str(bin_dir / "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60"]):
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True)
        if done.returncode != 0:
            tail = log.read_text()[-2000:] if log.exists() else ""
            server.stop()
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")
    return server
