"""The REST write API (CONTRACT §9) on the running service: what HTTP adds to the command path (status,
headers, problem documents, Idempotency-Key, If-Match) and that it keeps every rule of the NATS path.
The lifecycle tests run every command over both transports; these cover the edges of HTTP itself."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.commands import MAX_JSON_DEPTH
from service.client import envelope, send_command
from service.dev_identity import DevKeys
from service.runner import RunningService
from storage.wal_position import WalPosition
from tests.conftest import TokenFactory
from tests.integration.commands import RestCaller, reply_of
from tests.integration.helpers import CARE_PLAN, assert_same_answer, count_rows, event_caused_by
from tests.integration.test_command_rejections import BAD_TOKENS, assert_nothing_written
from tests.outbox_ledger import OUTBOX_LEDGER


@pytest.fixture
def rest(service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory) -> RestCaller:
    return RestCaller(nc, service.http_url, token_for(tenant))


async def raw_request(
    service: RunningService,
    method: str,
    path: str,
    *,
    token: str | None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Mapping[str, str], bytes]:
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, service.http_url + path, data=body, headers=all_headers) as response,
    ):
        return response.status, CIMultiDict(response.headers), await response.read()


def problem_of(status: int, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """A problem document, checked for RFC 9457's members and ours."""
    assert headers["Content-Type"].startswith("application/problem+json"), headers
    document: dict[str, Any] = orjson.loads(body)
    assert document["status"] == status
    assert {"type", "title", "code", "command_id"} <= document.keys()
    return document


async def test_create_answers_201_with_location_and_etag_of_the_fhir_resource(
    rest: RestCaller, service: RunningService
) -> None:
    status, headers, body = await rest.request("careplan.create", CARE_PLAN)
    assert status == 201
    assert body["resource_type"] == "CarePlan"
    assert body["version"] == 1
    assert headers["ETag"] == 'W/"1"'
    assert headers["Location"] == f"{service.http_url}/fhir/CarePlan/{body['id']}"
    assert headers["Careplan-Position"] == body["position"]  # the commit's, for read-your-writes
    assert WalPosition.parse(body["position"])
    assert uuid.UUID(headers["Idempotency-Key"])  # generated, since the caller sent none
    read = await rest.read("CarePlan", body["id"])
    assert read["title"] == CARE_PLAN["title"]
    # the generated key is the command id: its outcome is on record under it
    outcome = await raw_request(
        service, "GET", f"/api/v1/commands/{headers['Idempotency-Key']}", token=rest.token
    )
    assert outcome[0] == 200
    assert orjson.loads(outcome[2])["result"]["id"] == body["id"]


async def test_etag_of_one_answer_is_the_if_match_of_the_next(rest: RestCaller) -> None:
    created = await rest.request("careplan.create", CARE_PLAN)
    plan_id = created[2]["id"]
    status, headers, body = await rest.request(
        "careplan.update",
        {"care_plan_id": plan_id, "changes": {"title": "Renamed"}},
        extra_headers={"If-Match": created[1]["ETag"]},
    )
    assert (status, headers["ETag"], body["version"]) == (200, 'W/"2"', 2)
    assert "Location" not in headers
    assert (await rest.read("CarePlan", plan_id))["title"] == "Renamed"


async def test_the_same_idempotency_key_and_body_gets_the_same_answer_and_changes_nothing(
    rest: RestCaller, admin_engine: AsyncEngine, tenant: str
) -> None:
    key = str(uuid.uuid4())
    first = await rest.request("careplan.create", CARE_PLAN, idempotency_key=key)
    again = await rest.request("careplan.create", CARE_PLAN, idempotency_key=key)
    assert first[0] == again[0] == 201
    assert_same_answer(reply_of(*again), reply_of(*first))
    assert again[1]["Careplan-Position"] == again[2]["position"]
    assert first[1]["Location"] == again[1]["Location"]
    assert await count_rows(admin_engine, "care_plans", tenant) == 1
    assert await count_rows(admin_engine, OUTBOX_LEDGER, tenant) == 2  # one event, one audit record


async def test_the_same_idempotency_key_with_another_body_is_refused(rest: RestCaller) -> None:
    key = str(uuid.uuid4())
    await rest.request("careplan.create", CARE_PLAN, idempotency_key=key)
    reply = await rest.send("careplan.create", CARE_PLAN | {"title": "Another"}, idempotency_key=key)
    assert (reply["status"], reply["error"]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert reply["command_id"] == key


async def test_the_command_log_is_shared_by_both_transports(
    rest: RestCaller, nc: NatsClient, admin_engine: AsyncEngine, tenant: str
) -> None:
    # Given a command applied over NATS
    key = str(uuid.uuid4())
    over_nats = await send_command(
        nc, "careplan.create", envelope(CARE_PLAN, command_id=key), token=rest.token
    )
    assert over_nats["ok"] is True
    # When the same command arrives over HTTP with its id as the Idempotency-Key
    over_http = await rest.send("careplan.create", CARE_PLAN, idempotency_key=key)
    # Then it is answered from the command log, and applied once
    assert_same_answer(over_http, over_nats)
    assert await count_rows(admin_engine, "care_plans", tenant) == 1


async def test_correlation_id_reaches_the_events(rest: RestCaller, nc: NatsClient, tenant: str) -> None:
    status, headers, _ = await rest.request(
        "careplan.create", CARE_PLAN, extra_headers={"X-Correlation-Id": "referral-42"}
    )
    assert status == 201
    event = await event_caused_by(
        nc, "CAREPLAN_EVENTS", f"careplan.evt.{tenant}.careplan.created", headers["Idempotency-Key"]
    )
    assert event["correlationid"] == "referral-42"


@pytest.mark.parametrize(
    ("headers", "path"),
    [
        pytest.param({"Idempotency-Key": "not-a-uuid"}, "headers.Idempotency-Key", id="idempotency-key"),
        pytest.param({"If-Match": "3"}, "headers.If-Match", id="if-match-unquoted"),
        pytest.param({"If-Match": 'W/"0"'}, "headers.If-Match", id="if-match-zero"),
        pytest.param({"If-Match": 'W/"1", W/"2"'}, "headers.If-Match", id="if-match-two-tags"),
        pytest.param({"If-Match": "*"}, "headers.If-Match", id="if-match-star"),
    ],
)
async def test_malformed_headers_are_validation_errors_naming_the_header(
    service: RunningService,
    rest: RestCaller,
    headers: dict[str, str],
    path: str,
    admin_engine: AsyncEngine,
    tenant: str,
) -> None:
    status, answer_headers, body = await raw_request(
        service,
        "POST",
        "/api/v1/care-plans/p1/status",
        token=rest.token,
        body=orjson.dumps({"status": "active"}),
        headers={"If-Match": 'W/"1"'} | headers,
    )
    document = problem_of(status, answer_headers, body)
    assert (status, document["code"]) == (422, "VALIDATION_ERROR")
    assert document["details"]["errors"][0]["path"] == path
    await assert_nothing_written(admin_engine, tenant)


async def test_a_versioned_command_without_if_match_is_428_and_not_recorded(
    service: RunningService, rest: RestCaller
) -> None:
    plan = await rest.ok("careplan.create", CARE_PLAN)
    key = str(uuid.uuid4())
    reply = await rest.send(
        "careplan.change_status", {"care_plan_id": plan["id"], "status": "on-hold"}, idempotency_key=key
    )
    assert (reply["status"], reply["error"]["code"]) == (428, "PRECONDITION_REQUIRED")
    # not a command yet: the same key may be used for the corrected request
    assert (await raw_request(service, "GET", f"/api/v1/commands/{key}", token=rest.token))[0] == 404
    fixed = await rest.send(
        "careplan.change_status", {"care_plan_id": plan["id"], "status": "on-hold"}, 1, idempotency_key=key
    )
    assert fixed["ok"] is True, fixed


@pytest.mark.parametrize("command", ["goal.add", "activity.add", "careteam.add_member"])
async def test_if_match_is_optional_where_the_version_check_is(rest: RestCaller, command: str) -> None:
    plan = await rest.ok("careplan.create", CARE_PLAN)
    examples: dict[str, dict[str, Any]] = {
        "goal.add": {"description": {"text": "walk daily"}},
        "activity.add": {"description": "walk"},
        "careteam.add_member": {"member_id": "pr1", "role": {"text": "nurse"}},
    }
    data = examples[command]
    without = await rest.send(command, {"care_plan_id": plan["id"], **data})
    assert without["ok"] is True, without
    another = {"care_plan_id": plan["id"], **data} | ({"member_id": "pr2"} if "member_id" in data else {})
    stale = await rest.send(command, another, 99)
    assert (stale["status"], stale["error"]["code"]) == (409, "VERSION_CONFLICT")


async def test_a_stale_if_match_is_a_version_conflict_with_the_current_version(rest: RestCaller) -> None:
    plan = await rest.ok("careplan.create", CARE_PLAN)
    await rest.ok("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "v2"}}, 1)
    reply = await rest.send("careplan.update", {"care_plan_id": plan["id"], "changes": {"title": "v3"}}, 1)
    assert (reply["status"], reply["error"]["code"]) == (409, "VERSION_CONFLICT")
    assert reply["error"]["details"]["current_version"] == 2


@pytest.mark.parametrize("make_token", BAD_TOKENS)
async def test_bad_tokens_are_401_problems_and_write_nothing(
    service: RunningService, tenant: str, keys: DevKeys, admin_engine: AsyncEngine, make_token: Any
) -> None:
    status, headers, body = await raw_request(
        service, "POST", "/api/v1/care-plans", token=make_token(keys, tenant), body=orjson.dumps(CARE_PLAN)
    )
    assert problem_of(status, headers, body)["code"] == "UNAUTHENTICATED"
    assert status == 401
    await assert_nothing_written(admin_engine, tenant)


@pytest.mark.parametrize(
    ("roles", "extra", "code"),
    [
        pytest.param(
            ["clinician"], {"entitlements": ["ehr.billing"]}, "MODULE_NOT_LICENSED", id="unlicensed"
        ),
        pytest.param(["reviewer"], {}, "FORBIDDEN", id="role-without-permission"),
        pytest.param(["clinician"], {"patient_id": "p1"}, "FORBIDDEN", id="patient-token"),
    ],
)
async def test_callers_who_may_not_write_are_told_so_before_anything_else(
    service: RunningService,
    tenant: str,
    token_for: TokenFactory,
    admin_engine: AsyncEngine,
    roles: list[str],
    extra: dict[str, Any],
    code: str,
) -> None:
    token = token_for(tenant, roles=roles, **extra)
    for method, path, body in (
        ("POST", "/api/v1/care-plans", orjson.dumps(CARE_PLAN)),
        ("POST", "/api/v1/care-plans/p1/status", b"not json"),  # no If-Match and a broken body, too
    ):
        status, headers, answer = await raw_request(service, method, path, token=token, body=body)
        assert (status, problem_of(status, headers, answer)["code"]) == (403, code), path
    await assert_nothing_written(admin_engine, tenant)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"{not json", "body is not valid JSON", id="not-json"),
        pytest.param(b"", "body is not valid JSON", id="empty"),
        pytest.param(b"[1, 2]", "body must be a JSON object", id="array"),
        pytest.param(orjson.dumps({"title": "no patient"}), "1 validation error(s)", id="missing-field"),
        pytest.param(
            orjson.dumps(CARE_PLAN | {"colour": "red"}), "1 validation error(s)", id="unknown-field"
        ),
        # Past the encoder's depth limit: was a 500 with a traceback (issue 15, row 8), as NATS says 422.
        pytest.param(
            b'{"patient_id": "p1", "title": "t", "notes": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            f"nested deeper than {MAX_JSON_DEPTH} levels",
            id="nested-1000-deep",
        ),
    ],
)
async def test_bad_bodies_are_validation_errors(
    service: RunningService,
    rest: RestCaller,
    admin_engine: AsyncEngine,
    tenant: str,
    body: bytes,
    message: str,
) -> None:
    status, headers, answer = await raw_request(
        service, "POST", "/api/v1/care-plans", token=rest.token, body=body
    )
    document = problem_of(status, headers, answer)
    assert (status, document["code"], document["detail"]) == (422, "VALIDATION_ERROR", message)
    await assert_nothing_written(admin_engine, tenant)


@pytest.mark.parametrize("size", [256 * 1024 + 1, 3 * 1024 * 1024], ids=["just-over", "3-mib"])
async def test_bodies_over_256_kib_are_payload_too_large(
    service: RunningService, rest: RestCaller, admin_engine: AsyncEngine, tenant: str, size: int
) -> None:
    body = orjson.dumps(CARE_PLAN | {"description": "x" * size})
    status, headers, answer = await raw_request(
        service, "POST", "/api/v1/care-plans", token=rest.token, body=body
    )
    assert (status, problem_of(status, headers, answer)["code"]) == (413, "PAYLOAD_TOO_LARGE")
    await assert_nothing_written(admin_engine, tenant)


async def test_a_path_id_contradicted_by_the_body_is_a_validation_error(
    service: RunningService, rest: RestCaller
) -> None:
    plan = await rest.ok("careplan.create", CARE_PLAN)
    goal = {"description": {"text": "walk daily"}}
    status, headers, body = await raw_request(
        service,
        "POST",
        f"/api/v1/care-plans/{plan['id']}/goals",
        token=rest.token,
        body=orjson.dumps(goal | {"care_plan_id": "another-plan"}),
    )
    document = problem_of(status, headers, body)
    assert (status, document["details"]["errors"][0]["path"]) == (422, "data.care_plan_id")
    # the same id as the path's is no contradiction
    agreeing = await raw_request(
        service,
        "POST",
        f"/api/v1/care-plans/{plan['id']}/goals",
        token=rest.token,
        body=orjson.dumps(goal | {"care_plan_id": plan["id"]}),
    )
    assert agreeing[0] == 201


async def test_removing_a_member_takes_no_body(rest: RestCaller) -> None:
    plan = await rest.ok("careplan.create", CARE_PLAN)
    team = await rest.ok(
        "careteam.add_member", {"care_plan_id": plan["id"], "member_id": "pr1", "role": {"text": "nurse"}}
    )
    removed = await rest.ok(
        "careteam.remove_member", {"care_plan_id": plan["id"], "member_id": "pr1"}, team["version"]
    )
    assert removed["version"] == team["version"] + 1
    (member,) = (await rest.read("CareTeam", team["id"]))["participant"]
    assert "end" in member["period"]  # ended, not deleted: the team's history stays true


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("POST", "/api/v1/care-plan", 404, id="unknown-route"),
        pytest.param("GET", "/api/v1/care-plans", 405, id="wrong-method"),
        pytest.param("PUT", "/api/v1/goals/g1", 405, id="put"),
    ],
)
async def test_unknown_routes_and_methods_are_problems(
    service: RunningService, rest: RestCaller, method: str, path: str, status: int
) -> None:
    answer = await raw_request(service, method, path, token=rest.token, body=b"{}")
    assert answer[0] == status
    assert answer[1]["Content-Type"].startswith("application/problem+json")


async def test_an_answer_replays_as_the_reply_the_nats_caller_would_get(rest: RestCaller) -> None:
    status, headers, body = await rest.request("careplan.create", CARE_PLAN)
    reply = reply_of(status, headers, body)
    assert reply == {
        "command_id": headers["Idempotency-Key"],
        "ok": True,
        "status": 201,
        "result": {
            "resource_type": "CarePlan",
            "id": body["id"],
            "version": 1,
            "position": headers["Careplan-Position"],
        },
    }
