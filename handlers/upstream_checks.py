"""Which command asks which upstream service about what, and the asking (CONTRACT §8).

Checked before the transaction, every lookup of a command at once: the patient of a plan; its encounter
and that the encounter is that patient's; the practitioners it names (author, reviewer, care-team member,
activity owner, note authors); and the codes of categories, addresses, goal descriptions, targets' measures
and activity codes, for the code systems terminology is asked about. A "no" is final (`UnknownReference`,
`CodeNotValid`: recorded like any business rejection); silence raises `Unavailable` and the command is
retried. When one service says no and another is silent, the no wins: the command cannot succeed either way.

Ids that refer to what we already hold are not asked about: removing or updating a care-team member works
even after the practitioner left the directory."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

from domain.errors import (
    CodeNotValid,
    CodeProblem,
    ReferenceProblem,
    UnknownReference,
)
from handlers.ports import UpstreamServices
from schemas import commands as wire
from schemas.common import CodeableConceptIn, NoteIn

MAX_REPORTED = 100
Problem = ReferenceProblem | CodeProblem
T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Mention:
    """An id the command names, and where."""

    path: str
    resource_id: str


@dataclass(frozen=True, slots=True)
class CodingMention:
    path: str
    system: str
    code: str
    display: str | None


@dataclass(frozen=True, slots=True)
class References:
    """What one command names that upstream services own. An encounter must be the plan's patient's:
    the patient named alongside it, or (`careplan.update`, where the patient is immutable) the current
    patient of plan `plan_id`."""

    patient: Mention | None = None
    encounter: Mention | None = None
    plan_id: str | None = None
    practitioners: tuple[Mention, ...] = ()
    codings: tuple[CodingMention, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patient or self.encounter or self.practitioners or self.codings)


@dataclass(frozen=True, slots=True)
class CheckedEncounter:
    """An encounter scheduling confirmed as this patient's; the use case checks the plan still pairs them."""

    encounter_id: str
    patient_id: str


def references_of(data: BaseModel) -> References:
    """What this command's data names, by command (see the module docstring)."""
    extract = _EXTRACTORS.get(type(data))
    return extract(data) if extract is not None else References()


async def check_references(
    refs: References,
    *,
    tenant_id: str,
    token: str,
    services: UpstreamServices,
    plan_patient: str | None = None,
) -> CheckedEncounter | None:
    """Ask every service at once; raise the final "no" (all of them listed), else `Unavailable` if any
    was silent; return the encounter that was confirmed, if one was to be. `plan_patient` is the current
    patient of `refs.plan_id`, read before (None when there is no such plan: the use case says so)."""
    patient_id = refs.patient.resource_id if refs.patient is not None else plan_patient
    encounter = refs.encounter
    lookups: list[Awaitable[Problem | None]] = []
    if refs.patient is not None:
        lookups.append(_patient(services, tenant_id, refs.patient, token))
    if encounter is not None and patient_id is not None:
        lookups.append(_encounter(services, tenant_id, encounter, patient_id, token))
    lookups.extend(_practitioner(services, tenant_id, m, token) for m in _unique(refs.practitioners))
    lookups.extend(
        _coding(services, c, token) for c in _unique(refs.codings) if c.system in services.terminology_systems
    )
    outcomes = await asyncio.gather(*lookups, return_exceptions=True)
    _raise_final_no([outcome for outcome in outcomes if isinstance(outcome, ReferenceProblem | CodeProblem)])
    silences = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
    if silences:
        raise silences[0]
    if encounter is None or patient_id is None:
        return None
    return CheckedEncounter(encounter.resource_id, patient_id)


async def _patient(
    services: UpstreamServices, tenant_id: str, patient: Mention, token: str
) -> Problem | None:
    record = await services.registration.patient(tenant_id, patient.resource_id, token=token)
    if not record.found:
        return _missing(patient, "Patient", "no such patient is registered")
    if not record.active:
        return _missing(patient, "Patient", "the patient record is not active")
    return None


async def _encounter(
    services: UpstreamServices, tenant_id: str, encounter: Mention, patient_id: str, token: str
) -> Problem | None:
    record = await services.scheduling.encounter(tenant_id, encounter.resource_id, token=token)
    if not record.found:
        return _missing(encounter, "Encounter", "no such encounter is scheduled")
    if record.patient_id != patient_id:
        return _missing(encounter, "Encounter", f"the encounter is not patient {patient_id}'s")
    return None


async def _practitioner(
    services: UpstreamServices, tenant_id: str, practitioner: Mention, token: str
) -> Problem | None:
    record = await services.providers.practitioner(tenant_id, practitioner.resource_id, token=token)
    if not record.found:
        return _missing(practitioner, "Practitioner", "no such practitioner in the provider directory")
    if not record.active:
        return _missing(practitioner, "Practitioner", "the practitioner is not active")
    return None


async def _coding(services: UpstreamServices, coding: CodingMention, token: str) -> Problem | None:
    verdict = await services.terminology.validate_code(
        coding.system, coding.code, coding.display, token=token
    )
    if verdict.valid:
        return None
    message = verdict.message or "terminology does not know this code"
    return CodeProblem(coding.path, coding.system, coding.code, message)


def _missing(mention: Mention, resource_type: str, message: str) -> ReferenceProblem:
    return ReferenceProblem(mention.path, resource_type, mention.resource_id, message)


def _raise_final_no(problems: list[Problem]) -> None:
    """Every refusal, as one error: unknown references before invalid codes."""
    references = [p for p in problems if isinstance(p, ReferenceProblem)]
    if references:
        raise UnknownReference(tuple(references[:MAX_REPORTED]))
    codes = [p for p in problems if isinstance(p, CodeProblem)]
    if codes:
        raise CodeNotValid(tuple(codes[:MAX_REPORTED]))


M = TypeVar("M", Mention, CodingMention)


def _unique(mentions: Iterable[M]) -> list[M]:
    """One lookup per distinct thing (the first place it is named is the one reported)."""
    seen: dict[Any, M] = {}
    for m in mentions:
        key = m.resource_id if isinstance(m, Mention) else (m.system, m.code, m.display)
        seen.setdefault(key, m)
    return list(seen.values())


# --- what each command names ---------------------------------------------------------------------------


def _id(path: str, value: str | None) -> tuple[Mention, ...]:
    return (Mention(path, value),) if value is not None else ()


def _note_authors(path: str, notes: list[NoteIn] | None) -> tuple[Mention, ...]:
    return tuple(
        Mention(f"{path}.{i}.author_id", n.author_id) for i, n in enumerate(notes or ()) if n.author_id
    )


def _concepts(
    path: str, concepts: CodeableConceptIn | list[CodeableConceptIn] | None
) -> tuple[CodingMention, ...]:
    if concepts is None:
        return ()
    if isinstance(concepts, CodeableConceptIn):
        return _codings(path, concepts)
    return tuple(m for i, c in enumerate(concepts) for m in _codings(f"{path}.{i}", c))


def _codings(path: str, concept: CodeableConceptIn) -> tuple[CodingMention, ...]:
    return tuple(
        CodingMention(f"{path}.coding.{i}", c.system, c.code, c.display)
        for i, c in enumerate(concept.coding)
        if c.system is not None and c.code is not None
    )


def _target_measures(path: str, targets: list[wire.GoalTargetIn] | None) -> tuple[CodingMention, ...]:
    return tuple(m for i, t in enumerate(targets or ()) for m in _concepts(f"{path}.{i}.measure", t.measure))


def _plan_create(d: wire.CarePlanCreate) -> References:
    return References(
        patient=Mention("data.patient_id", d.patient_id),
        encounter=Mention("data.encounter_id", d.encounter_id) if d.encounter_id else None,
        practitioners=(*_id("data.author_id", d.author_id), *_note_authors("data.notes", d.notes)),
        codings=(*_concepts("data.categories", d.categories), *_concepts("data.addresses", d.addresses)),
    )


def _enroll(d: wire.CarePlanEnroll) -> References:
    """As a create: the patient, encounter and author, and every activity owner (the program's codes were
    checked when it was defined)."""
    return References(
        patient=Mention("data.patient_id", d.patient_id),
        encounter=Mention("data.encounter_id", d.encounter_id) if d.encounter_id else None,
        practitioners=(
            *_id("data.author_id", d.author_id),
            *(Mention(f"data.owners.{key}", owner) for key, owner in sorted(d.owners.items())),
        ),
    )


def _plan_update(d: wire.CarePlanUpdate) -> References:
    c, path = d.changes, "data.changes"
    return References(
        encounter=Mention(f"{path}.encounter_id", c.encounter_id) if c.encounter_id else None,
        plan_id=d.care_plan_id,
        practitioners=(*_id(f"{path}.author_id", c.author_id), *_note_authors(f"{path}.notes", c.notes)),
        codings=(
            *_concepts(f"{path}.categories", c.categories),
            *_concepts(f"{path}.addresses", c.addresses),
        ),
    )


def _request_review(d: wire.CarePlanRequestReview) -> References:
    return References(practitioners=_id("data.reviewer_id", d.reviewer_id))


def _complete_review(d: wire.CarePlanCompleteReview) -> References:
    return References(practitioners=_note_authors("data.notes", d.notes))


def _goal_codings(path: str, g: wire.GoalAdd | wire.GoalChanges) -> tuple[CodingMention, ...]:
    return (
        *_concepts(f"{path}.description", g.description),
        *_concepts(f"{path}.category", g.category),
        *_concepts(f"{path}.addresses", g.addresses),
        *_target_measures(f"{path}.targets", g.targets),
    )


def _goal_add(d: wire.GoalAdd) -> References:
    return References(practitioners=_note_authors("data.notes", d.notes), codings=_goal_codings("data", d))


def _goal_update(d: wire.GoalUpdate) -> References:
    path = "data.changes"
    return References(
        practitioners=_note_authors(f"{path}.notes", d.changes.notes), codings=_goal_codings(path, d.changes)
    )


def _activity_add(d: wire.ActivityAdd) -> References:
    return References(practitioners=_id("data.owner_id", d.owner_id), codings=_concepts("data.code", d.code))


def _activity_assign(d: wire.ActivityAssign) -> References:
    return References(practitioners=_id("data.owner_id", d.owner_id))


def _member_add(d: wire.CareTeamAddMember) -> References:
    return References(practitioners=_id("data.member_id", d.member_id))


def _extractor(
    model: type[T], extract: Callable[[T], References]
) -> tuple[type[BaseModel], Callable[[Any], References]]:
    return model, extract


_EXTRACTORS: dict[type[BaseModel], Callable[[Any], References]] = dict(
    [
        _extractor(wire.CarePlanCreate, _plan_create),
        _extractor(wire.CarePlanEnroll, _enroll),
        _extractor(wire.CarePlanUpdate, _plan_update),
        _extractor(wire.CarePlanRequestReview, _request_review),
        _extractor(wire.CarePlanCompleteReview, _complete_review),
        _extractor(wire.GoalAdd, _goal_add),
        _extractor(wire.GoalUpdate, _goal_update),
        _extractor(wire.ActivityAdd, _activity_add),
        _extractor(wire.ActivityAssign, _activity_assign),
        _extractor(wire.CareTeamAddMember, _member_add),
    ]
)
