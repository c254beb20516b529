"""Replies go to callers' inboxes only (issue 15, row 3): a `reply_to` naming another tenant's events, the
audit stream, an upstream request subject or the JetStream API gets nothing published there, while the
command itself is processed and its outcome can be asked for."""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from handlers.queries import QUERY_SUBJECT
from schemas.commands import COMMAND_SUBJECT_PREFIX
from service.client import ask_outcome, envelope
from service.runner import RunningService
from tests.conftest import TokenFactory

QUIET_S = 1.0  # how long nothing must arrive where a reply must not go


def refused(service: RunningService, kind: str, reason: str) -> float:
    return (
        service.metrics.registry.get_sample_value(
            "careplan_replies_refused_total", {"kind": kind, "reason": reason}
        )
        or 0.0
    )


async def listen(nc: NatsClient, subject: str) -> list[Msg]:
    """Everything published on `subject` (core NATS: what a reply would be), from now on."""
    seen: list[Msg] = []

    async def keep(msg: Msg) -> None:
        seen.append(msg)

    await nc.subscribe(subject, cb=keep)
    await nc.flush()
    return seen


@pytest.mark.parametrize(
    "target",
    [
        "careplan.audit.{other}",
        "careplan.evt.{other}.careplan.created",
        "registration.patient.get",
        "$JS.API.STREAM.PURGE.CAREPLAN_EVENTS",
        "replies.not-an-inbox",
    ],
)
async def test_a_reply_to_outside_the_inboxes_gets_nothing_yet_the_command_is_applied(
    service: RunningService, nc: NatsClient, token_for: TokenFactory, tenant: str, target: str
) -> None:
    subject = target.format(other=f"x{uuid.uuid4().hex[:8]}")
    token = token_for(tenant)
    seen = await listen(nc, subject)
    reason = "not an inbox" if subject.startswith("replies.") else "a platform subject"
    before = refused(service, "command", reason)
    body = envelope({"patient_id": "p1", "title": "Plan"})
    command_id = str(body["command_id"])

    await nc.jetstream().publish(
        COMMAND_SUBJECT_PREFIX + "careplan.create",
        orjson.dumps(body),
        headers={"Nats-Msg-Id": command_id, "Authorization": f"Bearer {token}", "reply_to": subject},
    )

    async def answered() -> dict[str, object]:
        while True:
            stored = await ask_outcome(nc, command_id, token)
            if stored.get("ok"):
                return stored
            await asyncio.sleep(0.05)

    stored = await asyncio.wait_for(answered(), 10)
    assert stored["status"] == 201
    await asyncio.sleep(QUIET_S)
    assert seen == []
    assert refused(service, "command", reason) == before + 1


async def test_the_outcome_query_answers_only_an_inbox(
    service: RunningService, nc: NatsClient, token_for: TokenFactory, tenant: str
) -> None:
    token = token_for(tenant)
    victim = f"careplan.audit.x{uuid.uuid4().hex[:8]}"
    seen = await listen(nc, victim)
    before = refused(service, "query", "a platform subject")
    request = orjson.dumps({"command_id": str(uuid.uuid4())})

    await nc.publish(QUERY_SUBJECT, request, reply=victim, headers={"Authorization": f"Bearer {token}"})
    await nc.flush()

    answered_inbox = orjson.loads(
        (
            await nc.request(QUERY_SUBJECT, request, timeout=5, headers={"Authorization": f"Bearer {token}"})
        ).data
    )
    assert answered_inbox["error"]["code"] == "NOT_FOUND"  # an inbox still gets its answer
    await asyncio.sleep(QUIET_S)
    assert seen == []
    assert refused(service, "query", "a platform subject") == before + 1
