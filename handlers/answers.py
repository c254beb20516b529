"""The replies a command gets (CONTRACT §3), built in one place for the unit of work and the pipeline."""

from __future__ import annotations

from handlers.context import CommandResult
from handlers.errors import Rejection
from schemas.replies import ErrorBody, Reply, ResultBody


def success_reply(command_id: str, result: CommandResult) -> Reply:
    return Reply(
        command_id=command_id,
        ok=True,
        status=result.status,
        result=ResultBody(
            resource_type=result.resource_type,
            id=result.resource_id,
            version=result.version,
            rollout_id=result.rollout_id,
            rollout=result.dry_run,
        ),
    )


def error_reply(command_id: str | None, rejection: Rejection) -> Reply:
    return Reply(
        command_id=command_id,
        ok=False,
        status=rejection.status,
        error=ErrorBody(code=rejection.code.value, message=rejection.message, details=rejection.details),
    )
