"""Bad input gets a clear, typed reply, and nothing is written for it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client as NatsClient
from sqlalchemy.ext.asyncio import AsyncEngine

from service.client import envelope, send_command
from service.dev_identity import DevKeys
from service.runner import RunningService
from tests.conftest import TokenFactory
from tests.integration.helpers import CARE_PLAN, count_rows
from tests.outbox_ledger import OUTBOX_LEDGER

# (the outbox as every row ever committed to it: the relay deletes what it publishes)
TENANT_TABLES = ("care_plans", "resource_history", "provenance", "command_log", OUTBOX_LEDGER)


async def assert_nothing_written(engine: AsyncEngine, tenant: str) -> None:
    for table in TENANT_TABLES:
        assert await count_rows(engine, table, tenant) == 0, table


def forged_token(keys: DevKeys, tenant: str) -> str:
    """Right kid and claims, signed by a key identity-service never published."""
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    claims = {
        "sub": "mallory",
        "tenant_id": tenant,
        "roles": ["clinician"],
        "entitlements": ["ehr.care_plans"],
        "aud": "care-plan-service",
        "exp": int(time.time()) + 600,
    }
    return jwt.encode(claims, other, algorithm="ES256", headers={"kid": keys.kid})


def hs256_token(keys: DevKeys, tenant: str) -> str:
    """The algorithm-confusion attack: HMAC 'signed' with the published key as the secret
    (built by hand: PyJWT itself refuses to make such a token)."""
    claims = {
        "sub": "mallory",
        "tenant_id": tenant,
        "roles": ["clinician"],
        "entitlements": ["ehr.care_plans"],
        "aud": "care-plan-service",
        "exp": int(time.time()) + 600,
    }
    header = {"alg": "HS256", "typ": "JWT", "kid": keys.kid}
    signing_input = f"{_b64(orjson.dumps(header))}.{_b64(orjson.dumps(claims))}"
    signature = hmac.new(keys.jwks_path.read_bytes(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


BAD_TOKENS = [
    pytest.param(lambda keys, tenant: None, id="missing"),
    pytest.param(lambda keys, tenant: "not-a-jwt", id="malformed"),
    pytest.param(
        lambda keys, tenant: keys.mint(tenant_id=tenant, roles=["clinician"], ttl_s=-120), id="expired"
    ),
    pytest.param(forged_token, id="forged"),
    pytest.param(hs256_token, id="hs256-confusion"),
    pytest.param(
        lambda keys, tenant: keys.mint(tenant_id=tenant, roles=["clinician"], audience="billing-service"),
        id="wrong-audience",
    ),
    pytest.param(
        lambda keys, tenant: keys.mint(tenant_id=tenant, roles=["clinician"], audience=None),
        id="no-audience",
    ),
    pytest.param(
        lambda keys, tenant: keys.mint(tenant_id="bad tenant!", roles=["clinician"]),
        id="invalid-tenant-claim",
    ),
]


@pytest.mark.parametrize("make_token", BAD_TOKENS)
async def test_bad_tokens_are_unauthenticated_and_write_nothing(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    keys: DevKeys,
    admin_engine: AsyncEngine,
    make_token: Any,
) -> None:
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=make_token(keys, tenant))
    assert reply["ok"] is False
    assert reply["status"] == 401
    assert reply["error"]["code"] == "UNAUTHENTICATED"
    await assert_nothing_written(admin_engine, tenant)


async def test_unlicensed_tenant_gets_module_not_licensed_and_nothing_is_written(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    token = token_for(tenant, entitlements=["ehr.billing"])
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token)
    assert reply["status"] == 403
    assert reply["error"]["code"] == "MODULE_NOT_LICENSED"
    await assert_nothing_written(admin_engine, tenant)


@pytest.mark.parametrize(
    ("roles", "extra"),
    [
        pytest.param(["reviewer"], {}, id="role-without-permission"),
        pytest.param([], {}, id="no-roles"),
        pytest.param(["clinician"], {"patient_id": "p1"}, id="patient-token"),
    ],
)
async def test_callers_without_permission_are_forbidden(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    admin_engine: AsyncEngine,
    roles: list[str],
    extra: dict[str, Any],
) -> None:
    reply = await send_command(
        nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant, roles, **extra)
    )
    assert reply["status"] == 403
    assert reply["error"]["code"] == "FORBIDDEN"
    await assert_nothing_written(admin_engine, tenant)


async def test_body_that_is_not_json_is_a_validation_error(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    reply = await send_command(nc, "careplan.create", b"\x00\xffnot json{", token=token_for(tenant))
    assert reply["status"] == 422
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert reply["error"]["details"]["errors"][0]["path"] == ""


async def test_deeply_nested_json_is_a_validation_error(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    body = (
        b'{"command_id": "' + str(uuid.uuid4()).encode() + b'", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    )
    reply = await send_command(nc, "careplan.create", body, token=token_for(tenant))
    assert reply["error"]["code"] == "VALIDATION_ERROR"


async def test_schema_violations_list_each_error_with_its_path(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    data = {"patient_id": 42, "status": "completed", "colour": "blue", "period": {"start": "yesterday"}}
    reply = await send_command(nc, "careplan.create", envelope(data), token=token_for(tenant))
    assert reply["status"] == 422
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    paths = {e["path"] for e in reply["error"]["details"]["errors"]}
    assert {"data.patient_id", "data.title", "data.status", "data.colour", "data.period.start"} <= paths
    await assert_nothing_written(admin_engine, tenant)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        pytest.param({"data": {}}, "command_id", id="no-command-id"),
        pytest.param({"command_id": "not-a-uuid", "data": {}}, "command_id", id="bad-command-id"),
        pytest.param({"command_id": str(uuid.uuid4()), "data": []}, "data", id="data-not-object"),
        pytest.param(
            {"command_id": str(uuid.uuid4()), "data": {}, "extra": 1}, "extra", id="unknown-envelope-field"
        ),
        pytest.param(
            {"command_id": str(uuid.uuid4()), "data": {}, "expected_version": "one"},
            "expected_version",
            id="bad-version",
        ),
    ],
)
async def test_envelope_violations_are_validation_errors(
    service: RunningService,
    nc: NatsClient,
    tenant: str,
    token_for: TokenFactory,
    body: dict[str, Any],
    path: str,
) -> None:
    reply = await send_command(
        nc, "careplan.create", orjson.dumps(body), token=token_for(tenant), message_id=str(uuid.uuid4())
    )
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert path in {e["path"] for e in reply["error"]["details"]["errors"]}


async def test_a_period_that_ends_before_it_starts_is_rejected(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    data = CARE_PLAN | {"period": {"start": "2026-11-01", "end": "2026-10-01"}}
    reply = await send_command(nc, "careplan.create", envelope(data), token=token_for(tenant))
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert reply["error"]["details"]["errors"][0]["path"] == "period.end"
    assert await count_rows(admin_engine, "care_plans", tenant) == 0


async def test_unknown_command_is_rejected(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    reply = await send_command(nc, "careplan.teleport", envelope({}), token=token_for(tenant))
    assert reply["status"] == 404
    assert reply["error"]["code"] == "UNKNOWN_COMMAND"


async def test_body_over_256_kib_is_payload_too_large(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    data = CARE_PLAN | {"description": "x" * (300 * 1024)}
    reply = await send_command(nc, "careplan.create", envelope(data), token=token_for(tenant))
    assert reply["status"] == 413
    assert reply["error"]["code"] == "PAYLOAD_TOO_LARGE"
    await assert_nothing_written(admin_engine, tenant)


async def test_a_one_mib_body_never_reaches_the_worker_and_the_worker_goes_on(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory
) -> None:
    # The stream refuses it (max_msg_size 512 KiB, under NATS's own 1 MiB payload limit) ...
    with pytest.raises(Exception) as refused:  # noqa: PT011 (the server or the client says no, in its own words)
        await nc.jetstream().publish(
            "careplan.cmd.careplan.create",
            b"{" + b" " * (1024 * 1024) + b"}",
            headers={"Authorization": f"Bearer {token_for(tenant)}"},
        )
    assert "maximum" in str(refused.value).lower() or "payload" in str(refused.value).lower()
    # ... and the next command is served as usual.
    reply = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant))
    assert reply["ok"] is True


SNOMED = "http://snomed.info/sct"


async def test_a_mistyped_snomed_code_is_an_invalid_code_and_nothing_is_written(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    # 44054006 (type 2 diabetes) with two digits swapped: the Verhoeff check digit catches it
    addresses = [{"coding": [{"system": SNOMED, "code": "44045006", "display": "Diabetes"}]}]
    reply = await send_command(
        nc, "careplan.create", envelope(CARE_PLAN | {"addresses": addresses}), token=token_for(tenant)
    )
    assert reply["ok"] is False
    assert reply["status"] == 422
    assert reply["error"]["code"] == "INVALID_CODE"
    (error,) = reply["error"]["details"]["errors"]
    assert error["path"] == "data.addresses.0.coding.0"
    assert (error["system"], error["code"]) == (SNOMED, "44045006")
    assert "check digit" in error["message"]
    await assert_nothing_written(admin_engine, tenant)


async def test_every_mistyped_code_of_a_goal_is_listed(
    service: RunningService, nc: NatsClient, tenant: str, token_for: TokenFactory, admin_engine: AsyncEngine
) -> None:
    plan = await send_command(nc, "careplan.create", envelope(CARE_PLAN), token=token_for(tenant))
    goal = {
        "care_plan_id": plan["result"]["id"],
        "description": {"coding": [{"system": SNOMED, "code": "44054006"}]},  # a real one passes
        "targets": [
            {
                "measure": {"coding": [{"system": "http://loinc.org", "code": "4548-5"}]},
                "due_date": "2027-01-01",
            }
        ],
        "addresses": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "e11.9"}]}],
    }
    reply = await send_command(nc, "goal.add", envelope(goal), token=token_for(tenant))
    assert reply["error"]["code"] == "INVALID_CODE"
    paths = [e["path"] for e in reply["error"]["details"]["errors"]]
    assert paths == ["data.targets.0.measure.coding.0", "data.addresses.0.coding.0"]
    assert await count_rows(admin_engine, "goals", tenant) == 0
