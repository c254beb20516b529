"""A fault lab: a nats-server (or a three-node cluster) and a database of the test's own, and
`careplan serve` as real processes, so a test may kill, stop and restart any of them without disturbing the
session's servers or other tests.

The lab's Postgres is the session's server (a fresh database on it) unless the test needs to stop
Postgres itself; then it is an embedded server of the lab's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import nats
from nats.aio.client import Client as NatsClient
from sqlalchemy import text

from service.dev_identity import DevKeys
from service.embedded.nats_server import EmbeddedNats
from service.embedded.postgres_server import EmbeddedPostgres
from storage.database import create_engine, drop_database, ensure_database
from storage.migrate import migrate
from tests.conftest import DatabaseUrls, database_urls
from tests.faults.cluster import NatsCluster
from tests.faults.cluster import free_port as free_port  # the lab's tests take it from here
from tests.outbox_ledger import install_outbox_ledger

CAREPLAN = Path(sys.executable).parent / "careplan"
READY = "care-plan-service ready: HTTP "


async def until(condition: Callable[[], bool | Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail naming `what` after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = condition()
        if outcome if isinstance(outcome, bool) else await outcome:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


def json_record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and "time" in record else None


@dataclass
class ServeProcess:
    """One `careplan serve` process; stderr (its log) goes to a file the test can read."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    http_port: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def ready(self, timeout: float = 60.0) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                tail = self.log()[-4000:]
                raise AssertionError(f"serve {self.name} exited {self.proc.returncode}:\n{tail}")
            return READY in self.log()

        await until(started, timeout, f"serve {self.name} ready")

    def kill(self) -> None:
        """SIGKILL: no drain, no acks, no goodbye to Postgres or NATS."""
        self.proc.kill()
        self.proc.wait(10)

    async def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, as an orchestrator stops a pod; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 60.0) -> int:
        await until(lambda: self.proc.poll() is not None, timeout, f"serve {self.name} exits")
        return int(self.proc.returncode)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The service's JSON log records (lines that are not JSON, e.g. its start banner, left out)."""
        return [record for line in self.log().splitlines() if (record := json_record(line)) is not None]

    def log_lines(self, fragment: str) -> list[tuple[datetime, str]]:
        """Messages containing `fragment`, with the time the service logged them."""
        return [
            (datetime.fromisoformat(r["time"]), r["message"])
            for r in self.log_records()
            if fragment in r["message"]
        ]

    async def readiness(self) -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.http_url}/readyz") as response:
            return response.status, await response.json()


@dataclass
class Lab:
    workdir: Path
    nats: EmbeddedNats  # the server; in a cluster lab, the cluster's first node
    database: DatabaseUrls
    keys: DevKeys
    processes: list[ServeProcess] = field(default_factory=list)
    cluster: NatsCluster | None = None

    @property
    def nats_url(self) -> str:
        """What the service and callers connect to: every node of a cluster, comma separated."""
        return self.cluster.urls if self.cluster is not None else self.nats.url

    def serve(self, name: str, **settings: object) -> ServeProcess:
        """Start `careplan serve` (flags as CAREPLAN_* variables; the lab's fast-retry defaults)."""
        values: dict[str, object] = {
            "nats_url": self.nats_url,
            "database_url": self.database.runtime,
            "system_database_url": self.database.system,
            "jwks_url": self.keys.jwks_url,
            "http_port": free_port(),
            "upstream_mode": "off",
            "workers": 8,
            "max_deliver": 5,
            "ack_wait_s": 5,
            "nak_backoff_max_s": 1,
            "relay_poll_interval_s": 0.5,
        } | settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAREPLAN_")}
        env |= {f"CAREPLAN_{key.upper()}": str(value) for key, value in values.items()}
        log_path = self.workdir / f"serve-{name}.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [str(CAREPLAN), "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = ServeProcess(name, proc, log_path, int(str(values["http_port"])))
        self.processes.append(process)
        return process

    async def connect(self) -> NatsClient:
        """A caller's connection that rides out a nats-server restart."""
        return await nats.connect(
            servers=self.nats_url.split(","),
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            name="lab-caller",
        )

    async def scalar(self, sql: str, **params: object) -> Any:
        """As the owner: what is really in the database, RLS aside."""
        engine = create_engine(self.database.admin, pool_size=1)
        try:
            async with engine.connect() as conn:
                return await conn.scalar(text(sql), params)
        finally:
            await engine.dispose()

    async def rows(self, sql: str, **params: object) -> list[Any]:
        engine = create_engine(self.database.admin, pool_size=1)
        try:
            async with engine.connect() as conn:
                return list((await conn.execute(text(sql), params)).all())
        finally:
            await engine.dispose()

    async def outbox_drained(self, timeout: float = 60.0) -> None:
        """Until nothing waits in the outbox; and nothing may be parked (a parked row never goes out)."""

        async def drained() -> bool:
            return not await self.scalar("SELECT count(*) FROM outbox")

        await until(drained, timeout, "every outbox row published")
        assert await self.scalar("SELECT count(*) FROM outbox_parked") == 0, "outbox rows were parked"

    def stop_all(self) -> None:
        for process in self.processes:
            if process.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.proc.pid, signal.SIGKILL)
                process.proc.wait(10)


@contextlib.asynccontextmanager
async def fault_lab(
    postgres_server_url: str,
    keys: DevKeys,
    workdir: Path,
    *,
    own_postgres: EmbeddedPostgres | None = None,
    nats_nodes: int = 1,
) -> AsyncIterator[Lab]:
    """The lab's servers, database and schema; everything it started is stopped on the way out. With
    `nats_nodes` > 1, a nats-server cluster (JetStream on every node) instead of one server."""
    server_url = own_postgres.url() if own_postgres is not None else postgres_server_url
    name = f"careplan_lab_{uuid.uuid4().hex[:10]}"
    await ensure_database(server_url, name)
    database = database_urls(server_url, name)
    await migrate(database.admin, database.runtime, database.system)
    await install_outbox_ledger(database.admin)
    cluster = NatsCluster(workdir / "nats", nats_nodes) if nats_nodes > 1 else None
    nats_server = (
        cluster.nodes[0].server if cluster is not None else EmbeddedNats(workdir / "nats", free_port())
    )
    lab = Lab(workdir, nats_server, database, keys, cluster=cluster)
    try:
        if cluster is not None:
            cluster.start()
            await cluster.meta_leader()  # JetStream answers nothing until the nodes have elected one
        else:
            nats_server.start()
        yield lab
    finally:
        lab.stop_all()
        if cluster is not None:
            cluster.stop()
        nats_server.stop()
        if own_postgres is None:
            await drop_database(server_url, name)
