"""Paging cursors: signed, bound to their caller, and short-lived."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_read.cursor import CursorError, decode_value, encode_value, seal, unseal

SECRET = b"s" * 32
CALLER = {"t": "tenant-a", "s": "dr-1"}


def test_a_cursor_opens_for_its_caller_with_its_position() -> None:
    moment = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
    token = seal(CALLER | {"k": [encode_value(moment), "active", None], "i": "cp-9"}, SECRET)
    payload = unseal(token, SECRET, bound_to=CALLER)
    assert [decode_value(v) for v in payload["k"]] == [moment, "active", None]
    assert payload["i"] == "cp-9"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: "x" + t,  # body changed
        lambda t: t.split(".")[0],  # signature removed
        lambda t: "",
    ],
)
def test_a_tampered_cursor_is_refused(mangle: object) -> None:
    token = seal(CALLER | {"k": [], "i": "x"}, SECRET)
    with pytest.raises(CursorError):
        unseal(mangle(token), SECRET, bound_to=CALLER)  # type: ignore[operator]


def test_another_callers_or_another_secrets_cursor_is_refused() -> None:
    token = seal(CALLER | {"k": [], "i": "x"}, SECRET)
    with pytest.raises(CursorError, match="another caller"):
        unseal(token, SECRET, bound_to={"t": "tenant-b", "s": "dr-1"})
    with pytest.raises(CursorError):
        unseal(token, b"t" * 32, bound_to=CALLER)


def test_an_expired_cursor_is_refused() -> None:
    token = seal(CALLER | {"k": [], "i": "x"}, SECRET)
    with pytest.raises(CursorError, match="expired"):
        unseal(token, SECRET, bound_to=CALLER, max_age_s=-1)
