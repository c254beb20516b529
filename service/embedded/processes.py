"""Processes of an embedded server we may not have started ourselves: pid files, liveness, finding a crashed
owner's orphans (never a reused pid's unrelated process), killing them, and the log tail for an error."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

import psutil  # type: ignore[import-untyped, unused-ignore]

from service.embedded.errors import EmbeddedServerError

KILL_WAIT = 10.0
_LOG_TAIL_CHARS = 4000


def log_size(path: Path) -> int:
    """Where a log ends now, so an error after a start quotes only what that start wrote."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def log_tail(path: Path, since: int = 0) -> str:
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


def read_pid(path: Path) -> int | None:
    """First line of a pid file as an int, or None when missing/garbled."""
    try:
        first = path.read_text(errors="replace").splitlines()[0].strip()
        pid = int(first)
    except (OSError, IndexError, ValueError):
        return None
    return pid if pid > 0 else None


def is_alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (orphans are reaped late by some container inits)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # pragma: no cover - exists but unreadable
        return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> bool:
    """Poll until every process is dead or a zombie; True when all are gone."""
    pending = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pending if is_alive(p)]
        if not pending:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def kill_and_wait(procs: Iterable[psutil.Process]) -> None:
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
    if not wait_gone(targets.values(), KILL_WAIT):
        left = sorted(p.pid for p in targets.values() if is_alive(p))
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


def process_for_pid(pid: int | None, name: str, path: Path, *, cwd: bool) -> psutil.Process | None:
    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
    except psutil.Error:
        return None
    return proc if _process_matches(proc, name, path, cwd=cwd) else None


def find_processes(name: str, path: Path, *, cwd: bool) -> list[psutil.Process]:
    """All live `name` processes tied to `path`, e.g. orphans whose pid file is gone."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == name and _process_matches(proc, name, path, cwd=cwd):
                found.append(proc)
    return found
