"""Log lines written while a command or a request is handled name it (CONTRACT §12): tenant, command and
correlation ids, through the one logging filter every handler of the service's log has
(service.logs.ContextFields), from the transport's own lines to those after the reply."""

from __future__ import annotations

import asyncio
import logging
import uuid

import orjson
import pytest
from nats.aio.client import Client as NatsClient

from schemas.commands import COMMAND_SUBJECT_PREFIX
from service.client import ask_outcome, envelope
from service.logs import ContextFields
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.fhir_client import fhir_get


def capture(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """What the service logs from now on, through the same filter its own handler has (the test phase's
    handler: pytest makes one per phase)."""
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFields())
    return caplog.handler.records


async def test_a_commands_lines_carry_its_tenant_command_and_correlation(
    service: RunningService,
    nc: NatsClient,
    token_for: TokenFactory,
    tenant: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    records = capture(caplog)
    token = token_for(tenant)
    body = envelope({"patient_id": "p1", "title": "Plan"})
    command_id = str(body["command_id"])
    # A reply_to outside the inboxes: the consumer logs a warning after the command is processed.
    await nc.jetstream().publish(
        COMMAND_SUBJECT_PREFIX + "careplan.create",
        orjson.dumps(body),
        headers={
            "Nats-Msg-Id": command_id,
            "Authorization": f"Bearer {token}",
            "reply_to": "replies.not-an-inbox",
            "correlation_id": "corr-log-1",
        },
    )

    for _ in range(200):
        if (await ask_outcome(nc, command_id, token)).get("ok"):
            break
        await asyncio.sleep(0.05)
    for _ in range(50):
        mine = [r for r in records if "reply_to refused" in r.getMessage() and command_id in r.getMessage()]
        if mine:
            break
        await asyncio.sleep(0.05)
    (line,) = mine
    assert (line.tenant_id, line.command_id, line.correlation_id) == (tenant, command_id, "corr-log-1")  # type: ignore[attr-defined]


async def test_a_requests_lines_carry_its_tenant_and_correlation(
    service: RunningService, token_for: TokenFactory, tenant: str, caplog: pytest.LogCaptureFixture
) -> None:
    records = capture(caplog)
    status, _ = await fhir_get(
        f"{service.http_url}/fhir/CarePlan/{uuid.uuid4()}",
        token_for(tenant),
        headers={"X-Correlation-Id": "corr-log-2"},
    )
    assert status == 404
    (line,) = [
        r for r in records if r.name == "careplan.http" and getattr(r, "correlation_id", None) == "corr-log-2"
    ]
    assert line.tenant_id == tenant  # type: ignore[attr-defined]


def test_outside_any_scope_a_line_names_nothing(caplog: pytest.LogCaptureFixture) -> None:
    records = capture(caplog)
    logging.getLogger("careplan.test").info("alone")
    (line,) = [r for r in records if r.getMessage() == "alone"]
    assert getattr(line, "tenant_id", None) is None and getattr(line, "command_id", None) is None
