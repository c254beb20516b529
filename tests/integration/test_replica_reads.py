"""FHIR reads from a streaming replica, and read-your-writes (CONTRACT §11), against a real replica the tests
make: the embedded PostgreSQL 18 as the primary, `pg_basebackup -R` of it as a hot standby (tests/replica.py).
This module's service has a nats-server of its own, so no other test's command reaches its database.

A paused replay (`pg_wal_replay_pause()`) holds the replica at an older state for as long as a test needs:
a read without `Careplan-Position` shows that state, a read with a reply's position shows the write."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NatsClient

from service.client import envelope, send_command
from service.embedded.nats_server import EmbeddedNats
from service.runner import RunningService, StartupRefused, start_service
from service.settings import Settings
from storage.database import with_database
from storage.read_routing import ReadRouter
from storage.reads import read_resource
from storage.wal_position import WalPosition
from tests.conftest import RUNTIME_ROLE, DatabaseUrls, TokenFactory, migrated_database
from tests.integration.commands import RestCaller
from tests.integration.fhir_client import fhir_get, typed_ids
from tests.integration.helpers import CARE_PLAN
from tests.integration.scrape import Samples, moved, scrape, value
from tests.replica import ReplicatedPostgres, superuser_execute, until_replayed

READ_WAIT_MS = 1000  # long enough to be seen waiting; the reads that wait in vain run side by side


@pytest.fixture(scope="module")
def replicated(short_tmp: Path) -> Iterator[ReplicatedPostgres]:
    with ReplicatedPostgres(short_tmp / f"replica-{uuid.uuid4().hex[:6]}") as servers:
        asyncio.run(servers.replicating())
        yield servers


@pytest.fixture(scope="module")
def replica_database(replicated: ReplicatedPostgres) -> Iterator[DatabaseUrls]:
    """Migrated on the primary; the replica has it (schema, roles, grants) by streaming, once replayed."""
    with migrated_database(replicated.primary.url(), "careplan_replica") as urls:
        asyncio.run(until_replayed(replicated.primary, replicated.standby))
        yield urls


@pytest.fixture(scope="module")
def replica_url(replicated: ReplicatedPostgres, replica_database: DatabaseUrls) -> str:
    """The runtime role on the replica: the same role, bound by RLS there as on the primary."""
    user, password = RUNTIME_ROLE
    return with_database(replicated.standby.url(), replica_database.name, user=user, password=password)


@pytest.fixture(scope="module")
def own_nats_url(short_tmp: Path) -> Iterator[str]:
    with EmbeddedNats(short_tmp / "nats-replica") as server:
        yield server.url


@pytest.fixture(scope="module")
async def own_nc(own_nats_url: str) -> AsyncIterator[NatsClient]:
    client = await nats.connect(own_nats_url)
    yield client
    await client.close()


@pytest.fixture(scope="module")
def replica_settings(
    settings: Settings, replica_database: DatabaseUrls, replica_url: str, own_nats_url: str
) -> Settings:
    return settings.model_copy(
        update={
            "nats_url": own_nats_url,
            "database_url": replica_database.runtime,
            "system_database_url": replica_database.system,
            "read_database_url": replica_url,
            "read_wait_ms": READ_WAIT_MS,
        }
    )


@pytest.fixture(scope="module")
async def replica_service(replica_settings: Settings) -> AsyncIterator[RunningService]:
    running = await start_service(replica_settings)
    yield running
    await running.stop()


@pytest.fixture
async def replay(replicated: ReplicatedPostgres) -> AsyncIterator[Replay]:
    control = Replay(replicated)
    yield control
    await control.resume()  # never leave the replica paused for the next test


class Replay:
    """The replica's WAL replay, paused and resumed by the test."""

    def __init__(self, servers: ReplicatedPostgres) -> None:
        self._servers = servers

    async def pause(self) -> None:
        await superuser_execute(self._servers.standby, "SELECT pg_wal_replay_pause()")
        await _until(self._paused, "replay paused")

    async def resume(self) -> None:
        await superuser_execute(self._servers.standby, "SELECT pg_wal_replay_resume()")

    async def _paused(self) -> bool:
        (state,) = await superuser_execute(self._servers.standby, "SELECT pg_get_wal_replay_pause_state()")
        return bool(state == "paused")

    async def reached(self, position: str) -> bool:
        (replayed,) = await superuser_execute(self._servers.standby, "SELECT pg_last_wal_replay_lsn()::text")
        return WalPosition.parse(str(replayed)) >= WalPosition.parse(position)


async def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def caller(
    replica_service: RunningService, own_nc: NatsClient, tenant: str, token_for: TokenFactory
) -> RestCaller:
    return RestCaller(own_nc, replica_service.http_url, token_for(tenant))


async def fhir(
    service: RunningService, caller: RestCaller, path: str, position: str | None = None, **params: str
) -> tuple[int, dict[str, Any]]:
    headers = {"Careplan-Position": position} if position is not None else {}
    return await fhir_get(f"{service.http_url}/fhir/{path}", caller.token, params=params, headers=headers)


async def created_plan(caller: RestCaller, replay: Replay) -> tuple[str, str]:
    """A plan, replayed on the replica already: its id and the position its creation was answered with."""
    status, headers, body = await caller.request("careplan.create", CARE_PLAN)
    assert status == 201, body
    await _until(lambda: replay.reached(body["position"]), "the replica replays the plan")
    return body["id"], headers["Careplan-Position"]


def reads_by(before: Samples, after: Samples) -> dict[str, float]:
    return {t: moved(before, after, "careplan_fhir_reads_total", target=t) for t in ("primary", "replica")}


async def test_reads_go_to_the_replica_and_see_what_it_has_replayed(
    replica_service: RunningService, caller: RestCaller, replay: Replay
) -> None:
    # Given a plan the replica has replayed
    plan_id, _ = await created_plan(caller, replay)
    before = await scrape(replica_service)
    # When it is read, searched and its history asked for, without a position
    status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}")
    assert (status, plan["title"]) == (200, CARE_PLAN["title"])
    status, bundle = await fhir(replica_service, caller, "CarePlan", _id=plan_id)
    assert (status, [e["resource"]["id"] for e in bundle["entry"]]) == (200, [plan_id])
    status, history = await fhir(replica_service, caller, f"CarePlan/{plan_id}/_history")
    assert (status, len(history["entry"])) == (200, 1)
    # Then the replica answered every one of them
    after = await scrape(replica_service)
    assert reads_by(before, after) == {"primary": 0, "replica": 3}
    assert value(after, "careplan_replica_lag_bytes") >= 0  # read at scrape time: a number, not NaN


async def test_with_replay_paused_a_read_without_the_position_lags_and_one_with_it_sees_the_write(
    replica_service: RunningService, caller: RestCaller, own_nc: NatsClient, replay: Replay
) -> None:
    # Given a plan the replica has, and then its replay paused
    plan_id, _ = await created_plan(caller, replay)
    await replay.pause()
    # When the plan is changed over NATS: the reply carries the commit's position
    reply = await send_command(
        own_nc,
        "careplan.update",
        envelope({"care_plan_id": plan_id, "changes": {"title": "Renamed"}}, expected_version=1),
        token=caller.token,
    )
    assert reply["ok"] is True, reply
    position = reply["result"]["position"]
    before = await scrape(replica_service)

    # Then a read without the position shows the replica's older state
    status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}")
    assert (status, plan["title"], plan["meta"]["versionId"]) == (200, CARE_PLAN["title"], "1")
    # and a read with it shows the change: from the primary, once the wait for the replica was spent
    status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}", position)
    assert (status, plan["title"], plan["meta"]["versionId"]) == (200, "Renamed", "2")
    after = await scrape(replica_service)
    assert reads_by(before, after) == {"primary": 1, "replica": 1}
    assert moved(before, after, "careplan_replica_fallbacks_total", reason="behind") == 1
    assert moved(before, after, "careplan_replica_wait_seconds_count", outcome="gave_up") == 1
    assert value(after, "careplan_replica_lag_bytes") > 0

    # When replay resumes, the same read with the position is the replica's again
    await replay.resume()
    await _until(lambda: replay.reached(position), "the replica replays the change")
    status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}", position)
    assert (status, plan["title"]) == (200, "Renamed")
    final = await scrape(replica_service)
    assert reads_by(after, final) == {"primary": 0, "replica": 1}
    assert moved(after, final, "careplan_replica_fallbacks_total", reason="behind") == 0


async def test_every_read_path_honours_the_position(
    replica_service: RunningService, caller: RestCaller, replay: Replay
) -> None:
    # Given a plan the replica has, its replay paused, and then a goal added (a new Goal, the plan's
    # version 2, their history and the audit Provenance)
    plan_id, _ = await created_plan(caller, replay)
    await replay.pause()
    status, headers, goal = await caller.request(
        "goal.add", {"care_plan_id": plan_id, "description": {"text": "Walk 30 minutes a day"}}
    )
    assert status == 201, goal
    position, goal_id = headers["Careplan-Position"], goal["id"]
    assert goal["position"] == position

    paths: dict[str, tuple[str, dict[str, str]]] = {
        "read": (f"Goal/{goal_id}", {}),
        "vread": (f"CarePlan/{plan_id}/_history/2", {}),
        "instance history": (f"CarePlan/{plan_id}/_history", {}),
        "type history": ("Goal/_history", {}),
        "search with includes": ("CarePlan", {"_id": plan_id, "_include": "CarePlan:goal"}),
        "Provenance search": ("Provenance", {"target": f"Goal/{goal_id}"}),
    }
    # When each is asked without the position and with it (those side by side: each waits, in vain)
    without = {name: await fhir(replica_service, caller, path, **q) for name, (path, q) in paths.items()}
    answers = await asyncio.gather(
        *(fhir(replica_service, caller, path, position, **q) for path, q in paths.values())
    )
    with_position = dict(zip(paths, answers, strict=True))

    # Then without it each shows the state before the goal, with it each shows the goal
    assert without["read"][0] == 404
    assert with_position["read"][0] == 200
    assert without["vread"][0] == 404
    assert (with_position["vread"][0], with_position["vread"][1]["meta"]["versionId"]) == (200, "2")
    assert len(without["instance history"][1]["entry"]) == 1
    assert len(with_position["instance history"][1]["entry"]) == 2
    assert "entry" not in without["type history"][1]
    assert len(with_position["type history"][1]["entry"]) == 1
    assert typed_ids(without["search with includes"][1], "include") == set()
    assert typed_ids(with_position["search with includes"][1], "include") == {f"Goal/{goal_id}"}
    assert "entry" not in without["Provenance search"][1]
    (provenance,) = with_position["Provenance search"][1]["entry"]
    # and so does the audit record read by id
    provenance_path = f"Provenance/{provenance['resource']['id']}"
    assert (await fhir(replica_service, caller, provenance_path))[0] == 404
    assert (await fhir(replica_service, caller, provenance_path, position))[0] == 200


async def test_a_read_waits_for_the_replica_and_is_answered_by_it_once_it_replays(
    replica_service: RunningService, caller: RestCaller, replay: Replay, tenant: str
) -> None:
    # Given a change the paused replica has not replayed, and a router that waits long for it
    plan_id, _ = await created_plan(caller, replay)
    await replay.pause()
    status, headers, _ = await caller.request(
        "careplan.update", {"care_plan_id": plan_id, "changes": {"title": "Waited for"}}, version=1
    )
    assert status == 200
    position = WalPosition.parse(headers["Careplan-Position"])
    primary, replica = replica_service.runtime_engine, replica_service.read_engine
    assert replica is not None
    served: list[str] = []
    router = ReadRouter(primary, replica, read_wait_s=60, observer=_Served(served))

    # When a read with the position starts, and replay resumes while it waits
    reading = asyncio.create_task(
        router.read(position, lambda engine: read_resource(engine, tenant, "CarePlan", plan_id))
    )
    await asyncio.sleep(0.2)
    assert not reading.done()  # waiting: the replica is behind and the wait is long
    await replay.resume()
    found = await reading

    # Then the replica answered it, with the change
    assert found is not None and found.version == 2
    assert served == ["waited, caught up", "replica"]


class _Served:
    def __init__(self, served: list[str]) -> None:
        self.served = served

    def read_served(self, target: str) -> None:
        self.served.append(target)

    def replica_waited(self, seconds: float, caught_up: bool) -> None:
        self.served.append("waited, caught up" if caught_up else "waited in vain")

    def fell_back(self, reason: str) -> None:
        self.served.append(f"fell back: {reason}")


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("not-a-position", id="not-a-position"),
        pytest.param("0/1/2", id="three-parts"),
        pytest.param("123456789/0", id="too-long"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_malformed_position_is_a_400_on_every_read_path(
    replica_service: RunningService, caller: RestCaller, given: str
) -> None:
    for path in ("CarePlan/x", "CarePlan/x/_history/1", "CarePlan/_history", "CarePlan", "Provenance"):
        status, outcome = await fhir(replica_service, caller, path, given)
        assert status == 400, (path, outcome)
        assert outcome["resourceType"] == "OperationOutcome"
        assert "Careplan-Position" in outcome["issue"][0]["diagnostics"]


async def test_a_position_given_twice_is_a_400(replica_service: RunningService, caller: RestCaller) -> None:
    headers = [("Authorization", f"Bearer {caller.token}")] + [
        ("Careplan-Position", p) for p in ("0/1", "0/2")
    ]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{replica_service.http_url}/fhir/CarePlan", headers=headers) as response,
    ):
        assert response.status == 400
        assert "given once" in (await response.json(content_type=None))["issue"][0]["diagnostics"]


async def test_a_position_no_commit_has_reached_is_read_from_the_primary_after_the_wait(
    replica_service: RunningService, caller: RestCaller, replay: Replay
) -> None:
    plan_id, _ = await created_plan(caller, replay)
    before = await scrape(replica_service)
    status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}", "FFFFFFFF/FFFFFFFF")
    assert (status, plan["id"]) == (200, plan_id)
    after = await scrape(replica_service)
    assert moved(before, after, "careplan_replica_fallbacks_total", reason="behind") == 1
    assert reads_by(before, after) == {"primary": 1, "replica": 0}


async def test_serve_refuses_a_read_url_whose_role_escapes_rls(
    replica_settings: Settings, replicated: ReplicatedPostgres, replica_database: DatabaseUrls
) -> None:
    superuser_on_replica = with_database(replicated.standby.url(), replica_database.name)
    with pytest.raises(StartupRefused, match=r"CAREPLAN_READ_DATABASE_URL: .* is a superuser"):
        await start_service(replica_settings.model_copy(update={"read_database_url": superuser_on_replica}))


async def test_reads_go_to_the_primary_while_the_replica_is_down(
    replica_service: RunningService, caller: RestCaller, replay: Replay, replicated: ReplicatedPostgres
) -> None:
    # Given a plan, and then the replica stopped
    plan_id, _ = await created_plan(caller, replay)
    replicated.standby.stop()
    try:
        before = await scrape(replica_service)
        # When the plan is read, twice
        for _ in range(2):
            status, plan = await fhir(replica_service, caller, f"CarePlan/{plan_id}")
            # Then the primary answers: the first read after the replica failed it, the next straight away
            assert (status, plan["id"]) == (200, plan_id)
        after = await scrape(replica_service)
        assert reads_by(before, after) == {"primary": 2, "replica": 0}
        assert moved(before, after, "careplan_replica_fallbacks_total", reason="unavailable") == 2
    finally:
        replicated.standby.start()
    await replicated.replicating()
