"""The AsyncAPI document: the committed file is the generated one, and it covers every command, every event
the domain can emit, and the subscribers the service really serves."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from domain import care_plan, programs
from handlers import rollouts, scheduler
from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, COMMAND_SUBJECTS
from handlers.queries import QUERY_SUBJECT, ROLLOUT_QUERY_SUBJECT
from handlers.registry import VersionCheck, standard_commands
from service.asyncapi import (
    DOCUMENT_PATH,
    EVENTS,
    REGENERATE_COMMAND,
    build_asyncapi,
    build_documented_broker,
    command_channel,
    event_channel,
    render_asyncapi,
)

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"

COMMANDS = standard_commands()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_asyncapi()


def test_committed_document_is_the_generated_one() -> None:
    # given the committed file and a fresh generation
    committed = COMMITTED.read_text(encoding="utf-8")
    fresh = render_asyncapi()
    # then they are the same text
    if committed != fresh:
        pytest.fail(
            f"docs/asyncapi.json is stale (changed: {_changed_entries(committed, fresh) or 'formatting'}); "
            f"regenerate it with `{REGENERATE_COMMAND}`"
        )


def test_the_generator_writes_the_committed_path() -> None:
    assert DOCUMENT_PATH == COMMITTED


def test_every_command_has_a_channel_whose_payload_requires_its_data_fields(document: dict[str, Any]) -> None:
    for name, spec in COMMANDS.items():
        # given the command's channel
        channel = document["channels"][command_channel(name)]
        assert channel["address"] == f"careplan.cmd.{name}"
        # when its message's payload is followed to the envelope and the envelope's data
        message = _resolve(document, next(iter(channel["messages"].values())))
        envelope = _resolve(document, message["payload"])
        data = _resolve(document, envelope["properties"]["data"])
        # then both require what the wire models require
        assert set(envelope["required"]) == {"command_id", "data"}, name
        required = {field for field, info in spec.data_model.model_fields.items() if info.is_required()}
        assert required, name
        assert required <= set(data.get("required", [])), name
        assert spec.permission in channel["description"], name
        assert {"Nats-Msg-Id", "Authorization"} <= set(message["headers"]["required"]), name


def test_every_versioned_command_says_whose_version_it_checks(document: dict[str, Any]) -> None:
    versioned = {name for name, spec in COMMANDS.items() if spec.version is not VersionCheck.NONE}
    assert {name for name, spec in COMMANDS.items() if spec.version_target} == versioned
    update = document["channels"]["careplan.cmd.careplan.update"]["description"]
    add_goal = document["channels"]["careplan.cmd.goal.add"]["description"]
    assert "checked against the plan's (required)" in update
    assert "checked against the plan's (optional" in add_goal
    assert (
        "Takes no `expected_version`" in document["channels"]["careplan.cmd.careplan.create"]["description"]
    )


def test_every_event_the_domain_can_emit_has_a_channel(document: dict[str, Any]) -> None:
    # given the event names the aggregate, the scheduler and the rollout worker can emit
    emitted = (
        _event_names_in(care_plan)
        | _event_names_in(programs)
        | {
            scheduler.GOAL_OVERDUE,
            scheduler.REVIEW_DUE,
            scheduler.GOAL_ACHIEVEMENT,
            rollouts.ROLLOUT_COMPLETED,
        }
    )
    # then each has its channel, and the document lists no event that nothing emits
    documented = {
        key.removeprefix("careplan.")
        for key, channel in document["channels"].items()
        if channel["address"].startswith("careplan.evt.")
    }
    assert documented == emitted == EVENTS.keys()
    for name in emitted:
        channel = document["channels"][event_channel(name)]
        assert channel["address"] == f"careplan.evt.{{tenant_id}}.{name}"
        assert "tenant_id" in channel["parameters"]
        assert _resolve(document, _payload_of(document, channel))["title"] == "CloudEvent"


def test_the_served_subscribers_are_the_ones_documented(document: dict[str, Any]) -> None:
    # given the broker the document is generated from
    served: list[Any] = list(build_documented_broker().subscribers)
    subscribers = {sub.specification.subjects[0]: sub for sub in served}
    # then it holds the served command consumer, registered by the service's own function …
    consumer: Any = subscribers[COMMAND_SUBJECTS]
    assert consumer.stream.name == COMMAND_STREAM
    assert consumer.config.durable_name == COMMAND_CONSUMER
    # … kept out of the document, where each command's channel is a subject that consumer reads
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert COMMAND_SUBJECTS not in addresses
    prefix = COMMAND_SUBJECTS.removesuffix(">")
    commands = {a.removeprefix(prefix) for a in addresses if a.startswith(prefix)}
    assert commands == COMMANDS.keys()
    # and the served outcome query, which is in the document as registered
    assert QUERY_SUBJECT in subscribers
    query = document["channels"][QUERY_SUBJECT]
    assert query["address"] == QUERY_SUBJECT
    assert query["bindings"]["nats"]["queue"] == "careplan-query"
    assert document["operations"][QUERY_SUBJECT]["action"] == "receive"
    assert _resolve(document, _payload_of(document, query))["required"] == ["command_id"]
    # and the rollout progress query, beside it
    assert ROLLOUT_QUERY_SUBJECT in subscribers
    progress = document["channels"][ROLLOUT_QUERY_SUBJECT]
    assert progress["bindings"]["nats"]["queue"] == "careplan-query"
    assert _resolve(document, _payload_of(document, progress))["required"] == ["rollout_id"]


def test_replies_audit_and_dead_letters_are_documented(document: dict[str, Any]) -> None:
    channels = document["channels"]
    assert _resolve(document, _payload_of(document, channels["careplan.reply"]))["title"] == "Reply"
    assert channels["careplan.audit.provenance"]["address"] == "careplan.audit.{tenant_id}"
    dlq = channels["careplan.dlq"]
    assert dlq["address"] == "careplan.dlq.{command}"
    assert dlq["parameters"]["command"]["enum"] == sorted(COMMANDS)
    dlq_headers = _resolve(document, next(iter(dlq["messages"].values())))["headers"]
    assert {"Careplan-Original-Subject", "Careplan-Deliveries", "Careplan-Error"} <= set(
        dlq_headers["properties"]
    )
    for name in COMMANDS:
        reply = document["operations"][command_channel(name)]["reply"]
        assert reply["channel"] == {"$ref": "#/channels/careplan.reply"}
        assert reply["address"]["location"] == "$message.header#/reply_to"


def _event_names_in(module: ModuleType) -> set[str]:
    """The string literals the aggregate passes to `_new_version`/`_event`: where it names its events."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(module))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr in ("_new_version", "_event"):
            names |= {
                arg.value
                for arg in node.args
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and "." in arg.value
            }
    return names


def _changed_entries(committed: str, fresh: str) -> list[str]:
    """Which channels and component schemas differ, to say where to look."""
    old, new = json.loads(committed), json.loads(fresh)
    sections = [
        ("channels", old["channels"], new["channels"]),
        ("schemas", old["components"]["schemas"], new["components"]["schemas"]),
    ]
    return [
        f"{section}/{key}"
        for section, before, after in sections
        for key in sorted(before.keys() | after.keys())
        if before.get(key) != after.get(key)
    ]


def _payload_of(document: dict[str, Any], channel: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = _resolve(document, next(iter(channel["messages"].values())))["payload"]
    return payload


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """Follow `$ref`s within the document until a real object."""
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node
