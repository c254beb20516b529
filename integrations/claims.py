"""A verified JWT's claims, turned into a Principal: the one place that reads them, and reads them strictly.

Every claim is checked for its exact shape (whole-string matches: `$` would let a trailing newline through,
and a tenant id with one makes event subjects no broker takes). A claim of the wrong shape makes the whole
token unusable rather than being dropped: a dropped claim could widen what the caller sees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from domain.access import TENANT_ID, PatientWithoutContext, Principal
from domain.scopes import read_scopes
from handlers.ports import AuthenticationFailed

PATIENT_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")  # a FHIR id
# Printable ASCII without spaces: roles, entitlements, scopes, ids of tokens and issuers.
WORD = re.compile(r"[!-~]{1,256}")
MAX_WORDS = 200


def principal_from_claims(claims: Mapping[str, Any]) -> Principal:
    """The caller a verified token describes, or AuthenticationFailed naming the claim that is wrong."""
    tenant_id = claims.get("tenant_id")
    if not isinstance(tenant_id, str) or not TENANT_ID.fullmatch(tenant_id):
        raise AuthenticationFailed("token has no valid `tenant_id` claim ([A-Za-z0-9_-]{1,64})")
    patient_id = claims.get("patient_id")
    if patient_id is not None and (not isinstance(patient_id, str) or not PATIENT_ID.fullmatch(patient_id)):
        raise AuthenticationFailed("claim `patient_id` must be a FHIR id ([A-Za-z0-9.-]{1,64})")
    scopes = _words(claims.get("scope"), "scope")
    try:
        return Principal(
            tenant_id=tenant_id,
            subject=_subject(claims.get("sub")),
            roles=_words(claims.get("roles"), "roles"),
            entitlements=_words(claims.get("entitlements"), "entitlements"),
            patient_id=patient_id,
            token_id=_optional_word(claims.get("jti"), "jti"),
            issuer=_optional_word(claims.get("iss"), "iss"),
            scopes=scopes,
            # The claim's read grants (CONTRACT §13); without the claim, reads go by roles as before.
            read_scopes=read_scopes(scopes) if "scope" in claims else None,
        )
    except PatientWithoutContext as exc:
        raise AuthenticationFailed(str(exc)) from exc


def _subject(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 256 or not value.isprintable():
        raise AuthenticationFailed("claim `sub` must be a printable string of 1 to 256 characters")
    return value


def _optional_word(value: Any, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not WORD.fullmatch(value):
        raise AuthenticationFailed(f"claim `{name}` must be printable text without spaces")
    return value


def _words(value: Any, name: str) -> frozenset[str]:
    """A list of strings, or one space-separated string (OAuth's `scope` form, accepted for all three)."""
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split(" ")
        value = [word for word in value if word]  # runs of spaces separate, like OAuth's scope grammar
    if not isinstance(value, list) or len(value) > MAX_WORDS:
        raise AuthenticationFailed(f"claim `{name}` must be a list of at most {MAX_WORDS} strings")
    if not all(isinstance(word, str) and WORD.fullmatch(word) for word in value):
        raise AuthenticationFailed(f"claim `{name}` must hold printable words without spaces")
    return frozenset(value)
