"""OperationOutcome: how every FHIR error is said (CONTRACT §6), never a bare status or a stack trace."""

from __future__ import annotations

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"

# HTTP status → OperationOutcome.issue.code
_ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    410: "deleted",
    413: "too-costly",
    422: "processing",
    503: "transient",
}


def operation_outcome(status: int, diagnostics: str, *, severity: str = "error") -> web.Response:
    body = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": severity, "code": _ISSUE_CODES.get(status, "exception"), "diagnostics": diagnostics}
        ],
    }
    headers = {"WWW-Authenticate": 'Bearer realm="care-plan-service"'} if status == 401 else None
    return web.Response(status=status, body=orjson.dumps(body), content_type=FHIR_JSON, headers=headers)
