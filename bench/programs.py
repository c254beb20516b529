"""Issue 18's enrolment target: `careplan.enroll` into a programme of 10 goals and 20 activities against
`careplan.create`, through the same `careplan serve`, in the same run: its time per command at 1 in flight
and its throughput at `concurrency` in flight, as ratios (target: enrolment at most 3 times a create)."""

from __future__ import annotations

import itertools
import uuid
from typing import Any

from bench.commands import command_client
from bench.infra import Servers, careplan_serve
from bench.load import CommandClient, Request, Run, closed_loop
from bench.workload import TENANTS, CreateOnly

GOALS, ACTIVITIES = 10, 20
TARGET = 3.0  # enrolment ÷ create, time per command


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


async def _publish(client: CommandClient, author: str) -> None:
    defined = await client.send("program.define", programme(), author)
    assert defined.get("ok"), defined
    published = await client.send(
        "program.change_status", {"program_id": defined["result"]["id"], "status": "active"}, author
    )
    assert published.get("ok"), published


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
    return {
        "runs": [r.summary() for r in runs.values()],
        "programme": {"goals": GOALS, "activities": ACTIVITIES},
        "ratios": ratios,
        "verdicts": {name: {"value": v, "target": TARGET, "met": v <= TARGET} for name, v in ratios.items()},
        "errors": len(creates.errors) + len(enrolments.errors),
        "first_error": next(iter(creates.errors + enrolments.errors), None),
        "peak_rss_mb": round(peak_rss / 2**20, 1),
    }
