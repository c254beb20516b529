"""What a patient token may see (CONTRACT §6), stated once as SQL and used by every read path: read,
search, `_include`/`_revinclude`, vread, history and Provenance.

A patient sees resources about themselves only (Task: `for`; the row's `patient_id`), no PlanDefinition,
and nothing of a plan that is not, or never was, real (`draft`, `entered-in-error`): not the plan, nor
its goals, activities and care team, nor the audit of any of them. The fragments take the placeholders of the
caller's statement style (`$2`, `:p3`, `:patient`), so one rule serves the driver, the search compiler
and SQLAlchemy alike.
"""

from __future__ import annotations

HIDDEN_FROM_PATIENTS = ("draft", "entered-in-error")
# The parts of a plan, each row carrying its plan's id (`plan_id`, immutable).
PLAN_PARTS = {"Goal": "goals", "Task": "tasks", "CareTeam": "care_teams"}


def visible_to_patient(resource_type: str, alias: str, patient: str, hidden: str) -> str:
    """The current row `alias` of `resource_type` is the patient's and its plan is not hidden.
    `patient` and `hidden` are placeholders for the patient id and for HIDDEN_FROM_PATIENTS (a text[])."""
    if resource_type == "PlanDefinition":  # a program is no patient's: patients see none (CONTRACT §10)
        return f"(false AND CAST({patient} AS text) IS NULL AND CAST({hidden} AS text[]) IS NULL)"
    about_patient = f"{alias}.patient_id = {patient}"
    if resource_type == "CarePlan":
        return f"({about_patient} AND {alias}.status <> ALL({hidden}))"
    plan_shown = (
        f"EXISTS (SELECT 1 FROM care_plans vp WHERE vp.tenant_id = {alias}.tenant_id "
        f"AND vp.id = {alias}.plan_id AND vp.status <> ALL({hidden}))"
    )
    return f"({about_patient} AND {plan_shown})"


def provenance_visible_to_patient(alias: str, patient: str, hidden: str) -> str:
    """The Provenance row `alias` is about the patient and none of its targets is a hidden plan or a part
    of one (the audit of a draft plan's goal would reveal the plan)."""
    parts = " OR ".join(
        f"EXISTS (SELECT 1 FROM {table} vq WHERE vq.tenant_id = vp.tenant_id AND vq.plan_id = vp.id "
        f"AND ('{resource_type}/' || vq.id) = ANY({alias}.targets))"
        for resource_type, table in PLAN_PARTS.items()
    )
    hidden_target = (
        f"SELECT 1 FROM care_plans vp WHERE vp.tenant_id = {alias}.tenant_id "
        f"AND vp.patient_id = {alias}.patient_id AND vp.status = ANY({hidden}) "
        f"AND (('CarePlan/' || vp.id) = ANY({alias}.targets) OR {parts})"
    )
    return f"({alias}.patient_id = {patient} AND NOT EXISTS ({hidden_target}))"
