"""Check rendered FHIR JSON against the fhir.resources models. The renderers make valid FHIR by
construction; the property tests (tests/unit/use_cases) hold them to it through this check, instead of
running it over every write.

fhir.resources 8 ships R4B, not R4 (DOMAIN.md decision 7); for CarePlan, Goal, Task, CareTeam,
Provenance and PlanDefinition the elements we write are the same in both. It checks structure and
datatypes, not code bindings: the domain owns the status vocabularies.
"""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.careplan import CarePlan
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.goal import Goal
from fhir.resources.R4B.plandefinition import PlanDefinition
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task
from pydantic import BaseModel, ValidationError

_MODELS: dict[str, type[BaseModel]] = {
    "CarePlan": CarePlan,
    "Goal": Goal,
    "Task": Task,
    "CareTeam": CareTeam,
    "PlanDefinition": PlanDefinition,
    "Provenance": Provenance,
}


class InvalidFhirResource(Exception):
    """Our own rendering produced something FHIR rejects: a bug on our side, never the caller's."""


def validate_resource(resource: dict[str, Any]) -> None:
    resource_type = resource.get("resourceType")
    model = _MODELS.get(str(resource_type))
    if model is None:
        raise InvalidFhirResource(f"no model for resourceType {resource_type!r}")
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise InvalidFhirResource(f"{resource_type} failed FHIR validation: {exc}") from exc
