"""FHIR JSON as people and many clients expect it: `resourceType` first and the elements in the renderer's
(R4's) order, in a read, a vread, a search Bundle and a history Bundle — stored as rendered (migration 0014),
not re-sorted by jsonb."""

from __future__ import annotations

import aiohttp
import orjson
from nats.aio.client import Client as NatsClient

from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.commands import Caller


async def raw(url: str, token: str) -> bytes:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.read()


async def test_resources_are_served_with_resource_type_first_in_the_renderers_order(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant)
    caller = Caller(nc, service.http_url, token)
    plan_id = (await caller.ok("careplan.create", {"patient_id": "p1", "title": "Plan", "status": "active"}))[
        "id"
    ]
    await caller.ok("careplan.update", {"care_plan_id": plan_id, "changes": {"title": "Plan B"}}, 1)
    base = f"{service.http_url}/fhir"
    read = await raw(f"{base}/CarePlan/{plan_id}", token)
    assert read.startswith(b'{"resourceType":"CarePlan","id":'), read[:60]
    assert list(orjson.loads(read))[:4] == ["resourceType", "id", "meta", "text"]
    assert (await raw(f"{base}/CarePlan/{plan_id}/_history/1", token)).startswith(
        b'{"resourceType":"CarePlan"'
    )
    for bundle_url in (f"{base}/CarePlan?_id={plan_id}", f"{base}/CarePlan/{plan_id}/_history"):
        bundle = await raw(bundle_url, token)
        assert bundle.startswith(b'{"resourceType":"Bundle"'), bundle[:60]
        for entry in orjson.loads(bundle)["entry"]:
            assert next(iter(entry["resource"])) == "resourceType"
