"""Retried commands come back spread out, not in the same second (issue 15, row 11): each nak delay is
half its exponential step, plus up to as much again drawn at random."""

from __future__ import annotations

import random

from handlers.nats_consumer import DeliveryPolicy


def test_the_delay_spans_half_to_all_of_its_step() -> None:
    policy = DeliveryPolicy(backoff_base_s=1.0, backoff_max_s=30.0)
    assert [policy.nak_delay(n, draw=lambda: 0.0) for n in (1, 2, 3, 6, 9)] == [0.5, 1.0, 2.0, 15.0, 15.0]
    assert [policy.nak_delay(n, draw=lambda: 1.0) for n in (1, 2, 3, 6, 9)] == [1.0, 2.0, 4.0, 30.0, 30.0]


def test_commands_held_back_by_one_outage_return_spread_over_the_window() -> None:
    policy = DeliveryPolicy(backoff_base_s=1.0, backoff_max_s=30.0)
    random.seed(15)
    delays = [policy.nak_delay(4) for _ in range(500)]  # 500 commands, all on their fourth delivery
    assert min(delays) >= 4.0
    assert max(delays) <= 8.0
    by_second = {int(d) for d in delays}
    assert by_second == {4, 5, 6, 7}  # not one burst: every second of the window gets its share
    assert max(sum(1 for d in delays if int(d) == s) for s in by_second) < 200
