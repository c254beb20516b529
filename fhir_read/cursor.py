"""Opaque paging cursors: the query and the position, signed with a server secret and bound to the tenant
and the caller, so a cursor cannot be forged, altered, replayed by someone else, or used after it expires."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import datetime
from typing import Any

import orjson

MAX_AGE_S = 3600


class CursorError(ValueError):
    """Tampered, foreign or expired: the caller gets a 400 and starts the search again."""


def seal(payload: dict[str, Any], secret: bytes) -> str:
    body = base64.urlsafe_b64encode(orjson.dumps(payload | {"at": int(time.time())})).rstrip(b"=")
    signature = hmac.new(secret, body, hashlib.sha256).digest()
    return f"{body.decode()}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def unseal(
    token: str, secret: bytes, *, bound_to: dict[str, Any], max_age_s: int = MAX_AGE_S
) -> dict[str, Any]:
    """The payload, after checking signature, binding (every key of `bound_to` must match) and age."""
    body, _, signature = token.partition(".")
    expected = base64.urlsafe_b64encode(hmac.new(secret, body.encode(), hashlib.sha256).digest()).rstrip(b"=")
    if not signature or not hmac.compare_digest(expected, signature.encode()):
        raise CursorError("the paging cursor is not valid")
    try:
        payload: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise CursorError("the paging cursor is not valid") from exc
    if any(payload.get(key) != value for key, value in bound_to.items()):
        raise CursorError("the paging cursor belongs to another caller")
    if time.time() - float(payload.get("at", 0)) > max_age_s:
        raise CursorError("the paging cursor has expired; run the search again")
    return payload


def encode_value(value: Any) -> Any:
    """Sort-key values survive JSON: datetimes are tagged, everything else is a string, number or null."""
    return {"dt": value.isoformat()} if isinstance(value, datetime) else value


def decode_value(value: Any) -> Any:
    return datetime.fromisoformat(value["dt"]) if isinstance(value, dict) and "dt" in value else value
