"""Who may write: licence first, then role permission; patients never."""

from __future__ import annotations

import pytest

from domain.access import MODULE_ENTITLEMENT, Permission, Principal, authorize_write
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
        ({"patient"}, Permission.CAREPLAN_WRITE),
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


def test_role_table_can_be_replaced() -> None:
    custom = {"nurse": frozenset({Permission.CAREPLAN_WRITE})}
    authorize_write(principal({"nurse"}), Permission.CAREPLAN_WRITE, custom)
    with pytest.raises(NotPermitted):
        authorize_write(principal({"clinician"}), Permission.CAREPLAN_WRITE, custom)
