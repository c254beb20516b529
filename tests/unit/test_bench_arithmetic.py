"""The benchmark's arithmetic: percentiles by nearest rank, SQLAlchemy parameters as asyncpg's, the
command targets' verdicts, baseline (c)'s rows and the profile summary's folding."""

from __future__ import annotations

import math

import pytest

from bench.bare_reads import numbered
from bench.commands import TARGETS, verdicts
from bench.load import Run
from bench.minimal_transaction import minimal_rows
from bench.profile_summary import function_of, package_of, render, summarise
from bench.sql_baseline import ResourceRow, WriteSet


def test_percentiles_are_nearest_rank_over_all_latencies() -> None:
    run = Run("r", concurrency=1, latencies_s=[n / 1000 for n in range(100, 0, -1)], wall_s=2.0)
    assert run.percentile_ms(50) == 50
    assert run.percentile_ms(99) == 99
    assert run.percentile_ms(100) == 100
    assert run.throughput == 50
    assert run.summary()["p95_ms"] == 95


def test_named_parameters_become_numbered_ones_in_order_of_use_and_unused_ones_are_dropped() -> None:
    sql, values = numbered(
        "SELECT :p1 WHERE a = :p0 AND b = :p1 AND c::text = 'x'", {"p0": "a", "p1": "b", "p2": "unused"}
    )
    assert sql == "SELECT $1 WHERE a = $2 AND b = $1 AND c::text = 'x'"
    assert values == ["b", "a"]


def test_each_target_is_judged_in_its_direction_and_values_without_one_are_left_out() -> None:
    judged = verdicts(
        {
            "service / (a) throughput": 0.8,
            "create / (c) throughput": 0.29,
            "create p50 ms, 1 in flight": 2.5,
            "peak RSS MB, one process": 110.1,
            "service / (b) throughput": 0.04,
        }
    )
    assert set(judged) == set(TARGETS)
    assert judged["service / (a) throughput"]["met"] is True  # at least, inclusive
    assert judged["create / (c) throughput"]["met"] is False
    assert judged["create p50 ms, 1 in flight"]["met"] is True  # at most, inclusive
    assert judged["peak RSS MB, one process"] == {
        "value": 110.1,
        "target": 110,
        "at_least": False,
        "met": False,
    }
    assert verdicts({"create / (c) throughput": math.nan})["create / (c) throughput"]["met"] is False


def _create_sample(plan_id: str = "p-old") -> WriteSet:
    plan = ResourceRow(
        "CarePlan",
        {"patient_id": "patient-1", "status": "active"},
        "{}",
        f'{{"resourceType": "CarePlan", "id": "{plan_id}"}}',
        {},
    )
    outbox = [("careplan.evt.t.created", f'{{"subject": "{plan_id}"}}'.encode()), ("careplan.audit.t", b"{}")]
    return WriteSet("careplan.create", [plan], "{}", outbox, f'{{"result": {{"id": "{plan_id}"}}}}')


def test_the_minimal_rows_are_a_sampled_create_under_a_new_plan_id() -> None:
    rows = minimal_rows(_create_sample())
    assert (rows.plan_id, rows.patient_id, rows.status) == ("p-old", "patient-1", "active")
    plan, outcome, outbox = rows.for_plan("p-new")
    assert plan == '{"resourceType": "CarePlan", "id": "p-new"}'
    assert outcome == '{"result":{"id":"p-new"},"resource":{"resourceType":"CarePlan","id":"p-new"}}'
    assert outbox == [("careplan.evt.t.created", b'{"subject": "p-new"}'), ("careplan.audit.t", b"{}")]
    with pytest.raises(ValueError, match=r"not one careplan\.create"):
        minimal_rows(WriteSet("goal.add", [], "{}", [], "{}"))


def test_profile_frames_fold_into_functions_with_inclusive_time_once_per_stack_and_self_at_the_leaf() -> None:
    lines = [
        "main (service/cli.py:10);run (a/b.py:3);run (a/b.py:7);leaf (faststream/x.py:1) 3",
        "main (service/cli.py:10);other (/usr/lib/python3.11/json/decoder.py:2) 2",
        "main (service/cli.py:10);_find_and_load (<frozen importlib._bootstrap>:1) 5",
        "",
        "garbage",
    ]
    summary = summarise(lines, exclude=["_find_and_load"], callers_of=r"^leaf ")
    assert (summary.samples, summary.excluded) == (5, 5)
    assert summary.inclusive["run (a/b.py)"] == 3  # recursion counted once
    assert summary.inclusive["main (service/cli.py)"] == 5
    assert summary.self == {"leaf (faststream/x.py)": 3, "other (/usr/lib/python3.11/json/decoder.py)": 2}
    assert summary.packages == {"faststream": 3, "json": 2}
    assert summary.callers == {"run (a/b.py)": 3}
    assert function_of("no file here") == "no file here"
    assert package_of("f (<frozen runpy>:1)") == "<frozen>"
    text = render(summary, top=5, rate=200, header=["h"])
    assert text.startswith("# h\n# 5 samples (0.0 CPU s at 200 Hz), 5 more excluded")
    assert "main (service/cli.py)" not in text.split("top 5 by self time")[0]  # plumbing hidden
    assert "   60.0    60.0     0.01    0.01  leaf (faststream/x.py)" in text
