"""Every transition of every status machine, allowed and refused, against DOMAIN.md's tables."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from itertools import product

import pytest

from domain.errors import InvalidTransition
from domain.statuses import (
    CAREPLAN_TRANSITIONS,
    CARETEAM_TRANSITIONS,
    GOAL_TRANSITIONS,
    TASK_TRANSITIONS,
    CarePlanStatus,
    CareTeamStatus,
    GoalLifecycleStatus,
    TaskStatus,
    check_transition,
)

P, G, T, C = CarePlanStatus, GoalLifecycleStatus, TaskStatus, CareTeamStatus

# The tables as DOMAIN.md writes them, independently of domain.statuses: (from, to) pairs allowed.
EXPECTED: dict[str, set[tuple[StrEnum, StrEnum]]] = {
    "careplan": {
        (P.DRAFT, P.ACTIVE), (P.DRAFT, P.REVOKED), (P.DRAFT, P.ENTERED_IN_ERROR),
        (P.ACTIVE, P.ON_HOLD), (P.ACTIVE, P.REVOKED), (P.ACTIVE, P.COMPLETED), (P.ACTIVE, P.ENTERED_IN_ERROR),
        (P.ON_HOLD, P.ACTIVE), (P.ON_HOLD, P.REVOKED), (P.ON_HOLD, P.COMPLETED), (P.ON_HOLD, P.ENTERED_IN_ERROR),
        (P.REVOKED, P.ENTERED_IN_ERROR), (P.COMPLETED, P.ENTERED_IN_ERROR),
        *((P.UNKNOWN, to) for to in P if to is not P.UNKNOWN),
    },
    "goal": {
        *((G.PROPOSED, to) for to in (G.PLANNED, G.ACCEPTED, G.ACTIVE, G.REJECTED, G.CANCELLED, G.ENTERED_IN_ERROR)),
        *((G.PLANNED, to) for to in (G.ACCEPTED, G.ACTIVE, G.CANCELLED, G.ENTERED_IN_ERROR)),
        *((G.ACCEPTED, to) for to in (G.ACTIVE, G.ON_HOLD, G.CANCELLED, G.ENTERED_IN_ERROR)),
        *((G.ACTIVE, to) for to in (G.ON_HOLD, G.COMPLETED, G.CANCELLED, G.ENTERED_IN_ERROR)),
        *((G.ON_HOLD, to) for to in (G.ACTIVE, G.COMPLETED, G.CANCELLED, G.ENTERED_IN_ERROR)),
        (G.COMPLETED, G.ACTIVE), (G.COMPLETED, G.ENTERED_IN_ERROR),
        (G.CANCELLED, G.ENTERED_IN_ERROR), (G.REJECTED, G.ENTERED_IN_ERROR),
    },
    "task": {
        *((T.DRAFT, to) for to in (T.READY, T.REQUESTED, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((T.REQUESTED, to) for to in (T.ACCEPTED, T.REJECTED, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((T.RECEIVED, to) for to in (T.ACCEPTED, T.REJECTED, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((T.ACCEPTED, to) for to in (T.IN_PROGRESS, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((T.READY, to) for to in (T.IN_PROGRESS, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((T.IN_PROGRESS, to) for to in (T.ON_HOLD, T.COMPLETED, T.FAILED, T.CANCELLED, T.READY, T.ENTERED_IN_ERROR)),
        *((T.ON_HOLD, to) for to in (T.IN_PROGRESS, T.FAILED, T.CANCELLED, T.ENTERED_IN_ERROR)),
        *((s, T.ENTERED_IN_ERROR) for s in (T.COMPLETED, T.FAILED, T.CANCELLED, T.REJECTED)),
    },
    "careteam": {
        (C.PROPOSED, C.ACTIVE), (C.PROPOSED, C.INACTIVE), (C.PROPOSED, C.ENTERED_IN_ERROR),
        (C.ACTIVE, C.SUSPENDED), (C.ACTIVE, C.INACTIVE), (C.ACTIVE, C.ENTERED_IN_ERROR),
        (C.SUSPENDED, C.ACTIVE), (C.SUSPENDED, C.INACTIVE), (C.SUSPENDED, C.ENTERED_IN_ERROR),
        (C.INACTIVE, C.ENTERED_IN_ERROR),
    },
}  # fmt: skip
TABLES: dict[str, tuple[type[StrEnum], Mapping[StrEnum, tuple[StrEnum, ...]]]] = {
    "careplan": (P, CAREPLAN_TRANSITIONS),  # type: ignore[dict-item]
    "goal": (G, GOAL_TRANSITIONS),  # type: ignore[dict-item]
    "task": (T, TASK_TRANSITIONS),  # type: ignore[dict-item]
    "careteam": (C, CARETEAM_TRANSITIONS),  # type: ignore[dict-item]
}
CASES = [
    (machine, from_, to)
    for machine, (codes, _) in TABLES.items()
    for from_, to in product(codes, codes)
    if from_ is not to
]


@pytest.mark.parametrize(("machine", "from_", "to"), CASES, ids=[f"{m}:{f}->{t}" for m, f, t in CASES])
def test_transition_is_allowed_exactly_when_the_table_says(machine: str, from_: StrEnum, to: StrEnum) -> None:
    _, table = TABLES[machine]
    if (from_, to) in EXPECTED[machine]:
        check_transition("status", table, from_, to)
    else:
        with pytest.raises(InvalidTransition) as raised:
            check_transition("status", table, from_, to)
        assert raised.value.from_ == from_.value
        assert raised.value.to == to.value
        assert to.value not in raised.value.allowed


def test_entered_in_error_is_terminal_everywhere() -> None:
    for machine, (codes, table) in TABLES.items():
        assert table[codes("entered-in-error")] == (), machine
