"""A verified token's claims become a Principal only when each has exactly its shape, and a patient by
any sign always names its patient (issue 15, rows 2 and 4): reads key on `patient_id`, and a tenant id
becomes a subject token."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.ports import AuthenticationFailed
from integrations.claims import principal_from_claims

BASE: dict[str, Any] = {
    "sub": "u1",
    "tenant_id": "t1",
    "roles": ["clinician"],
    "entitlements": ["ehr.care_plans"],
}


def test_well_formed_claims_make_the_principal() -> None:
    principal = principal_from_claims(
        BASE | {"jti": "j-1", "iss": "https://id.example", "scope": "openid user/*.read  launch"}
    )
    assert principal.tenant_id == "t1"
    assert principal.roles == {"clinician"}
    assert principal.scopes == {"openid", "user/*.read", "launch"}
    assert principal.token_id == "j-1"
    assert not principal.is_patient


def test_a_patient_token_with_its_patient_reads_as_that_patient() -> None:
    principal = principal_from_claims(BASE | {"roles": ["patient"], "patient_id": "p-1.a"})
    assert principal.is_patient
    assert principal.patient_id == "p-1.a"


@pytest.mark.parametrize(
    "claims",
    [
        {"roles": ["patient"]},
        {"roles": ["patient"], "patient_id": None},
        {"roles": "patient clinician"},
        {"roles": [], "scope": "patient/*.read"},
        {"roles": ["clinician"], "scope": ["openid", "patient/CarePlan.rs"]},
    ],
)
def test_a_patient_by_any_sign_without_a_patient_id_is_refused(claims: dict[str, Any]) -> None:
    with pytest.raises(AuthenticationFailed, match="patient_id"):
        principal_from_claims(BASE | claims)


@pytest.mark.parametrize(
    ("claims", "named"),
    [
        ({"tenant_id": "t1\n"}, "tenant_id"),
        ({"tenant_id": "t1 "}, "tenant_id"),
        ({"tenant_id": "t.1"}, "tenant_id"),
        ({"tenant_id": "t" * 65}, "tenant_id"),
        ({"tenant_id": 7}, "tenant_id"),
        ({"patient_id": "p1\n", "roles": ["patient"]}, "patient_id"),
        ({"patient_id": "", "roles": ["patient"]}, "patient_id"),
        ({"patient_id": 12, "roles": ["patient"]}, "patient_id"),
        ({"patient_id": "Patient/p1", "roles": ["patient"]}, "patient_id"),
        ({"sub": ""}, "sub"),
        ({"sub": "u\n1"}, "sub"),
        ({"roles": ["clinician\n"]}, "roles"),
        ({"roles": {"admin": True}}, "roles"),
        ({"entitlements": ["ehr.care_plans", 3]}, "entitlements"),
        ({"scope": "user/*.read\npatient/*.read"}, "scope"),
        ({"scope": ["x"] * 201}, "scope"),
        ({"jti": "a b"}, "jti"),
        ({"iss": ["https://id.example"]}, "iss"),
    ],
)
def test_a_claim_of_the_wrong_shape_makes_the_token_unusable(claims: dict[str, Any], named: str) -> None:
    with pytest.raises(AuthenticationFailed, match=f"`{named}`"):
        principal_from_claims(BASE | claims)
