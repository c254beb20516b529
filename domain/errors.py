"""Domain errors: typed, carrying the data a caller needs; mapped to wire codes once, at the edge."""

from __future__ import annotations

from dataclasses import dataclass


class DomainError(Exception):
    """A business rule said no. Final: retrying the same command gives the same answer."""


class NotFound(DomainError):
    def __init__(self, resource_type: str, resource_id: str) -> None:
        super().__init__(f"{resource_type}/{resource_id} not found")
        self.resource_type = resource_type
        self.resource_id = resource_id


class VersionConflict(DomainError):
    def __init__(self, *, expected: int, current: int) -> None:
        super().__init__(f"expected version {expected}, current version is {current}")
        self.expected = expected
        self.current = current


class InvalidTransition(DomainError):
    def __init__(self, *, field: str, from_: str | None, to: str, allowed: tuple[str, ...]) -> None:
        start = from_ if from_ is not None else "(new)"
        super().__init__(f"{field} cannot change from {start} to {to}")
        self.field = field
        self.from_ = from_
        self.to = to
        self.allowed = allowed


class InvalidValue(DomainError):
    """A value is well-formed on the wire but breaks a domain rule (a period that ends before it starts)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class NotPermitted(DomainError):
    """The principal's roles do not grant the permission the command needs."""

    def __init__(self, permission: str) -> None:
        super().__init__(f"permission {permission!r} is required")
        self.permission = permission


class ModuleNotLicensed(DomainError):
    """The tenant has not licensed the care-plan module."""

    def __init__(self, entitlement: str) -> None:
        super().__init__(f"the tenant is not licensed for {entitlement!r}")
        self.entitlement = entitlement


class Unavailable(Exception):
    """A dependency (database, broker, upstream service) did not answer: retry later, do not record."""

    def __init__(self, what: str, message: str) -> None:
        super().__init__(f"{what} unavailable: {message}")
        self.what = what


class ClosedForChanges(DomainError):
    """The resource's status no longer allows this change (a completed plan takes no new goals)."""

    def __init__(self, *, resource: str, status: str, action: str) -> None:
        super().__init__(f"{resource} is {status} and takes no {action}")
        self.resource = resource
        self.status = status
        self.action = action


class UnknownReference(DomainError):
    """A patient, encounter or practitioner the command names does not exist for the tenant, is inactive,
    or (an encounter) belongs to another patient: the service that owns it said so. Lists every one."""

    def __init__(self, problems: tuple[ReferenceProblem, ...]) -> None:
        first = problems[0]
        super().__init__(f"{first.resource_type}/{first.resource_id}: {first.message}")
        self.problems = problems


class CodeNotValid(DomainError):
    """Terminology said a coding's code does not exist in its system. Lists every one."""

    def __init__(self, problems: tuple[CodeProblem, ...]) -> None:
        first = problems[0]
        super().__init__(f"{first.system}|{first.code}: {first.message}")
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ReferenceProblem:
    path: str
    resource_type: str  # Patient, Encounter or Practitioner
    resource_id: str
    message: str


@dataclass(frozen=True, slots=True)
class CodeProblem:
    path: str
    system: str
    code: str
    message: str
