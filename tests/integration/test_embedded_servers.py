"""Integration tests for the embedded PostgreSQL / NATS launchers (real servers, no mocks)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import nats
import psutil
import pytest

from service.embedded.errors import EmbeddedServerError
from service.embedded.nats_server import EmbeddedNats
from service.embedded.postgres_server import EmbeddedPostgres

IS_ROOT = os.geteuid() == 0
PG_OS_USER = "embedded_postgres"


# --------------------------------------------------------------------------- helpers


def alive(pid: int) -> bool:
    """Running and not a zombie (the container init may reap orphans late)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def cluster_processes(pgdata: Path) -> list[psutil.Process]:
    """Every live postgres process (postmaster or backend) serving this PGDATA."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] != "postgres" or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(pgdata) in proc.cmdline() or Path(proc.cwd()) == pgdata:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def postmasters(pgdata: Path) -> list[int]:
    return [p.pid for p in cluster_processes(pgdata) if str(pgdata) in p.cmdline()]


def postmaster_pid(pg: EmbeddedPostgres) -> int:
    return int((pg.pgdata / "postmaster.pid").read_text().splitlines()[0])


def sql(pg: EmbeddedPostgres, query: str) -> list[Any]:
    """Run SQL over the Unix socket with asyncpg; rows for a SELECT, [] for other scripts."""

    async def run() -> list[Any]:
        conn = await asyncpg.connect(host=str(pg.socket_dir), user="postgres", database="postgres")
        try:
            if query.lstrip().upper().startswith("SELECT"):
                return list(await conn.fetch(query))
            await conn.execute(query)  # simple protocol: allows several statements
            return []
        finally:
            await conn.close()

    return asyncio.run(run())


def unrelated_process() -> subprocess.Popen[bytes]:
    """A live non-postgres process to plant in pid files (PID reuse).

    As root it runs as the postgres OS user: postgres' own kill(pid, 0) check then
    succeeds and it would refuse to start, so only our stale-file handling saves us.
    """
    user = PG_OS_USER if IS_ROOT else None
    if user is not None:
        pwd.getpwnam(user)  # created by an earlier EmbeddedPostgres.start()
    return subprocess.Popen(["sleep", "60"], user=user, start_new_session=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path under /tmp so the socket dir fits the AF_UNIX limit.
    path = Path(tempfile.mkdtemp(prefix="embsrv-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cleanup() -> Iterator[Callable[[Any], Any]]:
    """Register servers/processes; they are stopped/killed even when a test fails."""
    items: list[Any] = []

    def register(item: Any) -> Any:
        items.append(item)
        return item

    yield register
    for item in reversed(items):
        try:
            if isinstance(item, subprocess.Popen):
                item.kill()
                item.wait()
            else:
                item.stop()
        except Exception:  # best effort teardown
            pass


@pytest.fixture
def no_leftovers(data_dir: Path) -> Iterator[None]:
    """Fail the test if any postgres / nats-server process for data_dir survives it."""
    yield
    survivors = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] not in ("postgres", "nats-server") or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if str(data_dir) in " ".join(proc.cmdline()) or str(data_dir) in proc.cwd():
                survivors.append(proc)
        except psutil.Error:
            continue
    for proc in survivors:
        proc.kill()
    assert not survivors, f"processes left running: {survivors}"


# --------------------------------------------------------------------------- postgres


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_start_query_stop_and_restart_keeps_data(
    data_dir: Path, cleanup: Callable[[Any], Any]
) -> None:
    pg = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg.start()
    pg.start()  # idempotent
    pid = postmaster_pid(pg)
    assert pg.pid == pid
    assert sql(pg, "SELECT 1 AS one")[0]["one"] == 1
    assert (pg.socket_dir / ".s.PGSQL.5432").is_socket()
    assert pg.socket_dir == data_dir.resolve() / "pg" / "run"
    assert pg.url() == f"postgresql://postgres@/postgres?host={pg.socket_dir}"

    # Unix socket only, durability defaults kept, our max_connections applied.
    settings = {r["name"]: r["setting"] for r in sql(pg, "SELECT name, setting FROM pg_settings")}
    assert settings["listen_addresses"] == ""
    assert settings["fsync"] == "on"
    assert settings["max_connections"] == "200"
    assert not [c for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]

    postmaster = psutil.Process(pid)
    if IS_ROOT:
        assert postmaster.username() == PG_OS_USER
    assert os.getsid(pid) != os.getsid(0), "postmaster must not share our session (Ctrl-C)"
    assert (pg.pgdata.stat().st_mode & 0o777) == 0o700

    sql(pg, "CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    pg.stop()
    assert wait_dead(pid, 0.5), "postmaster still running after stop()"
    assert not cluster_processes(pg.pgdata)
    pg.stop()  # idempotent

    started = time.monotonic()
    pg.start()
    warm = time.monotonic() - started
    assert warm < 2.0, f"warm start took {warm:.2f}s"
    assert sql(pg, "SELECT v FROM kept")[0]["v"] == 42
    pg.stop()


def test_postgres_stop_without_start_is_safe(data_dir: Path) -> None:
    pg = EmbeddedPostgres(data_dir / "pg")
    pg.stop()
    pg.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_recovers_after_postmaster_sigkill(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    crashed = cleanup(EmbeddedPostgres(data_dir / "pg"))
    crashed.start()
    sql(crashed, "CREATE TABLE survives (v text); INSERT INTO survives VALUES ('wal')")
    pid = postmaster_pid(crashed)
    backends = [p.pid for p in psutil.Process(pid).children()]
    os.kill(pid, signal.SIGKILL)  # only the postmaster: its backends become orphans
    assert wait_dead(pid)

    pg = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg.start()
    assert postmaster_pid(pg) != pid
    assert sql(pg, "SELECT v FROM survives")[0]["v"] == "wal"
    assert not [b for b in backends if alive(b) and b not in {p.pid for p in cluster_processes(pg.pgdata)}]
    crashed.stop()  # the dead owner's stop must not touch the new server
    assert sql(pg, "SELECT 1 AS one")[0]["one"] == 1
    pg.stop()
    assert not cluster_processes(pg.pgdata)


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_stale_pid_file_of_unrelated_live_process(
    data_dir: Path, cleanup: Callable[[Any], Any]
) -> None:
    pg = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg.start()
    pid_lines = (pg.pgdata / "postmaster.pid").read_text().splitlines()
    lock_lines = (pg.socket_dir / ".s.PGSQL.5432.lock").read_text().splitlines()
    pg.stop()
    assert not (pg.pgdata / "postmaster.pid").exists()

    # The pid now belongs to something else (PID reuse after a crash).
    sleeper = cleanup(unrelated_process())
    for path, lines in (
        (pg.pgdata / "postmaster.pid", pid_lines),
        (pg.socket_dir / ".s.PGSQL.5432.lock", lock_lines),
    ):
        path.write_text("\n".join([str(sleeper.pid), *lines[1:]]) + "\n")
        if IS_ROOT:
            os.chown(path, pwd.getpwnam(PG_OS_USER).pw_uid, pwd.getpwnam(PG_OS_USER).pw_gid)

    pg2 = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg2.start()
    assert sql(pg2, "SELECT 1 AS one")[0]["one"] == 1
    assert postmaster_pid(pg2) != sleeper.pid
    assert sleeper.poll() is None, "an unrelated process was signalled"
    pg2.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_takes_over_server_left_by_crashed_owner(
    data_dir: Path, cleanup: Callable[[Any], Any]
) -> None:
    owner = cleanup(EmbeddedPostgres(data_dir / "pg"))
    owner.start()  # never stopped: its process "crashed"
    old = postmaster_pid(owner)
    sql(owner, "CREATE TABLE t (v int); INSERT INTO t VALUES (1)")

    pg = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg.start()
    new = postmaster_pid(pg)
    assert new != old
    assert wait_dead(old)
    assert postmasters(pg.pgdata) == [new]
    assert sql(pg, "SELECT v FROM t")[0]["v"] == 1

    owner.stop()  # must not stop the server it no longer owns
    assert postmasters(pg.pgdata) == [new]
    pg.stop()
    assert wait_dead(new)
    assert not cluster_processes(pg.pgdata)


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_long_data_dir_uses_short_socket_dir(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    long_dir = data_dir / ("d" * 60) / ("e" * 60)
    pg = cleanup(EmbeddedPostgres(long_dir))
    assert len(str(long_dir / "run" / ".s.PGSQL.5432")) > 100
    assert str(pg.socket_dir).startswith("/tmp/embpg-")
    assert pg.socket_dir == EmbeddedPostgres(long_dir).socket_dir  # stable across restarts
    try:
        pg.start()
        assert (pg.socket_dir.stat().st_mode & 0o777) == 0o700
        assert sql(pg, "SELECT 1 AS one")[0]["one"] == 1

        async def via_url() -> int:
            conn = await asyncpg.connect(pg.url())
            try:
                return int(await conn.fetchval("SELECT 2"))
            finally:
                await conn.close()

        assert asyncio.run(via_url()) == 2
        pg.stop()
    finally:
        pg.stop()
        shutil.rmtree(pg.socket_dir, ignore_errors=True)


@pytest.mark.usefixtures("no_leftovers")
def test_postgres_start_failure_reports_log_tail(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    pg = cleanup(EmbeddedPostgres(data_dir / "pg"))
    pg.start()
    pg.stop()
    with (pg.pgdata / "postgresql.auto.conf").open("a") as conf:
        conf.write("no_such_setting_xyz = 1\n")
    with pytest.raises(EmbeddedServerError, match="no_such_setting_xyz"):
        pg.start()
    assert not cluster_processes(pg.pgdata)
    pg.stop()


# --------------------------------------------------------------------------- nats


async def js_publish(url: str, *, create: bool) -> tuple[int, int]:
    """Publish one message to stream T; return (ack seq, messages in stream)."""
    nc = await nats.connect(url, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        if create:
            await js.add_stream(name="T", subjects=["t.>"])
        ack = await js.publish("t.x", b"hello")
        info = await js.stream_info("T")
        return ack.seq, info.state.messages
    finally:
        await nc.close()


@pytest.mark.usefixtures("no_leftovers")
def test_nats_jetstream_start_stop(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    server = cleanup(EmbeddedNats(data_dir / "nats"))
    server.start()
    server.start()  # idempotent
    assert server.url.startswith("nats://127.0.0.1:")
    pid = server.pid
    assert pid is not None
    assert int((data_dir / "nats" / "nats-server.pid").read_text()) == pid
    assert os.getsid(pid) != os.getsid(0), "nats-server must not share our session (Ctrl-C)"

    assert asyncio.run(js_publish(server.url, create=True)) == (1, 1)
    assert (data_dir / "nats" / "jetstream").is_dir()
    assert "Server is ready" in (data_dir / "nats" / "nats.log").read_text()

    server.stop()
    assert wait_dead(pid, 0.5)
    assert not (data_dir / "nats" / "nats-server.pid").exists()
    server.stop()  # idempotent
    with pytest.raises(EmbeddedServerError):
        _ = server.url

    server.start()  # file storage: the stream survives a clean restart
    assert asyncio.run(js_publish(server.url, create=False)) == (2, 2)
    server.stop()


def test_nats_fixed_port(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = cleanup(EmbeddedNats(data_dir / "nats", port=port))
    server.start()
    assert server.url == f"nats://127.0.0.1:{port}"
    assert asyncio.run(js_publish(server.url, create=True)) == (1, 1)
    server.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_nats_port_in_use_raises_with_log(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = cleanup(EmbeddedNats(data_dir / "nats", port=busy.getsockname()[1]))
        with pytest.raises(EmbeddedServerError, match="address already in use"):
            server.start()
        assert server.pid is None
        server.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_nats_stale_pid_file_of_unrelated_live_process(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    sleeper = cleanup(subprocess.Popen(["sleep", "60"], start_new_session=True))
    (data_dir / "nats").mkdir()
    (data_dir / "nats" / "nats-server.pid").write_text(str(sleeper.pid))

    server = cleanup(EmbeddedNats(data_dir / "nats"))
    server.start()
    assert asyncio.run(js_publish(server.url, create=True)) == (1, 1)
    assert sleeper.poll() is None, "an unrelated process was signalled"
    assert int((data_dir / "nats" / "nats-server.pid").read_text()) == server.pid
    server.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_nats_sigkilled_server_restarts_with_stream(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    crashed = cleanup(EmbeddedNats(data_dir / "nats"))
    crashed.start()
    assert asyncio.run(js_publish(crashed.url, create=True)) == (1, 1)
    pid = int((data_dir / "nats" / "nats-server.pid").read_text())
    os.kill(pid, signal.SIGKILL)

    server = cleanup(EmbeddedNats(data_dir / "nats"))
    server.start()
    assert server.pid != pid
    assert asyncio.run(js_publish(server.url, create=False)) == (2, 2)
    crashed.stop()  # must not remove the new server's pid file
    assert int((data_dir / "nats" / "nats-server.pid").read_text()) == server.pid
    server.stop()


@pytest.mark.usefixtures("no_leftovers")
def test_nats_takes_over_server_left_by_crashed_owner(data_dir: Path, cleanup: Callable[[Any], Any]) -> None:
    owner = cleanup(EmbeddedNats(data_dir / "nats"))
    owner.start()  # never stopped
    old = owner.pid
    assert old is not None
    assert asyncio.run(js_publish(owner.url, create=True)) == (1, 1)

    server = cleanup(EmbeddedNats(data_dir / "nats"))
    server.start()
    assert wait_dead(old)
    assert asyncio.run(js_publish(server.url, create=False)) == (2, 2)
    owner.stop()
    assert server.pid is not None and alive(server.pid)
    server.stop()
