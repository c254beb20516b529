"""Commands under load, as many callers send them, and the checks that every one had exactly one effect.

Each command names its own reply subject, so a reply is matched to its command whatever the order, and a
command answered twice (a redelivery after a crash is answered from the command log) is seen twice.
Replies are core NATS, at most once: one published while the caller is reconnecting is lost. A caller with
no reply asks `careplan.query.command` for the outcome (CONTRACT §2), and so does this load.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import PubAck

from handlers.queries import QUERY_SUBJECT
from schemas.commands import COMMAND_SUBJECT_PREFIX
from tests.faults.lab import Lab, until
from tests.integration.helpers import but_for_position
from tests.outbox_ledger import OUTBOX_LEDGER

PLAN = {"patient_id": "p1", "title": "Heart failure care plan", "status": "active"}

# Events each command causes: the new resource's, and the plan's new version for goals and activities.
EVENTS_PER_COMMAND = {"careplan.create": 1, "goal.add": 2, "activity.add": 2}


@dataclass
class Sent:
    command: str
    body: bytes


@dataclass
class CommandLoad:
    nc: NatsClient
    token: str
    inbox: str = field(default_factory=lambda: f"_INBOX.load{uuid.uuid4().hex}")
    sent: dict[str, Sent] = field(default_factory=dict)
    replies: defaultdict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    asked: dict[str, dict[str, Any]] = field(default_factory=dict)  # outcomes asked for, replies lost
    plans: list[str] = field(default_factory=list)

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.inbox}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        self.replies[msg.subject.rsplit(".", 1)[1]].append(orjson.loads(msg.data))

    async def send(self, command: str, data: dict[str, Any]) -> str:
        command_id = str(uuid.uuid4())
        body = orjson.dumps({"command_id": command_id, "data": data})
        self.sent[command_id] = Sent(command, body)
        await self.publish(command_id, message_id=command_id)
        return command_id

    async def publish(self, command_id: str, *, message_id: str) -> PubAck:
        """(Re)publish a sent command; a retrying caller reuses the command id and the body."""
        sent = self.sent[command_id]
        headers = {
            "reply_to": f"{self.inbox}.{command_id}",
            "Authorization": f"Bearer {self.token}",
            "Nats-Msg-Id": message_id,
        }
        return await self.nc.jetstream().publish(
            COMMAND_SUBJECT_PREFIX + sent.command, sent.body, headers=headers, timeout=10
        )

    async def create_plans(self, count: int) -> None:
        ids = [await self.send("careplan.create", PLAN) for _ in range(count)]
        await self.answered(ids, timeout=60)
        self.plans = [self.replies[i][0]["result"]["id"] for i in ids]

    async def send_changes(self, count: int, rng: random.Random) -> list[str]:
        """Goals and activities added to random plans: each changes two resources, one of them shared."""
        ids = []
        for n in range(count):
            plan = rng.choice(self.plans)
            if rng.random() < 0.5:
                data = {"care_plan_id": plan, "description": {"text": f"goal {n}"}}
                ids.append(await self.send("goal.add", data))
            else:
                data = {"care_plan_id": plan, "description": f"task {n}"}
                ids.append(await self.send("activity.add", data))
        return ids

    async def ask_unanswered(self, timeout: float = 120.0) -> None:
        """What a caller does when no reply came: ask for the stored outcome until every command has one."""

        async def all_known() -> bool:
            for command_id in self.sent:
                if self.replies.get(command_id) or command_id in self.asked:
                    continue
                msg = await self.nc.request(
                    QUERY_SUBJECT,
                    orjson.dumps({"command_id": command_id}),
                    timeout=5,
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                outcome = orjson.loads(msg.data)
                if outcome.get("error", {}).get("code") == "NOT_FOUND":
                    return False  # not processed yet
                self.asked[command_id] = outcome
            return True

        await until(all_known, timeout, "every command's outcome known")

    def outcome(self, command_id: str) -> dict[str, Any]:
        replies = self.replies.get(command_id)
        return replies[0] if replies else self.asked[command_id]

    def answered_count(self) -> int:
        return sum(1 for command_id in self.sent if self.replies.get(command_id))

    async def answered(self, ids: list[str] | None = None, timeout: float = 120.0) -> None:
        waiting = list(self.sent) if ids is None else ids
        await until(lambda: all(self.replies.get(i) for i in waiting), timeout, f"{len(waiting)} answered")

    async def at_least_answered(self, count: int, timeout: float = 60.0) -> None:
        await until(lambda: self.answered_count() >= count, timeout, f"{count} answered")


async def read_stream(nc: NatsClient, stream: str) -> list[dict[str, Any]]:
    """Every message in the stream, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    events = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        assert msg.data is not None
        events.append(orjson.loads(msg.data))
    return events


async def longest_publishing_pause(nc: NatsClient, event_ids: set[str]) -> float:
    """The longest time, in seconds, between two of these events and audit records being stored on their
    streams (JetStream's own timestamps: the outbox keeps no row it published)."""
    js = nc.jetstream()
    times = []
    for stream in ("CAREPLAN_EVENTS", "CAREPLAN_AUDIT"):
        info = await js.stream_info(stream)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            assert msg.data is not None and msg.time is not None
            if orjson.loads(msg.data)["id"] in event_ids:
                times.append(msg.time)
    times.sort()
    return max(
        ((later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)), default=0.0
    )


async def assert_each_command_applied_once(lab: Lab, load: CommandLoad) -> None:
    """Every command: answered ok (the same outcome however often it was answered), in the command log
    once, and its rows in the database once."""
    for command_id in load.sent:
        outcome = load.outcome(command_id)
        assert outcome["ok"] is True, outcome
        for reply in load.replies.get(command_id, []):  # answered again from the command log: same outcome
            assert but_for_position(reply) == but_for_position(outcome), load.replies[command_id]
    commands = Counter(s.command for s in load.sent.values())
    logged = await lab.rows("SELECT command_id::text, count(*) FROM command_log GROUP BY command_id")
    assert {str(c): n for c, n in logged} == dict.fromkeys(load.sent, 1)
    assert await lab.scalar("SELECT count(*) FROM care_plans") == commands["careplan.create"]
    assert await lab.scalar("SELECT count(*) FROM goals") == commands["goal.add"]
    assert await lab.scalar("SELECT count(*) FROM tasks") == commands["activity.add"]
    # Each goal or activity gave its plan exactly one new version.
    versions = dict(await lab.rows("SELECT id::text, version FROM care_plans"))
    changes = Counter(
        orjson.loads(s.body)["data"]["care_plan_id"]
        for s in load.sent.values()
        if s.command != "careplan.create"
    )
    creates = [c for c, s in load.sent.items() if s.command == "careplan.create"]
    created = [load.outcome(c)["result"]["id"] for c in creates]
    assert versions == {plan: 1 + changes[plan] for plan in created}


async def assert_events_once_in_order(lab: Lab, load: CommandLoad, nc: NatsClient) -> None:
    """On the stream: every event once, each command's events exactly, each resource's in version order."""
    await lab.outbox_drained()
    # The scheduler's goal-achievement summaries are on the stream too; no command caused them.
    events = [
        e
        for e in await read_stream(nc, "CAREPLAN_EVENTS")
        if e["type"] != "careplan.metrics.goal_achievement"
    ]
    ids = Counter(e["id"] for e in events)
    assert [i for i, n in ids.items() if n > 1] == []
    # Against every event row ever committed to the outbox (the relay deletes what it published)
    outbox = await lab.rows(
        f"SELECT event_id FROM {OUTBOX_LEDGER} "
        "WHERE subject LIKE 'careplan.evt.%' AND subject NOT LIKE '%.metrics.%'"
    )
    assert set(ids) == {str(e) for (e,) in outbox}
    caused = Counter(e["causationid"] for e in events)
    assert caused == {i: EVENTS_PER_COMMAND[s.command] for i, s in load.sent.items()}
    by_resource: defaultdict[str, list[int]] = defaultdict(list)
    for event in events:
        by_resource[event["subject"]].append(event["resourceversion"])
    for resource, versions in by_resource.items():
        assert versions == list(range(1, len(versions) + 1)), (resource, versions)
    audit = Counter(a["id"] for a in await read_stream(nc, "CAREPLAN_AUDIT"))
    assert [i for i, n in audit.items() if n > 1] == []
    audit_rows = await lab.rows(f"SELECT event_id FROM {OUTBOX_LEDGER} WHERE subject LIKE 'careplan.audit.%'")
    assert set(audit) == {str(e) for (e,) in audit_rows}
    assert len(audit) >= len(load.sent)
