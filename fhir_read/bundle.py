"""Search Bundles assembled from stored JSON bytes; only `_summary` and `_elements` parse a resource."""

from __future__ import annotations

from typing import Any

import orjson

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
# R4 summary (Σ) elements per type, besides id and meta.
SUMMARY_ELEMENTS = {
    "CarePlan": {
        "identifier", "instantiatesCanonical", "instantiatesUri", "basedOn", "replaces", "partOf", "status",
        "intent", "category", "title", "description", "subject", "encounter", "period", "created", "author",
        "addresses",
    },
    "Goal": {
        "lifecycleStatus", "achievementStatus", "category", "priority", "description", "subject", "startDate",
        "startCodeableConcept", "target", "statusDate", "expressedBy",
    },
    "Task": {
        "instantiatesCanonical", "instantiatesUri", "basedOn", "groupIdentifier", "partOf", "status",
        "statusReason", "businessStatus", "intent", "code", "description", "focus", "for", "encounter",
        "executionPeriod", "lastModified", "requester", "owner", "location",
    },
    "CareTeam": {
        "identifier", "status", "category", "name", "subject", "encounter", "period", "participant",
        "managingOrganization",
    },
    "Provenance": {"target", "recorded", "agent"},
}  # fmt: skip


def entry(base_url: str, resource_type: str, resource_id: str, json_text: str, mode: str) -> bytes:
    return (
        b'{"fullUrl":'
        + orjson.dumps(f"{base_url}/{resource_type}/{resource_id}")
        + b',"resource":'
        + json_text.encode()
        + b',"search":{"mode":"'
        + mode.encode()
        + b'"}}'
    )


def subset(json_text: str, resource_type: str, *, summary: bool, elements: tuple[str, ...]) -> str:
    """`_summary=true` or `_elements`: keep id, meta and the chosen elements, and say it is a subset."""
    resource: dict[str, Any] = orjson.loads(json_text)
    keep = set(elements) if elements else SUMMARY_ELEMENTS.get(resource_type, set())
    cut = {k: v for k, v in resource.items() if k in keep or k in ("resourceType", "id", "meta")}
    meta = dict(cut.get("meta", {}))
    meta["tag"] = [*meta.get("tag", []), SUBSETTED]
    cut["meta"] = meta
    return orjson.dumps(cut).decode()


def outcome_entry(ignored: tuple[str, ...]) -> bytes:
    """Lenient handling: the parameters we ignored, said in an OperationOutcome entry (CONTRACT §6)."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "warning",
                "code": "not-supported",
                "diagnostics": f"ignored unknown parameter {name!r}",
            }
            for name in ignored
        ],
    }
    return b'{"resource":' + orjson.dumps(outcome) + b',"search":{"mode":"outcome"}}'


def searchset(total: int | None, links: list[tuple[str, str]], entries: list[bytes]) -> bytes:
    head: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": relation, "url": url} for relation, url in links]
    prefix = orjson.dumps(head)[:-1]
    return prefix + b',"entry":[' + b",".join(entries) + b"]}" if entries else prefix + b"}"
