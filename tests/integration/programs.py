"""Programs and rollouts as the integration tests drive them: two versions of one program, published and
enrolled in through a Caller, and a rollout waited for through its progress query."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient

from tests.integration.commands import Caller

STAFF = ["clinician", "program-author"]
V1: dict[str, Any] = {
    "name": "type-2-diabetes",
    "title": "Type 2 diabetes",
    "goals": [{"key": "a1c", "description": {"text": "HbA1c below 7 %"}}],
    "activities": [
        {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P12W"},
        {"key": "foot-exam", "description": "Foot examination", "start_after": "P3M"},
    ],
}
V2: dict[str, Any] = V1 | {
    "activities": [
        {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P12W"},
        {"key": "eye-exam", "description": "Retinal screening", "start_after": "P6M", "duration": "P8W"},
    ]
}


async def publish(caller: Caller, data: dict[str, Any]) -> str:
    program_id: str = (await caller.ok("program.define", data))["id"]
    await caller.ok("program.change_status", {"program_id": program_id, "status": "active"})
    return program_id


async def enrol(caller: Caller, patient_id: str) -> str:
    plan_id: str = (
        await caller.ok("careplan.enroll", {"patient_id": patient_id, "program": "type-2-diabetes"})
    )["id"]
    return plan_id


async def rollout_progress(nc: NatsClient, token: str, rollout_id: str) -> dict[str, Any]:
    msg = await nc.request(
        "careplan.query.rollout",
        orjson.dumps({"rollout_id": rollout_id}),
        timeout=5,
        headers={"Authorization": f"Bearer {token}"},
    )
    answer: dict[str, Any] = orjson.loads(msg.data)
    return answer


async def until_completed(nc: NatsClient, token: str, rollout_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        answer = await rollout_progress(nc, token, rollout_id)
        assert answer["ok"] is True, answer
        if answer["result"]["status"] == "completed":
            result: dict[str, Any] = answer["result"]
            return result
        assert asyncio.get_running_loop().time() < deadline, answer
        await asyncio.sleep(0.1)
