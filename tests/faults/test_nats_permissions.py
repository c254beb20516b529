"""The example NATS configuration for deployment (docs/nats-permissions.conf; issue 15, row 10), run as it
is: a nats-server started with exactly that file, `careplan serve` connected as its `careplan` user, and a
caller, the four upstream services, an events reader and an operator each as theirs.

The service does all of its work with those permissions and no more (start-up, commands with every
upstream check, replies, events, audit, the outcome query, retries and dead letters, /readyz, /metrics)
without one permission violation in its log or the server's. Everyone else is refused everywhere their
part does not need, and nothing they tried arrives anywhere; a client without a password is not let in.
What no permission can fix, JetStream's stream-wide duplicate window, a caller learns from the PubAck's
`duplicate` flag and the outcome query."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nats
import nats.errors
import orjson
import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DLQ_STREAM
from handlers.queries import QUERY_SUBJECT
from integrations.upstream import UpstreamSubjects
from service.client import ask_outcome, envelope, send_command
from service.dev_identity import DevKeys
from service.embedded.nats_server import EmbeddedNats
from service.topology import AUDIT_STREAM, EVENT_STREAM, STREAMS
from storage.database import drop_database, ensure_database
from storage.migrate import migrate
from tests.conftest import database_urls
from tests.faults.lab import Lab, ServeProcess, free_port, until
from tests.integration.helpers import assert_same_answer
from tests.upstream_responders import Responder, UpstreamWorld

CONFIG = Path(__file__).resolve().parents[2] / "docs" / "nats-permissions.conf"
UPSTREAM_USERS = ("registration", "scheduling", "providers", "terminology")
USERS = ("careplan", "caller", *UPSTREAM_USERS, "event-reader", "ops")
READER_CONSUMER = "population-health"
SNOMED = "http://snomed.info/sct"
DIABETES = {"system": SNOMED, "code": "44054006", "display": "Diabetes mellitus type 2"}
# Registration answers this patient in a shape the contract does not allow: silence, retried, dead-lettered.
GARBLED_PATIENT = "p-garbled"
VIOLATION = re.compile(r"permissions? violation", re.IGNORECASE)


def password_variable(user: str) -> str:
    """The environment variable the example config reads the user's password from."""
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


@dataclass
class UserConnection:
    """One user's connection, with every asynchronous error the server sent it."""

    nc: NatsClient
    errors: list[Exception] = field(default_factory=list)

    def violations(self) -> list[str]:
        return [str(e).lower() for e in self.errors if VIOLATION.search(str(e))]


@dataclass
class Users:
    """Connections as the config's users, their inboxes under `_INBOX.<user>.` as the config expects."""

    port: int
    passwords: dict[str, str]
    connections: list[UserConnection] = field(default_factory=list)

    def url(self, user: str, password: str | None = None) -> str:
        return f"nats://{user}:{password or self.passwords[user]}@127.0.0.1:{self.port}"

    async def connect(self, user: str) -> UserConnection:
        connection = UserConnection(nc=NatsClient())

        async def collect(exc: Exception) -> None:
            connection.errors.append(exc)

        await connection.nc.connect(
            self.url(user), inbox_prefix=f"_INBOX.{user}", error_cb=collect, max_reconnect_attempts=0
        )
        self.connections.append(connection)
        return connection

    async def close(self) -> None:
        for connection in self.connections:
            await connection.nc.close()


WITNESS_INBOX = "_INBOX.ops.witness"  # the operator listens here: whatever arrives was let through


@dataclass
class Deployment:
    lab: Lab
    service: ServeProcess
    users: Users
    world: UpstreamWorld
    responders: dict[str, Responder]
    ops: UserConnection
    reader: JetStreamContext.PullSubscription
    witness: list[Msg]
    events: list[Msg] = field(default_factory=list)  # everything the reader pulled so far

    @property
    def ops_js(self) -> JetStreamContext:
        return self.ops.nc.jetstream()

    async def events_of(self, tenant: str, count: int) -> list[Msg]:
        """The tenant's events, as the reader pulls them from its consumer on CAREPLAN_EVENTS."""

        def of_tenant() -> list[Msg]:
            return [m for m in self.events if m.subject.startswith(f"careplan.evt.{tenant}.")]

        async def pulled() -> bool:
            with contextlib.suppress(nats.errors.TimeoutError):
                for msg in await self.reader.fetch(50, timeout=1):
                    self.events.append(msg)
                    await msg.ack()
            return len(of_tenant()) >= count

        await until(pulled, 30, f"{count} events of {tenant} pulled by the reader")
        return of_tenant()

    async def settled(self) -> None:
        """Nothing in flight: every event published, every command acked."""
        await self.lab.outbox_drained()

        async def idle() -> bool:
            info = await self.ops_js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)
            return not (info.num_pending or info.num_ack_pending)

        await until(idle, 30, "the command consumer idle")

    async def observable_state(self) -> dict[str, Any]:
        """Everything a misdirected publish could change: each stream's messages, sequence numbers and
        consumers, the requests each upstream service got, and the operator's witness inbox."""
        state: dict[str, Any] = {}
        for config in STREAMS:
            s = (await self.ops_js.stream_info(str(config.name))).state
            state[str(config.name)] = (s.messages, s.first_seq, s.last_seq, s.consumer_count)
        state["upstream requests"] = {user: len(r.requests) for user, r in self.responders.items()}
        state["witness inbox"] = len(self.witness)
        return state

    def service_violations(self) -> list[str]:
        """Permission violations the service met: in its own log and in the server's, by its user."""
        logs = (process.log() for process in self.lab.processes)
        own = [line for log in logs for line in log.splitlines() if VIOLATION.search(line)]
        # The server's lines read `… - "CAREPLAN/user:careplan" - Publish Violation - Subject "…"`.
        server_log = self.lab.nats.log_file.read_text(errors="replace").splitlines()
        return own + [line for line in server_log if "Violation" in line and '/user:careplan"' in line]


@contextlib.asynccontextmanager
async def permissioned_nats(workdir: Path, passwords: dict[str, str]) -> AsyncIterator[EmbeddedNats]:
    """nats-server with the committed config file itself; only the passwords come from this run."""
    server = EmbeddedNats(workdir / "nats", port=free_port(), extra_args=["-c", str(CONFIG)])
    with pytest.MonkeyPatch.context() as env:
        for user, password in passwords.items():
            # Quoted, as the config's header says: nats-server parses the value as config text.
            env.setenv(password_variable(user), f'"{password}"')
        server.start()  # the config is read now; the variables are not needed later
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
async def deployment(postgres_server_url: str, keys: DevKeys) -> AsyncIterator[Deployment]:
    workdir = Path(tempfile.mkdtemp(prefix="cpperm-", dir="/tmp"))
    passwords = {user: secrets.token_urlsafe(16) for user in USERS}
    name = f"careplan_perm_{uuid.uuid4().hex[:10]}"
    await ensure_database(postgres_server_url, name)
    database = database_urls(postgres_server_url, name)
    await migrate(database.admin, database.runtime, database.system)
    try:
        async with permissioned_nats(workdir, passwords) as server:
            lab = Lab(workdir, server, database, keys)
            users = Users(server.port, passwords)
            responders: dict[str, Responder] = {}
            try:
                yield await _deploy(lab, users, responders)
            finally:
                for responder in responders.values():
                    await responder.close()
                await users.close()
                lab.stop_all()
    finally:
        await drop_database(postgres_server_url, name)
        shutil.rmtree(workdir, ignore_errors=True)


async def _deploy(lab: Lab, users: Users, responders: dict[str, Responder]) -> Deployment:
    settings = {
        "nats_url": users.url("careplan"),
        "upstream_mode": "nats",
        "upstream_timeout_ms": 5000,
        "upstream_breaker_failures": 100,
        "max_deliver": 2,
        "scheduler_interval_s": 3600,
        "metrics_interval_s": 3600,
    }
    # Started twice, as every deploy after the first: the first start creates the streams and the
    # consumer, the second finds and updates them.
    first = lab.serve("first-start", **settings)
    await first.ready()
    assert await first.terminate() == 0
    service = lab.serve("careplan", **settings)
    await service.ready()
    ops = await users.connect("ops")
    witness: list[Msg] = []
    await ops.nc.subscribe(WITNESS_INBOX, cb=_keep(witness))
    # An operator creates the reader's consumer; the reader may only pull from it.
    await ops.nc.jetstream().add_consumer(
        EVENT_STREAM, ConsumerConfig(durable_name=READER_CONSUMER, ack_policy=AckPolicy.EXPLICIT)
    )
    reader = (
        await (await users.connect("event-reader"))
        .nc.jetstream()
        .pull_subscribe_bind(READER_CONSUMER, EVENT_STREAM)
    )
    world = UpstreamWorld()

    def patient(request: dict[str, Any]) -> dict[str, Any]:
        if request["patient_id"] == GARBLED_PATIENT:
            return {"found": "perhaps"}
        return world.patient(request)

    subjects = UpstreamSubjects()
    answers = {
        "registration": (subjects.registration, patient),
        "scheduling": (subjects.scheduling, world.encounter),
        "providers": (subjects.providers, world.practitioner),
        "terminology": (subjects.terminology, world.code),
    }
    for user, (subject, answer) in answers.items():
        responders[user] = Responder((await users.connect(user)).nc, subject, answer)
        await responders[user].start()
    return Deployment(lab, service, users, world, responders, ops, reader, witness)


def _keep(into: list[Msg]) -> Callable[[Msg], Awaitable[None]]:
    async def keep(msg: Msg) -> None:
        into.append(msg)

    return keep


@pytest.fixture
def token(deployment: Deployment, keys: DevKeys, tenant: str) -> str:
    """A clinician of this test's tenant, whose patient p1 (encounter e1) and practitioner dr-a exist."""
    deployment.world.patients[(tenant, "p1")] = True
    deployment.world.encounters[(tenant, "e1")] = "p1"
    deployment.world.practitioners[(tenant, "dr-a")] = True
    return keys.mint(tenant_id=tenant, roles=["clinician"])


def plan() -> dict[str, Any]:
    """A plan every upstream service is asked about: patient, encounter, author and a SNOMED code."""
    return {
        "patient_id": "p1",
        "title": "Diabetes care plan",
        "status": "active",
        "encounter_id": "e1",
        "author_id": "dr-a",
        "addresses": [{"coding": [DIABETES]}],
    }


async def last_message(js: JetStreamContext, stream: str, subject: str, timeout: float = 15.0) -> Any:
    """The stream's last message on `subject`, once there is one: the relay publishes a command's event and
    its audit side by side, so the one may be on its stream a moment before the other."""
    found: list[Any] = []

    async def published() -> bool:
        with contextlib.suppress(NotFoundError):
            found.append(await js.get_last_msg(stream, subject))
        return bool(found)

    await until(published, timeout, f"a message on {subject} in {stream}")
    return found[-1]


# --------------------------------------------------------------------------- the service's own work


async def test_the_service_does_all_its_work_with_the_example_permissions_alone(
    deployment: Deployment, tenant: str, token: str
) -> None:
    caller = await deployment.users.connect("caller")
    body = envelope(plan())

    reply = await send_command(caller.nc, "careplan.create", body, token=token, timeout=20)

    assert reply["ok"] is True, reply
    assert reply["status"] == 201
    # Each upstream service was asked, and its answer (its only publish right) reached the service.
    for user in UPSTREAM_USERS:
        assert deployment.responders[user].requests, f"{user} was never asked"
    # The event is on CAREPLAN_EVENTS for its reader, the Provenance on CAREPLAN_AUDIT.
    (event,) = await deployment.events_of(tenant, 1)
    assert event.subject == f"careplan.evt.{tenant}.careplan.created"
    assert orjson.loads(event.data)["causationid"] == body["command_id"]
    audit = await last_message(deployment.ops_js, AUDIT_STREAM, f"careplan.audit.{tenant}")
    provenance = orjson.loads(audit.data or b"{}")
    assert provenance["type"] == "careplan.audit.provenance"
    assert provenance["causationid"] == body["command_id"]
    # The outcome query answers with the reply the caller got.
    assert_same_answer(await ask_outcome(caller.nc, body["command_id"], token), reply)
    # Readiness (consumer info) and a scrape (consumer and DLQ stream info) use the JetStream API too.
    status, checks = await deployment.service.readiness()
    assert status == 200, checks
    async with aiohttp.ClientSession() as http, http.get(f"{deployment.service.http_url}/metrics") as scrape:
        assert scrape.status == 200
        assert "careplan_consumer_pending" in await scrape.text()
    assert caller.violations() == []
    assert deployment.service_violations() == []


async def test_a_command_that_outlasts_its_deliveries_is_nakd_dead_lettered_and_answered(
    deployment: Deployment, tenant: str, token: str
) -> None:
    caller = await deployment.users.connect("caller")
    body = envelope({"patient_id": GARBLED_PATIENT, "title": "Diabetes care plan"})

    reply = await send_command(caller.nc, "careplan.create", body, token=token, timeout=30)

    assert reply["ok"] is False
    assert reply["error"]["code"] == "UPSTREAM_UNAVAILABLE"
    dead = await deployment.ops_js.get_last_msg(DLQ_STREAM, "careplan.dlq.careplan.create")
    assert orjson.loads(dead.data or b"{}")["command_id"] == body["command_id"]
    assert (dead.headers or {})["Careplan-Deliveries"] == "2"
    assert deployment.service_violations() == []


async def test_a_faststream_caller_needs_nothing_but_the_callers_permissions(
    deployment: Deployment, token: str
) -> None:
    # CONTRACT §2's FastStream request: a JetStream publish with the inbox in the `reply_to` header.
    broker = NatsBroker(
        deployment.users.url("caller"), inbox_prefix="_INBOX.caller", max_reconnect_attempts=0
    )
    await broker.connect()
    try:
        body = envelope(plan())
        response = await broker.request(
            orjson.dumps(body),
            "careplan.cmd.careplan.create",
            stream=COMMAND_STREAM,
            headers={"Nats-Msg-Id": body["command_id"], "Authorization": f"Bearer {token}"},
            timeout=20,
        )
        reply = orjson.loads(response.body)
    finally:
        await broker.stop()
    assert reply["ok"] is True, reply
    assert deployment.service_violations() == []


# --------------------------------------------------------------------------- everyone else, refused


FORBIDDEN_PUBLISHES = [
    pytest.param("caller", "careplan.evt.{tenant}.careplan.created", id="caller-forges-an-event"),
    pytest.param("caller", "careplan.audit.{tenant}", id="caller-forges-audit"),
    pytest.param("caller", "careplan.dlq.careplan.create", id="caller-writes-the-dlq"),
    pytest.param("caller", "$JS.API.STREAM.PURGE.CAREPLAN_EVENTS", id="caller-purges-events"),
    pytest.param("caller", "$JS.API.STREAM.DELETE.CAREPLAN_COMMANDS", id="caller-deletes-commands"),
    pytest.param(
        "caller", "$JS.API.CONSUMER.DELETE.CAREPLAN_COMMANDS.careplan-commands", id="caller-deletes-consumer"
    ),
    pytest.param("caller", "registration.patient.get", id="caller-asks-registration"),
    pytest.param("caller", WITNESS_INBOX, id="caller-spoofs-a-reply"),
    pytest.param("registration", "careplan.cmd.careplan.create", id="upstream-sends-a-command"),
    pytest.param("registration", "careplan.evt.{tenant}.careplan.created", id="upstream-forges-an-event"),
    pytest.param("registration", WITNESS_INBOX, id="upstream-publishes-unasked"),
    pytest.param(
        "event-reader", "$JS.API.CONSUMER.CREATE.CAREPLAN_EVENTS.mirror", id="reader-creates-a-consumer"
    ),
    pytest.param("event-reader", "$JS.API.STREAM.PURGE.CAREPLAN_EVENTS", id="reader-purges-events"),
    pytest.param("ops", "careplan.cmd.careplan.create", id="operator-sends-a-command"),
]


def forged_payload(subject: str, token: str) -> bytes:
    """What an attacker would send there: a plausible body, so only the permission stops it."""
    if subject.startswith("$JS.API.CONSUMER.CREATE."):
        # A push consumer that would have JetStream republish every event as a query to the service.
        config = {"name": "mirror", "deliver_subject": QUERY_SUBJECT, "ack_policy": "none"}
        return orjson.dumps({"stream_name": EVENT_STREAM, "config": config})
    if subject.startswith("$JS.API."):
        return b""
    return orjson.dumps(envelope(plan()) | {"type": "careplan.careplan.created", "token": token})


@pytest.mark.parametrize(("user", "subject"), FORBIDDEN_PUBLISHES)
async def test_a_publish_outside_the_users_part_is_refused_and_changes_nothing(
    deployment: Deployment, tenant: str, token: str, user: str, subject: str
) -> None:
    subject = subject.format(tenant=tenant)
    await deployment.settled()
    before = await deployment.observable_state()
    client = await deployment.users.connect(user)
    answers: list[Msg] = []
    reply: str | None = None
    if subject.startswith("$JS.API."):  # the JetStream API acts only on a request it can answer
        reply = client.nc.new_inbox()
        await client.nc.subscribe(reply, cb=_keep(answers))

    await client.nc.publish(
        subject,
        forged_payload(subject, token),
        reply=reply or "",
        headers={"Authorization": f"Bearer {token}", "Nats-Msg-Id": str(uuid.uuid4())},
    )
    await client.nc.flush()

    refusal = f'publish to "{subject.lower()}"'
    await until(
        lambda: any(refusal in v for v in client.violations()), 5, f"the server refuses {user}: {subject}"
    )
    await asyncio.sleep(0.5)  # anything let through would have been stored, answered or delivered by now
    assert answers == []
    assert await deployment.observable_state() == before


FORBIDDEN_SUBSCRIPTIONS = [
    "careplan.cmd.>",  # every command, with its bearer token
    "careplan.evt.>",  # every tenant's clinical events, as they are published
    "careplan.audit.>",
    QUERY_SUBJECT,  # answering outcome queries in the service's place
    "_INBOX.>",  # other callers' replies
    "registration.patient.get",  # answering for an upstream service
]


async def test_a_caller_may_not_listen_where_others_talk(deployment: Deployment, token: str) -> None:
    caller = await deployment.users.connect("caller")
    overheard: list[Msg] = []
    for subject in FORBIDDEN_SUBSCRIPTIONS:
        await caller.nc.subscribe(subject, cb=_keep(overheard))
    await caller.nc.flush()
    await until(
        lambda: len(caller.violations()) == len(FORBIDDEN_SUBSCRIPTIONS), 5, "every subscription refused"
    )

    # Traffic on every one of those subjects: a command (upstream asked, event and audit published, the
    # reply sent to an inbox) and an outcome query.
    body = envelope(plan())
    reply = await send_command(caller.nc, "careplan.create", body, token=token, timeout=20)
    assert reply["ok"] is True, reply
    assert_same_answer(await ask_outcome(caller.nc, body["command_id"], token), reply)
    await deployment.lab.outbox_drained()

    refused = " ".join(caller.violations()).lower()
    for subject in FORBIDDEN_SUBSCRIPTIONS:
        assert f'subscription to "{subject.lower()}"' in refused
    assert overheard == []


@pytest.mark.parametrize(
    "credentials", [pytest.param(None, id="no-password"), pytest.param("wrong", id="wrong-password")]
)
async def test_a_client_without_the_password_is_not_let_in(
    deployment: Deployment, credentials: str | None
) -> None:
    port = deployment.lab.nats.port
    url = f"nats://127.0.0.1:{port}" if credentials is None else deployment.users.url("caller", credentials)

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0)


# --------------------------------------------------------------------------- what permissions cannot fix


async def publish_command(
    nc: NatsClient, body: dict[str, Any], token: str, *, message_id: str
) -> tuple[bool, list[Msg]]:
    """A JetStream publish as CONTRACT §2 describes it; the PubAck's `duplicate` flag and what arrives on
    the reply inbox in the next 2 s."""
    replies: list[Msg] = []
    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=_keep(replies))
    ack = await nc.jetstream().publish(
        "careplan.cmd.careplan.create",
        orjson.dumps(body),
        headers={"Nats-Msg-Id": message_id, "Authorization": f"Bearer {token}", "reply_to": inbox},
        timeout=10,
    )
    await asyncio.sleep(2)
    return bool(ack.duplicate), replies


async def test_a_resent_command_is_a_duplicate_with_no_reply_and_the_query_gives_its_outcome(
    deployment: Deployment, token: str
) -> None:
    caller = await deployment.users.connect("caller")
    body = envelope(plan())
    first = await send_command(caller.nc, "careplan.create", body, token=token, timeout=20)

    duplicate, replies = await publish_command(caller.nc, body, token, message_id=body["command_id"])

    assert duplicate is True
    assert replies == []  # the stream dropped it: nothing will ever answer this publish
    assert_same_answer(await ask_outcome(caller.nc, body["command_id"], token), first)


async def test_a_message_id_another_tenant_used_swallows_the_command_and_only_the_flag_tells(
    deployment: Deployment, keys: DevKeys, token: str, tenant: str
) -> None:
    caller = await deployment.users.connect("caller")
    taken = envelope(plan())
    assert (await send_command(caller.nc, "careplan.create", taken, token=token, timeout=20))["ok"] is True
    other_tenant = f"{tenant}-other"
    deployment.world.patients[(other_tenant, "p1")] = True
    deployment.world.encounters[(other_tenant, "e1")] = "p1"
    deployment.world.practitioners[(other_tenant, "dr-a")] = True
    other_token = keys.mint(tenant_id=other_tenant, roles=["clinician"])
    mine = envelope(plan() | {"title": "Another tenant's plan"}, command_id=taken["command_id"])

    duplicate, replies = await publish_command(caller.nc, mine, other_token, message_id=mine["command_id"])

    # Permissions keep strangers out, but within the 2-minute window any caller's id is taken stream-wide:
    # the flag is the only sign, and the outcome query knows nothing of this tenant's command.
    assert duplicate is True
    assert replies == []
    outcome = await ask_outcome(caller.nc, mine["command_id"], other_token)
    assert outcome["error"]["code"] == "NOT_FOUND"
    # What the caller does then: send it again under a new command id.
    again = envelope(mine["data"])
    reply = await send_command(caller.nc, "careplan.create", again, token=other_token, timeout=20)
    assert reply["ok"] is True, reply
