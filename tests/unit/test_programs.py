"""Care programs' pure rules (CONTRACT §10): durations, a version's content rules, the publication status
machine, and the rollout diff for every combination of key presence by item state."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from domain.entities import Quantity, TargetDetail
from domain.errors import ClosedForChanges, InvalidTransition, InvalidValue, VersionConflict
from domain.programs import (
    ActivityTemplate,
    Duration,
    EnrolledItems,
    GoalTemplate,
    Migration,
    Program,
    ProgramAggregate,
    ProgramContent,
    Progress,
    PublicationStatus,
    TargetTemplate,
    goal_progress,
    migration,
    task_progress,
)
from domain.statuses import GoalAchievement, GoalLifecycleStatus, TaskStatus
from domain.values import CodeableConcept, Coding

A1C = CodeableConcept((Coding("http://loinc.org", "4548-4", "HbA1c"),))
DIABETES = CodeableConcept(text="HbA1c below 7%")
NOW = datetime(2026, 12, 1, tzinfo=UTC)


# --- durations ---


@pytest.mark.parametrize(
    ("text", "start", "expected"),
    [
        ("P90D", date(2027, 1, 1), date(2027, 4, 1)),
        ("P12W", date(2027, 1, 1), date(2027, 3, 26)),
        ("P6M", date(2027, 1, 31), date(2027, 7, 31)),
        ("P1M", date(2027, 1, 31), date(2027, 2, 28)),  # the calendar's end, not 3 March
        ("P1M", date(2028, 1, 31), date(2028, 2, 29)),
        ("P1Y", date(2028, 2, 29), date(2029, 2, 28)),
        ("P0D", date(2027, 1, 1), date(2027, 1, 1)),
    ],
)
def test_a_duration_counts_from_a_date_by_the_calendar(text: str, start: date, expected: date) -> None:
    assert Duration.parse(text, "p").after(start) == expected


@pytest.mark.parametrize("text", ["90D", "P", "P1Y6M", "PT1H", "P-1D", "P1.5M", "p3m", "P123456D", " P1D"])
def test_a_duration_not_in_one_unit_is_refused_with_its_path(text: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        Duration.parse(text, "data.goals.0.targets.0.due_after")
    assert refused.value.path == "data.goals.0.targets.0.due_after"


def test_a_duration_is_one_r4_duration_in_ucum() -> None:
    assert Duration.parse("P12W", "p").fhir() == {
        "value": 12,
        "unit": "weeks",
        "system": "http://unitsofmeasure.org",
        "code": "wk",
    }
    assert Duration.parse("P1M", "p").fhir()["unit"] == "month"
    assert Duration.parse("P2Y", "p").fhir()["code"] == "a"


def test_a_duration_past_the_calendar_is_a_value_error() -> None:
    with pytest.raises(InvalidValue):
        Duration.parse("P99999Y", "p").after(date(2027, 1, 1))


def test_an_activity_window_starts_after_the_start_and_lasts_its_duration() -> None:
    activity = ActivityTemplate(
        key="eye-exam",
        description="Retinal screening",
        start_after=Duration.parse("P3M", "p"),
        duration=Duration.parse("P4W", "p"),
    )
    assert activity.window(date(2027, 1, 15)) == (date(2027, 4, 15), date(2027, 5, 13))
    assert ActivityTemplate(key="x", description="now").window(date(2027, 1, 15)) == (date(2027, 1, 15), None)


# --- a version's content ---


def goal(key: str, **fields: object) -> GoalTemplate:
    return GoalTemplate(key=key, description=fields.pop("description", DIABETES), **fields)  # type: ignore[arg-type]


def activity(key: str, **fields: object) -> ActivityTemplate:
    return ActivityTemplate(key=key, description=str(fields.pop("description", key)), **fields)  # type: ignore[arg-type]


def test_a_key_used_twice_among_goals_and_activities_is_refused_at_its_second_place() -> None:
    with pytest.raises(InvalidValue) as refused:
        ProgramContent(title="T2D", goals=(goal("a1c"),), activities=(activity("foot"), activity("a1c")))
    assert refused.value.path == "data.activities.1.key"
    assert "data.goals.0.key" in refused.value.message


@pytest.mark.parametrize("key", ["A1c", "", "a" * 65, "a_c", "a c"])
def test_a_key_outside_the_pattern_is_refused(key: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        ProgramContent(title="T2D", goals=(goal("ok"), goal(key)))
    assert refused.value.path == "data.goals.1.key"


def test_an_activity_naming_an_unknown_goal_key_is_refused_with_its_path() -> None:
    with pytest.raises(InvalidValue) as refused:
        ProgramContent(
            title="T2D", goals=(goal("a1c"),), activities=(activity("lab", goal_keys=("a1c", "weight")),)
        )
    assert refused.value.path == "data.activities.0.goal_keys.1"


def test_a_template_target_is_a_quantity_a_range_or_a_coded_value() -> None:
    quantity = TargetDetail(kind="quantity", quantity=Quantity(value=7, unit="%"))
    ProgramContent(title="T2D", goals=(goal("a1c", targets=(TargetTemplate(measure=A1C, detail=quantity),)),))
    with pytest.raises(InvalidValue) as refused:
        ProgramContent(
            title="T2D",
            goals=(goal("a1c", targets=(TargetTemplate(detail=TargetDetail(kind="string", string="low")),)),),
        )
    assert refused.value.path == "data.goals.0.targets.0.detail"


def program(status: PublicationStatus) -> Program:
    return Program(
        id="pd1",
        version=1,
        created=NOW,
        last_updated=NOW,
        name="t2d",
        url="https://careplans.example/programs/t1/t2d",
        program_version="1",
        status=status,
        content=ProgramContent(title="T2D"),
    )


@pytest.mark.parametrize(
    ("start", "to", "allowed"),
    [
        (PublicationStatus.DRAFT, PublicationStatus.ACTIVE, True),
        (PublicationStatus.DRAFT, PublicationStatus.RETIRED, True),
        (PublicationStatus.ACTIVE, PublicationStatus.RETIRED, True),
        (PublicationStatus.ACTIVE, PublicationStatus.DRAFT, False),
        (PublicationStatus.RETIRED, PublicationStatus.ACTIVE, False),
        (PublicationStatus.RETIRED, PublicationStatus.DRAFT, False),
        (PublicationStatus.ACTIVE, PublicationStatus.ACTIVE, False),
    ],
)
def test_the_publication_status_machine(
    start: PublicationStatus, to: PublicationStatus, allowed: bool
) -> None:
    if allowed:
        program(start).check_status_change(to)
        return
    with pytest.raises(InvalidTransition) as refused:
        program(start).check_status_change(to)
    assert (refused.value.from_, refused.value.to) == (start.value, to.value)


@pytest.mark.parametrize("status", [PublicationStatus.ACTIVE, PublicationStatus.RETIRED])
def test_only_a_draft_takes_changes(status: PublicationStatus) -> None:
    program(PublicationStatus.DRAFT).check_updatable()
    with pytest.raises(ClosedForChanges):
        program(status).check_updatable()


def test_the_canonical_is_url_bar_version() -> None:
    assert program(PublicationStatus.ACTIVE).canonical == "https://careplans.example/programs/t1/t2d|1"


# --- where an enrolled item stands ---


@pytest.mark.parametrize(
    ("status", "achievement", "expected"),
    [
        (GoalLifecycleStatus.PROPOSED, None, Progress.NOT_STARTED),
        (GoalLifecycleStatus.PLANNED, None, Progress.NOT_STARTED),
        (GoalLifecycleStatus.ACCEPTED, None, Progress.NOT_STARTED),
        (GoalLifecycleStatus.ACTIVE, None, Progress.NOT_STARTED),
        (GoalLifecycleStatus.ACTIVE, GoalAchievement.IN_PROGRESS, Progress.STARTED),
        (GoalLifecycleStatus.ON_HOLD, None, Progress.STARTED),
        (GoalLifecycleStatus.COMPLETED, GoalAchievement.ACHIEVED, Progress.STARTED),
        (GoalLifecycleStatus.CANCELLED, None, Progress.CLOSED),
        (GoalLifecycleStatus.REJECTED, None, Progress.CLOSED),
        (GoalLifecycleStatus.ENTERED_IN_ERROR, None, Progress.CLOSED),
    ],
)
def test_a_goal_has_started_once_pursued_with_an_achievement_or_beyond_active(
    status: GoalLifecycleStatus, achievement: GoalAchievement | None, expected: Progress
) -> None:
    assert goal_progress(status, achievement) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *((s, Progress.NOT_STARTED) for s in (TaskStatus.DRAFT, TaskStatus.REQUESTED, TaskStatus.READY)),
        *(
            (s, Progress.STARTED)
            for s in (
                TaskStatus.RECEIVED,
                TaskStatus.ACCEPTED,
                TaskStatus.IN_PROGRESS,
                TaskStatus.ON_HOLD,
                TaskStatus.COMPLETED,
            )
        ),
        *(
            (s, Progress.CLOSED)
            for s in (
                TaskStatus.CANCELLED,
                TaskStatus.REJECTED,
                TaskStatus.FAILED,
                TaskStatus.ENTERED_IN_ERROR,
            )
        ),
    ],
)
def test_a_task_has_started_unless_draft_requested_or_ready(status: TaskStatus, expected: Progress) -> None:
    assert task_progress(status) is expected


# --- the rollout diff: every key presence by every item state ---

OLD_GOAL = goal("g", description=DIABETES)
CHANGED_GOAL = goal("g", description=CodeableConcept(text="HbA1c below 6.5%"))
OLD_ACTIVITY = activity("a", description="Foot exam", start_after=Duration.parse("P3M", "p"))
CHANGED_ACTIVITY = activity("a", description="Foot exam", start_after=Duration.parse("P6M", "p"))

PRESENCES = {
    # name: (old version's item, new version's item)
    "only old": (True, False),
    "only new": (False, True),
    "both, unchanged": (True, True),
    "both, changed": (True, "changed"),
}
STATES = ["not in the plan", "skipped", "not started", "started", "completed", "closed", "added by hand"]


def expected_outcome(presence: str, state: str) -> str | None:
    """The rules of CONTRACT §10 in a table (None: the key appears in no list)."""
    if state == "added by hand":  # no key: the diff never sees it
        return "add" if presence == "only new" else None
    if presence == "only new":
        return "add" if state == "not in the plan" else None
    if state in ("not in the plan", "skipped", "closed") or presence == "both, unchanged":
        return None
    if state == "not started":
        return "cancel" if presence == "only old" else "update"
    return "keep"  # started or completed: clinicians' work, reported as a conflict


def contents(presence: str, kind: str) -> tuple[ProgramContent, ProgramContent]:
    in_old, in_new = PRESENCES[presence]
    old_item, changed_item = (OLD_GOAL, CHANGED_GOAL) if kind == "goal" else (OLD_ACTIVITY, CHANGED_ACTIVITY)
    new_item = changed_item if in_new == "changed" else old_item

    def version(item: GoalTemplate | ActivityTemplate | None) -> ProgramContent:
        if isinstance(item, GoalTemplate):
            return ProgramContent(title="T2D", goals=(item,))
        return ProgramContent(title="T2D", activities=(item,) if item else ())

    return version(old_item if in_old else None), version(new_item if in_new else None)


def items(state: str, key: str) -> EnrolledItems:
    progress = {
        "not started": Progress.NOT_STARTED,
        "started": Progress.STARTED,
        "completed": Progress.STARTED,
        "closed": Progress.CLOSED,
    }
    if state in progress:
        return EnrolledItems(progress={key: progress[state]})
    if state == "skipped":
        return EnrolledItems(skipped=frozenset({key}))
    return EnrolledItems()  # not in the plan, or only an unkeyed item made by hand


@pytest.mark.parametrize("kind", ["goal", "activity"])
@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("presence", list(PRESENCES))
def test_the_rollout_rule_for_each_key_presence_and_item_state(presence: str, state: str, kind: str) -> None:
    key = "g" if kind == "goal" else "a"
    old, new = contents(presence, kind)
    result = migration(old, new, items(state, key))
    outcome = expected_outcome(presence, state)
    lists = {"add": result.add, "cancel": result.cancel, "update": result.update, "keep": result.keep}
    assert {name: list(keys) for name, keys in lists.items() if keys} == ({outcome: [key]} if outcome else {})


def test_a_whole_plan_is_diffed_key_by_key_in_the_versions_order() -> None:
    v1 = ProgramContent(
        title="T2D",
        goals=(goal("a1c"), goal("weight")),
        activities=(activity("lab", goal_keys=("a1c",)), activity("foot"), activity("diet")),
    )
    v2 = ProgramContent(
        title="T2D v2",
        goals=(goal("a1c", description=CodeableConcept(text="HbA1c below 6.5%")), goal("bp")),
        activities=(
            activity("lab", goal_keys=("a1c",)),
            activity("eye"),
            activity("diet", description="Diet"),
        ),
    )
    enrolled = EnrolledItems(
        progress={
            "a1c": Progress.STARTED,  # changed, but pursued: kept
            "weight": Progress.NOT_STARTED,  # gone: cancelled
            "lab": Progress.NOT_STARTED,  # unchanged: nothing
            "foot": Progress.STARTED,  # gone, but started: kept
            "diet": Progress.NOT_STARTED,  # changed: updated
        }
    )
    assert migration(v1, v2, enrolled) == Migration(
        add=("bp", "eye"), cancel=("weight",), update=("diet",), keep=("a1c", "foot")
    )
    assert migration(v2, v2, EnrolledItems(progress=dict.fromkeys(["a1c", "bp"], Progress.NOT_STARTED))) == (
        Migration()
    )


# --- the program aggregate ---


def defined() -> ProgramAggregate:
    return ProgramAggregate.define(
        program_id="pd1",
        tenant_id="t1",
        name="type-2-diabetes",
        program_version="2",
        content=ProgramContent(title="T2D", goals=(goal("a1c"),)),
        now=NOW,
        revises="pd0",
    )


def test_define_makes_a_draft_at_the_names_next_version_with_its_event() -> None:
    aggregate = defined()
    program = aggregate.program
    assert (program.status, program.version, program.program_version) == (PublicationStatus.DRAFT, 1, "2")
    assert program.canonical == "https://care-plan-service.dev/fhir/programs/t1/type-2-diabetes|2"
    assert [(e.name, e.resource_type, e.version) for e in aggregate.events] == [
        ("program.defined", "PlanDefinition", 1)
    ]
    assert aggregate.changed() == [("PlanDefinition", program)]


def test_a_draft_takes_new_content_and_the_same_content_is_no_version() -> None:
    aggregate = defined()
    aggregate.mark_stored()
    aggregate.update(aggregate.program.content, expected_version=1, now=NOW)
    assert aggregate.changed() == [] and aggregate.events == []
    aggregate.update(ProgramContent(title="T2D, revised"), expected_version=1, now=NOW)
    assert aggregate.program.version == 2
    assert [e.name for e in aggregate.events] == ["program.updated"]


def test_a_published_version_takes_no_content_and_says_so() -> None:
    aggregate = defined()
    aggregate.change_status(PublicationStatus.ACTIVE, expected_version=None, now=NOW)
    assert [(e.name, e.data) for e in aggregate.events][-1] == (
        "program.published",
        {"from": "draft", "to": "active"},
    )
    with pytest.raises(ClosedForChanges):
        aggregate.update(ProgramContent(title="changed"), expected_version=1, now=NOW)
    aggregate.change_status(PublicationStatus.RETIRED, expected_version=1, now=NOW, reason="superseded")
    assert aggregate.events[-1].name == "program.retired"
    assert aggregate.events[-1].data["reason"] == "superseded"
    assert aggregate.program.version == 1  # one new version per command, however many changes


def test_an_update_needs_the_version_it_expects() -> None:
    aggregate = defined()
    with pytest.raises(InvalidValue):
        aggregate.update(ProgramContent(title="x"), expected_version=None, now=NOW)
    with pytest.raises(VersionConflict):
        aggregate.update(ProgramContent(title="x"), expected_version=7, now=NOW)


@pytest.mark.parametrize("name", ["Type2", "type_2", "", "x" * 65])
def test_a_name_outside_the_pattern_is_refused(name: str) -> None:
    with pytest.raises(InvalidValue) as refused:
        ProgramAggregate.define(
            program_id="p",
            tenant_id="t1",
            name=name,
            program_version="1",
            content=ProgramContent(title="T"),
            now=NOW,
        )
    assert refused.value.path == "data.name"
