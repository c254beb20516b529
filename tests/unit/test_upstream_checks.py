"""Which command asks which upstream service about what, and how the answers combine; against in-memory
fakes of our own ports (the NATS adapters have their own tests on a real server)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import BaseModel

from domain.errors import CodeNotValid, Unavailable, UnknownReference
from handlers.ports import (
    CodeVerdict,
    EncounterRecord,
    PatientRecord,
    PractitionerRecord,
    UpstreamServices,
)
from handlers.registry import standard_commands
from handlers.upstream_checks import (
    CheckedEncounter,
    CodingMention,
    Mention,
    References,
    check_references,
    references_of,
)

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category"


def data(command: str, **values: Any) -> BaseModel:
    model: BaseModel = standard_commands()[command].data_model.model_validate(values)
    return model


def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


# --- references_of ------------------------------------------------------------------------------------


def test_a_new_plan_names_its_patient_encounter_author_note_authors_and_codes() -> None:
    refs = references_of(
        data(
            "careplan.create",
            patient_id="p1",
            title="Diabetes",
            encounter_id="e1",
            author_id="dr-a",
            notes=[{"text": "seen", "author_id": "dr-b"}, "plain"],
            categories=[concept(US_CORE_CATEGORY, "assess-plan")],
            addresses=[{"text": "free text only"}, concept(SNOMED, "44054006", "Diabetes type 2")],
        )
    )
    assert refs.patient == Mention("data.patient_id", "p1")
    assert refs.encounter == Mention("data.encounter_id", "e1")
    assert refs.practitioners == (
        Mention("data.author_id", "dr-a"),
        Mention("data.notes.0.author_id", "dr-b"),
    )
    assert refs.codings == (
        CodingMention("data.categories.0.coding.0", US_CORE_CATEGORY, "assess-plan", None),
        CodingMention("data.addresses.1.coding.0", SNOMED, "44054006", "Diabetes type 2"),
    )


def test_an_update_names_only_what_it_changes_and_the_plan_whose_patient_an_encounter_must_be() -> None:
    title_only = references_of(data("careplan.update", care_plan_id="cp1", changes={"title": "New"}))
    assert not title_only
    new_encounter = references_of(data("careplan.update", care_plan_id="cp1", changes={"encounter_id": "e2"}))
    assert new_encounter.encounter == Mention("data.changes.encounter_id", "e2")
    assert new_encounter.plan_id == "cp1"
    assert new_encounter.patient is None  # immutable: the domain refuses a change, no one is asked


def test_goal_commands_name_description_category_addresses_and_target_measures() -> None:
    refs = references_of(
        data(
            "goal.add",
            care_plan_id="cp1",
            description=concept(SNOMED, "281004"),
            category=[concept(SNOMED, "289169006")],
            targets=[{"measure": concept(LOINC, "4548-4"), "due_date": "2027-01-01"}],
            priority=concept("http://terminology.hl7.org/CodeSystem/goal-priority", "high-priority"),
        )
    )
    assert [c.path for c in refs.codings] == [
        "data.description.coding.0",
        "data.category.0.coding.0",
        "data.targets.0.measure.coding.0",
    ]
    update = references_of(
        data("goal.update", goal_id="g1", changes={"targets": [{"measure": concept(LOINC, "4548-4")}]})
    )
    assert [c.path for c in update.codings] == ["data.changes.targets.0.measure.coding.0"]


@pytest.mark.parametrize(
    ("command", "values", "practitioners"),
    [
        ("careplan.request_review", {"care_plan_id": "cp1", "reviewer_id": "dr-r"}, ["dr-r"]),
        ("activity.add", {"care_plan_id": "cp1", "description": "Walk", "owner_id": "dr-o"}, ["dr-o"]),
        ("activity.assign", {"activity_id": "a1", "owner_id": "dr-o"}, ["dr-o"]),
        (
            "careteam.add_member",
            {"care_plan_id": "cp1", "member_id": "dr-m", "role": {"text": "GP"}},
            ["dr-m"],
        ),
        # Ids of what we already hold are not asked about: a practitioner who left can still be removed.
        ("careteam.remove_member", {"care_plan_id": "cp1", "member_id": "dr-gone"}, []),
        (
            "careteam.update_member",
            {"care_plan_id": "cp1", "member_id": "dr-gone", "changes": {"role": {"text": "x"}}},
            [],
        ),
        ("careplan.change_status", {"care_plan_id": "cp1", "status": "active"}, []),
        ("activity.change_status", {"activity_id": "a1", "status": "ready"}, []),
    ],
)
def test_which_practitioners_each_command_names(
    command: str, values: dict[str, Any], practitioners: list[str]
) -> None:
    assert [m.resource_id for m in references_of(data(command, **values)).practitioners] == practitioners


# --- check_references -----------------------------------------------------------------------------------


@dataclass
class FakeWorld:
    patients: dict[str, bool] = field(default_factory=dict)
    encounters: dict[str, str] = field(default_factory=dict)
    practitioners: dict[str, bool] = field(default_factory=dict)
    unknown_codes: set[str] = field(default_factory=set)
    silent: set[str] = field(default_factory=set)
    asked: list[tuple[str, str]] = field(default_factory=list)

    def _ask(self, service: str, what: str) -> None:
        self.asked.append((service, what))
        if service in self.silent:
            raise Unavailable(service, "no responders")

    async def patient(self, tenant_id: str, patient_id: str, *, token: str) -> PatientRecord:
        self._ask("registration", patient_id)
        active = self.patients.get(patient_id)
        return PatientRecord(active is not None, bool(active))

    async def encounter(self, tenant_id: str, encounter_id: str, *, token: str) -> EncounterRecord:
        self._ask("scheduling", encounter_id)
        return EncounterRecord(encounter_id in self.encounters, self.encounters.get(encounter_id))

    async def practitioner(self, tenant_id: str, practitioner_id: str, *, token: str) -> PractitionerRecord:
        self._ask("providers", practitioner_id)
        active = self.practitioners.get(practitioner_id)
        return PractitionerRecord(active is not None, bool(active))

    async def validate_code(self, system: str, code: str, display: str | None, *, token: str) -> CodeVerdict:
        self._ask("terminology", code)
        return CodeVerdict(code not in self.unknown_codes, message="unknown code")

    def services(self) -> UpstreamServices:
        return UpstreamServices(self, self, self, self, terminology_systems=frozenset({SNOMED, LOINC}))


async def check(world: FakeWorld, refs: References, plan_patient: str | None = None) -> Any:
    return await check_references(
        refs, tenant_id="t1", token="jwt", services=world.services(), plan_patient=plan_patient
    )


async def test_every_refusal_is_listed_with_its_path_patients_first() -> None:
    world = FakeWorld(patients={"p-inactive": False}, practitioners={"dr-a": True})
    refs = References(
        patient=Mention("data.patient_id", "p-inactive"),
        practitioners=(
            Mention("data.author_id", "dr-a"),
            Mention("data.notes.0.author_id", "dr-x"),
            Mention("data.notes.1.author_id", "dr-x"),  # asked once
        ),
        codings=(CodingMention("data.addresses.0.coding.0", SNOMED, "bad", None),),
    )
    with pytest.raises(UnknownReference) as raised:
        await check(world, refs)
    assert [(p.path, p.resource_type, p.resource_id, p.message) for p in raised.value.problems] == [
        ("data.patient_id", "Patient", "p-inactive", "the patient record is not active"),
        ("data.notes.0.author_id", "Practitioner", "dr-x", "no such practitioner in the provider directory"),
    ]
    assert world.asked.count(("providers", "dr-x")) == 1


async def test_invalid_codes_are_refused_when_every_reference_is_known() -> None:
    world = FakeWorld(unknown_codes={"bad"})
    refs = References(
        codings=(
            CodingMention("data.description.coding.0", SNOMED, "bad", None),
            CodingMention("data.category.0.coding.0", US_CORE_CATEGORY, "bad", None),  # not terminology's
        )
    )
    with pytest.raises(CodeNotValid) as raised:
        await check(world, refs)
    assert [(p.path, p.code, p.message) for p in raised.value.problems] == [
        ("data.description.coding.0", "bad", "unknown code")
    ]
    assert world.asked == [("terminology", "bad")]


async def test_a_refusal_wins_over_a_silent_service_and_silence_alone_is_unavailable() -> None:
    world = FakeWorld(silent={"providers"})
    refs = References(patient=Mention("data.patient_id", "p-unknown"), practitioners=(Mention("x", "dr"),))
    with pytest.raises(UnknownReference):
        await check(world, refs)
    world.patients["p-unknown"] = True
    with pytest.raises(Unavailable, match="providers unavailable"):
        await check(world, refs)


async def test_an_encounter_must_be_the_plans_patients() -> None:
    world = FakeWorld(patients={"p1": True, "p2": True}, encounters={"e1": "p1"})
    ok = References(patient=Mention("data.patient_id", "p1"), encounter=Mention("data.encounter_id", "e1"))
    assert await check(world, ok) == CheckedEncounter("e1", "p1")

    other = References(patient=Mention("data.patient_id", "p2"), encounter=Mention("data.encounter_id", "e1"))
    with pytest.raises(UnknownReference, match="not patient p2's") as raised:
        await check(world, other)
    assert raised.value.problems[0].resource_type == "Encounter"

    missing = References(
        patient=Mention("data.patient_id", "p1"), encounter=Mention("data.encounter_id", "e9")
    )
    with pytest.raises(UnknownReference, match="no such encounter"):
        await check(world, missing)


async def test_on_update_a_new_encounter_is_checked_against_the_plans_current_patient() -> None:
    world = FakeWorld(encounters={"e1": "p1", "e2": "p2"})
    new_encounter = References(encounter=Mention("data.changes.encounter_id", "e2"), plan_id="cp1")
    with pytest.raises(UnknownReference, match="not patient p1's"):
        await check(world, new_encounter, plan_patient="p1")
    assert await check(world, new_encounter, plan_patient="p2") == CheckedEncounter("e2", "p2")
    # No such plan: nothing to pair with, nobody asked (the use case answers NOT_FOUND)
    asked = len(world.asked)
    assert await check(world, new_encounter, plan_patient=None) is None
    assert len(world.asked) == asked
