"""The FHIR R4 (4.0.1) representation of the aggregates, as plain JSON-ready dicts.

Rendered once per version and stored, so reads never re-render (DESIGN.md, FHIR reads).
"""

from __future__ import annotations

import html
from datetime import UTC, date, datetime
from typing import Any

from domain.care_plan import CarePlan
from domain.values import CodeableConcept, Coding, Note, Period

JSON = dict[str, Any]

US_CORE_CAREPLAN = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-careplan"
US_CORE_CAREPLAN_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"
# Our extension for the review schedule (DOMAIN.md decision 3); documented in README.md.
REVIEW_EXTENSION = "https://care-plan-service.dev/fhir/StructureDefinition/care-plan-review"

ASSESS_PLAN = CodeableConcept(
    codings=(Coding(US_CORE_CAREPLAN_CATEGORY, "assess-plan", "Assessment and Plan of Treatment"),),
)


def fhir_instant(moment: datetime) -> str:
    """An R4 `instant`: UTC with milliseconds, e.g. 2026-11-25T10:00:00.123Z."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def fhir_date_or_datetime(value: date | datetime) -> str:
    return fhir_instant(value) if isinstance(value, datetime) else value.isoformat()


def render_codeable_concept(concept: CodeableConcept) -> JSON:
    out: JSON = {}
    if concept.codings:
        out["coding"] = [
            {k: v for k, v in (("system", c.system), ("code", c.code), ("display", c.display)) if v}
            for c in concept.codings
        ]
    if concept.text:
        out["text"] = concept.text
    return out


def render_period(period: Period) -> JSON:
    out: JSON = {}
    if period.start is not None:
        out["start"] = fhir_date_or_datetime(period.start)
    if period.end is not None:
        out["end"] = fhir_date_or_datetime(period.end)
    return out


def render_note(note: Note) -> JSON:
    out: JSON = {"text": note.text}
    if note.author_id:
        out["authorReference"] = {"reference": f"Practitioner/{note.author_id}"}
    if note.time is not None:
        out["time"] = fhir_instant(note.time)
    return out


def render_condition_reference(concept: CodeableConcept) -> JSON:
    """R4 `CarePlan.addresses` is a Reference(Condition): a coded problem becomes a logical reference
    by identifier (system + code), so the code survives without inventing a Condition resource."""
    out: JSON = {"type": "Condition"}
    first = next((c for c in concept.codings if c.code), None)
    if first is not None:
        identifier: JSON = {"value": first.code}
        if first.system:
            identifier["system"] = first.system
        out["identifier"] = identifier
    label = concept.label()
    if label:
        out["display"] = label
    return out


def render_care_plan(plan: CarePlan) -> JSON:
    """CarePlan as US Core 6.1/7.0 CarePlan: `assess-plan` category when the caller gave none,
    a generated narrative, and `meta.profile` declaring the profile."""
    categories = plan.categories or (ASSESS_PLAN,)
    resource: JSON = {
        "resourceType": "CarePlan",
        "id": plan.id,
        "meta": {
            "versionId": str(plan.version),
            "lastUpdated": fhir_instant(plan.last_updated),
            "profile": [US_CORE_CAREPLAN],
        },
        "text": {"status": "generated", "div": _narrative(plan)},
    }
    if plan.review is not None and (
        plan.review.interval_days is not None or plan.review.next_due is not None
    ):
        sub: list[JSON] = []
        if plan.review.interval_days is not None:
            sub.append({"url": "intervalDays", "valueUnsignedInt": plan.review.interval_days})
        if plan.review.next_due is not None:
            sub.append({"url": "nextReviewDue", "valueDate": plan.review.next_due.isoformat()})
        resource["extension"] = [{"url": REVIEW_EXTENSION, "extension": sub}]
    resource["status"] = plan.status.value
    resource["intent"] = plan.intent.value
    resource["category"] = [render_codeable_concept(c) for c in categories]
    resource["title"] = plan.title
    if plan.description:
        resource["description"] = plan.description
    resource["subject"] = {"reference": f"Patient/{plan.patient_id}"}
    if plan.encounter_id:
        resource["encounter"] = {"reference": f"Encounter/{plan.encounter_id}"}
    if plan.period is not None:
        resource["period"] = render_period(plan.period)
    resource["created"] = fhir_instant(plan.created)
    if plan.author_id:
        resource["author"] = {"reference": f"Practitioner/{plan.author_id}"}
    if plan.addresses:
        resource["addresses"] = [render_condition_reference(c) for c in plan.addresses]
    if plan.notes:
        resource["note"] = [render_note(n) for n in plan.notes]
    return resource


def _narrative(plan: CarePlan) -> str:
    rows = [
        ("Title", plan.title),
        ("Status", plan.status.value),
        ("Intent", plan.intent.value),
        ("Patient", f"Patient/{plan.patient_id}"),
    ]
    if plan.description:
        rows.append(("Description", plan.description))
    if plan.period is not None:
        start = plan.period.start.isoformat() if plan.period.start else "?"
        end = plan.period.end.isoformat() if plan.period.end else "ongoing"
        rows.append(("Period", f"{start} to {end}"))
    if plan.addresses:
        rows.append(("Addresses", "; ".join(c.label() for c in plan.addresses)))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<div xmlns="http://www.w3.org/1999/xhtml"><table>{body}</table></div>'


V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SUBJECT_IDENTIFIER_SYSTEM = "urn:care-plan-service:jwt-subject"


def render_provenance(
    *,
    provenance_id: str,
    recorded: datetime,
    targets: list[tuple[str, str, int]],
    operation: str,
    command_type: str,
    agent_subject: str,
    agent_issuer: str | None,
    token_id: str | None,
) -> JSON:
    """The audit record of one accepted command (DOMAIN.md §7.3): version-specific targets, who (the
    JWT subject, namespaced by its issuer) and what (v3-DataOperation + the command's name)."""
    provenance: JSON = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "meta": {"versionId": "1", "lastUpdated": fhir_instant(recorded)},
        "target": [{"reference": f"{rtype}/{rid}/_history/{version}"} for rtype, rid, version in targets],
        "recorded": fhir_instant(recorded),
        "activity": {"coding": [{"system": V3_DATA_OPERATION, "code": operation}], "text": command_type},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_PARTICIPANT_TYPE, "code": "author"}]},
                "who": {
                    "identifier": {
                        "system": agent_issuer or SUBJECT_IDENTIFIER_SYSTEM,
                        "value": agent_subject,
                    },
                    "display": agent_subject,
                },
            }
        ],
    }
    revisions = [(rtype, rid, version - 1) for rtype, rid, version in targets if version > 1]
    if revisions:
        provenance["entity"] = [
            {"role": "revision", "what": {"reference": f"{rtype}/{rid}/_history/{version}"}}
            for rtype, rid, version in revisions
        ]
    if token_id:
        provenance["policy"] = [f"urn:care-plan-service:jwt-id:{token_id}"]
    return provenance
