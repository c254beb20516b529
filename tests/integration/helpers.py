"""Small helpers the integration tests share: reading events back, counting rows as the owner, comparing an
answer repeated from the command log with the first."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.wal_position import WalPosition

CARE_PLAN = {"patient_id": "p1", "title": "Type 2 diabetes care plan", "status": "active"}


async def last_event(nc: NatsClient, stream: str, subject: str, timeout: float = 10.0) -> dict[str, Any]:
    """The newest message on `subject`, waiting for the relay to publish it."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            msg = await js.get_last_msg(stream, subject)
            assert msg.data is not None
            event: dict[str, Any] = orjson.loads(msg.data)
            event["_headers"] = dict(msg.headers or {})
            return event
        except NotFoundError:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no message on {subject} in {stream} within {timeout}s") from None
            await asyncio.sleep(0.05)


async def event_caused_by(
    nc: NatsClient, stream: str, subject: str, command_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """The newest message on `subject` once it is the one `command_id` caused (earlier commands may have
    published on the same subject, and the relay publishes after the reply)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        event = await last_event(nc, stream, subject, timeout)
        if event.get("causationid") == command_id:
            return event
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no event on {subject} caused by {command_id} within {timeout}s")
        await asyncio.sleep(0.05)


async def count_messages(nc: NatsClient, stream: str, subject: str) -> int:
    info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def count_rows(engine: AsyncEngine, table: str, tenant_id: str) -> int:
    """As the owner (superuser), so RLS does not hide anything."""
    async with engine.connect() as conn:
        count = await conn.scalar(
            text(f"SELECT count(*) FROM {table} WHERE tenant_id = :t"), {"t": tenant_id}
        )
    return int(count or 0)


def but_for_position(reply: dict[str, Any]) -> dict[str, Any]:
    """A reply without its `result.position`: what stays the same each time the command log answers."""
    if "result" not in reply:
        return reply
    return reply | {"result": {k: v for k, v in reply["result"].items() if k != "position"}}


def assert_same_answer(again: dict[str, Any], first: dict[str, Any]) -> None:
    """The same outcome; on a success, a position at or after the first answer's (CONTRACT §11: the stored
    outcome is answered with the WAL position at the time, at or after its commit)."""
    assert but_for_position(again) == but_for_position(first)
    if "result" in first:
        position, earlier = again["result"]["position"], first["result"]["position"]
        assert WalPosition.parse(position) >= WalPosition.parse(earlier), (position, earlier)
