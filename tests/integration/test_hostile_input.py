"""Hostile input (issue scenario 15): thousands of generated commands go over the wire in concurrent
batches: random bytes, JSON of the wrong shape, deep nesting, huge strings, unicode edge cases, mutated
envelopes, header junk and unknown subjects. Each one gets a typed error from the contract's table, or a
valid outcome; none is retried or dead-lettered; the worker keeps serving; nothing is half-written.

Hypothesis draws the batches in a worker thread and runs each batch on the test's event loop, where the
service and the NATS client live, so the checks after the whole run are ordinary code of this test."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from handlers.errors import HTTP_STATUS, ErrorCode
from handlers.nats_consumer import COMMAND_CONSUMER, COMMAND_STREAM, DLQ_STREAM
from handlers.registry import standard_commands
from schemas.commands import COMMAND_SUBJECT_PREFIX, MAX_BODY_BYTES, MAX_JSON_DEPTH
from service.client import envelope, send_command
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.helpers import CARE_PLAN, count_rows
from tests.outbox_ledger import OUTBOX_LEDGER

BATCH = 50  # envelopes per hypothesis example, sent at once
EXAMPLES = 40  # 40 x 50 = 2000 generated envelopes, after the corpus; plus one plain command per batch
WHOLE_EVERY = 5  # batches between the (growing) checks that nothing is half-written; and once at the end
MIN_ENVELOPES = 2000

OK = "OK"
VALIDATION = frozenset({"VALIDATION_ERROR"})
UNAUTHENTICATED = frozenset({"UNAUTHENTICATED"})
NO_FAULT: frozenset[str] = frozenset()
# What a command without a definite fault may get: its effect, or a domain answer (the seeded resources
# move on while the run goes, a "maybe" mutation may still break the schema, and a string mutation that
# lands on a coding's code makes a SNOMED CT or LOINC code that fails its check digit).
DOMAIN_OUTCOMES = frozenset(
    {OK, "VALIDATION_ERROR", "NOT_FOUND", "VERSION_CONFLICT", "INVALID_TRANSITION", "INVALID_CODE"}
)
CONTRACT_CODES = frozenset(code.value for code in ErrorCode)

RESOURCE_TYPES = ("CarePlan", "Goal", "Task", "CareTeam", "PlanDefinition")  # what a success answers with
PLANS = ("plan-0", "plan-1", "plan-missing")
GOALS = ("goal-0", "goal-missing")
TASKS = ("task-0", "task-missing")
MEMBERS = ("dr-x", "dr-y")
DEEP = "@@deep@@"  # a placeholder string, swapped for the nested JSON text once the rest is encoded

UUID_FORMATS: dict[str, Callable[[uuid.UUID], str]] = {
    "plain": str,
    "upper": lambda u: str(u).upper(),
    "hex": lambda u: u.hex,
    "braced": lambda u: "{" + str(u) + "}",
    "urn": lambda u: u.urn,
}
_UUID = TypeAdapter(uuid.UUID)

# Reply subjects a caller may set that we cannot listen on (or that are not subjects at all: whitespace,
# wildcards, non-ASCII, longer than nats-server's control line): the outcome is checked in the command log.
UNANSWERABLE_REPLY_TO = (
    *(None, "", "   ", "junk.*", "junk.>", "a..b", ".", "réponse.😀.x", "x" * 300),
    *("has space.x", "tab\there", "x" * 5000, "y." * 3000),
)

# Surrogates (lone, and the halves of a pair), NUL, BOM, bidi override, zero width, non-characters, the
# last code point, a combining mark, line separator, DEL, ESC, JSON's own escapes, and plain non-ASCII.
EDGE_CHARS = tuple(
    '\x00\ud800\udfff\ud83d\ude00\ufeff\u202e\u200b\uffff\ufffe\U0010ffff\u0301\u2028\x7f\x1b\\"\né😀名'
)
# Dates and date-times at and past the edges, including UTC years below 1000.
EDGE_DATES = (
    *("9999-12-31", "0001-01-01", "1000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-02-29", "2024-02-29"),
    *("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59.999-00:01", "0001-01-01T00:00:00+14:00"),
    *("0001-01-01T00:00:00+00:01", "0001-01-01T00:00:00", "2026-13-01", "2026-01-01T24:00:00Z"),
    *("2026-01-01T00:00:00", "2026-01-01T00:00:00.123456789Z", "2026-W01-1", "20260101", "2026-01-01Z"),
    *("2026-01-01T00:00:00+25:00", "+12026-01-01", "", " "),
    *("0500-01-01T00:00:00Z", "0999-12-31T23:59:59.999Z", "0001-01-01T13:59:00+14:00"),
)
EDGE_NUMBERS: tuple[Any, ...] = (
    *(0, -1, -0.0, 0.5, 1e308, -1e308, 5e-324, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30),
    *("NaN", "Infinity", "-Infinity", "inf", "-nan", "1e400", "7", True, float("nan"), float("inf")),
)
DATE_KEYS = frozenset(
    {"start", "end", "due", "due_date", "next_due", "next_review_due", "start_date", "time"}
)
NUMBER_KEYS = frozenset({"value", "interval_days", "integer"})

COMMANDS = standard_commands()


def data_template(command: str, plan: str, goal: str, task: str, member: str) -> dict[str, Any]:
    """A valid `data` for each command, rich enough that mutations reach many fields."""
    coded = {
        "coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}],
        "text": "Type 2 diabetes",
    }
    target = {
        "measure": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        "detail": {"quantity": {"value": 7, "unit": "%"}},
        "due_date": "2027-06-01",
    }
    ratio = {"measure": coded, "detail": {"ratio": {"numerator": {"value": 1}, "denominator": {"value": 3}}}}
    period = {"start": "2026-01-01", "end": "2026-12-31T17:00:00+01:00"}
    notes = ["first note", {"text": "second", "author_id": "dr-x", "time": "2026-01-01T10:00:00Z"}]
    templates: dict[str, dict[str, Any]] = {
        "careplan.create": {
            "patient_id": "p1",
            "title": "Type 2 diabetes plan",
            "status": "active",
            "description": "Diet and exercise",
            "categories": [coded],
            "period": period,
            "addresses": [coded],
            "author_id": member,
            "review": {"interval_days": 90, "next_due": "2026-06-01"},
            "notes": notes,
        },
        "careplan.update": {
            "care_plan_id": plan,
            "changes": {"title": "Revised plan", "description": None, "period": period, "notes": notes},
        },
        "careplan.change_status": {"care_plan_id": plan, "status": "on-hold", "reason": "admitted"},
        "careplan.request_review": {"care_plan_id": plan, "reviewer_id": member, "due": "2027-01-01"},
        "careplan.complete_review": {
            "care_plan_id": plan,
            "outcome": "continue",
            "notes": notes,
            "next_review_due": "2027-06-01",
        },
        "goal.add": {
            "care_plan_id": plan,
            "description": coded,
            "lifecycle_status": "active",
            "priority": {"text": "high"},
            "start_date": "2026-01-01",
            "targets": [target, ratio],
            "notes": notes,
        },
        "goal.update": {"goal_id": goal, "changes": {"priority": {"text": "low"}, "targets": [target]}},
        "goal.change_status": {
            "goal_id": goal,
            "lifecycle_status": "active",
            "achievement_status": "improving",
            "reason": "better",
        },
        "activity.add": {
            "care_plan_id": plan,
            "description": "Diabetes education",
            "code": coded,
            "kind": "Task",
            "owner_id": member,
            "priority": "routine",
            "scheduled": period,
        },
        "activity.assign": {"activity_id": task, "owner_id": member},
        "activity.change_status": {"activity_id": task, "status": "in-progress", "reason": "started"},
        "careteam.add_member": {
            "care_plan_id": plan,
            "member_id": member,
            "role": coded,
            "on_behalf_of": "org-1",
            "period": period,
        },
        "careteam.update_member": {
            "care_plan_id": plan,
            "member_id": member,
            "changes": {"role": {"text": "GP"}, "period": {"start": "2026-02-01"}},
        },
        "careteam.remove_member": {"care_plan_id": plan, "member_id": member},
        # No program is ever published in the run (the status change names a plan id): an enrolment that
        # passes validation is NOT_FOUND; a define may succeed and is then checked whole like the rest.
        "careplan.enroll": {
            "patient_id": "p1",
            "program": "type-2-diabetes",
            "start": "2027-01-01",
            "encounter_id": "enc-1",
            "author_id": member,
            "title": "Enrolled plan",
            "skip": ["foot-exam"],
            "owners": {"a1c-lab": member},
        },
        "program.define": {
            "name": "type-2-diabetes",
            "title": "Type 2 diabetes",
            "categories": [coded],
            "addresses": [coded],
            "review": {"interval_days": 90},
            "goals": [
                {
                    "key": "a1c",
                    "description": coded,
                    "targets": [
                        {"measure": target["measure"], "detail": target["detail"], "due_after": "P6M"}
                    ],
                }
            ],
            "activities": [
                {"key": "a1c-lab", "description": "HbA1c test", "goal_keys": ["a1c"], "start_after": "P12W"}
            ],
        },
        "program.update": {"program_id": plan, "changes": {"title": "Revised", "review": None}},
        "program.change_status": {"program_id": plan, "status": "active", "reason": "approved"},
        # Names a plan, not a program: NOT_FOUND once it is valid (no program is ever published here).
        "program.rollout": {"program_id": plan, "care_plan_ids": [plan, "plan-1"], "dry_run": False},
    }
    # Through JSON rather than deepcopy, which keeps shared sub-objects shared: a mutation changes one place.
    copied: dict[str, Any] = orjson.loads(orjson.dumps(templates[command]))
    return copied


# --- what a generated envelope is -------------------------------------------------------------------


def _short(value: object, limit: int = 300) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}… ({len(shown)} chars)"


@dataclass(frozen=True, repr=False)
class Body:
    kind: str
    raw: bytes | None = None  # sent as is
    envelope: Any = None  # or encoded from this (JSON, with ensure_ascii so lone surrogates survive)
    cid_format: str | None = None  # a fresh command_id in this format, set at send time
    deep: str | None = None  # nested JSON text replacing the DEEP placeholder
    faults: frozenset[str] = NO_FAULT  # the codes a fault built into the body may get
    maybe_invalid: bool = False  # a value that may or may not pass the schema

    def __repr__(self) -> str:
        return f"Body({self.kind}, {_short(self.raw if self.raw is not None else self.envelope)})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a failing batch with this, not field by field (bodies reach 400 KB)."""
        printer.text(repr(self))


@dataclass(frozen=True, repr=False)
class Case:
    command: str
    body: Body
    auth: str  # a name in the run's table of Authorization headers, or "junk"
    junk_auth: str
    reply: str | None  # "inbox" for a reply we listen for, else the (unanswerable) reply_to header
    correlation_id: str | None
    extra_headers: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"Case({self.command!r}, {self.body!r}, auth={self.auth}, reply={_short(self.reply, 40)}, "
            f"correlation_id={_short(self.correlation_id, 40)}, headers={_short(self.extra_headers, 120)})"
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


# --- strategies -----------------------------------------------------------------------------------------

no_surrogates = st.characters(exclude_categories=["Cs"])
edge_text = st.text(
    alphabet=st.one_of(st.sampled_from(EDGE_CHARS), st.characters(categories=["Cs"]), no_surrogates),
    max_size=30,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20) | edge_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
certainly_not_a_uuid = st.one_of(
    st.none(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=40).map(lambda s: "x" + s),
    st.uuids().map(lambda u: f"{u}0"),
    st.uuids().map(lambda u: f" {u}"),
)
certainly_bad_version = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
    st.sampled_from(["one", "", "1.5", "0x10", "v1", "-2"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(False),
)
maybe_version = st.one_of(
    st.integers(1, 10),
    st.sampled_from([True, "2", " 3 ", 1.0, None]),
    st.integers(min_value=2**31 - 1, max_value=2**64),
    st.sampled_from([10**30, 1e23]),
)
edge_datetimes = st.builds(
    lambda moment, offset: moment.replace(tzinfo=timezone(offset)).isoformat(),
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)),
)
# The lists twice, so that half the values come from them.
edge_dates = st.one_of(
    st.sampled_from(EDGE_DATES),
    st.sampled_from(EDGE_DATES),
    st.dates().map(lambda d: d.isoformat()),
    edge_datetimes,
)
edge_numbers = st.one_of(
    st.sampled_from(EDGE_NUMBERS), st.sampled_from(EDGE_NUMBERS), st.floats(), st.integers()
)
subject_token = st.text(
    alphabet=st.one_of(st.characters(categories=["L", "N"]), st.sampled_from("-_~!@#$%^&()+=[]{}|;:'\",<?/")),
    min_size=1,
    max_size=10,
)
unknown_commands = st.one_of(
    st.sampled_from(["careplan.create.extra", "CAREPLAN.CREATE", "careplan", "goal", "careplan.Create"]),
    st.lists(subject_token, min_size=1, max_size=4).map(".".join),
).filter(lambda name: name not in COMMANDS)
header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
header_values = st.text(alphabet=no_surrogates, max_size=60)
correlation_ids = st.one_of(
    st.none(),
    header_values,
    st.just("c" * 10_000),
    st.tuples(header_values, header_values).map(lambda parts: f"{parts[0]}\x00{parts[1]}"),
)

# Applied in this order: the six that may leave the command valid first, so a fault is never undone.
MUTATIONS = (
    "command_id_format",
    "version_maybe",
    "field_random_json",
    "string_edge",
    "date_edge",
    "number_edge",
    "command_id_junk",
    "command_id_missing",
    "version_junk",
    "extra_envelope_field",
    "extra_data_field",
    "drop_required",
    "data_not_object",
    "data_missing",
)


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], Any]]:
    if isinstance(value, dict):
        return [leaf for key, child in value.items() for leaf in _leaves(child, (*path, key))]
    if isinstance(value, list):
        return [leaf for index, child in enumerate(value) for leaf in _leaves(child, (*path, index))]
    return [(path, value)]


def _set(root: Any, path: tuple[str | int, ...], value: Any) -> None:
    for step in path[:-1]:
        root = root[step]
    root[path[-1]] = value


def _nest(depth: int, as_list: bool) -> str:
    return "[" * depth + "]" * depth if as_list else '{"a":' * depth + "1" + "}" * depth


@st.composite
def envelope_bodies(draw: st.DrawFn, command: str, pool: tuple[str, ...] = ()) -> Body:
    """A valid envelope for `command`, then up to three mutations from `pool`; each knows whether it makes
    a fault."""
    ids = [draw(st.sampled_from(choices)) for choices in (PLANS, GOALS, TASKS, MEMBERS)]
    data: Any = data_template(command, *ids)
    env: dict[str, Any] = {"data": data}
    version = draw(st.none() | st.integers(1, 6))
    if version is not None:
        env["expected_version"] = version
    cid_format: str | None = "plain"
    faults: set[str] = set()
    mutations = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True)) if pool else []
    model = COMMANDS[command].data_model
    for mutation in sorted(mutations, key=MUTATIONS.index):
        data = env.get("data")
        leaves = [(p, v) for p, v in _leaves(data) if p and p[0] != "id"] if isinstance(data, dict) else []
        if mutation == "command_id_junk":
            cid_format, env["command_id"] = None, draw(certainly_not_a_uuid)
            faults |= VALIDATION
        elif mutation == "command_id_format" and cid_format is not None:
            cid_format = draw(st.sampled_from(sorted(UUID_FORMATS)))
        elif mutation == "command_id_missing":
            cid_format = None
            env.pop("command_id", None)
            faults |= VALIDATION
        elif mutation == "version_junk":
            env["expected_version"] = draw(certainly_bad_version)
            faults |= VALIDATION
        elif mutation == "version_maybe":
            env["expected_version"] = draw(maybe_version)
        elif mutation == "data_not_object":
            env["data"] = draw(
                st.one_of(st.lists(json_values, max_size=3), st.text(), st.integers(), st.none())
            )
            faults |= VALIDATION
        elif mutation == "data_missing":
            env.pop("data", None)
            faults |= VALIDATION
        elif mutation == "extra_envelope_field":
            env[draw(st.sampled_from(["Command_Id", "data ", "metadata", "tenant_id", "k"]))] = draw(
                json_values
            )
            faults |= VALIDATION
        elif mutation == "extra_data_field" and isinstance(data, dict):
            data["x_" + draw(st.text(max_size=10))] = draw(json_values)
            faults |= VALIDATION
        elif mutation == "drop_required" and isinstance(data, dict):
            required = sorted(name for name, info in model.model_fields.items() if info.is_required())
            data.pop(draw(st.sampled_from(required)), None)
            faults |= VALIDATION
        elif mutation == "field_random_json" and isinstance(data, dict):
            fields = sorted(name for name in model.model_fields if name != "id")
            data[draw(st.sampled_from(fields))] = draw(json_values)
        elif mutation == "string_edge" and leaves:
            strings = [p for p, v in leaves if isinstance(v, str)] or [p for p, _ in leaves]
            _set(data, draw(st.sampled_from(strings)), draw(edge_text))
        elif mutation == "date_edge" and leaves:
            dates = [p for p, _ in leaves if p[-1] in DATE_KEYS] or [p for p, _ in leaves]
            _set(data, draw(st.sampled_from(dates)), draw(edge_dates))
        elif mutation == "number_edge" and leaves:
            numbers = [p for p, _ in leaves if p[-1] in NUMBER_KEYS] or [p for p, _ in leaves]
            _set(data, draw(st.sampled_from(numbers)), draw(edge_numbers))
    if cid_format is not None:
        env.pop("command_id", None)
    maybe = bool(set(mutations) & set(MUTATIONS[1:6]))
    kind = "+".join(mutations) or "valid"
    return Body(kind, envelope=env, cid_format=cid_format, faults=frozenset(faults), maybe_invalid=maybe)


@st.composite
def deep_bodies(draw: st.DrawFn, command: str) -> Body:
    """Nesting past the limit: as the body, as `data`, in an unknown field or in a known one."""
    depth = draw(st.one_of(st.integers(MAX_JSON_DEPTH + 1, 300), st.integers(300, 1100)))
    nest = _nest(depth, as_list=draw(st.booleans()))
    where = draw(st.sampled_from(["body", "data", "unknown-field", "known-field"]))
    if where == "body":
        return Body(f"deep-{depth}-body", raw=nest.encode(), faults=VALIDATION)
    data: Any = data_template(command, "plan-0", "goal-0", "task-0", "dr-x")
    if where == "data":
        data = DEEP
    elif where == "unknown-field":
        data["x_deep"] = DEEP
    else:
        data[sorted(data)[0]] = DEEP
    return Body(
        f"deep-{depth}-{where}", envelope={"data": data}, cid_format="plain", deep=nest, faults=VALIDATION
    )


@st.composite
def huge_bodies(draw: st.DrawFn, command: str) -> Body:
    """Strings at and past the schema's limits and the 256 KiB body limit (under the stream's 512 KiB)."""
    data = data_template(command, "plan-0", "goal-0", "task-0", "dr-x")
    size = draw(st.sampled_from([1000, 1001, 20_000, 20_001, 120_000, 250_000, 270_000, 400_000]))
    char = draw(st.sampled_from(["x", "é", "😀", "\u202e", "\x00"]))
    per_char = len(json.dumps(char)) - 2
    strings = [p for p, v in _leaves(data) if isinstance(v, str)]
    where = draw(st.sampled_from([*strings, ("x_huge",)]))
    _set(data, where, char * (size // per_char))
    faults = VALIDATION if where == ("x_huge",) else NO_FAULT
    kind = f"huge-{size}-{ord(char):x}"
    return Body(kind, envelope={"data": data}, cid_format="plain", faults=faults, maybe_invalid=True)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    template = draw(st.sampled_from(sorted(COMMANDS)))
    kind = draw(st.integers(0, 99))
    # Values at the edges in a valid shape, from a valid caller, for a known command: these reach execution.
    edges = 10 <= kind < 40
    command = template if edges or draw(st.integers(0, 99)) < 85 else draw(unknown_commands)
    if kind < 10:
        body = draw(envelope_bodies(template))
    elif kind < 40:
        body = draw(envelope_bodies(template, (*MUTATIONS[:6], "date_edge", "number_edge", "string_edge")))
    elif kind < 73:
        body = draw(envelope_bodies(template, MUTATIONS))
    elif kind < 81:
        body = Body("random-bytes", raw=draw(st.binary(max_size=512)))
    elif kind < 89:
        junk = draw(
            st.one_of(json_values, st.dictionaries(st.text(max_size=8).map(lambda k: "k" + k), json_values))
        )
        body = Body("json-junk", envelope=junk, faults=VALIDATION)
    elif kind < 97:
        body = draw(deep_bodies(template))
    else:
        body = draw(huge_bodies(template))
    auth_roll = draw(st.integers(0, 99))
    auth = "valid" if auth_roll < (90 if edges else 60) else draw(st.sampled_from(sorted(AUTH_FAULTS)))
    junk_auth = (
        draw(st.one_of(header_values, header_values.map(lambda t: "Bearer " + t))) if auth == "junk" else ""
    )
    reply = "inbox" if draw(st.integers(0, 99)) < 85 else draw(st.sampled_from(UNANSWERABLE_REPLY_TO))
    correlation_id = draw(correlation_ids) if draw(st.integers(0, 99)) < 30 else None
    extra = (
        draw(st.dictionaries(header_names, header_values, max_size=3)) if draw(st.integers(0, 9)) < 2 else {}
    )
    return Case(command, body, auth, junk_auth, reply, correlation_id, extra)


SEEDED = ("plan-0", "goal-0", "task-0", "dr-x")
# One ordinary command in every batch: the worker still serves.
PLAIN = Case(
    "careplan.create",
    Body("plain", envelope={"data": CARE_PLAN}, cid_format="plain"),
    "valid",
    "",
    "inbox",
    None,
    {},
)


def corpus() -> list[Case]:
    """Every listed edge value in a place where it reaches execution, from a valid caller, sent before the
    generated batches on every run: the regressions we know of are always tried, the rest is explored."""

    def create(kind: str, **changes: Any) -> Case:
        return case("careplan.create", data_template("careplan.create", *SEEDED) | changes, kind)

    def case(command: str, data: dict[str, Any], kind: str, **options: Any) -> Case:
        body = Body(
            kind, envelope={"data": data}, cid_format="plain", maybe_invalid=True, deep=options.get("deep")
        )
        return Case(command, body, "valid", "", "inbox", options.get("correlation_id"), {})

    cases_ = [create("corpus-date", period={"start": value}) for value in EDGE_DATES]
    cases_ += [create("corpus-note-time", notes=[{"text": "n", "time": value}]) for value in EDGE_DATES]
    cases_ += [create("corpus-char", title=f"a{char}b", description=char) for char in EDGE_CHARS]
    for value in EDGE_NUMBERS:
        goal = data_template("goal.add", *SEEDED)
        goal["targets"][0]["detail"]["quantity"]["value"] = value
        cases_.append(case("goal.add", goal, "corpus-number"))
    for depth in (MAX_JSON_DEPTH - 3, MAX_JSON_DEPTH - 1, MAX_JSON_DEPTH, 254, 255, 256, 1023, 1024, 1025):
        deep = data_template("careplan.create", *SEEDED) | {"notes": DEEP}
        cases_.append(case("careplan.create", deep, "corpus-deep", deep=_nest(depth, as_list=True)))
    for size in (1000, 1001):
        cases_.append(create("corpus-long-title", title="x" * size))
    for size in (20_000, 20_001, MAX_BODY_BYTES):
        cases_.append(create("corpus-long-description", description="x" * size))
    cases_.append(
        case(
            "careplan.create",
            data_template("careplan.create", *SEEDED),
            "corpus-nul-correlation",
            correlation_id="a\x00b",
        )
    )
    return cases_


# Authorization headers by name, and the codes each may get (the headers themselves are minted per test).
AUTH_FAULTS: dict[str, frozenset[str]] = {
    "valid": NO_FAULT,
    "valid-lowercase-scheme": NO_FAULT,
    "valid-padded": NO_FAULT,
    "missing": UNAUTHENTICATED,
    "empty": UNAUTHENTICATED,
    "scheme-only": UNAUTHENTICATED,
    "basic": UNAUTHENTICATED,
    "no-scheme": UNAUTHENTICATED,
    "not-a-jwt": UNAUTHENTICATED,
    "three-junk-segments": UNAUTHENTICATED,
    "tampered": UNAUTHENTICATED,
    "expired": UNAUTHENTICATED,
    "wrong-audience": UNAUTHENTICATED,
    "bad-tenant-claim": UNAUTHENTICATED,
    "kid-not-a-string": UNAUTHENTICATED,
    "alg-none": UNAUTHENTICATED,
    "junk": UNAUTHENTICATED,
    "no-roles": frozenset({"FORBIDDEN"}),
    "patient": frozenset({"FORBIDDEN"}),
    "unlicensed": frozenset({"MODULE_NOT_LICENSED"}),
}


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def authorization_headers(token_for: TokenFactory, tenant: str) -> dict[str, str | None]:
    # Both roles, so that every command's body reaches its checks (a permission is checked first).
    good = token_for(tenant, roles=["clinician", "program-author"])
    head, payload, signature = good.split(".")
    flipped = "A" if payload[10] != "A" else "B"
    kid_list = _b64(orjson.dumps({"alg": "ES256", "kid": ["x"]}))
    alg_none = _b64(orjson.dumps({"alg": "none"}))
    return {
        "valid": f"Bearer {good}",
        "valid-lowercase-scheme": f"bearer {good}",
        "valid-padded": f"Bearer    {good}   ",
        "missing": None,
        "empty": "",
        "scheme-only": "Bearer",
        "basic": "Basic dXNlcjpwYXNzd29yZA==",
        "no-scheme": good,
        "not-a-jwt": "Bearer not-a-jwt",
        "three-junk-segments": "Bearer a.b.c",
        "tampered": f"Bearer {head}.{payload[:10]}{flipped}{payload[11:]}.{signature}",
        "expired": f"Bearer {token_for(tenant, ttl_s=-120)}",
        "wrong-audience": f"Bearer {token_for(tenant, audience='billing-service')}",
        "bad-tenant-claim": f"Bearer {token_for('bad tenant!')}",
        "kid-not-a-string": f"Bearer {kid_list}.{payload}.{signature}",
        "alg-none": f"Bearer {alg_none}.{payload}.",
        "no-roles": f"Bearer {token_for(tenant, roles=[])}",
        "patient": f"Bearer {token_for(tenant, patient_id='p1')}",
        "unlicensed": f"Bearer {token_for(tenant, entitlements=['ehr.billing'])}",
    }


# --- the oracle -----------------------------------------------------------------------------------------


def body_faults(body: bytes) -> frozenset[str]:
    """What the contract says of the bytes alone: over the limit, not JSON, not an object, or holding what
    no command may hold (NUL, nesting past the limit)."""
    faults: set[str] = set()
    if len(body) > MAX_BODY_BYTES:
        faults.add("PAYLOAD_TOO_LARGE")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return frozenset(faults | VALIDATION)
    if not isinstance(value, dict) or _has_nul_or_depth(value):
        faults |= VALIDATION
    return frozenset(faults)


def _has_nul_or_depth(value: Any) -> bool:
    stack: list[tuple[int, Any]] = [(0, value)]
    while stack:
        depth, item = stack.pop()
        if depth > MAX_JSON_DEPTH or (isinstance(item, str) and "\x00" in item):
            return True
        if isinstance(item, dict):
            if any("\x00" in key for key in item):
                return True
            stack.extend((depth + 1, child) for child in item.values())
        elif isinstance(item, list):
            stack.extend((depth + 1, child) for child in item)
    return False


def _header_text(value: str) -> str:
    """A header value as both ends see it: NATS clients trim it and turn CR and LF into spaces."""
    return value.strip().replace("\r", " ").replace("\n", " ").strip()


def canonical_command_id(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(_UUID.validate_python(value))
    except ValidationError:
        return None


@dataclass
class Sent:
    case: Case
    subject: str
    body: bytes
    headers: dict[str, str]
    message_id: str
    command_id: str | None  # canonical, when the body's command_id is one
    definite: bool  # it has a fault, so it must be refused before anything is recorded
    allowed: frozenset[str]
    reply_subject: str | None

    def describe(self) -> str:
        headers = {k: _short(v, 80) for k, v in self.headers.items()}
        size = len(self.body)
        return f"{self.case.body.kind} on {self.subject!r} ({size} bytes) {_short(self.body)}, {headers}"


# --- one run --------------------------------------------------------------------------------------------


@dataclass
class HostileRun:
    nc: NatsClient
    engine: AsyncEngine
    tenant: str
    authorization: dict[str, str | None]
    seeds: dict[str, set[str]] = field(default_factory=dict)
    created: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    message_ids: set[str] = field(default_factory=set)
    codes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    batches: int = 0
    unanswered: int = 0
    dlq_start: int = 0
    stream_start: int = 0

    async def start(self) -> None:
        """Seed two plans with a goal, a task and a team member, so mutated commands reach execution."""
        token = self.authorization["valid"]
        assert token is not None
        seeds: list[tuple[str, dict[str, Any]]] = [
            ("careplan.create", CARE_PLAN | {"id": "plan-0"}),
            ("careplan.create", CARE_PLAN | {"id": "plan-1"}),
            ("goal.add", {"care_plan_id": "plan-0", "id": "goal-0", "description": {"text": "g"}}),
            (
                "activity.add",
                {"care_plan_id": "plan-0", "id": "task-0", "description": "t", "owner_id": "dr-x"},
            ),
            ("careteam.add_member", {"care_plan_id": "plan-0", "member_id": "dr-x", "role": {"text": "GP"}}),
        ]
        for command, data in seeds:
            reply = await send_command(self.nc, command, envelope(data), token=token.removeprefix("Bearer "))
            assert reply["ok"] is True, reply
            self.seeds.setdefault(reply["result"]["resource_type"], set()).add(reply["result"]["id"])
        js = self.nc.jetstream()
        self.dlq_start = (await js.stream_info(DLQ_STREAM)).state.last_seq
        self.stream_start = (await js.stream_info(COMMAND_STREAM)).state.messages

    def prepare(self, case: Case, inbox: str, index: int) -> Sent:
        body = case.body
        command_id: str | None = None
        if body.raw is not None:
            raw = body.raw
        else:
            env = body.envelope
            if body.cid_format is not None:
                env = dict(env) | {"command_id": UUID_FORMATS[body.cid_format](uuid.uuid4())}
            if isinstance(env, dict):
                command_id = canonical_command_id(env.get("command_id"))
            encoded = json.dumps(env, ensure_ascii=True, allow_nan=True)
            if body.deep is not None:
                encoded = encoded.replace(json.dumps(DEEP), body.deep, 1)
            raw = encoded.encode()
        message_id = str(uuid.uuid4())
        headers = dict(case.extra_headers) | {"Nats-Msg-Id": message_id}
        authorization = case.junk_auth if case.auth == "junk" else self.authorization[case.auth]
        if authorization is not None:
            headers["Authorization"] = authorization
        reply_subject = f"{inbox}.{index}" if case.reply == "inbox" else None
        if case.reply is not None:
            headers["reply_to"] = reply_subject or case.reply
        if case.correlation_id is not None:
            headers["correlation_id"] = case.correlation_id
        faults = set(body.faults | body_faults(raw) | AUTH_FAULTS[case.auth])
        if case.command not in COMMANDS:
            faults.add("UNKNOWN_COMMAND")
        if case.correlation_id is not None and "\x00" in case.correlation_id:
            faults |= VALIDATION
        if faults and body.maybe_invalid:
            faults |= VALIDATION
        allowed = frozenset(faults) if faults else DOMAIN_OUTCOMES
        return Sent(
            case=case,
            subject=COMMAND_SUBJECT_PREFIX + case.command,
            body=raw,
            headers=headers,
            message_id=message_id,
            command_id=command_id,
            definite=bool(faults),
            allowed=allowed,
            reply_subject=reply_subject,
        )

    async def batch(self, cases_: list[Case]) -> None:
        inbox = self.nc.new_inbox()
        sent = [self.prepare(case, inbox, i) for i, case in enumerate([*cases_, PLAIN])]
        expected = {s.reply_subject for s in sent if s.reply_subject}
        replies: dict[str, Msg] = {}
        all_in = asyncio.Event()

        async def collect(msg: Msg) -> None:
            replies[msg.subject] = msg
            if expected <= replies.keys():
                all_in.set()

        sub = await self.nc.subscribe(f"{inbox}.>", cb=collect)
        try:
            js = self.nc.jetstream()
            await asyncio.gather(
                *(js.publish(s.subject, s.body, headers=s.headers, timeout=10) for s in sent)
            )
            self.message_ids.update(s.message_id for s in sent)
            try:
                await asyncio.wait_for(all_in.wait(), 30)
            except TimeoutError:
                missing = [s.describe() for s in sent if s.reply_subject and s.reply_subject not in replies]
                raise AssertionError(f"{len(missing)} commands got no reply, e.g. {missing[:3]}") from None
        finally:
            await sub.unsubscribe()
        for s in sent:
            self.kinds[s.case.body.kind.split("-")[0].split("+")[0]] += 1
            if s.reply_subject:
                self.check_reply(s, replies[s.reply_subject])
        assert orjson.loads(replies[sent[-1].reply_subject or ""].data)["ok"] is True  # the worker serves
        self.sent += len(cases_)
        await self.wait_until_consumed()
        await self.check_unanswered([s for s in sent if not s.reply_subject])
        self.batches += 1
        if self.batches % WHOLE_EVERY == 0:
            await self.check_data_whole()

    def check_reply(self, s: Sent, msg: Msg) -> None:
        reply = orjson.loads(msg.data)
        assert isinstance(reply, dict), s.describe()
        if reply.get("ok") is True:
            code = OK
            assert reply["status"] in (200, 201), reply
            result = reply["result"]
            assert result["resource_type"] in RESOURCE_TYPES, reply
            assert (
                isinstance(result["id"], str)
                and isinstance(result["version"], int)
                and result["version"] >= 1
            )
            if reply["status"] == 201:
                self.created[result["resource_type"]].add(result["id"])
        else:
            assert reply.get("ok") is False, reply
            code = reply["error"]["code"]
            assert code in CONTRACT_CODES, reply
            assert reply["status"] == HTTP_STATUS[ErrorCode(code)], reply
            assert isinstance(reply["error"]["message"], str), reply
        assert code in s.allowed, f"{s.describe()} may get {sorted(s.allowed)}, got {_short(reply, 600)}"
        assert reply["command_id"] in {s.message_id, s.command_id}, (s.describe(), reply)
        # The caller's correlation id comes back as it went (as far as NATS headers carry it: trimmed). With
        # none, FastStream puts in one of its own.
        sent_correlation = _header_text(s.headers.get("correlation_id", ""))
        if sent_correlation:
            received = _header_text((msg.headers or {}).get("correlation_id", ""))
            assert received == sent_correlation, s.describe()
        self.codes[code] += 1

    async def wait_until_consumed(self, timeout: float = 30.0) -> None:
        """Every message of the batch taken and acked, and no longer in the work-queue stream."""
        js = self.nc.jetstream()
        async with asyncio.timeout(timeout):
            while True:
                consumer = await js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)
                stream = await js.stream_info(COMMAND_STREAM)
                idle = consumer.num_pending == 0 and consumer.num_ack_pending == 0
                if idle and stream.state.messages <= self.stream_start:
                    return
                await asyncio.sleep(0.02)

    async def check_unanswered(self, sent: list[Sent]) -> None:
        """No reply to listen for: the command log tells what became of them."""
        self.unanswered += len(sent)
        ids = [uuid.UUID(s.command_id) for s in sent if s.command_id]
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    text(
                        "SELECT command_id::text, status, outcome FROM command_log "
                        "WHERE tenant_id = :t AND command_id = ANY(:ids)"
                    ),
                    {"t": self.tenant, "ids": ids},
                )
            ).all()
        logged = {row[0]: (row[1], row[2]) for row in rows}
        for s in sent:
            if s.command_id not in logged:
                # A valid command from a valid caller is executed even when nobody listens for the reply.
                assert s.definite or s.case.body.maybe_invalid or not s.command_id, s.describe()
                continue
            status, outcome = logged[s.command_id]
            assert not s.definite, f"{s.describe()} was recorded: {_short(outcome)}"
            code = OK if outcome["ok"] else outcome["error"]["code"]
            assert code in s.allowed and status < 500, (s.describe(), outcome)
            if status == 201:
                self.created[outcome["result"]["resource_type"]].add(outcome["result"]["id"])
            self.codes[code] += 1

    async def check_data_whole(self) -> None:
        """Every resource row has its history row, every change its success in the command log, its
        events and exactly one audit record in the outbox, and nothing else was in the outbox (its ledger:
        the relay deletes what it publishes)."""
        checks = {
            **{
                f"{table} without history": f"""
                    SELECT count(*) FROM {table} r WHERE r.tenant_id = :t AND NOT EXISTS (
                        SELECT 1 FROM resource_history h WHERE h.tenant_id = r.tenant_id
                        AND h.resource_type = '{resource_type}' AND h.resource_id = r.id
                        AND h.version = r.version)"""
                for table, resource_type in (
                    ("care_plans", "CarePlan"),
                    ("goals", "Goal"),
                    ("tasks", "Task"),
                    ("care_teams", "CareTeam"),
                    ("plan_definitions", "PlanDefinition"),
                )
            },
            "history without a successful command": """
                SELECT count(*) FROM resource_history h WHERE h.tenant_id = :t AND NOT EXISTS (
                    SELECT 1 FROM command_log c WHERE c.tenant_id = h.tenant_id
                    AND c.command_id = h.command_id AND c.status IN (200, 201))""",
            "changes without their events or one audit record": f"""
                WITH changes AS (SELECT DISTINCT command_id FROM resource_history WHERE tenant_id = :t),
                out AS (SELECT (convert_from(payload, 'UTF8')::jsonb ->> 'causationid')::uuid AS command_id,
                               subject FROM {OUTBOX_LEDGER} WHERE tenant_id = :t)
                SELECT count(*) FROM changes c WHERE
                    (SELECT count(*) FROM out o WHERE o.command_id = c.command_id
                        AND o.subject LIKE 'careplan.audit.%') <> 1
                    OR NOT EXISTS (SELECT 1 FROM out o WHERE o.command_id = c.command_id
                        AND o.subject LIKE 'careplan.evt.%')""",
            # The scheduler's signals are caused by its sweep, not by a command (it passes hourly here).
            "outbox rows of no change": f"""
                SELECT count(*) FROM {OUTBOX_LEDGER} o WHERE o.tenant_id = :t AND NOT EXISTS (
                    SELECT 1 FROM resource_history h WHERE h.tenant_id = o.tenant_id AND h.command_id =
                        (convert_from(o.payload, 'UTF8')::jsonb ->> 'causationid')::uuid)
                AND o.subject NOT SIMILAR TO
                    '%.(careplan.review_due|goal.overdue|metrics.goal_achievement)'""",
            "provenance not one per change": """
                SELECT abs((SELECT count(*) FROM provenance WHERE tenant_id = :t)
                    - (SELECT count(DISTINCT command_id) FROM resource_history WHERE tenant_id = :t))""",
            "outcomes recorded as 5xx": """
                SELECT count(*) FROM command_log WHERE tenant_id = :t AND status >= 500""",
        }
        async with self.engine.connect() as conn:
            broken = {name: await conn.scalar(text(sql), {"t": self.tenant}) for name, sql in checks.items()}
        assert not any(broken.values()), broken

    async def check_not_dead_lettered(self) -> None:
        js = self.nc.jetstream()
        last = (await js.stream_info(DLQ_STREAM)).state.last_seq
        for seq in range(self.dlq_start + 1, last + 1):
            try:
                msg = await js.get_msg(DLQ_STREAM, seq)
            except NotFoundError:
                continue
            original = (msg.headers or {}).get("Nats-Msg-Id", "").removesuffix(":dlq")
            assert original not in self.message_ids, f"dead-lettered: {_short(msg.data)} {msg.headers}"

    async def resources(self, table: str, where: str = "true") -> set[str]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                text(f"SELECT id FROM {table} WHERE tenant_id = :t AND {where}"), {"t": self.tenant}
            )
            return {row[0] for row in rows}


async def test_hostile_commands_get_typed_answers_and_leave_nothing_half_written(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    admin_engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="handlers.nats_consumer")
    run = HostileRun(nc, admin_engine, tenant, authorization_headers(token_for, tenant))
    await run.start()
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        # No shrinking: a failure names its envelope, and each shrink step is a batch over the wire.
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(st.lists(cases(), min_size=BATCH, max_size=BATCH))
    def batches(batch: list[Case]) -> None:
        asyncio.run_coroutine_threadsafe(run.batch(batch), loop).result(timeout=120)

    started = time.monotonic()
    known = corpus()
    for start in range(0, len(known), BATCH):
        await run.batch(known[start : start + BATCH])
    await asyncio.to_thread(batches)
    elapsed = time.monotonic() - started
    print(
        f"\n{run.sent} hostile envelopes ({len(known)} from the corpus) and {run.batches} plain ones in "
        f"{elapsed:.1f}s; {run.unanswered} without a reply subject; "
        f"outcomes {dict(run.codes.most_common())}; bodies {dict(run.kinds.most_common())}"
    )

    assert run.sent >= MIN_ENVELOPES
    assert set(run.codes) >= {
        OK,
        "VALIDATION_ERROR",
        "UNAUTHENTICATED",
        "UNKNOWN_COMMAND",
        "PAYLOAD_TOO_LARGE",
    }
    # Nothing was retried (junk is never transient) and nothing of ours reached the dead-letter stream.
    consumer_log = [r.getMessage() for r in caplog.records if r.name == "handlers.nats_consumer"]
    assert not [m for m in consumer_log if "will retry" in m or "dead-lettered" in m or "not sent" in m]
    await run.check_not_dead_lettered()
    consumer = await nc.jetstream().consumer_info(COMMAND_STREAM, COMMAND_CONSUMER)
    assert consumer.num_ack_pending == 0
    # The worker is alive and well: an ordinary command after the storm.
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant))
    assert reply["ok"] is True, reply
    run.created["CarePlan"].add(reply["result"]["id"])
    # Exactly the resources the successful commands created exist, and each is whole.
    await run.check_data_whole()
    plans = run.seeds["CarePlan"] | run.created["CarePlan"]
    assert await count_rows(admin_engine, "care_plans", tenant) == len(plans)
    assert await run.resources("care_plans") == plans
    assert await run.resources("goals") == run.seeds["Goal"] | run.created["Goal"]
    assert await run.resources("tasks", "NOT is_review") == run.seeds["Task"] | run.created["Task"]
    assert await run.resources("plan_definitions") == run.created["PlanDefinition"]
    assert await count_rows(admin_engine, "rollouts", tenant) == 0
