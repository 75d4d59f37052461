"""PostgreSQL for the test suite: `ETL_TEST_POSTGRES_URL`, else a throwaway server from local binaries.

In CI (`CI=true`) a missing PostgreSQL fails the PostgreSQL tests instead of skipping them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def _binary(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        if (d / name).exists():
            return str(d / name)
    return shutil.which(name)


START_ATTEMPTS = 5  # fresh ports tried when the chosen one was taken before the server bound it


def free_ports() -> Iterator[int]:
    """Ports free when chosen; another process may bind one before the server does, so callers retry."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        yield port  # after closing the socket: a generator paused inside `with` would keep the port bound


class Cluster:
    """A private PostgreSQL cluster the test may stop and start again (a database outage); see `cluster`."""

    def __init__(self, pg_ctl: str, data: str, prefix: list[str], opts: str, log: Path, port: int) -> None:
        self.pg_ctl, self.data, self.prefix, self.opts, self.log, self.port = (
            pg_ctl,
            data,
            prefix,
            opts,
            log,
            port,
        )
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: "fast" ends every session (their clients see the connection closed)."""
        command = [*self.prefix, self.pg_ctl, "-D", self.data, "-m", mode, "-w", "stop"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> None:
        command = [
            *self.prefix,
            self.pg_ctl,
            "-D",
            self.data,
            "-o",
            self.opts,
            "-l",
            str(self.log),
            "-w",
            "start",
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextmanager
def cluster(ports: Iterator[int] | None = None) -> Iterator[Cluster]:
    """Start a private PostgreSQL cluster on a free loopback port; yields its handle.

    A port is chosen before the server binds it, so it can be taken in between (another test run, another
    cluster): a start that fails with "Address already in use" is retried on a fresh port.
    """
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl) found")
    ports = ports or free_ports()
    root = tempfile.mkdtemp(prefix="etl-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        shutil.chown(root, user="postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, log = f"{root}/data", Path(root) / "log"
    run = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    try:
        subprocess.run([*prefix, initdb, "-D", data, "-U", "postgres", "-A", "trust", "--no-sync"], **run)
        for attempt in range(1, START_ATTEMPTS + 1):
            port = next(ports)
            opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
            start = [*prefix, pg_ctl, "-D", data, "-o", opts, "-l", str(log), "-w", "start"]
            started = subprocess.run(start, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
            if started.returncode == 0:
                break
            logged = log.read_text(errors="replace") if log.exists() else ""
            if "Address already in use" not in logged or attempt == START_ATTEMPTS:
                last = logged.strip().splitlines()[-3:] or [started.stderr.decode(errors="replace").strip()]
                raise RuntimeError(f"pg_ctl start failed on port {port}: " + " | ".join(last))
            log.unlink()  # the next attempt's log starts empty, so an old bind error is not read again
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    try:
        yield Cluster(pg_ctl, data, prefix, opts, log, port)
    finally:
        subprocess.run(
            [*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def throwaway_server(ports: Iterator[int] | None = None) -> Iterator[str]:
    """Start a private PostgreSQL cluster on a free loopback port; yields its admin URL."""
    with cluster(ports) as server:
        yield server.url


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    """A new empty database on the server; dropped afterwards."""
    name = f"etl_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )  # the server may restart
    try:
        for attempt in range(50):
            try:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                break
            except sa.exc.OperationalError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
