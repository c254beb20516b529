"""SMART scopes as read grants (CONTRACT §13, domain.scopes): each accepted form, what is ignored (never
widened), how scopes of one type combine, and one stored version judged against a granular filter."""

from __future__ import annotations

from typing import Any

import pytest

from domain.access import Principal
from domain.scopes import EVERYTHING, matches, parse_scope, read_scopes

CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/careplan-category|assess-plan"


def test_no_scope_claim_means_no_scope_rules() -> None:
    assert read_scopes(None) is None


@pytest.mark.parametrize(
    ("scope", "letters"),
    [
        ("user/CarePlan.read", {"r", "s"}),  # v1
        ("patient/CarePlan.*", {"r", "s"}),  # v1, writes besides
        ("system/CarePlan.write", set()),  # v1, no reads
        ("user/CarePlan.rs", {"r", "s"}),  # v2
        ("user/CarePlan.r", {"r"}),
        ("user/CarePlan.s", {"s"}),
        ("user/CarePlan.cruds", {"r", "s"}),
        ("user/CarePlan.cud", set()),
    ],
)
def test_v1_and_v2_forms_give_read_and_search(scope: str, letters: set[str]) -> None:
    parsed = parse_scope(scope)
    assert parsed is not None and parsed.letters == letters and parsed.narrowed_by == ()


@pytest.mark.parametrize(
    "scope",
    [
        "user/CarePlan.sr",  # v2 letters out of order
        "user/CarePlan.rr",
        "user/CarePlan.",
        "user/CarePlan.x",
        "admin/CarePlan.rs",  # no such context
        "user/Observation.rs",  # a type we do not serve
        "user/careplan.rs",
        "CarePlan.rs",
        "user/CarePlan.read?status=active",  # granular is v2's
        "user/*.rs?status=active",  # a query names one type's parameters
        "user/CarePlan.rs?colour=blue",  # not a parameter of CarePlan
        "user/CarePlan.rs?status",  # no value
        "user/CarePlan.rs?_count=5",  # not a narrowing
        "user/CarePlan.rs?_include=CarePlan:goal",
        "user/CarePlan.rs?_sort=date",
        "user/CarePlan.rs?subject.name=x",  # chains are not searched at all
        "user/CarePlan.rs?date=notadate",
        "user/Provenance.rs?target=CarePlan/1",
        "",
    ],
)
def test_malformed_or_unknown_scopes_are_ignored(scope: str) -> None:
    assert parse_scope(scope) is None
    assert read_scopes([scope, "user/Goal.rs"]) == read_scopes(["user/Goal.rs"])


def test_a_granular_scope_narrows_by_its_query_and_several_of_one_type_are_ored() -> None:
    scopes = read_scopes(
        [f"patient/CarePlan.rs?category={CATEGORY}", "patient/CarePlan.rs?status=active&intent=plan"]
    )
    assert scopes is not None
    searching = scopes.searching("CarePlan")
    assert searching is not None
    assert [[(c.code, c.values) for c in f] for f in searching] == [
        [("category", (CATEGORY,))],
        [("status", ("active",)), ("intent", ("plan",))],
    ]
    assert scopes.reading("CarePlan") == searching
    assert scopes.patient_context is True


def test_an_unnarrowed_scope_of_the_type_or_of_every_type_covers_everything() -> None:
    scopes = read_scopes([f"user/CarePlan.rs?category={CATEGORY}", "user/*.r"])
    assert scopes is not None
    assert scopes.reading("CarePlan") is None  # `*.r` covers every CarePlan
    assert scopes.searching("CarePlan") is not None  # searching stays narrowed: `*.r` has no `s`
    assert scopes.grant("Goal").read == EVERYTHING
    assert scopes.may_search("Goal") is False


def test_read_without_search_and_types_without_any_scope() -> None:
    scopes = read_scopes(["user/CarePlan.r", "user/Goal.s"])
    assert scopes is not None
    assert (scopes.may_read("CarePlan"), scopes.may_search("CarePlan")) == (True, False)
    assert (scopes.may_read("Goal"), scopes.may_search("Goal")) == (False, True)
    assert (scopes.may_read("Task"), scopes.may_search("Task")) == (False, False)
    assert scopes.patient_context is False


def test_the_fingerprint_tells_scopes_apart_and_ignores_their_order() -> None:
    a = read_scopes(["user/CarePlan.rs", "user/Goal.r"])
    b = read_scopes(["user/Goal.r", "user/CarePlan.rs"])
    c = read_scopes(["user/CarePlan.rs?status=active", "user/Goal.r"])
    assert a is not None and b is not None and c is not None
    assert a.fingerprint == b.fingerprint != c.fingerprint


PLAN: dict[str, Any] = {
    "resourceType": "CarePlan",
    "id": "p1",
    "meta": {"versionId": "2", "lastUpdated": "2026-03-02T09:00:00.000Z"},
    "status": "active",
    "intent": "plan",
    "title": "Diabetes care",
    "subject": {"reference": "Patient/pt-1"},
    "category": [
        {
            "coding": [
                {"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan"}
            ]
        }
    ],
    "period": {"start": "2026-03-02"},
}


def _filters(*scopes: str) -> Any:
    parsed = read_scopes(list(scopes))
    assert parsed is not None
    return parsed.reading("CarePlan")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"category={CATEGORY}", True),
        ("category=assess-plan", True),
        ("category=http://hl7.org/fhir/us/core/CodeSystem/careplan-category|", True),
        ("category=|assess-plan", False),  # it has a system
        ("category=other", False),
        ("category:not=other", True),
        ("category:not=assess-plan", False),
        ("status=active", True),
        ("status=draft,active", True),
        ("status=draft", False),
        ("status=active&intent=proposal", False),  # AND within one scope
        ("subject=Patient/pt-1", True),
        ("subject=pt-1", True),
        ("subject=Patient/pt-2", False),
        ("patient=pt-1", True),
        ("instantiates-canonical=https://example.org/p|1", False),
        ("date=ge2026-03-01", True),
        ("date=lt2026-03-01", False),
        ("date=2026-03", False),  # the period is open-ended (to infinity, as indexed): not within March
        ("date=sa2026-03-01", True),
        ("_id=p1", True),
        ("_id=p2", False),
        ("_lastUpdated=ge2026-03-02", True),
        ("_lastUpdated=lt2026-03-02", False),
        ("goal:missing=true", True),
        ("goal:missing=false", False),
    ],
)
def test_one_version_is_judged_as_the_search_would_judge_it(query: str, expected: bool) -> None:
    filters = _filters(f"user/CarePlan.rs?{query}")
    assert filters is not None, query
    assert matches(PLAN, filters) is expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("title=type", True),
        ("title=diab", False),
        ("title:exact=Type 2 diabetes", True),
        ("title:exact=type 2 diabetes", False),
        ("title:contains=diab", True),
        ("url:below=https://care-plan-service.dev/fhir/programs/", True),
        ("url=https://care-plan-service.dev/fhir/programs/", False),
        ("version=1", True),
    ],
)
def test_strings_and_uris_are_judged_as_the_search_would(query: str, expected: bool) -> None:
    program = {
        "resourceType": "PlanDefinition",
        "id": "v1",
        "meta": {"versionId": "1", "lastUpdated": "2026-03-02T09:00:00.000Z"},
        "url": "https://care-plan-service.dev/fhir/programs/t1/t2d",
        "version": "1",
        "name": "t2d",
        "title": "Type 2 diabetes",
        "status": "active",
    }
    scopes = read_scopes([f"user/PlanDefinition.rs?{query}"])
    assert scopes is not None
    assert matches(program, scopes.reading("PlanDefinition")) is expected


def test_any_scope_of_the_type_lets_a_version_through_and_no_restriction_lets_all() -> None:
    assert matches(PLAN, _filters("user/CarePlan.rs?status=draft", "user/CarePlan.rs?intent=plan")) is True
    assert matches(PLAN, _filters("user/CarePlan.rs?status=draft", "user/CarePlan.rs?intent=order")) is False
    assert matches(PLAN, None) is True


def test_a_principal_with_scopes_is_a_value_as_before() -> None:
    """Principals are frozen values (hashed and compared as such): their read scopes are too."""
    a = Principal(tenant_id="t1", subject="s", read_scopes=read_scopes(["user/CarePlan.rs", "user/Goal.r"]))
    b = Principal(tenant_id="t1", subject="s", read_scopes=read_scopes(["user/Goal.r", "user/CarePlan.rs"]))
    assert a == b and hash(a) == hash(b)
    assert {a, b} == {a}
