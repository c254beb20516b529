"""Code checks that need no terminology service: the identifier rules of SNOMED CT (length, partition,
Verhoeff check digit), LOINC (mod-10 check digit) and the ICD-10-CM code format. They catch typos and
transposed digits before a code is stored; whether the code exists is the terminology service's answer.
Codes of other systems, and free text, pass."""

from __future__ import annotations

import re

SNOMED_CT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD_10_CM = "http://hl7.org/fhir/sid/icd-10-cm"

# Verhoeff's dihedral-group multiplication and position permutation tables.
_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)
# Concept ids only: partition 00 (short format) or 10 (long format, extension namespaces). Descriptions (01,
# 11) and relationships (02, 12) are SCTIDs too, but never a coding's code.
_CONCEPT_PARTITIONS = frozenset({"00", "10"})
_LOINC = re.compile(r"(?P<number>\d{1,7})-(?P<check>\d)")
_LOINC_PARTS = re.compile(r"L[APGL]\d{1,7}-\d")  # answers, parts, groups, answer lists
_ICD_10_CM = re.compile(r"[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?")


def verhoeff_valid(digits: str) -> bool:
    check = 0
    for position, digit in enumerate(reversed(digits)):
        check = _D[check][_P[position % 8][int(digit)]]
    return check == 0


def loinc_check_digit(number: str) -> int:
    """LOINC's mod-10: double the number formed by the digits in odd places from the right, add the digits
    of that and of the even-placed ones, and take what lifts the sum to a multiple of ten."""
    reversed_digits = number[::-1]
    doubled = str(int(reversed_digits[0::2]) * 2)
    total = sum(int(d) for d in reversed_digits[1::2] + doubled)
    return (10 - total % 10) % 10


def code_problem(system: str | None, code: str | None) -> str | None:
    """Why `code` cannot be a code of `system`, or None when it may be (or the system is not one we check)."""
    if system is None or code is None:
        return None
    if system == SNOMED_CT:
        return _snomed_problem(code)
    if system == LOINC:
        return _loinc_problem(code)
    if system == ICD_10_CM and not _ICD_10_CM.fullmatch(code):
        return (
            "not an ICD-10-CM code (a letter, a digit, a digit or letter, then optionally '.' and 1-4 more)"
        )
    return None


def _snomed_problem(code: str) -> str | None:
    if not code.isascii() or not code.isdigit():
        return "a SNOMED CT concept id has digits only"
    if not 6 <= len(code) <= 18 or code.startswith("0"):
        return "a SNOMED CT concept id has 6 to 18 digits and no leading zero"
    if code[-3:-1] not in _CONCEPT_PARTITIONS:
        return f"partition {code[-3:-1]} is not that of a concept (00 or 10)"
    if not verhoeff_valid(code):
        return "the check digit is wrong (Verhoeff): a digit is mistyped or two are swapped"
    return None


def _loinc_problem(code: str) -> str | None:
    if _LOINC_PARTS.fullmatch(code):
        return None
    match = _LOINC.fullmatch(code)
    if match is None:
        return "not a LOINC code (digits, a hyphen and a check digit, e.g. 4548-4)"
    if loinc_check_digit(match["number"]) != int(match["check"]):
        return "the check digit is wrong (LOINC mod 10): a digit is mistyped or two are swapped"
    return None
