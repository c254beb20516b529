"""Wire error codes (CONTRACT §3) and the one place domain errors become them."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from domain.errors import (
    ClosedForChanges,
    CodeNotValid,
    DomainError,
    InvalidTransition,
    InvalidValue,
    ModuleNotLicensed,
    NotFound,
    NotPermitted,
    UnknownReference,
    VersionConflict,
)


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    UNKNOWN_COMMAND = "UNKNOWN_COMMAND"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    FORBIDDEN = "FORBIDDEN"
    MODULE_NOT_LICENSED = "MODULE_NOT_LICENSED"
    NOT_FOUND = "NOT_FOUND"
    VERSION_CONFLICT = "VERSION_CONFLICT"
    INVALID_TRANSITION = "INVALID_TRANSITION"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    PATIENT_NOT_FOUND = "PATIENT_NOT_FOUND"
    ENCOUNTER_NOT_FOUND = "ENCOUNTER_NOT_FOUND"
    PRACTITIONER_NOT_FOUND = "PRACTITIONER_NOT_FOUND"
    INVALID_CODE = "INVALID_CODE"
    UPSTREAM_UNAVAILABLE = "UPSTREAM_UNAVAILABLE"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INTERNAL = "INTERNAL"
    # HTTP only (CONTRACT §9): a versioned command without If-Match; a dependency down (retry the same key).
    PRECONDITION_REQUIRED = "PRECONDITION_REQUIRED"
    UNAVAILABLE = "UNAVAILABLE"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.VALIDATION_ERROR: 422,
    ErrorCode.UNKNOWN_COMMAND: 404,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.MODULE_NOT_LICENSED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.VERSION_CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.IDEMPOTENCY_KEY_REUSED: 422,
    ErrorCode.PATIENT_NOT_FOUND: 422,
    ErrorCode.ENCOUNTER_NOT_FOUND: 422,
    ErrorCode.PRACTITIONER_NOT_FOUND: 422,
    ErrorCode.INVALID_CODE: 422,
    ErrorCode.UPSTREAM_UNAVAILABLE: 503,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.INTERNAL: 500,
    ErrorCode.PRECONDITION_REQUIRED: 428,
    ErrorCode.UNAVAILABLE: 503,
}

# The codes only the REST edge answers with; every other code is also a NATS reply's (CONTRACT §3).
HTTP_ONLY_CODES = frozenset({ErrorCode.PRECONDITION_REQUIRED, ErrorCode.UNAVAILABLE})
REPLY_CODES = tuple(code for code in ErrorCode if code not in HTTP_ONLY_CODES)

# When a command names several unknown things, the reply's code is the first kind in this order; its
# details list them all.
_REFERENCE_CODES = {
    "Patient": ErrorCode.PATIENT_NOT_FOUND,
    "Encounter": ErrorCode.ENCOUNTER_NOT_FOUND,
    "Practitioner": ErrorCode.PRACTITIONER_NOT_FOUND,
}


class Rejection(Exception):
    """A final, typed answer to a command that did not succeed."""

    def __init__(self, code: ErrorCode, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


def rejection_for(error: DomainError) -> Rejection:
    """Map a domain error to its wire code; every DomainError subclass has exactly one."""
    match error:
        case NotFound():
            return Rejection(ErrorCode.NOT_FOUND, str(error))
        case VersionConflict(current=current):
            return Rejection(ErrorCode.VERSION_CONFLICT, str(error), {"current_version": current})
        case InvalidTransition(from_=from_, to=to, allowed=allowed, field=field):
            return Rejection(
                ErrorCode.INVALID_TRANSITION,
                str(error),
                {"field": field, "from": from_, "to": to, "allowed": list(allowed)},
            )
        case InvalidValue(path=path, message=message):
            return Rejection(
                ErrorCode.VALIDATION_ERROR, str(error), {"errors": [{"path": path, "message": message}]}
            )
        case ClosedForChanges(status=status):
            return Rejection(
                ErrorCode.INVALID_TRANSITION,
                str(error),
                {"field": "status", "from": status, "to": None, "allowed": []},
            )
        case ModuleNotLicensed():
            return Rejection(ErrorCode.MODULE_NOT_LICENSED, str(error))
        case NotPermitted(permission=permission):
            return Rejection(ErrorCode.FORBIDDEN, str(error), {"permission": permission})
        case UnknownReference(problems=problems):
            kinds = {p.resource_type for p in problems}
            code = next(code for kind, code in _REFERENCE_CODES.items() if kind in kinds)
            return Rejection(
                code,
                str(error),
                {
                    "errors": [
                        {
                            "path": p.path,
                            "reference": f"{p.resource_type}/{p.resource_id}",
                            "message": p.message,
                        }
                        for p in problems
                    ]
                },
            )
        case CodeNotValid(problems=problems):
            return Rejection(
                ErrorCode.INVALID_CODE,
                str(error),
                {
                    "errors": [
                        {"path": p.path, "system": p.system, "code": p.code, "message": p.message}
                        for p in problems
                    ]
                },
            )
    return Rejection(ErrorCode.INTERNAL, "unmapped domain error")
