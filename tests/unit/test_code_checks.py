"""Local code checks: real codes pass, typos and swapped digits do not, other systems are not judged."""

from __future__ import annotations

import pytest

from domain.code_checks import ICD_10_CM, LOINC, SNOMED_CT, code_problem, loinc_check_digit, verhoeff_valid

# Real concept ids (type 2 diabetes, hypertension, clinical finding, the root concept, asthma, body weight …)
SNOMED_CONCEPTS = ("44054006", "38341003", "404684003", "138875005", "195967001", "27113001", "22298006")
# Real LOINC codes (glucose, HbA1c, systolic and diastolic BP, body weight, BMI, creatinine, eGFR, Hb)
LOINC_CODES = ("2345-7", "4548-4", "8480-6", "8462-4", "29463-7", "39156-5", "2160-0", "33914-3", "718-7")


@pytest.mark.parametrize("code", SNOMED_CONCEPTS)
def test_real_snomed_concept_ids_pass(code: str) -> None:
    assert code_problem(SNOMED_CT, code) is None


@pytest.mark.parametrize("code", SNOMED_CONCEPTS)
def test_every_single_digit_typo_in_a_snomed_id_is_caught(code: str) -> None:
    for position in range(len(code)):
        for digit in "0123456789":
            typo = code[:position] + digit + code[position + 1 :]
            if typo != code:
                assert code_problem(SNOMED_CT, typo) is not None, typo


@pytest.mark.parametrize("code", SNOMED_CONCEPTS)
def test_every_swap_of_neighbouring_digits_in_a_snomed_id_is_caught(code: str) -> None:
    for position in range(len(code) - 1):
        swapped = code[:position] + code[position + 1] + code[position] + code[position + 2 :]
        if swapped != code:
            assert code_problem(SNOMED_CT, swapped) is not None, swapped


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("12345", "6 to 18 digits"),
        ("0404684003", "leading zero"),
        ("1234567890123456789", "6 to 18 digits"),
        ("44054-006", "digits only"),
        ("٤٤٠٥٤٠٠٦", "digits only"),  # Arabic-Indic digits: isdigit() but not ASCII
        ("10000011", "partition 01"),  # partition 01: a description id, never a coding's code
    ],
)
def test_what_cannot_be_a_snomed_concept_id_says_why(code: str, reason: str) -> None:
    problem = code_problem(SNOMED_CT, code)
    assert problem is not None and reason in problem


def test_verhoeff_matches_the_published_example() -> None:
    assert verhoeff_valid("2363")
    assert not verhoeff_valid("2364")


@pytest.mark.parametrize("code", LOINC_CODES)
def test_real_loinc_codes_pass(code: str) -> None:
    assert code_problem(LOINC, code) is None


@pytest.mark.parametrize("code", LOINC_CODES)
def test_a_wrong_loinc_check_digit_is_caught(code: str) -> None:
    number, check = code.split("-")
    for digit in "0123456789":
        if digit != check:
            assert code_problem(LOINC, f"{number}-{digit}") is not None


def test_loinc_check_digit_follows_loincs_own_worked_example() -> None:
    assert loinc_check_digit("12345") == 5


@pytest.mark.parametrize("code", ["4548", "4548-", "45484", "A548-4", "12345678-9", " 4548-4"])
def test_what_is_not_shaped_like_a_loinc_code_is_refused(code: str) -> None:
    assert code_problem(LOINC, code) is not None


def test_loinc_answer_and_part_codes_pass_on_shape() -> None:
    assert code_problem(LOINC, "LA6576-8") is None
    assert code_problem(LOINC, "LP14082-9") is None


@pytest.mark.parametrize("code", ["E11.9", "I10", "E11", "Z79.4", "C4A.0", "U07.1", "S72.001A", "M1A.0110"])
def test_icd_10_cm_codes_pass_on_format(code: str) -> None:
    assert code_problem(ICD_10_CM, code) is None


@pytest.mark.parametrize("code", ["e11.9", "E1", "E11.", "E11.12345", "11.9", "E119 ", "EE1.9"])
def test_what_is_not_an_icd_10_cm_code_is_refused(code: str) -> None:
    assert code_problem(ICD_10_CM, code) is not None


@pytest.mark.parametrize(
    ("system", "code"),
    [("http://example.org/codes", "anything at all"), (None, None), (SNOMED_CT, None), (None, "44054006")],
)
def test_other_systems_and_missing_codes_are_not_judged(system: str | None, code: str | None) -> None:
    assert code_problem(system, code) is None
