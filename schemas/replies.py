"""Replies to commands (CONTRACT §3): also what the command log stores as a command's outcome."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class ResultBody(BaseModel):
    resource_type: str
    id: str
    version: int


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Reply(BaseModel):
    model_config = ConfigDict(frozen=True)

    command_id: str | None
    ok: bool
    status: int
    result: ResultBody | None = None
    error: ErrorBody | None = None

    def to_wire(self) -> dict[str, Any]:
        """The contract's JSON: only the branch that applies (`result` on success, `error` otherwise)."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"command_id"}) | {
            "command_id": self.command_id
        }
