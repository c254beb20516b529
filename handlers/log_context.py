"""What a log line written while a command or a request is handled says about it (CONTRACT §12): the
tenant, command and correlation ids, held in a context variable for the task (and the tasks it starts),
so every line on the way — pipeline, upstream adapters, storage — carries them without being handed them.
`service.logs` adds them, and the trace and span ids, to each record."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

FIELDS = ("tenant_id", "command_id", "correlation_id")
_CURRENT: ContextVar[dict[str, str] | None] = ContextVar("careplan_log_context", default=None)


@contextlib.contextmanager
def log_scope(**known: str | None) -> Iterator[dict[str, str]]:
    """A scope of its own (a command, a request, a relay batch): what it learns on the way — `scope[...] =`
    or `note(...)` — holds until it ends, then the outer scope's fields are back."""
    fields = {**(_CURRENT.get() or {}), **{k: v for k, v in known.items() if v}}
    token = _CURRENT.set(fields)
    try:
        yield fields
    finally:
        _CURRENT.reset(token)


def note(**known: str | None) -> None:
    """Add to the current scope (nothing outside one: a stray line of another task never inherits it)."""
    fields = _CURRENT.get()
    if fields is not None:
        fields.update({k: v for k, v in known.items() if v})


def current() -> dict[str, str]:
    return dict(_CURRENT.get() or {})
