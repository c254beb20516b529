"""Program rollouts through the real service (CONTRACT §10): define → publish → enrol → start an activity →
v2 → dry run (nothing written) → run, worked by the service's own worker → each plan at v2 by the rules,
once; progress over NATS and REST; events; a second rollout migrates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import aiohttp
import orjson
from nats.aio.client import Client as NatsClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.fhir_validation import validate_resource
from service.client import envelope, send_command
from service.runner import RunningService
from storage.database import create_engine
from storage.rollout_store import RunningRollout, SqlRolloutStore
from tests.conftest import DatabaseUrls, TokenFactory
from tests.integration.commands import Caller, RestCaller
from tests.integration.fhir_client import fhir_get
from tests.integration.helpers import count_rows
from tests.integration.programs import STAFF, V1, V2, enrol, publish, until_completed
from tests.integration.scrape import moved, scrape
from tests.outbox_ledger import OUTBOX_LEDGER

# The granted advisory lock on one run (storage.rollout_store's key), as pg_locks shows it.
HELD_RUN_LOCK = (
    "FROM pg_locks WHERE locktype = 'advisory' AND granted AND (classid::bigint << 32 | objid::bigint) = "
    "hashtextextended('rollouts/' || :tenant || '/' || :id, 0)"
)
# Everything a rollout could write to: a dry run must leave each as it was.
WRITTEN_TABLES = ("care_plans", "goals", "tasks", "resource_history", "provenance", "command_log", "rollouts")


async def keyed(engine: AsyncEngine, tenant: str, plan_id: str) -> dict[str, tuple[str, str, int]]:
    """A plan's items by program key: (id, status, version)."""
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT state ->> 'program_key', id, status, version FROM tasks WHERE tenant_id = :t "
                    "AND plan_id = :p AND state ->> 'program_key' IS NOT NULL UNION ALL "
                    "SELECT state ->> 'program_key', id, lifecycle_status, version FROM goals "
                    "WHERE tenant_id = :t AND plan_id = :p AND state ->> 'program_key' IS NOT NULL"
                ),
                {"t": tenant, "p": plan_id},
            )
        ).all()
    return {key: (item_id, status, version) for key, item_id, status, version in rows}


async def counts(engine: AsyncEngine, tenant: str) -> dict[str, int]:
    return {table: await count_rows(engine, table, tenant) for table in WRITTEN_TABLES}


async def event_subjects(engine: AsyncEngine, tenant: str) -> list[str]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(f"SELECT subject FROM {OUTBOX_LEDGER} WHERE tenant_id = :t ORDER BY id"), {"t": tenant}
            )
        ).all()
    return [s.removeprefix(f"careplan.evt.{tenant}.") for (s,) in rows]


async def test_a_rollout_moves_enrolled_plans_to_the_new_version_by_the_rules(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant, roles=STAFF)
    caller = Caller(nc, service.http_url, token)
    v1 = await publish(caller, V1)
    fresh, begun = await enrol(caller, "p1"), await enrol(caller, "p2")
    foot_exam = (await keyed(admin_engine, tenant, begun))["foot-exam"][0]
    await caller.ok("activity.change_status", {"activity_id": foot_exam, "status": "accepted"}, 1)
    await caller.ok("activity.change_status", {"activity_id": foot_exam, "status": "in-progress"}, 2)
    by_hand = await caller.ok(
        "goal.add",
        {"care_plan_id": fresh, "description": {"text": "Walk daily"}, "lifecycle_status": "active"},
    )
    v2 = await publish(caller, V2 | {"revises": v1})
    before = await counts(admin_engine, tenant)
    metrics_before = await scrape(service)

    # The dry run: what a run would do, per plan; nothing written, not even the command's outcome.
    dry = await caller.ok("program.rollout", {"program_id": v2})
    assert await counts(admin_engine, tenant) == before
    report = dry["rollout"]
    assert report["totals"] == {"plans": 2, "add": 2, "cancel": 1, "update": 0, "keep": 1, "skipped": 0}
    groups = {tuple(g["care_plan_ids"]): (g["add"], g["cancel"], g["keep"]) for g in report["changes"]}
    assert groups == {
        (fresh,): (["eye-exam"], ["foot-exam"], []),
        (begun,): (["eye-exam"], [], ["foot-exam"]),
    }

    started = await caller.send("program.rollout", {"program_id": v2, "dry_run": False})
    assert (started["ok"], started["status"]) == (True, 202), started
    rollout_id = started["result"]["rollout_id"]
    done = await until_completed(nc, token, rollout_id)
    assert done["plans"] == {"total": 2, "pending": 0, "migrated": 2, "skipped": 0}
    assert done["totals"] == {"added": 2, "cancelled": 1, "updated": 0, "kept": 1}
    assert done["conflicts"] == [{"care_plan_id": begun, "kept": ["foot-exam"]}]
    metrics = await scrape(service)
    assert moved(metrics_before, metrics, "careplan_rollout_plans_total", state="migrated") == 2
    assert moved(metrics_before, metrics, "careplan_rollout_conflicts_total") == 1
    assert ("careplan_rollout_lag_seconds", frozenset()) in metrics
    assert ("careplan_rollout_pending_plans", frozenset()) in metrics

    items = {plan_id: await keyed(admin_engine, tenant, plan_id) for plan_id in (fresh, begun)}
    assert items[fresh]["foot-exam"][1:] == ("cancelled", 2)
    assert items[begun]["foot-exam"][1:] == ("in-progress", 3)  # started: kept, untouched
    assert {items[p]["eye-exam"][1] for p in items} == {"requested"}
    assert {items[p]["a1c-lab"][2] for p in items} == {1}  # same template: not even a new version
    for plan_id in (fresh, begun):
        plan = await caller.read("CarePlan", plan_id)
        validate_resource(plan)
        assert plan["instantiatesCanonical"] == [
            f"https://care-plan-service.dev/fhir/programs/{tenant}/type-2-diabetes|2"
        ]
        assert items[plan_id]["eye-exam"][0] in {
            a["reference"]["reference"].split("/")[1] for a in plan["activity"]
        }
        for key, (item_id, _, _) in items[plan_id].items():
            resource = await caller.read("Goal" if key == "a1c" else "Task", item_id)
            validate_resource(resource)
    assert (await caller.read("Goal", by_hand["id"]))["meta"]["versionId"] == "1"

    await asyncio.sleep(1.0)  # the relay publishes what the migrations committed
    events = await event_subjects(admin_engine, tenant)
    assert events.count("careplan.migrated") == 2
    assert events.count("program.rollout_completed") == 1

    # A second rollout finds every plan at v2: nothing to migrate.
    again = await caller.ok("program.rollout", {"program_id": v2})
    assert again["rollout"]["totals"]["plans"] == 0
    second = await caller.send("program.rollout", {"program_id": v2, "dry_run": False})
    nothing = await until_completed(nc, token, second["result"]["rollout_id"])
    assert nothing["plans"]["total"] == 0
    assert (await event_subjects(admin_engine, tenant)).count("careplan.migrated") == 2


async def test_the_rest_routes_dry_run_start_and_report_a_rollout(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    token = token_for(tenant, roles=STAFF)
    caller = RestCaller(nc, service.http_url, token)
    v1 = await publish(caller, V1)
    plan_id = await enrol(caller, "p1")
    v2 = await publish(caller, V2 | {"revises": v1})
    status, _, dry = await caller.request("program.rollout", {"program_id": v2})
    assert status == 200 and dry["rollout"]["totals"]["plans"] == 1, dry
    status, headers, started = await caller.request("program.rollout", {"program_id": v2, "dry_run": False})
    assert status == 202, started
    rollout_id = started["rollout_id"]
    assert headers["Location"].endswith(f"/api/v1/rollouts/{rollout_id}")
    await until_completed(nc, token, rollout_id)
    async with aiohttp.ClientSession() as http:
        url = f"{service.http_url}/api/v1/rollouts/{rollout_id}"
        async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            assert response.status == 200
            body = orjson.loads(await response.read())
        assert (body["status"], body["plans"]["migrated"], body["to"].endswith("|2")) == (
            "completed",
            1,
            True,
        )
        for other, expected in (
            (token_for(f"{tenant}x", roles=STAFF), 404),
            (token_for(tenant, roles=["patient"], patient_id="p1"), 403),
        ):
            async with http.get(url, headers={"Authorization": f"Bearer {other}"}) as response:
                assert response.status == expected, await response.text()
        async with http.get(
            f"{service.http_url}/api/v1/rollouts/not-a-uuid", headers={"Authorization": f"Bearer {token}"}
        ) as response:
            assert response.status == 404
    status, plan = await fhir_get(f"{service.http_url}/fhir/CarePlan/{plan_id}", token)
    assert status == 200 and plan["instantiatesCanonical"][0].endswith("|2")


async def test_bad_rollouts_are_typed_errors_and_write_nothing(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant, roles=STAFF)
    caller = Caller(nc, service.http_url, token)
    v1 = await publish(caller, V1)
    await enrol(caller, "p1")
    draft = (await caller.ok("program.define", V2 | {"revises": v1}))["id"]
    hand_made = (
        await caller.ok("careplan.create", {"patient_id": "p1", "title": "By hand", "status": "active"})
    )["id"]
    cases = {
        "draft": ({"program_id": draft, "dry_run": False}, "INVALID_TRANSITION", "program_id"),
        "unknown": ({"program_id": "nope", "dry_run": False}, "NOT_FOUND", None),
        "not enrolled": (
            {"program_id": v1, "care_plan_ids": [hand_made]},
            "VALIDATION_ERROR",
            "data.care_plan_ids.0",
        ),
        "no such plan": (
            {"program_id": v1, "care_plan_ids": ["zz"], "dry_run": False},
            "VALIDATION_ERROR",
            "data.care_plan_ids.0",
        ),
        "bad flag": ({"program_id": v1, "dry_run": "perhaps"}, "VALIDATION_ERROR", "data.dry_run"),
    }
    for case, (data, code, path) in cases.items():
        reply = await caller.send("program.rollout", data)
        assert reply["ok"] is False and reply["error"]["code"] == code, (case, reply)
        if path:
            assert path in orjson.dumps(reply["error"]).decode(), (case, reply)
    clinician = await send_command(
        nc, "program.rollout", envelope({"program_id": v1, "dry_run": False}), token=token_for(tenant)
    )
    assert clinician["error"]["code"] == "FORBIDDEN"
    assert await count_rows(admin_engine, "rollouts", tenant) == 0
    assert await count_rows(admin_engine, "rollout_plans", tenant) == 0


async def test_one_process_at_a_time_holds_a_rollout_and_its_death_frees_it(database: DatabaseUrls) -> None:
    # Given two processes' stores over the same database
    engines = [create_engine(url, pool_size=2) for url in (database.system, database.runtime) * 2]
    first = SqlRolloutStore(engines[0], engines[1])
    second = SqlRolloutStore(engines[2], engines[3])
    running = RunningRollout("t-lock", uuid.uuid4())
    taken_after_death = False
    try:
        async with first.hold(running) as held:
            assert held is True
            # then while the first works the run, the second may not
            async with second.hold(running) as also:
                assert also is False
            # (another run is free all the same)
            async with second.hold(RunningRollout("t-lock", uuid.uuid4())) as other:
                assert other is True
        # and once the first lets go, or its connection dies with its process, the second takes it
        async with second.hold(running) as now:
            assert now is True
        # and when the holder's backend dies with its process, Postgres frees the lock at once
        admin = create_engine(database.admin, pool_size=1)
        engines.append(admin)
        with contextlib.suppress(Exception):  # the dead holder's own way out fails; that is the point
            async with first.hold(running) as again:
                assert again is True
                async with admin.connect() as conn:
                    killed = await conn.scalar(
                        text(f"SELECT pg_terminate_backend(pid) {HELD_RUN_LOCK}"),
                        {"tenant": running.tenant_id, "id": str(running.rollout_id)},
                    )
                    assert killed is True
                    # pg_terminate_backend only signals: the backend lets go as it exits, a moment later
                    for _ in range(100):
                        if not await conn.scalar(
                            text(f"SELECT count(*) {HELD_RUN_LOCK}"),
                            {"tenant": running.tenant_id, "id": str(running.rollout_id)},
                        ):
                            break
                        await asyncio.sleep(0.02)
                async with second.hold(running) as after_death:
                    assert after_death is True
                    taken_after_death = True
        assert taken_after_death
    finally:
        for engine in engines:
            await engine.dispose()
