"""Who may do what: the verified caller, the module entitlement and the role → permission table."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from domain.errors import ModuleNotLicensed, NotPermitted
from domain.scopes import Reader, ReadScopes

MODULE_ENTITLEMENT = "ehr.care_plans"
# CONTRACT §5: a tenant id becomes a token of event subjects, so it is letters, digits, `_` and `-` only.
TENANT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


PATIENT_ROLE = "patient"
PATIENT_SCOPE_PREFIX = "patient/"


class PatientWithoutContext(ValueError):
    """A caller that is a patient by some sign, but names no patient: it could be shown nothing safely."""


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as identity-service vouched for it in a verified JWT.

    A patient by any sign (the `patient` role, a `patient_id`, a SMART `patient/` scope) always carries
    its `patient_id`: every read filter keys on it, so a patient without one would read as staff. The
    constructor refuses that caller rather than trust every reader to check."""

    tenant_id: str
    subject: str
    roles: frozenset[str] = frozenset()
    entitlements: frozenset[str] = frozenset()
    patient_id: str | None = None  # set on SMART patient tokens: such a caller may only read
    token_id: str | None = None
    issuer: str | None = None
    scopes: frozenset[str] = frozenset()  # the SMART `scope` claim, as given; unknown ones mean nothing
    read_scopes: ReadScopes | None = None  # what `scopes` lets it read (domain.scopes); None: no claim

    def __post_init__(self) -> None:
        if self.patient_id is None and self.claims_patient_context:
            raise PatientWithoutContext("a patient token must name its patient (`patient_id` claim)")

    @property
    def claims_patient_context(self) -> bool:
        return PATIENT_ROLE in self.roles or any(s.startswith(PATIENT_SCOPE_PREFIX) for s in self.scopes)

    @property
    def is_patient(self) -> bool:
        return self.patient_id is not None

    @property
    def reader(self) -> Reader:
        """The caller as the read paths see it: its patient, and its read scopes."""
        return Reader(self.patient_id, self.read_scopes)


class Permission:
    """Permission names; each command needs exactly one."""

    CAREPLAN_WRITE = "careplan:write"
    CAREPLAN_REVIEW = "careplan:review"
    GOAL_WRITE = "goal:write"
    ACTIVITY_WRITE = "activity:write"
    CARETEAM_WRITE = "careteam:write"
    PROGRAM_WRITE = "program:write"  # care programs (CONTRACT §10): authors, not every clinician


ALL_WRITES = frozenset(
    {
        Permission.CAREPLAN_WRITE,
        Permission.CAREPLAN_REVIEW,
        Permission.GOAL_WRITE,
        Permission.ACTIVITY_WRITE,
        Permission.CARETEAM_WRITE,
    }
)

# Every permission a role table may grant.
KNOWN_PERMISSIONS = ALL_WRITES | {Permission.PROGRAM_WRITE}

# The documented default (README.md, "Roles and permissions"); `patient` has no writes.
DEFAULT_ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "clinician": ALL_WRITES,
    "program-author": frozenset({Permission.PROGRAM_WRITE}),
    "care-coordinator": frozenset({Permission.ACTIVITY_WRITE, Permission.CARETEAM_WRITE}),
    "reviewer": frozenset({Permission.CAREPLAN_REVIEW}),
    PATIENT_ROLE: frozenset(),
}


def authorize_write(
    principal: Principal,
    permission: str,
    role_permissions: Mapping[str, frozenset[str]] = DEFAULT_ROLE_PERMISSIONS,
) -> None:
    """Every write needs the module licence first, then a role granting the permission.
    A patient token never writes, whatever roles it also claims."""
    if MODULE_ENTITLEMENT not in principal.entitlements:
        raise ModuleNotLicensed(MODULE_ENTITLEMENT)
    if principal.is_patient:
        raise NotPermitted(permission)
    if not any(permission in role_permissions.get(role, frozenset()) for role in principal.roles):
        raise NotPermitted(permission)
