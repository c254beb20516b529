"""The `careplan` executable as a user runs it: `dev` from a clean shell, `token`, `send`, `migrate`, `serve`.

Every test starts the real console script in a subprocess and always cleans up what it started, even when an
assertion fails: `careplan dev` is killed with its process group, and any nats-server or postgres tied to the
test's dev directory is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import psutil
import pytest
from sqlalchemy import text

from service.dev_identity import DevKeys
from service.settings import Settings
from storage.database import create_engine, drop_database, ensure_database, with_database
from tests.conftest import SYSTEM_ROLE, DatabaseUrls

CAREPLAN = Path(sys.executable).parent / "careplan"
READY = "care-plan-service ready: HTTP "
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_NAMES = frozenset({"nats-server", "postgres", "pg_ctl"})
E2E_RUNTIME_ROLE = "careplan_e2e_app"
CREATE_BODY = '{"patient_id": "p1", "title": "Diabetes plan", "status": "active"}'


# --------------------------------------------------------------------------- helpers


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any CAREPLAN_* variable: what a new user's shell has."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CAREPLAN_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_processes(dev_dir: Path) -> list[psutil.Process]:
    """Live nats-server / postgres processes tied to dev_dir by argv or (postgres backends) by cwd."""
    marker = str(dev_dir.resolve())
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name"]):
        try:
            if proc.info["name"] not in SERVER_NAMES or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            argv = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        cwd = ""
        with contextlib.suppress(psutil.Error):
            cwd = str(proc.cwd())
        if marker in argv or cwd == marker or cwd.startswith(marker + os.sep):
            found.append(proc)
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    described: list[str] = []
    for proc in procs:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())}")
        except psutil.Error:
            described.append(f"{proc.pid} <gone>")
    return described


def wait_no_servers(dev_dir: Path, timeout: float = 10.0) -> list[psutil.Process]:
    """Poll until no server process of dev_dir is left; return the survivors (empty on success)."""
    deadline = time.monotonic() + timeout
    while True:
        left = server_processes(dev_dir)
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_servers(dev_dir: Path) -> None:
    """Last-resort cleanup so that a failing test never leaves servers running."""
    procs = server_processes(dev_dir)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def pid_alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def run_cli(
    args: list[str], *, env: dict[str, str], cwd: Path | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAREPLAN), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def http_get(url: str, token: str | None) -> tuple[int, dict[str, str], dict[str, Any]]:
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return int(error.code), dict(error.headers), json.loads(error.read())


class DevProcess:
    """`careplan dev` in its own session (like a shell job); stdout read line by line in a thread."""

    def __init__(self, args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(CAREPLAN), *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    break
                self._changed.wait(min(remaining, 0.2))
        pytest.fail(
            f"no line starting {prefix!r} within {timeout}s (exit code {self.proc.poll()}); "
            f"stdout: {self.lines}\nstderr tail:\n{self.stderr_tail()}"
        )

    def wait_ready(self) -> str:
        return self.wait_for_line(READY, READY_TIMEOUT_S)

    def stop(self, sig: signal.Signals, *, group: bool = False, timeout: float = STOP_TIMEOUT_S) -> int:
        """Send sig (to the whole process group for a terminal's Ctrl-C) and wait for the exit code."""
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"careplan dev did not exit within {timeout}s of {sig.name}:\n{self.stderr_tail()}")

    def stderr_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@contextlib.contextmanager
def careplan_process(
    args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path
) -> Iterator[DevProcess]:
    proc = DevProcess(args, cwd=cwd, env=env, log_path=log_path)
    try:
        yield proc
    finally:
        proc.close()


@contextlib.contextmanager
def careplan_dev(
    args: list[str], *, cwd: Path, env: dict[str, str], log_path: Path, flags_after_command: bool = False
) -> Iterator[DevProcess]:
    argv = ["dev", *args] if flags_after_command else [*args, "dev"]
    dev = DevProcess(argv, cwd=cwd, env=env, log_path=log_path)
    try:
        yield dev
    finally:
        dev.close()


def assert_clean_exit(code: int, sig: signal.Signals, dev: DevProcess) -> None:
    assert code in (0, -sig, 128 + sig), f"exit code {code} after {sig.name}:\n{dev.stderr_tail()}"


def nats_trouble(log: str) -> list[str]:
    """The lines a NATS connection lost under the service writes ("... connection lost; reconnecting",
    "unexpected EOF"): seen when its nats-server dies first, as on a Ctrl-C that reaches it."""
    return [
        line
        for line in log.splitlines()
        if (" WARNING " in line and "NATS" in line) or "reconnect" in line.lower() or "UnexpectedEOF" in line
    ]


def assert_no_servers_left(dev_dir: Path) -> None:
    left = wait_no_servers(dev_dir)
    assert not left, f"servers left running for {dev_dir}: {describe(left)}"


def mint_token(settings_args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = run_cli([*settings_args, "token", "--tenant", "t1", "--role", "clinician"], cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token, f"not a JWT: {done.stdout!r}"
    return token


def create_plan(settings_args: list[str], *, cwd: Path, env: dict[str, str]) -> str:
    done = run_cli([*settings_args, "send", "careplan.create", CREATE_BODY], cwd=cwd, env=env)
    assert done.returncode == 0, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    reply = json.loads(done.stdout)
    assert reply["ok"] is True, reply
    assert reply["status"] == 201, reply
    assert reply["result"]["resource_type"] == "CarePlan", reply
    plan_id = reply["result"]["id"]
    assert isinstance(plan_id, str) and uuid.UUID(plan_id), reply
    return plan_id


def assert_plan_readable(port: int, plan_id: str, token: str) -> None:
    status, headers, body = http_get(f"http://127.0.0.1:{port}/fhir/CarePlan/{plan_id}", token)
    assert status == 200, body
    assert "json" in headers.get("Content-Type", ""), headers
    assert body["resourceType"] == "CarePlan", body
    assert body["id"] == plan_id
    assert body["title"] == "Diabetes plan"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A short directory under /tmp (Unix socket paths must stay short), as a user's project dir."""
    path = Path(tempfile.mkdtemp(prefix="cpe2e-", dir="/tmp")).resolve()
    try:
        yield path
    finally:
        kill_servers(path)
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- careplan dev


def test_dev_quickstart_keeps_data_across_restarts_and_stops_its_servers(workdir: Path) -> None:
    # Given a new user's shell (no CAREPLAN_* variables) in an empty project directory
    env = clean_env()
    port = free_port()
    dev_dir = workdir / ".careplan-dev"

    # When they start `careplan dev` with the default dev dir
    with careplan_dev(["--http-port", str(port)], cwd=workdir, env=env, log_path=workdir / "dev1.log") as dev:
        ready = dev.wait_ready()
        # the banner comes once the port is bound: the first request, not retried, is answered
        assert http_get(f"http://127.0.0.1:{port}/healthz", None)[0] == 200

        # Then it serves on the chosen port, keeps its state in ./.careplan-dev and says how to go on
        assert f"http://127.0.0.1:{port}" in ready
        state = json.loads((dev_dir / "dev.json").read_text())
        assert state["http_url"] == f"http://127.0.0.1:{port}"
        assert state["nats_url"].startswith("nats://127.0.0.1:")
        assert state["jwks_url"] == (dev_dir / "keys" / "jwks.json").as_uri()
        assert "careplan token --tenant t1 --role clinician" in dev.stderr_tail(100_000)

        # and the quickstart works: token, send, FHIR read
        token = mint_token([], cwd=workdir, env=env)
        plan_id = create_plan([], cwd=workdir, env=env)
        assert_plan_readable(port, plan_id, token)
        status, _, outcome = http_get(f"http://127.0.0.1:{port}/fhir/CarePlan/{plan_id}", None)
        assert status == 401, outcome
        assert outcome["resourceType"] == "OperationOutcome"

        # When it gets SIGTERM, then it exits cleanly and stops both servers it started
        assert_clean_exit(dev.stop(signal.SIGTERM), signal.SIGTERM, dev)
        # and nothing went wrong on the way (the relay, the worker and shutdown logged no error)
        log = dev.stderr_tail(1_000_000)
        assert "Traceback" not in log
        assert " ERROR " not in log
        # and it said what the first start was doing, without Alembic's own lines, and stopped without
        # losing its NATS connections under the drain (no reconnect warnings)
        assert "careplan dev: first start: creating the database" in log
        assert "careplan dev: bringing the schema up to date (migrations)" in log
        assert "[alembic" not in log and "Running upgrade" not in log
        assert nats_trouble(log) == []
    assert_no_servers_left(dev_dir)

    # When it is started again on the same directory (setting flags may follow the command too)
    with careplan_dev(
        ["--http-port", str(port)],
        cwd=workdir,
        env=env,
        log_path=workdir / "dev2.log",
        flags_after_command=True,
    ) as dev:
        dev.wait_ready()
        # (a database made before is not made again)
        assert "first start" not in dev.stderr_tail(1_000_000)

        # Then the plan, the keys (the old token still verifies) and the CLI's view of the servers survive
        assert_plan_readable(port, plan_id, token)
        second_id = create_plan([], cwd=workdir, env=env)
        assert_plan_readable(port, second_id, mint_token([], cwd=workdir, env=env))

        # When the user presses Ctrl-C (SIGINT to the foreground process group)
        code = dev.stop(signal.SIGINT, group=True)
        assert_clean_exit(code, signal.SIGINT, dev)
        # then its servers outlived the drain (the terminal's SIGINT is not theirs): no reconnect warnings
        log = dev.stderr_tail(1_000_000)
        assert nats_trouble(log) == []
        assert "Traceback" not in log
    assert_no_servers_left(dev_dir)


def test_dev_recovers_from_a_killed_run(workdir: Path) -> None:
    # Given `careplan dev` on an explicit dev dir, with a plan created
    env = clean_env()
    port = free_port()
    dev_dir = workdir / "state"
    settings_args = ["--dev-dir", str(dev_dir)]
    with careplan_dev(
        [*settings_args, "--http-port", str(port)], cwd=workdir, env=env, log_path=workdir / "dev1.log"
    ) as dev:
        dev.wait_ready()
        token = mint_token(settings_args, cwd=workdir, env=env)
        plan_id = create_plan(settings_args, cwd=workdir, env=env)

        # When only the `careplan dev` process is SIGKILLed
        dev.proc.kill()
        dev.proc.wait(10)

    # Then its servers survive as orphans (so the restart below really has to recover)
    orphans = server_processes(dev_dir)
    assert {p.name() for p in orphans} >= {"nats-server", "postgres"}, describe(orphans)
    orphan_pids = [p.pid for p in orphans]

    # When it is started again on the same dir
    with careplan_dev(
        [*settings_args, "--http-port", str(port)], cwd=workdir, env=env, log_path=workdir / "dev2.log"
    ) as dev:
        dev.wait_ready()

        # Then the stale servers were replaced and the earlier data is served
        assert not [pid for pid in orphan_pids if pid_alive(pid)], describe(orphans)
        assert_plan_readable(port, plan_id, token)
        assert_plan_readable(port, create_plan(settings_args, cwd=workdir, env=env), token)

        assert_clean_exit(dev.stop(signal.SIGTERM), signal.SIGTERM, dev)
    assert_no_servers_left(dev_dir)


# --------------------------------------------------------------------------- migrate / serve / --help


def test_migrate_creates_the_schema_and_is_idempotent(database: DatabaseUrls) -> None:
    # Given an empty database on the test server
    name = f"careplan_e2e_{uuid.uuid4().hex[:10]}"
    asyncio.run(ensure_database(database.server_admin, name))
    admin = with_database(database.server_admin, name)
    runtime = with_database(admin, name, user=E2E_RUNTIME_ROLE, password="e2e-app-secret")
    env = clean_env(
        CAREPLAN_ADMIN_DATABASE_URL=admin,
        CAREPLAN_DATABASE_URL=runtime,
        CAREPLAN_SYSTEM_DATABASE_URL=with_database(admin, name, user=SYSTEM_ROLE[0], password=SYSTEM_ROLE[1]),
    )
    try:
        # When `careplan migrate` runs twice
        for attempt in (1, 2):
            done = run_cli(["migrate"], env=env, timeout=60)

            # Then both runs succeed
            assert done.returncode == 0, f"run {attempt}: {done.stderr}"
            assert "schema is up to date" in done.stdout

        # and the runtime role it created logs in and may read the schema's tables
        assert asyncio.run(_scalar(runtime, "SELECT has_table_privilege('care_plans', 'SELECT')")) is True
    finally:
        asyncio.run(drop_database(database.server_admin, name))
        asyncio.run(_execute(database.server_admin, f"DROP ROLE IF EXISTS {E2E_RUNTIME_ROLE}"))


async def _scalar(url: str, sql: str) -> object:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await conn.scalar(text(sql))
    finally:
        await engine.dispose()


async def _execute(url: str, sql: str) -> None:
    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("runtime_login", "reason"), [("admin", "is a superuser"), ("system", "has BYPASSRLS")]
)
def test_serve_refuses_a_runtime_role_that_escapes_rls(
    database: DatabaseUrls, nats_url: str, keys: DevKeys, runtime_login: str, reason: str
) -> None:
    # Given a runtime URL that logs in as the superuser, or as the BYPASSRLS system role
    env = clean_env(
        CAREPLAN_NATS_URL=nats_url,
        CAREPLAN_DATABASE_URL=database.admin if runtime_login == "admin" else database.system,
        CAREPLAN_SYSTEM_DATABASE_URL=database.system,
        CAREPLAN_JWKS_URL=keys.jwks_url,
        CAREPLAN_HTTP_PORT="0",
    )

    # When `careplan serve` starts
    started = time.monotonic()
    done = run_cli(["serve"], env=env, timeout=20)

    # Then it refuses quickly, with exit code 2 and one line saying why
    assert done.returncode == 2, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert time.monotonic() - started < 20
    assert READY not in done.stdout
    reasons = [line for line in done.stderr.splitlines() if reason in line]
    assert len(reasons) == 1, done.stderr
    assert reasons[0].startswith("careplan serve: refusing to start"), done.stderr
    assert "Traceback" not in done.stderr


def test_serve_names_a_missing_setting(database: DatabaseUrls, keys: DevKeys) -> None:
    # Given everything but CAREPLAN_NATS_URL
    env = clean_env(
        CAREPLAN_DATABASE_URL=database.runtime,
        CAREPLAN_SYSTEM_DATABASE_URL=database.system,
        CAREPLAN_JWKS_URL=keys.jwks_url,
    )

    # When `careplan serve` starts, then it exits 2 naming exactly the missing variable
    done = run_cli(["serve"], env=env, timeout=20)
    assert done.returncode == 2, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert "CAREPLAN_NATS_URL" in done.stderr
    for configured in ("CAREPLAN_DATABASE_URL", "CAREPLAN_SYSTEM_DATABASE_URL", "CAREPLAN_JWKS_URL"):
        assert configured not in done.stderr
    assert "Traceback" not in done.stderr


def test_help_lists_every_setting_flag() -> None:
    done = run_cli(["--help"], env=clean_env())
    assert done.returncode == 0, done.stderr
    for flag in ("--nats-url", "--database-url", "--http-port", "--jwks-url"):
        assert flag in done.stdout
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in done.stdout, name
        assert f"CAREPLAN_{name.upper()}" in done.stdout, name
    for command in ("migrate", "serve", "scheduler", "dev", "token", "send"):
        assert command in done.stdout


def test_version_prints_the_installed_version() -> None:
    done = run_cli(["--version"], env=clean_env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"care-plan-service {metadata.version('care-plan-service')}")
    assert f"Python {platform.python_version()}" in done.stdout


def test_scheduler_runs_alone_and_stops_cleanly(database: DatabaseUrls, workdir: Path) -> None:
    # Given only the system role's URL
    env = clean_env(CAREPLAN_SYSTEM_DATABASE_URL=database.system, CAREPLAN_SCHEDULER_INTERVAL_S="1")
    with careplan_process(["scheduler"], cwd=workdir, env=env, log_path=workdir / "scheduler.log") as proc:
        # When it starts, then it says so and keeps sweeping until SIGTERM, then exits 0
        proc.wait_for_line("care-plan-service scheduler ready", READY_TIMEOUT_S)
        time.sleep(2.5)
        assert proc.proc.poll() is None, proc.stderr_tail()
        code = proc.stop(signal.SIGTERM)
        log = proc.stderr_tail()
    assert code == 0, log
    assert "Traceback" not in log


def test_scheduler_names_its_missing_setting() -> None:
    done = run_cli(["scheduler"], env=clean_env(), timeout=20)
    assert done.returncode == 2, done.stderr
    assert "CAREPLAN_SYSTEM_DATABASE_URL" in done.stderr
    assert "Traceback" not in done.stderr
