"""Asking for a command's outcome later (CONTRACT §2): the same answer the caller got, or would have got."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

from domain.access import Principal
from handlers.answers import error_reply
from handlers.errors import ErrorCode, Rejection
from handlers.pipeline import answer_from_log, authenticate_headers
from handlers.ports import RolloutRecord, StoredOutcome, TokenVerifier
from handlers.rollouts import rollout_report
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


ROLLOUT_QUERY_SUBJECT = "careplan.query.rollout"
RolloutReader = Callable[[str, uuid.UUID], Awaitable[RolloutRecord | None]]  # (tenant, rollout id) → run


async def rollout_query(
    body: bytes, headers: Mapping[str, str], *, verifier: TokenVerifier, read_rollout: RolloutReader
) -> dict[str, Any]:
    """`{"rollout_id": …}` with the caller's JWT → `{"ok": true, "status": 200, "result": <progress>}`, or
    the error reply of CONTRACT §3."""
    try:
        principal = await authenticate_headers(verifier, headers)
        try:
            rollout_id = str(orjson.loads(body)["rollout_id"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise Rejection(
                ErrorCode.VALIDATION_ERROR,
                'the body must be {"rollout_id": "<uuid>"}',
                {"errors": [{"path": "rollout_id", "message": str(exc)}]},
            ) from exc
        return {
            "ok": True,
            "status": 200,
            "result": await rollout_progress(principal, rollout_id, read_rollout),
        }
    except Rejection as rejection:
        return error_reply(None, rejection).to_wire()


async def rollout_progress(
    principal: Principal, rollout_id: str, read_rollout: RolloutReader
) -> dict[str, Any]:
    """A run of the caller's tenant (NATS query and HTTP alike); another tenant's, or no such id, is
    NOT_FOUND. Patients see no programs: FORBIDDEN."""
    if principal.is_patient:
        raise Rejection(ErrorCode.FORBIDDEN, "a patient token may not read program rollouts")
    try:
        parsed = uuid.UUID(rollout_id)
    except ValueError:
        raise Rejection(ErrorCode.NOT_FOUND, f"no rollout {rollout_id}") from None
    record = await read_rollout(principal.tenant_id, parsed)
    if record is None:
        raise Rejection(ErrorCode.NOT_FOUND, f"no rollout {rollout_id}")
    return rollout_report(record)
