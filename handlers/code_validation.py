"""Every coding in a command's data, checked locally before anything is written (domain.code_checks):
a mistyped SNOMED CT, LOINC or ICD-10-CM code is refused with INVALID_CODE and where it was."""

from __future__ import annotations

from collections.abc import Iterator
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


def _codings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], Any, Any]]:
    """(path, system, code) of every coding-shaped object, in models, lists and merge-patch dicts alike."""
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) for name in type(value).model_fields}
        yield from _codings(fields, path)
    elif isinstance(value, dict):
        if isinstance(value.get("system"), str) and isinstance(value.get("code"), str):
            yield path, value["system"], value["code"]
        for key, child in value.items():
            yield from _codings(child, (*path, key))
    elif isinstance(value, list | tuple):
        for index, child in enumerate(value):
            yield from _codings(child, (*path, index))
