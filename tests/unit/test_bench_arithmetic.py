"""The benchmark's arithmetic: percentiles by nearest rank, and SQLAlchemy parameters as asyncpg's."""

from __future__ import annotations

from bench.bare_reads import numbered
from bench.load import Run


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
