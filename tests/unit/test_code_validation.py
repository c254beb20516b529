"""Every mistyped coding of a command's data is listed, with its path, in document order."""

from __future__ import annotations

import pytest

from handlers.code_validation import reject_invalid_codes
from handlers.errors import ErrorCode, Rejection
from schemas.commands import GoalAdd

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD = "http://hl7.org/fhir/sid/icd-10-cm"


def test_every_bad_coding_is_listed_with_its_path_in_document_order() -> None:
    goal = GoalAdd.model_validate(
        {
            "care_plan_id": "p1",
            "description": {
                "coding": [{"system": SNOMED, "code": "44054006"}, {"system": SNOMED, "code": "1"}]
            },
            "category": [{"coding": [{"system": LOINC, "code": "4548-4"}]}],
            "targets": [
                {"measure": {"coding": [{"system": LOINC, "code": "4548-5"}]}, "due_date": "2027-01-01"},
                {"measure": {"coding": [{"system": LOINC, "code": "4548-4"}]}, "due_date": "2027-01-01"},
            ],
            "addresses": [{"coding": [{"system": ICD, "code": "e11.9"}, {"system": ICD, "code": "E11.9"}]}],
        }
    )
    with pytest.raises(Rejection) as refused:
        reject_invalid_codes(goal)
    assert refused.value.code is ErrorCode.INVALID_CODE
    assert refused.value.details is not None
    errors = refused.value.details["errors"]
    assert [(e["path"], e["code"]) for e in errors] == [
        ("data.description.coding.1", "1"),
        ("data.targets.0.measure.coding.0", "4548-5"),
        ("data.addresses.0.coding.0", "e11.9"),
    ]
