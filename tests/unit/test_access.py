"""Who may write: licence first, then role permission; patients never."""

from __future__ import annotations

import pytest

from domain.access import (
    MODULE_ENTITLEMENT,
    PatientWithoutContext,
    Permission,
    Principal,
    authorize_write,
)
from domain.errors import ModuleNotLicensed, NotPermitted


def principal(
    roles: set[str], entitlements: set[str] | None = None, patient_id: str | None = None
) -> Principal:
    return Principal(
        tenant_id="t1",
        subject="u1",
        roles=frozenset(roles),
        entitlements=frozenset({MODULE_ENTITLEMENT} if entitlements is None else entitlements),
        patient_id=patient_id,
    )


def test_clinician_may_write_care_plans() -> None:
    authorize_write(principal({"clinician"}), Permission.CAREPLAN_WRITE)


def test_missing_licence_wins_over_missing_permission() -> None:
    with pytest.raises(ModuleNotLicensed):
        authorize_write(principal({"reviewer"}, entitlements=set()), Permission.CAREPLAN_WRITE)


@pytest.mark.parametrize(
    ("roles", "permission"),
    [
        ({"reviewer"}, Permission.CAREPLAN_WRITE),
        ({"care-coordinator"}, Permission.GOAL_WRITE),
        (set(), Permission.CAREPLAN_WRITE),
        ({"unheard-of"}, Permission.CAREPLAN_WRITE),
    ],
)
def test_roles_without_the_permission_are_refused(roles: set[str], permission: str) -> None:
    with pytest.raises(NotPermitted) as raised:
        authorize_write(principal(roles), permission)
    assert raised.value.permission == permission


def test_patient_token_never_writes_even_with_clinician_role() -> None:
    with pytest.raises(NotPermitted):
        authorize_write(principal({"clinician"}, patient_id="p1"), Permission.CAREPLAN_WRITE)


def test_patient_role_never_writes() -> None:
    with pytest.raises(NotPermitted):
        authorize_write(principal({"patient"}, patient_id="p1"), Permission.CAREPLAN_WRITE)


@pytest.mark.parametrize(
    ("roles", "scopes"),
    [({"patient"}, set()), (set(), {"patient/*.read"}), ({"clinician"}, {"openid", "patient/CarePlan.rs"})],
)
def test_a_patient_by_any_sign_without_a_patient_id_cannot_exist(roles: set[str], scopes: set[str]) -> None:
    """Reads key on `patient_id`: a patient without one would read the whole tenant (fail open)."""
    with pytest.raises(PatientWithoutContext):
        Principal(tenant_id="t1", subject="u1", roles=frozenset(roles), scopes=frozenset(scopes))


def test_staff_scopes_need_no_patient() -> None:
    staff = Principal(tenant_id="t1", subject="u1", scopes=frozenset({"user/*.read", "launch/patient"}))
    assert not staff.is_patient


def test_role_table_can_be_replaced() -> None:
    custom = {"nurse": frozenset({Permission.CAREPLAN_WRITE})}
    authorize_write(principal({"nurse"}), Permission.CAREPLAN_WRITE, custom)
    with pytest.raises(NotPermitted):
        authorize_write(principal({"clinician"}), Permission.CAREPLAN_WRITE, custom)
