"""Issue 18's targets, through one `careplan serve`, in one run:
- `careplan.enroll` into a programme of 10 goals and 20 activities against `careplan.create`: time per
  command at 1 in flight and throughput at `concurrency` in flight, as ratios (target: at most 3 times);
- a rollout of v2 (two activities dropped, two added, a goal's target changed) to the plans enrolled
  above, one run per tenant at once, worked by the service's own worker: plans migrated per second,
  from the first run's start to the last one's end (target: at least 100);
- a dry run over 10,000 enrolled plans, as one `program.rollout` command's round trip (target: at most
  2 s). One tenant's enrolled plans are copied row for row in SQL up to 10,000 (goals and tasks with
  them): what a dry run reads of a plan is the same for a copy."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from sqlalchemy import text

from bench.commands import command_client
from bench.infra import Database, Servers, careplan_serve
from bench.load import CommandClient, Request, Run, closed_loop
from bench.workload import TENANTS, CreateOnly
from storage.database import create_engine

GOALS, ACTIVITIES = 10, 20
TARGET = 3.0  # enrolment ÷ create, time per command
ROLLOUT_TARGET = 100.0  # plans migrated per second, per process
DRY_RUN_PLANS, DRY_RUN_TARGET_S = 10_000, 2.0


def revised(data: dict[str, Any]) -> dict[str, Any]:
    """v2: the last two activities dropped, two new ones, goal 0's target due later."""
    goals = [dict(g) for g in data["goals"]]
    goals[0] = goals[0] | {"targets": [goals[0]["targets"][0] | {"due_after": "P9M"}]}
    activities = data["activities"][:-2] + [
        {"key": f"activity-new-{n}", "description": f"New activity {n}", "goal_keys": ["goal-0"]}
        for n in range(2)
    ]
    return data | {"goals": goals, "activities": activities}


def programme() -> dict[str, Any]:
    """A programme of GOALS goals (one target each) and ACTIVITIES activities, two per goal."""
    goals = [
        {
            "key": f"goal-{g}",
            "description": {"text": f"Goal {g}"},
            "targets": [
                {
                    "measure": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                    "detail": {"quantity": {"value": 7, "unit": "%"}},
                    "due_after": "P6M",
                }
            ],
        }
        for g in range(GOALS)
    ]
    activities = [
        {
            "key": f"activity-{a}",
            "description": f"Activity {a}",
            "goal_keys": [f"goal-{a % GOALS}"],
            "start_after": f"P{a + 1}W",
            "duration": "P2W",
        }
        for a in range(ACTIVITIES)
    ]
    return {"name": "bench-programme", "title": "Bench programme", "goals": goals, "activities": activities}


class Enrolments:
    """`careplan.enroll` into the tenant's published programme, from callers spread over the tenants."""

    def __init__(self, client: CommandClient, tokens: list[str]) -> None:
        self._client = client
        self._tokens = tokens
        self._patients = itertools.count()
        self.errors: list[dict[str, Any]] = []

    def request(self) -> Request:
        async def send(index: int, _n: int) -> bool:
            data = {"patient_id": f"patient-{next(self._patients)}", "program": "bench-programme"}
            reply = await self._client.send("careplan.enroll", data, self._tokens[index % TENANTS])
            if not reply.get("ok"):
                self.errors.append(reply)
            return bool(reply.get("ok"))

        return send


async def _publish(client: CommandClient, author: str, data: dict[str, Any] | None = None) -> str:
    defined = await client.send("program.define", data or programme(), author)
    assert defined.get("ok"), defined
    program_id: str = defined["result"]["id"]
    published = await client.send(
        "program.change_status", {"program_id": program_id, "status": "active"}, author
    )
    assert published.get("ok"), published
    return program_id


async def _rollouts(client: CommandClient, database: Database, runs: list[tuple[str, str]]) -> dict[str, Any]:
    """Start a run per (author token, v2 id) at once; plans migrated per second until the last completes."""
    began = time.perf_counter()
    started = [
        await client.send("program.rollout", {"program_id": program_id, "dry_run": False}, author)
        for author, program_id in runs
    ]
    assert all(s.get("ok") for s in started), started
    ids = [s["result"]["rollout_id"] for s in started]
    engine = create_engine(database.admin, pool_size=1)
    try:
        async with engine.connect() as conn:
            while True:
                done = await conn.scalar(
                    text("SELECT count(*) FROM rollouts WHERE status = 'completed' AND id::text = ANY(:ids)"),
                    {"ids": ids},
                )
                if done == len(ids):
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - began
            states: dict[str, int] = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT state, count(*) FROM rollout_plans WHERE rollout_id::text = ANY(:ids) "
                            "GROUP BY state"
                        ),
                        {"ids": ids},
                    )
                ).all()
            )
    finally:
        await engine.dispose()
    migrated = int(states.get("migrated", 0))
    return {
        "rollouts": len(ids),
        "plans": states,
        "seconds": round(elapsed, 2),
        "plans_per_s": round(migrated / elapsed, 1),
    }


async def _copy_plans(database: Database, tenant: str, wanted: int) -> int:
    """Copies of the tenant's enrolled plans (each with its goals and tasks, new ids) until it has `wanted`
    enrolled plans; the plans the create workload made there are left as they are."""
    engine = create_engine(database.admin, pool_size=1)
    try:
        async with engine.begin() as conn:
            have = int(
                await conn.scalar(text(f"SELECT count(*) FROM care_plans WHERE {_ENROLLED}"), {"t": tenant})
            )
            copies = -(-(wanted - have) // have) if wanted > have else 0
            params = {"t": tenant, "copies": copies, "wanted": wanted - have}
            await conn.execute(text(_COPY_MAP), params)
            for statement in _COPIES:
                await conn.execute(text(statement), {"t": tenant})
            total = int(
                await conn.scalar(text(f"SELECT count(*) FROM care_plans WHERE {_ENROLLED}"), {"t": tenant})
            )
    finally:
        await engine.dispose()
    return total


_ENROLLED = "tenant_id = :t AND state -> 'instantiates' <> '[]'::jsonb"  # not the create workload's plans
_COPY_MAP = (
    "CREATE TEMP TABLE copy_map ON COMMIT DROP AS SELECT id AS old, id || '-c' || n AS new "
    f"FROM care_plans, generate_series(1, :copies) AS n WHERE {_ENROLLED} ORDER BY n, id LIMIT :wanted"
)
_COPIES = (
    "INSERT INTO care_plans (tenant_id, id, version, patient_id, status, last_updated, state, resource) "
    "SELECT p.tenant_id, m.new, p.version, p.patient_id, p.status, p.last_updated, "
    "jsonb_set(p.state, '{id}', to_jsonb(m.new)), p.resource "
    "FROM care_plans p JOIN copy_map m ON p.id = m.old WHERE p.tenant_id = :t",
    "INSERT INTO goals (tenant_id, id, version, plan_id, patient_id, lifecycle_status, achievement_status, "
    "last_updated, state, resource) SELECT g.tenant_id, g.id || substr(m.new, length(m.old) + 1), g.version, "
    "m.new, g.patient_id, g.lifecycle_status, g.achievement_status, g.last_updated, g.state, g.resource "
    "FROM goals g JOIN copy_map m ON g.plan_id = m.old WHERE g.tenant_id = :t",
    "INSERT INTO tasks (tenant_id, id, version, plan_id, patient_id, status, owner_id, is_review, "
    "last_updated, state, resource) SELECT k.tenant_id, k.id || substr(m.new, length(m.old) + 1), "
    "k.version, m.new, k.patient_id, k.status, k.owner_id, k.is_review, k.last_updated, k.state, k.resource "
    "FROM tasks k JOIN copy_map m ON k.plan_id = m.old WHERE k.tenant_id = :t",
    "ANALYZE care_plans, goals, tasks",
)


async def _dry_run(client: CommandClient, author: str, program_id: str) -> dict[str, Any]:
    """One dry run's round trip, the second of two (the first warms the statements up)."""
    seconds: list[float] = []
    for _ in range(2):
        began = time.perf_counter()
        reply = await client.send("program.rollout", {"program_id": program_id}, author)
        seconds.append(time.perf_counter() - began)
        assert reply.get("ok"), reply
    return {"plans": reply["result"]["rollout"]["totals"]["plans"], "seconds": round(seconds[-1], 3)}


async def run_programs(
    servers: Servers, *, concurrency: int, total: int, workers: int, sequential: int
) -> dict[str, Any]:
    database = await servers.fresh_database()
    run_id = uuid.uuid4().hex[:6]
    tenants = [f"{run_id}t{i}" for i in range(TENANTS)]
    async with (
        command_client(servers) as client,
        careplan_serve(
            servers, database, name="programs", replicas=1, extra_env={"CAREPLAN_WORKERS": str(workers)}
        ) as serve,
    ):
        for tenant in tenants:
            await _publish(client, servers.keys.mint(tenant_id=tenant, roles=["program-author"]))
        creates = CreateOnly(client, servers.keys, run_id=run_id)
        enrolments = Enrolments(
            client, [servers.keys.mint(tenant_id=t, roles=["clinician"]) for t in tenants]
        )
        runs: dict[str, Run] = {}
        for name, workload in (("create", creates), ("enrol", enrolments)):
            await closed_loop(
                "warm-up", workload.request(), concurrency=concurrency, total=max(total // 5, 64)
            )
            runs[f"{name}, {concurrency} in flight"] = await closed_loop(
                f"careplan.{'create' if name == 'create' else 'enroll'}, {concurrency} in flight",
                workload.request(),
                concurrency=concurrency,
                total=total,
            )
            runs[f"{name}, 1 in flight"] = await closed_loop(
                f"careplan.{'create' if name == 'create' else 'enroll'}, 1 in flight",
                workload.request(),
                concurrency=1,
                total=sequential,
            )
        authors = [servers.keys.mint(tenant_id=t, roles=["program-author"]) for t in tenants]
        v2 = [await _publish(client, author, revised(programme())) for author in authors]
        # Tenant 0's plans stay at v1 for the dry run; the others are rolled out, all at once.
        rollout = await _rollouts(client, database, list(zip(authors[1:], v2[1:], strict=True)))
        copied = await _copy_plans(database, tenants[0], DRY_RUN_PLANS)
        dry_run = await _dry_run(client, authors[0], v2[0]) | {"copied_to": copied}
        peak_rss = serve.rss.peak_bytes
    create_load, create_one = runs[f"create, {concurrency} in flight"], runs["create, 1 in flight"]
    enrol_load, enrol_one = runs[f"enrol, {concurrency} in flight"], runs["enrol, 1 in flight"]
    ratios = {
        "enrol / create, p50 at 1 in flight": round(
            enrol_one.percentile_ms(50) / create_one.percentile_ms(50), 2
        ),
        f"enrol / create, time per command at {concurrency} in flight": round(
            create_load.throughput / enrol_load.throughput, 2
        ),
    }
    verdicts = {name: {"value": v, "target": TARGET, "met": v <= TARGET} for name, v in ratios.items()}
    verdicts["rollout, plans migrated per second"] = {
        "value": rollout["plans_per_s"],
        "target": ROLLOUT_TARGET,
        "met": rollout["plans_per_s"] >= ROLLOUT_TARGET,
        "at_least": True,
    }
    verdicts[f"dry run over {dry_run['plans']} plans, seconds"] = {
        "value": dry_run["seconds"],
        "target": DRY_RUN_TARGET_S,
        "met": dry_run["plans"] >= DRY_RUN_PLANS and dry_run["seconds"] <= DRY_RUN_TARGET_S,
    }
    return {
        "runs": [r.summary() for r in runs.values()],
        "programme": {"goals": GOALS, "activities": ACTIVITIES},
        "ratios": ratios,
        "rollout": rollout,
        "dry_run": dry_run,
        "verdicts": verdicts,
        "errors": len(creates.errors) + len(enrolments.errors),
        "first_error": next(iter(creates.errors + enrolments.errors), None),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }
