"""What every benchmark stands on: Postgres and nats-server (the configured ones, or embedded ones from
the venv, as the tests do), a fresh migrated database, `careplan serve` as a real subprocess whose memory
is sampled, and tokens from a stand-in identity-service."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from service.dev_identity import DevKeys, write_new_keys
from service.embedded.nats_server import EmbeddedNats
from service.embedded.postgres_server import EmbeddedPostgres
from storage.database import drop_database, ensure_database, with_database
from storage.migrate import migrate

RUNTIME_ROLE = ("careplan_bench_app", "bench-app-secret")
SYSTEM_ROLE = ("careplan_bench_system", "bench-system-secret")
ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Database:
    admin: str
    runtime: str
    system: str


@dataclass
class Servers:
    """Postgres and NATS for one benchmark run; `CAREPLAN_BENCH_DATABASE_URL` (a superuser URL) and
    `CAREPLAN_BENCH_NATS_URL` pick existing servers, otherwise embedded ones are started."""

    postgres_admin: str
    nats_url: str
    workdir: Path
    keys: DevKeys
    where: str  # "embedded" or "configured", for the report
    _created: list[str] = field(default_factory=list)

    async def fresh_database(self) -> Database:
        name = f"careplan_bench_{uuid.uuid4().hex[:8]}"
        await ensure_database(self.postgres_admin, name)
        self._created.append(name)
        admin = with_database(self.postgres_admin, name)
        database = Database(
            admin=admin,
            runtime=with_database(admin, name, user=RUNTIME_ROLE[0], password=RUNTIME_ROLE[1]),
            system=with_database(admin, name, user=SYSTEM_ROLE[0], password=SYSTEM_ROLE[1]),
        )
        await migrate(database.admin, database.runtime, database.system)
        return database

    async def drop_databases(self) -> None:
        for name in self._created:
            with contextlib.suppress(Exception):
                await drop_database(self.postgres_admin, name)


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    with tempfile.TemporaryDirectory(prefix="careplan-bench-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        keys = write_new_keys(workdir / "keys")
        with contextlib.ExitStack() as stack:
            postgres = os.environ.get("CAREPLAN_BENCH_DATABASE_URL")
            nats_url = os.environ.get("CAREPLAN_BENCH_NATS_URL")
            where = "configured" if postgres and nats_url else "embedded"
            if not postgres:
                postgres = stack.enter_context(EmbeddedPostgres(workdir / "pg")).url()
            if not nats_url:
                nats_url = stack.enter_context(EmbeddedNats(workdir / "nats")).url
            running = Servers(postgres, nats_url, workdir, keys, where)
            try:
                yield running
            finally:
                asyncio.run(running.drop_databases())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RssSampler:
    """Peak resident memory of processes (summed, with their children: a profiler's), sampled every 50 ms
    while the benchmark runs; and the CPU time they used, to tell a saturated core from waiting."""

    def __init__(self, pids: list[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        self.peak_bytes = 0
        self._task: asyncio.Task[None] | None = None
        self._cpu_mark = (0.0, 0.0)

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self._all():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    def _all(self) -> list[psutil.Process]:
        found = []
        for process in self._processes:
            found.append(process)
            with contextlib.suppress(psutil.Error):
                found += process.children(recursive=True)
        return found

    def mark_cpu(self) -> None:
        """Start counting CPU time from now (see `cpu_utilization`)."""
        self._cpu_mark = (self.cpu_seconds(), time.perf_counter())

    def cpu_utilization(self) -> float:
        """CPU seconds per wall second since `mark_cpu` (1.0 = one core busy all the time)."""
        cpu, wall = self._cpu_mark
        return round((self.cpu_seconds() - cpu) / (time.perf_counter() - wall), 2)

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                rss = sum(p.memory_info().rss for p in self._all() if p.name() != "py-spy")
                self.peak_bytes = max(self.peak_bytes, rss)
            await asyncio.sleep(0.05)

    async def stop(self) -> int:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak_bytes


@dataclass
class ServeProcess:
    processes: list[subprocess.Popen[bytes]]
    http_url: str  # the first replica's
    rss: RssSampler


@contextlib.asynccontextmanager
async def careplan_serve(
    servers: Servers,
    database: Database,
    *,
    name: str,
    replicas: int = 1,
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[ServeProcess]:
    """`careplan serve` on this run's servers — `replicas` processes on one durable consumer, as a
    deployment scales out — each ready (its /readyz says so) before the benchmark starts."""
    processes: list[subprocess.Popen[bytes]] = []
    urls: list[str] = []
    profile_dir = os.environ.get("CAREPLAN_BENCH_PROFILE")
    try:
        for replica in range(replicas):
            port = free_port()
            env = {
                **os.environ,
                "CAREPLAN_NATS_URL": servers.nats_url,
                "CAREPLAN_DATABASE_URL": database.runtime,
                "CAREPLAN_SYSTEM_DATABASE_URL": database.system,
                "CAREPLAN_JWKS_URL": servers.keys.jwks_url,
                "CAREPLAN_HTTP_PORT": str(port),
                "CAREPLAN_UPSTREAM_MODE": "off",
                "CAREPLAN_LOG_LEVEL": "WARNING",
                "CAREPLAN_SCHEDULER_INTERVAL_S": "3600",
                **(extra_env or {}),
            }
            log_path = servers.workdir / f"serve-{name}-{replica}.log"
            command = [sys.executable, "-m", "service.cli", "serve"]
            if profile_dir:
                # py-spy's collapsed stacks of the whole run, one file a replica (`pip install py-spy`).
                out = Path(profile_dir) / f"{name}-{replica}.txt"
                command = [
                    _py_spy(),
                    "record",
                    "--nonblocking",
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "-o",
                    str(out),
                ]
                command += ["--", sys.executable, "-m", "service.cli", "serve"]
            with log_path.open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        command,
                        cwd=ROOT,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,  # its own process group: a profiler's child stops with it
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
            await _wait_ready(processes[-1], urls[-1], log_path)
        rss = RssSampler([p.pid for p in processes])
        rss.start()
        yield ServeProcess(processes, urls[0], rss)
        await rss.stop()
    finally:
        for process in processes:
            _stop(process, profiled=bool(profile_dir))


def _py_spy() -> str:
    """The venv's py-spy (beside this interpreter) when the venv is not on PATH, else the one on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def _stop(process: subprocess.Popen[bytes], *, profiled: bool) -> None:
    if profiled:
        process.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def _wait_ready(process: subprocess.Popen[bytes], http_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"careplan serve exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{http_url}/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"careplan serve not ready in 60 s: {log_path.read_text()[-2000:]}")
