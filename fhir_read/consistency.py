"""Read-your-writes on the FHIR surface (CONTRACT §11): a read sent with `Careplan-Position: <position>` (a
command's `result.position`) reflects that commit or a later state; without it, a read may lag the primary
by the replica's delay. Every read route runs its queries through `read_reflecting`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_read.app_context import READS
from fhir_read.outcome import operation_outcome
from schemas.replies import POSITION_HEADER
from storage.wal_position import WalPosition

_POSITION = web.RequestKey("careplan.position", WalPosition)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def position_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A FHIR request's `Careplan-Position`, read before anything else: one the service did not hand out is
    a 400 OperationOutcome (never waited on), whichever route it came to."""
    given = request.headers.getall(POSITION_HEADER, []) if request.path.startswith("/fhir") else []
    if given:
        try:
            if len(given) > 1:
                raise ValueError("may be given once")
            request[_POSITION] = WalPosition.parse(given[0])
        except ValueError as exc:
            return operation_outcome(400, f"{POSITION_HEADER}: {exc}")
    return await handler(request)


async def read_reflecting(request: web.Request, run: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """`run(engine)` where the request's position, if it gave one, is reflected: on the replica once it has
    replayed that far, else on the primary (storage.read_routing)."""
    return await request.app[READS].read(request.get(_POSITION), run)
