"""The AsyncAPI 3.0 document of our NATS surface (CONTRACT §2-§5), generated from the FastStream app: the
subscribers the service really registers, plus documentation-only entries for what a wildcard subscriber and
an outbox cannot say (one channel per command, the replies, events, audit and dead letters). Kept in the
repository as `docs/asyncapi.json`; regenerate it with `python -m service.api_documents`."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any, NoReturn

from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel, create_model

from domain.access import Principal
from handlers.errors import HTTP_STATUS, REPLY_CODES
from handlers.nats_consumer import (
    COMMAND_CONSUMER,
    COMMAND_STREAM,
    DLQ_STREAM,
    DLQ_SUBJECT_PREFIX,
    DeliveryPolicy,
    register_command_consumer,
    register_outcome_query,
    register_rollout_query,
)
from handlers.pipeline import CommandProcessor
from handlers.ports import RolloutRecord, StoredOutcome
from handlers.queries import QUERY_SUBJECT, ROLLOUT_QUERY_SUBJECT
from handlers.registry import CommandSpec, VersionCheck, standard_commands
from schemas.commands import COMMAND_SUBJECT_PREFIX, CONTRACT_VERSION, CommandEnvelope
from schemas.events import CloudEvent, audit_subject, event_subject
from schemas.replies import Reply
from service.topology import EVENT_STREAM

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
REGENERATE_COMMAND = "python -m service.api_documents"
# The wire contract's version (CONTRACT.md, "v1"), not the package's: the document changes when the wire does.

REPLY_CHANNEL = "careplan.reply"
AUDIT_CHANNEL = "careplan.audit.provenance"
DLQ_CHANNEL = "careplan.dlq"
TENANT = "{tenant_id}"

# Every event of CONTRACT §5: name → when it is sent. `data` is always {"resource": <the FHIR resource>, …}.
EVENTS: dict[str, str] = {
    "careplan.created": "careplan.create made a CarePlan.",
    "careplan.updated": "The CarePlan changed: careplan.update, or its goal, activity or care-team lists.",
    "careplan.status_changed": "careplan.change_status; data adds from, to, reason.",
    "careplan.review_requested": "careplan.request_review; data adds review_task_id.",
    "careplan.reviewed": "careplan.complete_review; data adds outcome.",
    "careplan.review_due": "Scheduler: the plan's next review is due; data adds next_review_due.",
    "goal.added": "goal.add.",
    "goal.updated": "goal.update; data adds changed (the fields).",
    "goal.status_changed": "goal.change_status; data adds from and to (lifecycle and achievement status).",
    "goal.achieved": "A status change reached achieved or sustaining; data as goal.status_changed.",
    "goal.overdue": "Scheduler: a target's due date passed unmet; data adds due_date, overdue_targets.",
    "activity.added": "activity.add, or careplan.request_review's review Task.",
    "activity.assigned": "activity.assign; data adds from and to (owner ids).",
    "activity.status_changed": "activity.change_status, or the plan's hold/resume; adds from, to, reason.",
    "activity.completed": "An activity reached completed; data as activity.status_changed.",
    "activity.updated": "A rollout rewrote a not-started Task from its new template; data adds changed.",
    "careteam.member_added": "careteam.add_member; data adds member_id.",
    "careteam.member_updated": "careteam.update_member; data adds member_id.",
    "careteam.member_removed": "careteam.remove_member; data adds member_id.",
    "careplan.enrolled": "careplan.enroll made the plan from a program; data adds program (url), version.",
    "program.defined": "program.define made a draft program version (PlanDefinition).",
    "program.updated": "program.update changed a draft program version.",
    "program.published": "program.change_status to active; data adds from, to, reason.",
    "program.retired": "program.change_status to retired; data adds from, to, reason.",
    "careplan.migrated": (
        "A program rollout moved the plan to a new version; data adds from, to (canonicals), added, "
        "cancelled, updated, kept (keys), rollout_id, program_id."
    ),
    "program.rollout_completed": (
        "A rollout run finished; data adds rollout_id, program_id, to, and totals (plans migrated, skipped; "
        "items added, cancelled, updated, kept). No resource."
    ),
    "metrics.goal_achievement": "Scheduler, per tenant and period: goal counts by status (no resource).",
}

COMMANDS = standard_commands()  # the documented service runs the standard commands


class OutcomeQuery(BaseModel):
    """The request body of `careplan.query.command`."""

    command_id: uuid.UUID


class RolloutQuery(BaseModel):
    """The request body of `careplan.query.rollout`. The answer, on the request's reply subject:
    `{"ok": true, "status": 200, "result": {"rollout_id", "program_id", "to", "status" (running |
    completed), "created", "completed", "plans": {total, pending, migrated, skipped}, "totals": {added,
    cancelled, updated, kept}, "conflicts": [{care_plan_id, kept}]}}`, or an error reply (NOT_FOUND for an
    unknown id or another tenant's, FORBIDDEN for a patient token)."""

    rollout_id: uuid.UUID


def command_channel(name: str) -> str:
    return COMMAND_SUBJECT_PREFIX + name


def event_channel(name: str) -> str:
    """Keyed by the CloudEvent `type`; the address carries the tenant as a parameter."""
    return f"careplan.{name}"


def command_envelope_model(spec: CommandSpec) -> type[BaseModel]:
    """The envelope of CONTRACT §2 with `data` typed as this command's data: `CareplanCreateCommand`."""
    model_name = "".join(part.capitalize() for part in spec.name.replace("_", ".").split(".")) + "Command"
    return create_model(
        model_name,
        __base__=CommandEnvelope,
        __doc__=f"The body of a `{spec.name}` command.",
        data=(spec.data_model, ...),
    )


def build_documented_broker() -> NatsBroker:
    """A never-started broker with the served app's subscribers, registered by the same functions, and the
    documentation-only entries. Nothing connects and no handler runs."""
    broker = NatsBroker(
        "nats://localhost:4222",
        description="Any NATS server with JetStream; the service's is set by CAREPLAN_NATS_URL.",
    )
    processor = CommandProcessor(
        commands=COMMANDS,
        verifier=_NotServing(),
        transactions=_not_serving,
        clock=_not_serving,
        new_id=_not_serving,
    )
    # Its one channel `careplan.cmd.>` with an untyped body would duplicate the per-command channels below.
    register_command_consumer(broker, processor, DeliveryPolicy(), include_in_schema=False)
    register_outcome_query(broker, _NotServing(), _no_outcome)
    register_rollout_query(broker, _NotServing(), _no_rollout)

    for spec in COMMANDS.values():
        _document_command(broker, spec)
    broker.publisher(
        "{reply_to}",
        schema=Reply,
        title=REPLY_CHANNEL,
        description=(
            "A command's outcome, published after commit to the subject its `reply_to` header names, with "
            "its `correlation_id` (the outcome query answers on the request's reply subject). `ok` with "
            "`result`, or `error`: " + ", ".join(f"{code.value} {HTTP_STATUS[code]}" for code in REPLY_CODES)
        ),
    )
    for name, when in EVENTS.items():
        broker.publisher(
            event_subject(TENANT, name),
            schema=CloudEvent,
            title=event_channel(name),
            description=f"CloudEvent type `careplan.{name}` on stream {EVENT_STREAM}. {when}",
        )
    broker.publisher(
        audit_subject(TENANT),
        schema=CloudEvent,
        title=AUDIT_CHANNEL,
        description=(
            "Every change's FHIR Provenance (type `careplan.audit.provenance`, data = the Provenance), "
            "for the audit pipeline."
        ),
    )
    broker.publisher(
        DLQ_SUBJECT_PREFIX + "{command}",
        schema=CommandEnvelope,
        title=DLQ_CHANNEL,
        description=(
            f"Stream {DLQ_STREAM}: a command body as received, after its last failed delivery; the caller "
            "was answered INTERNAL or UPSTREAM_UNAVAILABLE. Headers say where it came from and why."
        ),
    )
    return broker


def build_asyncapi() -> dict[str, Any]:
    """The document as JSON data: FastStream's, completed with what FastStream 0.7 cannot express yet
    (message headers, channel parameters, operation replies, the query's raw body)."""
    specification = AsyncAPI(
        build_documented_broker(),
        title="care-plan-service",
        version=CONTRACT_VERSION,
        description=(
            f"Commands, replies and events of the care-plan service (CONTRACT §2-§5). Commands go to stream "
            f"{COMMAND_STREAM} and are read by the durable pull consumer {COMMAND_CONSUMER}; events are "
            "published in commit order per resource, at least once (`id` drops duplicates)."
        ),
        schema_version="3.0.0",
    ).to_specification()
    document: dict[str, Any] = specification.to_jsonable()
    _complete(document)
    return document


def render_json(document: dict[str, Any]) -> str:
    """Stable text for a committed document: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_asyncapi() -> str:
    return render_json(build_asyncapi())


def _document_command(broker: NatsBroker, spec: CommandSpec) -> None:
    envelope = command_envelope_model(spec)

    async def receive(body: CommandEnvelope) -> None:
        raise RuntimeError(_NOT_SERVING)

    # FastStream reads the body's model from the annotation; each command's own envelope goes there.
    receive.__annotations__ = {"body": envelope, "return": None}
    broker.subscriber(
        command_channel(spec.name),
        title=command_channel(spec.name),
        description=_command_description(spec),
        no_reply=True,
    )(receive)


def _command_description(spec: CommandSpec) -> str:
    if spec.version is VersionCheck.NONE:
        version = "Takes no `expected_version`."
    else:
        whose = spec.version_target
        need = "required" if spec.version is VersionCheck.REQUIRED else "optional: omit it to skip the check"
        version = f"`expected_version` is checked against the {whose}'s ({need}); VERSION_CONFLICT 409."
    return (
        f"Command `{spec.name}` (CONTRACT §4). Needs permission `{spec.permission}`. {version} "
        f"Events: {', '.join(f'`careplan.{name}`' for name in spec.events)}, and its audit Provenance. "
        f"The outcome goes to `{REPLY_CHANNEL}`."
    )


def _complete(document: dict[str, Any]) -> None:
    """Add in place what FastStream leaves out; every added part is a copy, so callers may edit the result."""
    operations: dict[str, Any] = document["operations"]
    for name in COMMANDS:
        _message(document, command_channel(name))["headers"] = copy.deepcopy(_COMMAND_HEADERS)
        operations[command_channel(name)]["reply"] = _reply(location="$message.header#/reply_to")
    for key in [*map(event_channel, EVENTS), AUDIT_CHANNEL]:
        _message(document, key)["headers"] = copy.deepcopy(_EVENT_HEADERS)
    _message(document, DLQ_CHANNEL)["headers"] = copy.deepcopy(_DLQ_HEADERS)
    _message(document, REPLY_CHANNEL)["headers"] = copy.deepcopy(_REPLY_HEADERS)

    # The query's subscriber reads the raw message (it answers a bad body itself), so FastStream sees none.
    query = _message(document, QUERY_SUBJECT)
    query["payload"] = {"$ref": "#/components/schemas/OutcomeQuery"}
    query["headers"] = copy.deepcopy(_QUERY_HEADERS)
    schemas: dict[str, Any] = document["components"]["schemas"]
    schemas["OutcomeQuery"] = OutcomeQuery.model_json_schema()
    schemas.pop("EmptyPayload", None)
    operations[QUERY_SUBJECT]["reply"] = _reply(location=None)
    rollouts = _message(document, ROLLOUT_QUERY_SUBJECT)
    rollouts["payload"] = {"$ref": "#/components/schemas/RolloutQuery"}
    rollouts["headers"] = copy.deepcopy(_QUERY_HEADERS)
    schemas["RolloutQuery"] = RolloutQuery.model_json_schema()

    for channel in document["channels"].values():
        address = channel.get("address") or ""
        parameters = {name: about for name, about in _PARAMETERS.items() if "{" + name + "}" in address}
        if parameters:
            channel["parameters"] = copy.deepcopy(parameters)


def _message(document: dict[str, Any], channel_key: str) -> dict[str, Any]:
    """The one message of a channel, where FastStream put it in components."""
    (reference,) = document["channels"][channel_key]["messages"].values()
    name = reference["$ref"].removeprefix("#/components/messages/")
    message: dict[str, Any] = document["components"]["messages"][name]
    return message


def _reply(*, location: str | None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "channel": {"$ref": f"#/channels/{REPLY_CHANNEL}"},
        # "Message": the key FastStream gives a publisher's one message in its channel
        "messages": [{"$ref": f"#/channels/{REPLY_CHANNEL}/messages/Message"}],
    }
    if location:
        reply["address"] = {"location": location, "description": "The caller's inbox."}
    return reply


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_AUTHORIZATION = {"type": "string", "pattern": "^Bearer ", "description": "Bearer <JWT> (identity-service)."}
_CORRELATION_ID = {"type": "string", "description": "Echoed on the reply; carried into events and logs."}
_COMMAND_HEADERS = _object(
    {
        "Nats-Msg-Id": {
            "type": "string",
            "description": "The command_id: the stream drops a re-sent duplicate within 2 minutes.",
        },
        "Authorization": _AUTHORIZATION,
        "reply_to": {
            "type": "string",
            "description": "Where to publish the reply (JetStream drops a message's own reply subject).",
        },
        "correlation_id": _CORRELATION_ID,
    },
    required=["Nats-Msg-Id", "Authorization"],
)
_QUERY_HEADERS = _object({"Authorization": _AUTHORIZATION}, required=["Authorization"])
_REPLY_HEADERS = _object(
    {"correlation_id": _CORRELATION_ID, "content-type": {"type": "string", "const": "application/json"}}
)
_EVENT_HEADERS = _object(
    {
        "Nats-Msg-Id": {"type": "string", "description": "The event's `id`."},
        "content-type": {
            "type": "string",
            "const": "application/cloudevents+json",
            "description": "CloudEvents NATS binding: the message is the event in structured mode.",
        },
    }
)
_DLQ_HEADERS = {
    **_object(
        {
            "Nats-Msg-Id": {"type": "string", "description": "`<command_id>:dlq`"},
            "Careplan-Original-Subject": {"type": "string", "description": "`careplan.cmd.<command>`"},
            "Careplan-Deliveries": {"type": "string", "description": "How many deliveries failed."},
            "Careplan-Error": {"type": "string", "description": "The last error: `<type>: <first line>`."},
        },
        required=["Careplan-Original-Subject", "Careplan-Deliveries", "Careplan-Error"],
    ),
    "description": "Also the command's own headers (Authorization, reply_to, correlation_id).",
}
_PARAMETERS: dict[str, dict[str, Any]] = {
    "tenant_id": {"description": "The tenant's id, `[A-Za-z0-9_-]{1,64}`."},
    "reply_to": {"description": "The command's `reply_to` header, or the query's NATS reply subject."},
    "command": {"description": "The command's name, as in its subject.", "enum": sorted(COMMANDS)},
}

_NOT_SERVING = "the AsyncAPI document's broker serves nothing"


class _NotServing:
    """Stands in for the token verifier: the documented broker is never started, so nothing calls it."""

    async def verify(self, token: str) -> Principal:
        raise RuntimeError(_NOT_SERVING)


def _not_serving(*_: object) -> NoReturn:
    raise RuntimeError(_NOT_SERVING)


async def _no_outcome(tenant_id: str, command_id: uuid.UUID) -> StoredOutcome | None:
    raise RuntimeError(_NOT_SERVING)


async def _no_rollout(tenant_id: str, rollout_id: uuid.UUID) -> RolloutRecord | None:
    raise RuntimeError(_NOT_SERVING)
