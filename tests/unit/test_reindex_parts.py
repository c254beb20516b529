"""The search index part of a command's write statement: a resource at its first version only inserts;
one at a later version has its old rows deleted first (measured: the delete of a create, planned on stale
statistics, scanned the whole tenant's index and cost more than the rest of the command)."""

from __future__ import annotations

from typing import Any

from storage.search_index import reindex_parts


def plan(version: str) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": f"p{version}",
        "meta": {"versionId": version},
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "goal": [{"reference": "Goal/g1"}],
    }


def test_a_first_version_is_only_inserted() -> None:
    ctes, params = reindex_parts([plan("1")])
    assert not any(cte.startswith(("index_keys", "d_")) for cte in ctes)
    assert "index_ids" not in params
    assert params["reference_ref"] == ["g1"] and "active" in params["token_code"]


def test_a_later_version_has_its_old_rows_deleted_and_a_new_one_beside_it_does_not() -> None:
    ctes, params = reindex_parts([plan("2"), plan("1")])
    assert sum(cte.startswith("d_") for cte in ctes) == 4
    assert params["index_ids"] == ["p2"]
    assert params["token_id"].count("p1") == params["token_id"].count("p2") > 0


def test_the_patient_reference_is_not_indexed_it_is_searched_on_the_row() -> None:
    _, params = reindex_parts([plan("1")])
    assert "p1" not in params["reference_ref"]
    assert set(params["reference_param"]) == {"goal"}
