"""Real NATS responders that play the services we do not own (CONTRACT §8), answering from a small
world the test arranges, and able to go slow, answer garbage, or vanish (no responders)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from integrations.upstream import UpstreamSubjects

Answer = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass
class Request:
    body: dict[str, Any]
    headers: dict[str, str]


class Responder:
    """One service on one subject. `delay_s` makes it slow, `raw_reply` makes it answer those bytes
    instead, `stop()` takes it away; every request it receives is kept in `requests`."""

    def __init__(self, nc: NatsClient, subject: str, answer: Answer) -> None:
        self.subject = subject
        self.requests: list[Request] = []
        self.delay_s = 0.0
        self.raw_reply: bytes | None = None
        self._nc = nc
        self._answer = answer
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._sub is None:
            self._sub = await self._nc.subscribe(self.subject, cb=self._on_request)
            await self._nc.flush()

    async def stop(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            await sub.unsubscribe()
            await self._nc.flush()

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _on_request(self, msg: Msg) -> None:
        # A task per request, so one slow answer does not hold up the next request.
        task = asyncio.create_task(self._respond(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respond(self, msg: Msg) -> None:
        body = orjson.loads(msg.data)
        self.requests.append(Request(body, dict(msg.headers or {})))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        reply = self.raw_reply if self.raw_reply is not None else orjson.dumps(self._answer(body))
        with contextlib.suppress(Exception):  # the requester may be gone (it timed out)
            await msg.respond(reply)


@dataclass
class UpstreamWorld:
    """What registration, scheduling, the provider directory and terminology know, per tenant."""

    patients: dict[tuple[str, str], bool] = field(default_factory=dict)  # (tenant, id) → active
    encounters: dict[tuple[str, str], str] = field(default_factory=dict)  # (tenant, id) → patient id
    practitioners: dict[tuple[str, str], bool] = field(default_factory=dict)  # (tenant, id) → active
    unknown_codes: dict[tuple[str, str], str] = field(default_factory=dict)  # (system, code) → message

    def patient(self, request: dict[str, Any]) -> dict[str, Any]:
        active = self.patients.get((request["tenant_id"], request["patient_id"]))
        return {"found": active is not None, "active": bool(active)}

    def encounter(self, request: dict[str, Any]) -> dict[str, Any]:
        patient_id = self.encounters.get((request["tenant_id"], request["encounter_id"]))
        return {"found": True, "patient_id": patient_id} if patient_id else {"found": False}

    def practitioner(self, request: dict[str, Any]) -> dict[str, Any]:
        active = self.practitioners.get((request["tenant_id"], request["practitioner_id"]))
        return {"found": active is not None, "active": bool(active)}

    def code(self, request: dict[str, Any]) -> dict[str, Any]:
        message = self.unknown_codes.get((request["system"], request["code"]))
        if message is not None:
            return {"result": False, "message": message}
        return {"result": True, "display": request.get("display") or ""}


@dataclass
class UpstreamResponders:
    world: UpstreamWorld
    subjects: UpstreamSubjects
    registration: Responder
    scheduling: Responder
    providers: Responder
    terminology: Responder

    @property
    def all(self) -> tuple[Responder, ...]:
        return (self.registration, self.scheduling, self.providers, self.terminology)

    async def reset(self) -> None:
        """Back to healthy and forgetful: every service up, fast, answering, with no requests seen."""
        for responder in self.all:
            responder.delay_s, responder.raw_reply = 0.0, None
            responder.requests.clear()
            await responder.start()


async def start_responders(nc: NatsClient, world: UpstreamWorld | None = None) -> UpstreamResponders:
    """All four services, on subjects of their own (so tests never answer each other's requests)."""
    world = world or UpstreamWorld()
    prefix = f"test{uuid.uuid4().hex[:8]}"
    subjects = UpstreamSubjects(
        registration=f"{prefix}.registration.patient.get",
        scheduling=f"{prefix}.scheduling.encounter.get",
        providers=f"{prefix}.providers.practitioner.get",
        terminology=f"{prefix}.terminology.code.validate",
    )
    responders = UpstreamResponders(
        world,
        subjects,
        Responder(nc, subjects.registration, world.patient),
        Responder(nc, subjects.scheduling, world.encounter),
        Responder(nc, subjects.providers, world.practitioner),
        Responder(nc, subjects.terminology, world.code),
    )
    for responder in responders.all:
        await responder.start()
    return responders
