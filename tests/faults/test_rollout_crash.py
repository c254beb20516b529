"""`careplan serve` killed with SIGKILL in the middle of a program rollout of 500 plans (CONTRACT §10): after
a restart the run resumes where it stopped, every plan is migrated exactly once, and every
`careplan.migrated` event is on the stream once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient

from service.client import envelope, send_command
from service.dev_identity import DevKeys
from tests.faults.lab import Lab, until
from tests.faults.load import read_stream
from tests.outbox_ledger import OUTBOX_LEDGER

TENANT = "t-rollout-crash"
PLANS = 500
PROGRAM: dict[str, Any] = {
    "name": "copd",
    "title": "COPD",
    "goals": [{"key": "breath", "description": {"text": "Fewer exacerbations"}}],
    "activities": [
        {"key": "spirometry", "description": "Spirometry", "goal_keys": ["breath"], "start_after": "P4W"},
        {"key": "inhaler", "description": "Inhaler technique check", "start_after": "P2W"},
    ],
}
V2 = PROGRAM | {
    "activities": [
        {"key": "spirometry", "description": "Spirometry", "goal_keys": ["breath"], "start_after": "P6W"},
        {"key": "rehab", "description": "Pulmonary rehabilitation", "duration": "P8W"},
    ]
}


async def ok(nc: NatsClient, token: str, command: str, data: dict[str, Any]) -> dict[str, Any]:
    reply = await send_command(nc, command, envelope(data), token=token, timeout=30)
    assert reply["ok"] is True, reply
    result: dict[str, Any] = reply["result"]
    return result


async def publish(nc: NatsClient, token: str, data: dict[str, Any]) -> str:
    program_id: str = (await ok(nc, token, "program.define", data))["id"]
    await ok(nc, token, "program.change_status", {"program_id": program_id, "status": "active"})
    return program_id


async def test_kill_9_during_a_rollout_then_restart_migrates_every_plan_once(lab: Lab, keys: DevKeys) -> None:
    # A slow first worker (one plan at a time), so that the kill lands in the middle of the run.
    first = lab.serve("first", rollout_concurrency=1, rollout_poll_interval_s=0.2)
    await first.ready()
    nc = await lab.connect()
    token = keys.mint(tenant_id=TENANT, roles=["clinician", "program-author"])
    try:
        v1 = await publish(nc, token, PROGRAM)
        gate = asyncio.Semaphore(32)

        async def enrol(n: int) -> str:
            async with gate:
                plan_id: str = (
                    await ok(nc, token, "careplan.enroll", {"patient_id": f"p{n}", "program": "copd"})
                )["id"]
                return plan_id

        plans = set(await asyncio.gather(*(enrol(n) for n in range(PLANS))))
        v2 = await publish(nc, token, V2 | {"revises": v1})

        # Given a run of 500 plans under way, when the process is killed part-way through it
        rollout_id = (await ok(nc, token, "program.rollout", {"program_id": v2, "dry_run": False}))[
            "rollout_id"
        ]

        async def some_migrated() -> bool:
            return int(await migrated_count(lab, rollout_id)) >= 40

        await until(some_migrated, 60, "the first plans migrated")
        first.kill()
        at_kill = await migrated_count(lab, rollout_id)
        assert at_kill < PLANS, "the rollout finished before the kill: nothing was in flight"

        # Then a restarted process resumes the run and finishes it
        second = lab.serve("second", rollout_poll_interval_s=0.2)
        await second.ready()

        async def completed() -> bool:
            return bool(
                await lab.scalar("SELECT status = 'completed' FROM rollouts WHERE id = :r", r=rollout_id)
            )

        await until(completed, 120, "the rollout completed")
        states = await lab.rows(
            "SELECT plan_id, state FROM rollout_plans WHERE rollout_id = :r", r=rollout_id
        )
        assert {plan_id for plan_id, _ in states} == plans
        assert Counter(state for _, state in states) == {"migrated": PLANS}

        # every plan once: one migration in the command log, one new CarePlan version from it, at v2
        migrations = await lab.rows(
            "SELECT command_id FROM command_log WHERE tenant_id = :t AND command_type = 'careplan.migrate'",
            t=TENANT,
        )
        assert len(migrations) == PLANS
        versions = await lab.rows(
            "SELECT resource_id, count(*) FROM resource_history WHERE tenant_id = :t "
            "AND resource_type = 'CarePlan' AND command_id IN (SELECT command_id FROM command_log "
            "WHERE tenant_id = :t AND command_type = 'careplan.migrate') GROUP BY resource_id",
            t=TENANT,
        )
        assert {plan_id: n for plan_id, n in versions} == dict.fromkeys(plans, 1)
        following = await lab.rows(
            "SELECT DISTINCT state -> 'instantiates' ->> 0 FROM care_plans WHERE tenant_id = :t", t=TENANT
        )
        assert [canonical.rsplit("|", 1)[1] for (canonical,) in following] == ["2"]
        # each plan's inhaler check cancelled once, its rehabilitation added once
        tasks = await lab.rows(
            "SELECT state ->> 'program_key', status, count(*) FROM tasks WHERE tenant_id = :t GROUP BY 1, 2",
            t=TENANT,
        )
        assert sorted(tasks) == [
            ("inhaler", "cancelled", PLANS),
            ("rehab", "requested", PLANS),
            ("spirometry", "requested", PLANS),
        ]

        # and every careplan.migrated event is on the stream once, one per plan, and the run's end once
        await lab.outbox_drained()
        events = [e for e in await read_stream(nc, "CAREPLAN_EVENTS") if e["tenantid"] == TENANT]
        assert [i for i, n in Counter(e["id"] for e in events).items() if n > 1] == []
        migrated = [e for e in events if e["type"] == "careplan.careplan.migrated"]
        assert Counter(e["subject"] for e in migrated) == {f"CarePlan/{p}": 1 for p in plans}
        completions = [e for e in events if e["type"] == "careplan.program.rollout_completed"]
        assert len(completions) == 1
        assert completions[0]["data"]["plans"] == {
            "total": PLANS,
            "pending": 0,
            "migrated": PLANS,
            "skipped": 0,
        }
        ledger = await lab.rows(
            f"SELECT count(*) FROM {OUTBOX_LEDGER} WHERE tenant_id = :t "
            "AND subject LIKE '%.careplan.migrated'",
            t=TENANT,
        )
        assert ledger == [(PLANS,)]
        print(f"rollout kill -9: {at_kill}/{PLANS} plans migrated before the kill")
        payload = orjson.dumps(completions[0]["data"]["totals"]).decode()
        assert (
            payload
            == orjson.dumps({"added": PLANS, "cancelled": PLANS, "updated": PLANS, "kept": 0}).decode()
        )
    finally:
        await nc.close()


async def migrated_count(lab: Lab, rollout_id: str) -> int:
    return int(
        await lab.scalar(
            "SELECT count(*) FROM rollout_plans WHERE rollout_id = :r AND state = 'migrated'", r=rollout_id
        )
    )
