"""Asking for a command's outcome later (CONTRACT §2): the same answer the caller got, or would have got."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping

import orjson

from domain.access import Principal
from handlers.answers import error_reply
from handlers.errors import ErrorCode, Rejection
from handlers.pipeline import answer_from_log, authenticate_headers
from handlers.ports import StoredOutcome, TokenVerifier
from schemas.replies import Reply

QUERY_SUBJECT = "careplan.query.command"
OutcomeReader = Callable[[str, uuid.UUID], Awaitable[StoredOutcome | None]]  # (tenant, command id) → outcome


async def command_outcome(
    body: bytes, headers: Mapping[str, str], *, verifier: TokenVerifier, read_outcome: OutcomeReader
) -> Reply:
    """`{"command_id": …}` with the caller's JWT → the stored reply; another tenant's id is NOT_FOUND."""
    command_id: str | None = None
    try:
        principal = await authenticate_headers(verifier, headers)
        try:
            request = orjson.loads(body)
            command_id = str(request["command_id"])
            parsed = uuid.UUID(command_id)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise Rejection(
                ErrorCode.VALIDATION_ERROR,
                'the body must be {"command_id": "<uuid>"}',
                {"errors": [{"path": "command_id", "message": str(exc)}]},
            ) from exc
        return await stored_outcome(principal, parsed, read_outcome)
    except Rejection as rejection:
        return error_reply(command_id, rejection)


async def stored_outcome(principal: Principal, command_id: uuid.UUID, read_outcome: OutcomeReader) -> Reply:
    """The outcome a command of the caller's tenant got (NATS query and HTTP alike), with a position at or
    after its commit. A patient token never writes, so no outcome is its own, and another patient's would
    name their plan: FORBIDDEN."""
    if principal.is_patient:
        raise Rejection(ErrorCode.FORBIDDEN, "a patient token may not read command outcomes")
    stored = await read_outcome(principal.tenant_id, command_id)
    if stored is None:
        raise Rejection(ErrorCode.NOT_FOUND, f"no command {command_id}")
    return answer_from_log(stored)
