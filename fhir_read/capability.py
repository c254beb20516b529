"""`GET /fhir/metadata`: the CapabilityStatement, generated from the same registry the search code uses,
so it lists exactly what works."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import orjson
from aiohttp import web

from domain.fhir import (
    ACTIVITY_DURATION_EXTENSION,
    PROGRAM_ADDRESSES_EXTENSION,
    PROGRAM_KEY_EXTENSION,
    PROGRAM_REVIEW_EXTENSION,
)
from domain.search_parameters import BY_TYPE, SEARCHABLE_TYPES
from domain.search_query import (
    MAX_COUNT,
    MAX_CRITERIA,
    MAX_ELEMENTS,
    MAX_INCLUDED,
    MAX_INCLUDES,
    MAX_OR_VALUES,
    MAX_PARAMETER_CHARS,
    MAX_PARAMETERS,
    MAX_SEARCH_BODY_BYTES,
    MAX_SORT_KEYS,
    MAX_VALUE_CHARS,
)
from fhir_read.outcome import FHIR_JSON
from fhir_read.smart import SmartEndpoints, rest_security


@dataclass(frozen=True, slots=True)
class Software:
    """CapabilityStatement.software and `date`: the running build's (service.build_info)."""

    version: str = "unknown"
    released: date | None = None


_PROGRAM_KEY_NOTE = (
    f"Made by enrolment in a care program: the extension {PROGRAM_KEY_EXTENSION} (valueId) holds the "
    "program key it was made from; items added by hand have none."
)
US_CORE_PROFILES = {
    "CarePlan": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan",
    "Goal": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-goal",
    "CareTeam": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careteam",
}
COMMON_PARAMETERS = [
    {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
    {
        "name": "_lastUpdated",
        "type": "date",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
    },
]


def capability_statement(
    endpoints: SmartEndpoints | None = None, software: Software | None = None
) -> dict[str, Any]:
    resources: list[dict[str, Any]] = []
    for resource_type in SEARCHABLE_TYPES:
        params = BY_TYPE[resource_type]
        references = sorted(code for code, p in params.items() if p.type == "reference")
        pointing_here = sorted(
            f"{p.resource_type}:{p.code}"
            for other in SEARCHABLE_TYPES
            for p in BY_TYPE[other].values()
            if p.type == "reference" and resource_type in p.targets
        )
        entry: dict[str, Any] = {
            "type": resource_type,
            "interaction": [
                {"code": code}
                for code in ("read", "vread", "history-instance", "history-type", "search-type")
            ],
            "versioning": "versioned",
            "readHistory": True,
            "updateCreate": False,
            "conditionalRead": "full-support",
            "searchInclude": [f"{resource_type}:{code}" for code in references],
            "searchRevInclude": [*pointing_here, "Provenance:target"],
            "searchParam": COMMON_PARAMETERS
            + [
                {"name": p.code, "type": p.type, "definition": p.definition}
                for p in sorted(params.values(), key=lambda p: p.code)
            ],
        }
        if resource_type in US_CORE_PROFILES:
            entry["supportedProfile"] = [US_CORE_PROFILES[resource_type]]
        if resource_type == "Task":
            entry["documentation"] = (
                "Care-plan activities. Task.basedOn points at the CarePlan although "
                "CarePlan.activity.reference also lists the Task: both links are kept on purpose, "
                "so Task?based-on= and "
                "_revinclude=Task:based-on work. " + _PROGRAM_KEY_NOTE
            )
        elif resource_type == "Goal":
            entry["documentation"] = _PROGRAM_KEY_NOTE
        elif resource_type == "PlanDefinition":
            entry["documentation"] = (
                "Care programs (clinical-protocol), one resource per version; goal.id and action.id are the "
                f"program's keys. Extensions: {PROGRAM_ADDRESSES_EXTENSION}, {PROGRAM_REVIEW_EXTENSION}, "
                f"{ACTIVITY_DURATION_EXTENSION} (on an action). Patient tokens see none."
            )
        resources.append(entry)
    resources.append(
        {
            "type": "Provenance",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [
                {
                    "name": "target",
                    "type": "reference",
                    "definition": "http://hl7.org/fhir/SearchParameter/Provenance-target",
                },
                {
                    "name": "patient",
                    "type": "reference",
                    "definition": "http://hl7.org/fhir/SearchParameter/Provenance-patient",
                },
                {
                    "name": "recorded",
                    "type": "date",
                    "definition": "http://hl7.org/fhir/SearchParameter/Provenance-recorded",
                },
            ],
        }
    )
    software = software or Software()
    released = (software.released or datetime.now(UTC).date()).isoformat()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": released,
        "publisher": "care-plan-service",
        "kind": "instance",
        "software": {"name": "care-plan-service", "version": software.version, "releaseDate": released},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "implementationGuide": ["http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    f"Read-only. _count defaults to 20 and is capped at {MAX_COUNT}; at most {MAX_INCLUDED} "
                    "included resources per page (more is a 400, never a silent cut). Search limits, each "
                    f"a 400 naming it when passed: {MAX_OR_VALUES} comma-separated values per parameter, "
                    f"{MAX_CRITERIA} search parameters, {MAX_INCLUDES} _include/_revinclude, "
                    f"{MAX_SORT_KEYS} _sort keys, {MAX_ELEMENTS} _elements, {MAX_PARAMETERS} parameters in "
                    f"all, {MAX_VALUE_CHARS} characters per value, {MAX_PARAMETER_CHARS} per parameter, "
                    f"a POST _search body of {MAX_SEARCH_BODY_BYTES} bytes (413). Unknown parameters are "
                    "refused unless the request says Prefer: handling=lenient. Patient tokens see only their "
                    "own records, nothing of draft or entered-in-error CarePlans (their goals, activities, "
                    "care teams and audit included)."
                ),
                "security": rest_security(endpoints or SmartEndpoints()),
                "resource": resources,
            }
        ],
    }


CAPABILITY_BODY = web.AppKey("capability_body", bytes)


def install_capability_statement(app: web.Application, endpoints: SmartEndpoints, software: Software) -> None:
    """Rendered once per app: it changes only with the build and the OAuth endpoints configured."""
    app[CAPABILITY_BODY] = orjson.dumps(capability_statement(endpoints, software))


async def metadata_route(request: web.Request) -> web.Response:
    return web.Response(body=request.app[CAPABILITY_BODY], content_type=FHIR_JSON)
