"""Send a command the way any caller does (JetStream publish + `reply_to` header) and await its reply.
Used by `careplan send` and by the tests."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from handlers.queries import QUERY_SUBJECT
from schemas.commands import COMMAND_SUBJECT_PREFIX


def envelope(
    data: dict[str, Any], *, expected_version: int | None = None, command_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"command_id": command_id or str(uuid.uuid4()), "data": data}
    if expected_version is not None:
        body["expected_version"] = expected_version
    return body


async def send_command(
    nc: NatsClient,
    command: str,
    body: bytes | dict[str, Any],
    *,
    token: str | None,
    timeout: float = 10.0,
    correlation_id: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    """Publish to `careplan.cmd.<command>` and wait for the reply on a private inbox."""
    payload = body if isinstance(body, bytes) else orjson.dumps(body)
    if message_id is None and isinstance(body, dict) and "command_id" in body:
        message_id = str(body["command_id"])
    inbox = nc.new_inbox()
    future: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()
    sub = await nc.subscribe(inbox, future=future, max_msgs=1)
    try:
        headers = {"reply_to": inbox}
        if message_id:
            headers["Nats-Msg-Id"] = message_id
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if correlation_id:
            headers["correlation_id"] = correlation_id
        ack = await nc.jetstream().publish(
            COMMAND_SUBJECT_PREFIX + command, payload, headers=headers, timeout=timeout
        )
        if ack.duplicate and message_id:
            # The stream dropped it as a re-send within its duplicate window: no reply will come.
            return await _outcome_of(nc, message_id, token, timeout)
        msg = await asyncio.wait_for(future, timeout)
        reply: dict[str, Any] = orjson.loads(msg.data)
        return reply
    finally:
        await sub.unsubscribe()


async def ask_outcome(
    nc: NatsClient, command_id: str, token: str | None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """`careplan.query.command`: the stored reply of a command (or the query's own error reply)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = await nc.request(
        QUERY_SUBJECT, orjson.dumps({"command_id": command_id}), timeout=timeout, headers=headers
    )
    outcome: dict[str, Any] = orjson.loads(answer.data)
    return outcome


async def _outcome_of(nc: NatsClient, command_id: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The stored outcome of a command the stream took as a duplicate. NOT_FOUND while the first copy is
    still queued, so asked again until `timeout`; NOT_FOUND to the end means the id was someone else's
    (the duplicate window is stream-wide): send again under a new command id."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        outcome = await ask_outcome(nc, command_id, token, timeout=timeout)
        not_found = (outcome.get("error") or {}).get("code") == "NOT_FOUND"
        if not not_found or asyncio.get_running_loop().time() >= deadline:
            return outcome
        await asyncio.sleep(0.2)
