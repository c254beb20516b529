"""Care programs (CONTRACT §10): a tenant's versioned protocol for a condition, rendered as an R4
PlanDefinition, whose goals and activities each carry a stable key; and the rollout rules that move a plan
made from one version to the next, by key, without touching what clinicians started or added by hand.

Pure: durations, validation, the publication status machine and the rollout diff take values and return
values. Enrolment and the migration of a plan apply their results through the CarePlan aggregate."""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import Any

from domain.care_plan import CarePlanAggregate, ProgramChange, check_version
from domain.entities import Activity, CarePlan, Goal, GoalTarget, TargetDetail, Versioned
from domain.errors import ClosedForChanges, InvalidTransition, InvalidValue
from domain.events import DomainEvent
from domain.statuses import CAREPLAN_CLOSED, CarePlanStatus, GoalAchievement, GoalLifecycleStatus, TaskStatus
from domain.values import CodeableConcept, Period

KEY = re.compile(r"[a-z0-9-]{1,64}")
NAME = re.compile(r"[a-z0-9-]{1,64}")
_DURATION = re.compile(r"P(\d{1,5})([YMWD])")
# Template target details PlanDefinition.goal.target.detail[x] allows (R4: Quantity, Range, CodeableConcept).
TEMPLATE_DETAIL_KINDS = frozenset({"quantity", "range", "coded"})


_UNITS = {"Y": ("a", "year"), "M": ("mo", "month"), "W": ("wk", "week"), "D": ("d", "day")}


@dataclass(frozen=True, slots=True)
class Duration:
    """An ISO 8601 duration in one unit — `P1Y`, `P6M`, `P12W`, `P90D` — counted from a date: years and
    months by the calendar (31 January + P1M is the last day of February), weeks and days as days. One
    unit, so that it is exactly one R4 Duration (UCUM `a`, `mo`, `wk`, `d`)."""

    amount: int
    unit: str  # Y, M, W or D

    @classmethod
    def parse(cls, text: str, path: str) -> Duration:
        match = _DURATION.fullmatch(text)
        if match is None:
            raise InvalidValue(
                path, f"{text!r} is not an ISO 8601 duration in one unit: P<n>Y, P<n>M, P<n>W or P<n>D"
            )
        return cls(int(match.group(1)), match.group(2))

    def after(self, start: date) -> date:
        if self.unit in ("W", "D"):
            return start + timedelta(days=self.amount * (7 if self.unit == "W" else 1))
        months = start.month - 1 + self.amount * (12 if self.unit == "Y" else 1)
        year, month = start.year + months // 12, months % 12 + 1
        if year > 9999:
            raise InvalidValue("data.start", "the program's durations reach past the year 9999")
        return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))

    def iso(self) -> str:
        return f"P{self.amount}{self.unit}"

    def fhir(self) -> dict[str, object]:
        code, unit = _UNITS[self.unit]
        return {
            "value": self.amount,
            "unit": unit if self.amount == 1 else f"{unit}s",
            "system": "http://unitsofmeasure.org",
            "code": code,
        }


class PublicationStatus(StrEnum):
    """http://hl7.org/fhir/publication-status (`unknown` is never set by us)."""

    DRAFT = "draft"
    ACTIVE = "active"
    RETIRED = "retired"


PUBLICATION_TRANSITIONS: Mapping[PublicationStatus, tuple[PublicationStatus, ...]] = {
    PublicationStatus.DRAFT: (PublicationStatus.ACTIVE, PublicationStatus.RETIRED),
    PublicationStatus.ACTIVE: (PublicationStatus.RETIRED,),
    PublicationStatus.RETIRED: (),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetTemplate:
    measure: CodeableConcept | None = None
    detail: TargetDetail | None = None
    due_after: Duration | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GoalTemplate:
    key: str
    description: CodeableConcept
    priority: CodeableConcept | None = None
    targets: tuple[TargetTemplate, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityTemplate:
    key: str
    description: str
    code: CodeableConcept | None = None
    kind: str | None = None
    goal_keys: tuple[str, ...] = ()
    priority: str | None = None
    start_after: Duration | None = None
    duration: Duration | None = None

    def window(self, start: date) -> tuple[date, date | None]:
        """The Task's scheduled window for an enrolment starting on `start`."""
        begins = self.start_after.after(start) if self.start_after else start
        return begins, self.duration.after(begins) if self.duration else None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProgramContent:
    """What a version says, all of which a draft may change (its name excepted)."""

    title: str
    description: str | None = None
    categories: tuple[CodeableConcept, ...] = ()
    addresses: tuple[CodeableConcept, ...] = ()
    review_interval_days: int | None = None
    goals: tuple[GoalTemplate, ...] = ()
    activities: tuple[ActivityTemplate, ...] = ()

    def __post_init__(self) -> None:
        check_content(self)

    def goal(self, key: str) -> GoalTemplate | None:
        return next((g for g in self.goals if g.key == key), None)

    def activity(self, key: str) -> ActivityTemplate | None:
        return next((a for a in self.activities if a.key == key), None)


def check_content(content: ProgramContent) -> None:
    """The rules a version's content keeps: keys of the key pattern, each used once among goals and
    activities (a plan's items are diffed by key alone), activities naming existing goal keys, template
    targets PlanDefinition can hold (quantity, range or coded)."""
    seen: dict[str, str] = {}
    keyed = [("goals", i, g.key) for i, g in enumerate(content.goals)]
    keyed += [("activities", i, a.key) for i, a in enumerate(content.activities)]
    for kind, index, key in keyed:
        path = f"data.{kind}.{index}.key"
        if not KEY.fullmatch(key):
            raise InvalidValue(path, f"{key!r} is not a key ([a-z0-9-], 1 to 64 characters)")
        if key in seen:
            raise InvalidValue(path, f"key {key!r} is used twice (first at {seen[key]})")
        seen[key] = path
    goal_keys = {g.key for g in content.goals}
    for index, goal in enumerate(content.goals):
        for t, target in enumerate(goal.targets):
            if target.detail is not None and target.detail.kind not in TEMPLATE_DETAIL_KINDS:
                raise InvalidValue(
                    f"data.goals.{index}.targets.{t}.detail",
                    f"a program's target is a quantity, a range or a coded value, not {target.detail.kind}",
                )
    for index, activity in enumerate(content.activities):
        for k, goal_key in enumerate(activity.goal_keys):
            if goal_key not in goal_keys:
                raise InvalidValue(
                    f"data.activities.{index}.goal_keys.{k}", f"no goal of this program has key {goal_key!r}"
                )


@dataclass(slots=True, kw_only=True)
class Program(Versioned):
    """One version of a program: its own PlanDefinition resource (`id`, resource `version`), its business
    version `program_version` ("1", "2", …) and the canonical `url` it shares with its name's versions."""

    name: str
    url: str
    program_version: str
    status: PublicationStatus
    content: ProgramContent
    revises: str | None = None  # the program id of the version this one was made from

    @property
    def canonical(self) -> str:
        return f"{self.url}|{self.program_version}"

    def check_updatable(self) -> None:
        if self.status is not PublicationStatus.DRAFT:
            raise ClosedForChanges(
                resource=f"PlanDefinition/{self.id}", status=self.status.value, action="changes"
            )

    def check_status_change(self, to: PublicationStatus) -> None:
        allowed = PUBLICATION_TRANSITIONS[self.status]
        if to not in allowed:
            raise InvalidTransition(
                field="status", from_=self.status.value, to=to.value, allowed=tuple(a.value for a in allowed)
            )


def check_name(name: str) -> None:
    if not NAME.fullmatch(name):
        raise InvalidValue("data.name", f"{name!r} is not a program name ([a-z0-9-], 1 to 64 characters)")


def program_url(tenant_id: str, name: str) -> str:
    """The canonical url of every version of a tenant's program `name`: stable, whatever the deployment."""
    return f"{PROGRAM_URL_BASE}/{tenant_id}/{name}"


PROGRAM_URL_BASE = "https://care-plan-service.dev/fhir/programs"


class ProgramAggregate:
    """One program version, changed as a unit under its row lock; records one event per new version."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.events: list[DomainEvent] = []
        self._changed = False

    @classmethod
    def define(
        cls,
        *,
        program_id: str,
        tenant_id: str,
        name: str,
        program_version: str,
        content: ProgramContent,
        now: datetime,
        revises: str | None = None,
    ) -> ProgramAggregate:
        """A new version of `name`, as a draft."""
        check_name(name)
        program = Program(
            id=program_id,
            version=0,
            created=now,
            last_updated=now,
            name=name,
            url=program_url(tenant_id, name),
            program_version=program_version,
            status=PublicationStatus.DRAFT,
            content=content,
            revises=revises,
        )
        aggregate = cls(program)
        aggregate._new_version(now, "program.defined")
        return aggregate

    def update(self, content: ProgramContent, *, expected_version: int | None, now: datetime) -> None:
        """New content for a draft; the same content again is no new version."""
        check_version(self.program, expected_version, required=True)
        self.program.check_updatable()
        if content == self.program.content:
            return
        self.program.content = content
        self._new_version(now, "program.updated")

    def change_status(
        self, to: PublicationStatus, *, expected_version: int | None, now: datetime, reason: str | None = None
    ) -> None:
        check_version(self.program, expected_version, required=False)
        self.program.check_status_change(to)
        before = self.program.status
        self.program.status = to
        data = {"from": before.value, "to": to.value, "reason": reason}
        if to is PublicationStatus.ACTIVE:
            self._new_version(now, "program.published", data)
        else:
            self._new_version(now, "program.retired", data)

    def changed(self) -> list[tuple[str, Versioned]]:
        return [("PlanDefinition", self.program)] if self._changed else []

    def mark_stored(self) -> None:
        self._changed = False
        self.events.clear()

    def _new_version(self, now: datetime, event: str, data: dict[str, Any] | None = None) -> None:
        if not self._changed:
            self.program.version += 1
            self._changed = True
        self.program.last_updated = now
        data = {k: v for k, v in (data or {}).items() if v is not None}
        self.events.append(DomainEvent(event, "PlanDefinition", self.program.id, self.program.version, data))


# --- rollout -------------------------------------------------------------------------------------------


class Progress(StrEnum):
    """Where an enrolled item stands, for a rollout: only what has not started may be changed by one."""

    NOT_STARTED = "not-started"
    STARTED = "started"  # begun, held, or done: clinicians' work, never changed by a rollout
    CLOSED = "closed"  # cancelled, rejected, failed or entered in error: out of the plan already


_GOAL_NOT_STARTED = frozenset(
    {GoalLifecycleStatus.PROPOSED, GoalLifecycleStatus.PLANNED, GoalLifecycleStatus.ACCEPTED}
)
_GOAL_CLOSED = frozenset(
    {GoalLifecycleStatus.CANCELLED, GoalLifecycleStatus.REJECTED, GoalLifecycleStatus.ENTERED_IN_ERROR}
)
# CONTRACT §10: a Task not started is draft, requested or ready (received and accepted are an owner's act).
_TASK_NOT_STARTED = frozenset({TaskStatus.DRAFT, TaskStatus.REQUESTED, TaskStatus.READY})
_TASK_CLOSED = frozenset(
    {TaskStatus.CANCELLED, TaskStatus.REJECTED, TaskStatus.FAILED, TaskStatus.ENTERED_IN_ERROR}
)


def goal_progress(status: GoalLifecycleStatus, achievement: GoalAchievement | None) -> Progress:
    if status in _GOAL_CLOSED:
        return Progress.CLOSED
    if status in _GOAL_NOT_STARTED or (status is GoalLifecycleStatus.ACTIVE and achievement is None):
        return Progress.NOT_STARTED
    return Progress.STARTED


def task_progress(status: TaskStatus) -> Progress:
    if status in _TASK_CLOSED:
        return Progress.CLOSED
    return Progress.NOT_STARTED if status in _TASK_NOT_STARTED else Progress.STARTED


@dataclass(frozen=True, slots=True)
class Migration:
    """What a rollout does to one plan, by key: `keep` lists the items it would have cancelled or updated
    but leaves alone because they started (the conflicts to report)."""

    add: tuple[str, ...] = ()
    cancel: tuple[str, ...] = ()
    update: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    @property
    def changes_anything(self) -> bool:
        return bool(self.add or self.cancel or self.update)

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "add": list(self.add),
            "cancel": list(self.cancel),
            "update": list(self.update),
            "keep": list(self.keep),
        }


@dataclass(frozen=True, slots=True)
class EnrolledItems:
    """A plan's items made by enrolment, by key, with their progress. `skipped` are the keys its
    enrolment left out (`skip[]`): a rollout does not add them either."""

    progress: Mapping[str, Progress] = field(default_factory=dict)
    skipped: frozenset[str] = frozenset()


def _template(content: ProgramContent, key: str) -> GoalTemplate | ActivityTemplate | None:
    return content.goal(key) or content.activity(key)


def migration(old: ProgramContent, new: ProgramContent, items: EnrolledItems) -> Migration:
    """The rollout rules of CONTRACT §10 for one plan, from `old` (the version the plan follows) to `new`:
    a key only in `new` is added; a key only in `old` is cancelled if its item has not started, else kept;
    a key in both whose template changed is updated if not started, else kept. Items closed already, and
    keys the plan never had (skipped at enrolment), are left out; unkeyed items are never seen here."""
    add: list[str] = []
    cancel: list[str] = []
    update: list[str] = []
    keep: list[str] = []
    for key in _keys(old, new):
        before, after = _template(old, key), _template(new, key)
        progress = items.progress.get(key)
        if before is None and after is not None:
            if progress is None and key not in items.skipped:
                add.append(key)
        elif progress is None or progress is Progress.CLOSED:
            continue
        elif after is None:
            (cancel if progress is Progress.NOT_STARTED else keep).append(key)
        elif before != after:
            (update if progress is Progress.NOT_STARTED else keep).append(key)
    return Migration(tuple(add), tuple(cancel), tuple(update), tuple(keep))


def _keys(old: ProgramContent, new: ProgramContent) -> Iterable[str]:
    """Every key of either version, goals first, each once, in the order the versions list them."""
    ordered: dict[str, None] = {}
    for content in (old, new):
        ordered |= dict.fromkeys(g.key for g in content.goals)
    for content in (old, new):
        ordered |= dict.fromkeys(a.key for a in content.activities)
    return ordered


# --- enrolment ---


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrolment:
    """What a new plan made from `program` holds: its goals and activities, each tied to its key."""

    goals: list[Goal]
    activities: list[Activity]


def enrolment(
    program: Program,
    *,
    start: date,
    plan_active: bool,
    new_id: Callable[[], str],
    skip: frozenset[str] = frozenset(),
    owners: Mapping[str, str] | None = None,
) -> Enrolment:
    """The program's goals (target due dates = start + `due_after`) and activities (scheduled from
    `start_after`, lasting `duration`, owned as `owners` says), minus the keys in `skip`. An active
    plan's goals are active and its tasks requested; a draft's are proposed and draft. Keys not in the
    program, in `skip` or `owners`, are refused: a typo would otherwise enrol silently."""
    content = program.content
    keys = {g.key for g in content.goals} | {a.key for a in content.activities}
    for field_name, named in (("skip", sorted(skip)), ("owners", sorted(owners or {}))):
        for key in named:
            if key not in keys:
                raise InvalidValue(f"data.{field_name}.{key}", f"{program.canonical} has no key {key!r}")
    goals = [_goal(g, start, plan_active, new_id()) for g in content.goals if g.key not in skip]
    goal_ids = {g.program_key: g.id for g in goals}
    activities = [
        _activity(a, start, plan_active, new_id(), goal_ids, (owners or {}).get(a.key))
        for a in content.activities
        if a.key not in skip
    ]
    return Enrolment(goals=goals, activities=activities)


def _goal(template: GoalTemplate, start: date, plan_active: bool, goal_id: str) -> Goal:
    return Goal(
        id=goal_id,
        version=0,
        created=_EPOCH,
        last_updated=_EPOCH,
        plan_id="",
        patient_id="",
        lifecycle_status=GoalLifecycleStatus.ACTIVE if plan_active else GoalLifecycleStatus.PROPOSED,
        status_date=start,
        start_date=start,
        program_key=template.key,
        **_goal_fields(template, start),
    )


def _goal_fields(template: GoalTemplate, start: date) -> dict[str, Any]:
    """What a goal takes from its template: all a rollout rewrites when the template changes."""
    return {
        "description": template.description,
        "priority": template.priority,
        "targets": tuple(
            GoalTarget(
                measure=t.measure,
                detail=t.detail,
                due_date=t.due_after.after(start) if t.due_after else None,
            )
            for t in template.targets
        ),
    }


def _activity(
    template: ActivityTemplate,
    start: date,
    plan_active: bool,
    activity_id: str,
    goal_ids: Mapping[str | None, str],
    owner_id: str | None,
) -> Activity:
    return Activity(
        id=activity_id,
        version=0,
        created=_EPOCH,
        last_updated=_EPOCH,
        plan_id="",
        patient_id="",
        status=TaskStatus.REQUESTED if plan_active else TaskStatus.DRAFT,
        owner_id=owner_id,
        program_key=template.key,
        **_activity_fields(template, start, goal_ids),
    )


def _activity_fields(
    template: ActivityTemplate, start: date, goal_ids: Mapping[str | None, str]
) -> dict[str, Any]:
    """What a task takes from its template (its goals by key: those the plan has)."""
    begins, ends = template.window(start)
    return {
        "description": template.description,
        "code": template.code,
        "kind": template.kind,
        "goal_ids": tuple(goal_ids[k] for k in template.goal_keys if k in goal_ids),
        "priority": template.priority,
        "scheduled": Period(start=begins, end=ends),
    }


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # replaced by the aggregate when the items are added


# --- a rollout's migration of one plan ---


def enrolled_items(plan: CarePlanAggregate) -> EnrolledItems:
    """The plan's keyed items and their progress; what clinicians added by hand has no key."""
    progress = {
        g.program_key: goal_progress(g.lifecycle_status, g.achievement_status)
        for g in plan.goals.values()
        if g.program_key
    }
    progress |= {a.program_key: task_progress(a.status) for a in plan.activities.values() if a.program_key}
    return EnrolledItems(progress)


def enrolment_start(plan: CarePlan) -> date:
    """The date a plan's program durations count from: its period's start (the enrolment's `start`)."""
    start = plan.period.start if plan.period else None
    if start is None:
        return plan.created.date()
    return start.date() if isinstance(start, datetime) else start


def follows(instantiates: Iterable[str], url: str) -> str | None:
    """The canonical `<url>|<version>` of program `url` among a plan's `instantiates`, if any."""
    return next((c for c in instantiates if c.partition("|")[0] == url), None)


def program_version_of(canonical: str) -> int | None:
    """The business version of a canonical of ours (`…|3` → 3); None for anything else."""
    _, _, version = canonical.partition("|")
    return int(version) if version.isdecimal() and len(version) < 10 else None


def rollout_skip_reason(target: Program, status: CarePlanStatus, instantiates: Iterable[str]) -> str | None:
    """Why a rollout to `target` passes a plan over, or None: it is closed, follows no version of the
    program, or follows this version or a later one already."""
    if status in CAREPLAN_CLOSED:
        return f"the plan is {status.value}"
    canonical = follows(instantiates, target.url)
    if canonical is None:
        return f"the plan follows no version of {target.url}"
    version, wanted = program_version_of(canonical), program_version_of(target.canonical)
    if version is None or wanted is None or version >= wanted:
        return f"the plan follows {canonical} already"
    return None


def migrate(
    plan: CarePlanAggregate,
    old: Program,
    new: Program,
    *,
    new_id: Callable[[], str],
    now: datetime,
    data: Mapping[str, Any] | None = None,
) -> Migration:
    """Move `plan` from `old` to `new` by CONTRACT §10's rules, decided on the plan as it is now: new
    keys' items added (dated from the enrolment's start), not-started items of dropped keys cancelled and of
    changed keys rewritten from their new template, started ones kept; the plan then follows `new`. The
    result, with `data`, is also the `careplan.migrated` event's."""
    change = migration(old.content, new.content, enrolled_items(plan))
    start = enrolment_start(plan.plan)
    active = plan.plan.status is not CarePlanStatus.DRAFT
    keyed: dict[str, Goal | Activity] = {g.program_key: g for g in plan.goals.values() if g.program_key}
    keyed |= {a.program_key: a for a in plan.activities.values() if a.program_key}
    goal_ids: dict[str | None, str] = {k: item.id for k, item in keyed.items() if isinstance(item, Goal)}
    goals: list[Goal] = []
    for key in change.add:
        if (goal_template := new.content.goal(key)) is not None:
            goals.append(_goal(goal_template, start, active, new_id()))
            goal_ids[key] = goals[-1].id
    activities = [
        _activity(template, start, active, new_id(), goal_ids, None)
        for key in change.add
        if (template := new.content.activity(key)) is not None
    ]
    revised: list[tuple[str, str, Mapping[str, object]]] = []
    for key in change.update:
        item = keyed[key]
        if isinstance(item, Goal):
            goal_template = new.content.goal(key)
            assert goal_template is not None  # `update` keys are in both versions, of the same kind
            revised.append(("Goal", item.id, _goal_fields(goal_template, start)))
        else:
            template = new.content.activity(key)
            assert template is not None
            revised.append(("Task", item.id, _activity_fields(template, start, goal_ids)))
    instantiates = tuple(c for c in plan.plan.instantiates if c.partition("|")[0] != new.url)
    plan.apply_program(
        ProgramChange(
            instantiates=(*instantiates, new.canonical),
            reason=f"program {new.name} version {new.program_version}",
            goals=goals,
            activities=activities,
            cancelled=[
                ("Goal" if isinstance(keyed[k], Goal) else "Task", keyed[k].id) for k in change.cancel
            ],
            revised=revised,
        ),
        now=now,
        data={
            "from": old.canonical,
            "to": new.canonical,
            "added": list(change.add),
            "cancelled": list(change.cancel),
            "updated": list(change.update),
            "kept": list(change.keep),
            **(data or {}),
        },
    )
    return change
