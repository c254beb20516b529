"""The OpenAPI 3.1 document of the REST write API, built from the same route table and data models the
routes run on, so it cannot drift from them. Served at `/api/v1/openapi.json`."""

from __future__ import annotations

import copy
from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from handlers.errors import HTTP_STATUS, ErrorCode
from handlers.registry import API_PREFIX, Commands, CommandSpec, HttpRoute, VersionCheck
from schemas.commands import CONTRACT_VERSION
from schemas.common import FhirId
from schemas.replies import POSITION_HEADER, ResultBody
from service.rest_api import CORRELATION_HEADER, MAX_CORRELATION_ID, PROBLEM_JSON

OPENAPI_PATH = f"{API_PREFIX}/openapi.json"
_REF = "#/components/schemas/{model}"
# Commands that may create their resource answer 201 with a Location; the rest answer 200.
_CREATING = {"careplan.create", "goal.add", "activity.add", "careteam.add_member"}


def openapi_document(commands: Commands) -> dict[str, Any]:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (spec.data_model, "validation") for spec in commands.values()
    ]
    models.append((ResultBody, "serialization"))
    refs, definitions = models_json_schema(models, ref_template=_REF)
    schemas: dict[str, Any] = dict(definitions.get("$defs", {}))
    schemas["Problem"] = _PROBLEM
    paths: dict[str, dict[str, Any]] = {}
    for spec in commands.values():
        data_schema = schemas[_name(refs[(spec.data_model, "validation")])]
        operation = _operation(spec, data_schema, commands)
        paths.setdefault(spec.route.path, {})[spec.route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "care-plan-service REST write API",
            "version": CONTRACT_VERSION,
            "description": (
                "The commands of CONTRACT §4 over HTTP (§9): same JWT, same rules, same outcomes as "
                "`careplan.cmd.<command>` over NATS. `Idempotency-Key` is the command id: resend the same "
                "request with the same key and get the same answer, changing nothing. Besides what the "
                "schemas say, no string may hold a NUL character (422)."
            ),
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _operation(spec: CommandSpec, data_schema: dict[str, Any], commands: Commands) -> dict[str, Any]:
    route = spec.route
    parameters: list[dict[str, Any]] = [
        {"name": field, "in": "path", "required": True, "schema": _FHIR_ID} for field in route.path_fields
    ]
    parameters.append(
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": False,
            "description": "The command id (a UUID); generated when absent and returned in the answer.",
            "schema": {"type": "string", "format": "uuid"},
        }
    )
    if spec.version is not VersionCheck.NONE:
        parameters.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": spec.version is VersionCheck.REQUIRED,
                "description": 'The version this change expects, as the resource\'s ETag: W/"<version>".',
                "schema": {"type": "string", "pattern": '^(W/)?"[1-9][0-9]{0,17}"$'},
            }
        )
    parameters.append(
        {
            "name": CORRELATION_HEADER,
            "in": "header",
            "required": False,
            "description": "Carried into the command log, the events' `correlationid` and the logs.",
            "schema": {"type": "string", "pattern": f"^[!-~]{{1,{MAX_CORRELATION_ID}}}$"},
        }
    )
    operation: dict[str, Any] = {
        "operationId": spec.name.replace(".", "_"),
        "summary": route.summary,
        "description": f"Command `{spec.name}`; permission `{spec.permission}`.",
        "parameters": parameters,
        "responses": _responses(spec, commands),
    }
    if route.has_body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _body_schema(route, data_schema)}},
        }
    return operation


def _body_schema(route: HttpRoute, data_schema: dict[str, Any]) -> dict[str, Any]:
    """The command's data without what the path carries, or the one field the body stands for."""
    if route.body_field is not None:
        field_schema: dict[str, Any] = data_schema["properties"][route.body_field]
        return field_schema
    body = copy.deepcopy(data_schema)
    for field in route.path_fields:
        body.get("properties", {}).pop(field, None)
    required = [name for name in body.get("required", []) if name not in route.path_fields]
    if required:
        body["required"] = required
    else:
        body.pop("required", None)
    return body


def _responses(spec: CommandSpec, commands: Commands) -> dict[str, Any]:
    result = {"$ref": _REF.format(model="ResultBody")}
    common_headers = {
        "ETag": {"required": True, "schema": {"type": "string"}, "description": 'W/"<version>"'},
        "Idempotency-Key": {"required": True, "schema": {"type": "string", "format": "uuid"}},
        POSITION_HEADER: {
            "required": True,
            "schema": {"type": "string"},
            "description": (
                "The commit's WAL position (the body's `position`), opaque. Send it as the "
                f"`{POSITION_HEADER}` header of a FHIR read (`/fhir/…`) and that read reflects this change "
                "or a later state, from a replica once it has replayed that far, else from the primary."
            ),
        },
    }
    success = {
        "description": "Done",
        "headers": common_headers,
        "content": {"application/json": {"schema": result}},
    }
    responses: dict[str, Any] = {}
    if spec.name != "careplan.create":
        responses["200"] = success
    if spec.name in _CREATING:
        responses["201"] = {
            **success,
            "description": "Created",
            "headers": {
                **common_headers,
                "Location": {
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "the FHIR resource",
                },
            },
        }
        links = _links_from(spec.name, commands)
        if links:
            responses["201"]["links"] = links
    # 428 only where If-Match is required; the rest of the HTTP-only codes (503 UNAVAILABLE) anywhere.
    codes = {HTTP_STATUS[code] for code in ErrorCode if code is not ErrorCode.PRECONDITION_REQUIRED}
    if spec.version is VersionCheck.REQUIRED:
        codes.add(428)
    for status in sorted(codes):
        responses[str(status)] = {
            "description": ", ".join(c.value for c in ErrorCode if HTTP_STATUS[c] == status),
            "content": {PROBLEM_JSON: {"schema": {"$ref": _REF.format(model="Problem")}}},
        }
    return responses


# What a created resource's answer lets a client do next: its id fills the path, its ETag the If-Match.
_CREATES_ID = {"careplan.create": "care_plan_id", "goal.add": "goal_id", "activity.add": "activity_id"}


def _links_from(command: str, commands: Commands) -> dict[str, Any]:
    field = _CREATES_ID.get(command)
    if field is None:
        return {}
    links: dict[str, Any] = {}
    for target in commands.values():
        if target.route.path_fields != (field,) or target.name == command:
            continue
        parameters = {field: "$response.body#/id"}
        if target.version is not VersionCheck.NONE:
            parameters["header.If-Match"] = "$response.header.ETag"
        links[target.name.replace(".", "_")] = {
            "operationId": target.name.replace(".", "_"),
            "parameters": parameters,
        }
    return links


def _name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


_FHIR_ID: dict[str, Any] = {"type": "string", "pattern": get_args(FhirId)[1].pattern}
_PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details with CONTRACT §3's code and details.",
    "required": ["type", "title", "status", "code", "command_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": [code.value for code in ErrorCode]},
        "details": {"type": "object"},
        "command_id": {"type": ["string", "null"]},
    },
}
