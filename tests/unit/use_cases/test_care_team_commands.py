"""Specifications of the care-team commands against the in-memory unit of work."""

from __future__ import annotations

import pytest

from domain.errors import InvalidValue
from tests.unit.use_cases.harness import TENANT, Clinic

NURSE = {"coding": [{"system": "http://snomed.info/sct", "code": "224535009", "display": "Registered nurse"}]}
GP = {"coding": [{"system": "http://snomed.info/sct", "code": "62247001", "display": "GP"}]}


async def test_the_first_member_creates_the_team_and_the_plan_points_at_it() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    outcome = await clinic.run(
        "careteam.add_member", {"care_plan_id": plan_id, "member_id": "pr1", "role": NURSE}
    )
    assert outcome.reply.status == 200  # the command answers with the team; 201 is kept for members' own URLs
    (team,) = [v for v in outcome.record.versions if v.resource_type == "CareTeam"]
    assert team.entity.version == 1
    assert outcome.resource("CarePlan")["careTeam"] == [{"reference": f"CareTeam/{team.entity.id}"}]
    assert [e[0] for e in outcome.events] == ["careplan.updated", "careteam.member_added"]
    assert outcome.operation == "CREATE"  # the team is new


async def test_a_second_member_changes_the_team_only() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("careteam.add_member", {"care_plan_id": plan_id, "member_id": "pr1", "role": NURSE})
    outcome = await clinic.run(
        "careteam.add_member", {"care_plan_id": plan_id, "member_id": "pr2", "role": GP}, expected_version=1
    )
    assert [v[0] for v in outcome.versions] == ["CareTeam"]
    assert outcome.operation == "UPDATE"
    assert [p["member"]["reference"] for p in outcome.resource("CareTeam")["participant"]] == [
        "Practitioner/pr1",
        "Practitioner/pr2",
    ]


async def test_a_member_already_on_the_team_is_refused_and_nothing_is_committed() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("careteam.add_member", {"care_plan_id": plan_id, "member_id": "pr1", "role": NURSE})
    commits = len(clinic.database.commits)
    with pytest.raises(InvalidValue):
        await clinic.run(
            "careteam.add_member",
            {"care_plan_id": plan_id, "member_id": "pr1", "role": GP},
            expected_version=1,
        )
    assert len(clinic.database.commits) == commits


async def test_updating_and_removing_a_member() -> None:
    clinic = Clinic()
    plan_id = await clinic.plan()
    await clinic.run("careteam.add_member", {"care_plan_id": plan_id, "member_id": "pr1", "role": NURSE})
    updated = await clinic.run(
        "careteam.update_member",
        {"care_plan_id": plan_id, "member_id": "pr1", "changes": {"role": GP}},
        expected_version=1,
    )
    assert updated.resource("CareTeam")["participant"][0]["role"][0]["coding"][0]["code"] == "62247001"
    removed = await clinic.run(
        "careteam.remove_member", {"care_plan_id": plan_id, "member_id": "pr1"}, expected_version=2
    )
    assert [e[0] for e in removed.events] == ["careteam.member_removed"]
    team = clinic.database.plan(TENANT, plan_id).care_team
    assert team is not None and team.version == 3
