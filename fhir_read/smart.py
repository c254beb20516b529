"""What a SMART app learns before it asks for a token (CONTRACT §13): the CapabilityStatement's
`rest.security` and `GET /fhir/.well-known/smart-configuration`. The authorization server is
identity-service's: its endpoints are settings, left out when unset (the service issues no tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from domain.scopes import SCOPED_TYPES

CAPABILITIES = ("permission-v1", "permission-v2", "permission-patient", "permission-user")
OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@dataclass(frozen=True, slots=True)
class SmartEndpoints:
    """identity-service's OAuth endpoints and issuer, as configured (each None when unset)."""

    issuer: str | None = None
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None


SMART = web.AppKey("smart_endpoints", SmartEndpoints)


def scopes_supported() -> list[str]:
    """Every type-level form per context (v2 `.rs`, v1 `.read`); granular scopes narrow any of them."""
    types = ["*", *sorted(SCOPED_TYPES)]
    return [
        f"{context}/{t}.{p}"
        for context in ("patient", "user", "system")
        for t in types
        for p in ("rs", "read")
    ]


def smart_configuration(endpoints: SmartEndpoints) -> dict[str, Any]:
    configuration: dict[str, Any] = {
        "issuer": endpoints.issuer,
        "authorization_endpoint": endpoints.authorization_endpoint,
        "token_endpoint": endpoints.token_endpoint,
        "capabilities": list(CAPABILITIES),
        "scopes_supported": scopes_supported(),
    }
    return {name: value for name, value in configuration.items() if value is not None}


def rest_security(endpoints: SmartEndpoints) -> dict[str, Any]:
    """CapabilityStatement.rest.security: SMART-on-FHIR, the scope forms read paths honour, and the OAuth
    endpoints when known."""
    security: dict[str, Any] = {
        "cors": False,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 bearer JWT from identity-service, SMART App Launch 2 scopes",
            }
        ],
        "description": (
            "Bearer JWT from identity-service; the tenant comes from the token. Reads honour its `scope` "
            "claim (SMART App Launch 2): v1 patient|user|system/<Type|*>.read, v2 .<cruds> (r: read, vread, "
            "history; s: search) and v2 granular <Type>.rs?<param>=<value> on any search parameter listed "
            "here, OR-ed across scopes of a type, applied to read, vread, history, search, _include, "
            "_revinclude and Provenance alike. A type without a read scope is 403; what the scopes do not "
            "cover is 404 as if absent. Unknown or malformed scopes grant nothing. A token without a "
            "`scope` claim reads by its roles."
        ),
    }
    uris = [
        {"url": name, "valueUri": value}
        for name, value in (
            ("authorize", endpoints.authorization_endpoint),
            ("token", endpoints.token_endpoint),
        )
        if value
    ]
    if uris:
        security["extension"] = [{"url": OAUTH_URIS, "extension": uris}]
    return security


async def smart_configuration_route(request: web.Request) -> web.Response:
    """Public, as SMART requires: an app reads it before it has a token."""
    body = orjson.dumps(smart_configuration(request.app[SMART]))
    return web.Response(body=body, content_type="application/json")
