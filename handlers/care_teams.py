"""Use cases on the plan's care team: add, update and remove members (the team comes with the first)."""

from __future__ import annotations

from domain.entities import Participant
from handlers import translate
from handlers.context import CommandContext, result
from handlers.unit_of_work import UnitOfWork
from schemas.commands import CareTeamAddMember, CareTeamRemoveMember, CareTeamUpdateMember


async def add_member(data: CareTeamAddMember, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan(data.care_plan_id)
    participant = Participant(
        member_id=data.member_id,
        role=translate.concept(data.role),
        on_behalf_of=data.on_behalf_of,
        period=translate.period(data.period),
    )
    aggregate.add_member(
        participant, new_team_id=lambda: str(ctx.new_id()), expected_version=ctx.expected_version, now=ctx.now
    )
    assert aggregate.care_team is not None
    await uow.commit(result("CareTeam", aggregate.care_team))


async def update_member(data: CareTeamUpdateMember, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan(data.care_plan_id)
    changes = translate.merge_patch(data.changes, {"role": translate.concept, "period": translate.period})
    aggregate.update_member(data.member_id, changes, expected_version=ctx.expected_version, now=ctx.now)
    assert aggregate.care_team is not None
    await uow.commit(result("CareTeam", aggregate.care_team))


async def remove_member(data: CareTeamRemoveMember, ctx: CommandContext, uow: UnitOfWork) -> None:
    aggregate = await uow.plan(data.care_plan_id)
    aggregate.remove_member(data.member_id, expected_version=ctx.expected_version, now=ctx.now)
    assert aggregate.care_team is not None
    await uow.commit(result("CareTeam", aggregate.care_team))
