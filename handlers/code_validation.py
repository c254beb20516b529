"""Every coding in a command's data, checked locally before anything is written (domain.code_checks):
a mistyped SNOMED CT, LOINC or ICD-10-CM code is refused with INVALID_CODE and where it was."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from domain.code_checks import code_problem
from handlers.errors import ErrorCode, Rejection

MAX_REPORTED = 100


def reject_invalid_codes(data: BaseModel) -> None:
    errors = [
        {"path": ".".join(map(str, path)), "system": system, "code": code, "message": problem}
        for path, system, code in _codings(data, ("data",))
        if (problem := code_problem(system, code)) is not None
    ]
    if errors:
        first = errors[0]
        raise Rejection(
            ErrorCode.INVALID_CODE,
            f"{first['system']}|{first['code']}: {first['message']}",
            {"errors": errors[:MAX_REPORTED]},
        )


def _codings(root: Any, path: tuple[str | int, ...]) -> list[tuple[tuple[str | int, ...], Any, Any]]:
    """(path, system, code) of every coding-shaped object, in models, lists and merge-patch dicts alike,
    in document order. A loop over a stack, not recursive generators: it runs on every command."""
    found: list[tuple[tuple[str | int, ...], Any, Any]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(root, path)]
    while stack:
        value, at = stack.pop()
        if isinstance(value, BaseModel):
            value = {name: getattr(value, name) for name in type(value).model_fields}
        if isinstance(value, dict):
            if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
                found.append((at, value["system"], value["code"]))
            stack.extend((child, (*at, key)) for key, child in reversed(value.items()))
        elif isinstance(value, list | tuple):
            stack.extend((child, (*at, index)) for index, child in reversed(list(enumerate(value))))
    return found
