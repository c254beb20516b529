"""The realistic command mix: `careplan.create`, `goal.add`, `careplan.update`, `activity.change_status`
in equal parts, from callers that each own a few plans (so versions never conflict), across tenants."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

from bench.load import CommandClient, Request
from domain.search_query import MAX_CRITERIA, MAX_INCLUDES, MAX_OR_VALUES, MAX_SORT_KEYS
from service.dev_identity import DevKeys

TENANTS = 8
PLANS_PER_CALLER = 2
MIX = ("careplan.create", "goal.add", "careplan.update", "activity.change_status")

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"


def new_plan(patient: str) -> dict[str, Any]:
    return {
        "patient_id": patient,
        "title": "Type 2 diabetes care plan",
        "description": "Glycaemic control, foot care and education after diagnosis.",
        "status": "active",
        "categories": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
                        "code": "assess-plan",
                    }
                ]
            }
        ],
        "addresses": [{"coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes type 2"}]}],
        "period": {"start": "2026-01-05"},
        "author_id": "dr-bench",
        "review": {"interval_days": 90},
        "notes": ["Agreed with the patient at the first visit."],
    }


def new_goal(plan_id: str) -> dict[str, Any]:
    return {
        "care_plan_id": plan_id,
        "description": {"text": "HbA1c below 7%"},
        "lifecycle_status": "active",
        "achievement_status": "in-progress",
        "targets": [
            {
                "measure": {"coding": [{"system": LOINC, "code": "4548-4", "display": "Hemoglobin A1c"}]},
                "detail": {"quantity": {"value": 7, "unit": "%"}},
                "due_date": "2027-06-30",
            }
        ],
    }


@dataclass
class OwnedPlan:
    plan_id: str
    version: int
    activity_id: str
    activity_version: int
    activity_status: str


@dataclass
class Caller:
    token: str
    tenant: str
    plans: list[OwnedPlan]


class CommandMix:
    """Set up each caller's plans (not timed), then `request` sends the mix."""

    def __init__(self, client: CommandClient, keys: DevKeys, *, run_id: str) -> None:
        self._client = client
        self._keys = keys
        self._run_id = run_id
        self._callers: list[Caller] = []
        self._patients = itertools.count()
        self._edits = itertools.count()
        self.errors: list[dict[str, Any]] = []  # error replies of the measured mix, for the report

    async def setup(self, callers: int) -> None:
        tokens = [
            self._keys.mint(tenant_id=f"{self._run_id}t{i}", roles=["clinician"]) for i in range(TENANTS)
        ]
        self._callers = [
            Caller(tokens[i % TENANTS], f"{self._run_id}t{i % TENANTS}", []) for i in range(callers)
        ]
        await asyncio.gather(*(self._own_plans(c) for c in self._callers))

    async def _own_plans(self, caller: Caller) -> None:
        for _ in range(PLANS_PER_CALLER):
            plan = await self._ok(caller, "careplan.create", new_plan(self._patient()))
            activity = await self._ok(
                caller,
                "activity.add",
                {"care_plan_id": plan["id"], "description": "Daily 30-minute walk", "status": "ready"},
            )
            started = await self._ok(
                caller,
                "activity.change_status",
                {"activity_id": activity["id"], "status": "in-progress"},
                version=activity["version"],
            )
            caller.plans.append(OwnedPlan(plan["id"], 2, activity["id"], started["version"], "in-progress"))

    def _patient(self) -> str:
        return f"patient-{next(self._patients)}"

    async def _ok(
        self, caller: Caller, command: str, data: dict[str, Any], version: int | None = None
    ) -> dict[str, Any]:
        reply = await self._client.send(command, data, caller.token, expected_version=version)
        if not reply.get("ok"):
            raise RuntimeError(f"{command} failed in set-up: {reply}")
        result: dict[str, Any] = reply["result"]
        return result

    def request(self) -> Request:
        async def send(index: int, n: int) -> bool:
            caller = self._callers[index]
            plan = caller.plans[(n // len(MIX)) % len(caller.plans)]
            command = MIX[n % len(MIX)]
            if command == "careplan.create":
                reply = await self._client.send(command, new_plan(self._patient()), caller.token)
            elif command == "goal.add":
                reply = await self._client.send(command, new_goal(plan.plan_id), caller.token)
                plan.version += 1 if reply.get("ok") else 0
            elif command == "careplan.update":
                # Always a new text: an update that changes nothing makes no new version.
                changes = {"description": f"Reviewed ({next(self._edits)})."}
                reply = await self._client.send(
                    command,
                    {"care_plan_id": plan.plan_id, "changes": changes},
                    caller.token,
                    expected_version=plan.version,
                )
                plan.version += 1 if reply.get("ok") else 0
            else:
                to = "on-hold" if plan.activity_status == "in-progress" else "in-progress"
                reply = await self._client.send(
                    command,
                    {"activity_id": plan.activity_id, "status": to},
                    caller.token,
                    expected_version=plan.activity_version,
                )
                if reply.get("ok"):
                    plan.activity_version, plan.activity_status = reply["result"]["version"], to
            if not reply.get("ok"):
                self.errors.append({**reply, "_command": command, "_plan": plan.plan_id, "_v": plan.version})
            return bool(reply.get("ok"))

        return send


class CreateOnly:
    """`careplan.create` and nothing else, from callers spread over the tenants (no set-up needed)."""

    def __init__(self, client: CommandClient, keys: DevKeys, *, run_id: str) -> None:
        self._client = client
        self._tokens = [keys.mint(tenant_id=f"{run_id}t{i}", roles=["clinician"]) for i in range(TENANTS)]
        self._patients = itertools.count()
        self.errors: list[dict[str, Any]] = []

    def request(self) -> Request:
        async def send(index: int, _n: int) -> bool:
            plan = new_plan(f"patient-{next(self._patients)}")
            reply = await self._client.send("careplan.create", plan, self._tokens[index % TENANTS])
            if not reply.get("ok"):
                self.errors.append(reply)
            return bool(reply.get("ok"))

        return send


def worst_search() -> list[tuple[str, str]]:
    """The costliest search the caps allow (domain.search_query), within the POST body limit:
    MAX_CRITERIA parameters of MAX_OR_VALUES values each, of the costlier kinds (token index lookups, `ap`
    date ranges), every sort key and include allowed, a full page."""
    tokens = [("category", ",".join(f"s|{i:05d}" for i in range(MAX_OR_VALUES)))] * (MAX_CRITERIA - 6)
    dates = [("date", ",".join(f"ap{2000 + i % 26}-0{1 + i % 9}" for i in range(MAX_OR_VALUES)))] * 6
    sort = [("_sort", ",".join(["-date", "status", "intent", "_lastUpdated", "_id"][:MAX_SORT_KEYS]))]
    half = MAX_INCLUDES // 2
    includes = [("_include", "CarePlan:goal")] * half + [("_revinclude", "Provenance:target")] * half
    return [*tokens, *dates, *sort, ("_count", "200"), *includes]
