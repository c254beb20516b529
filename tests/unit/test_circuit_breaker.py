"""The circuit breaker's states, on a clock the test moves."""

from __future__ import annotations

from integrations.circuit_breaker import CircuitBreaker, CircuitState, state_of


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_it_opens_after_the_threshold_of_failures_in_a_row_and_not_before() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # an answer in between starts the count again
    breaker.record_failure()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is CircuitState.OPEN
    assert not breaker.allow()


def test_after_the_reset_time_exactly_one_probe_goes_and_its_answer_closes_the_circuit() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=5, clock=clock)
    breaker.record_failure()
    clock.now = 4.9
    assert not breaker.allow()
    assert breaker.retry_in_s() == 5 - 4.9
    clock.now = 5.0
    assert state_of(breaker) is CircuitState.HALF_OPEN
    assert breaker.allow()
    assert not breaker.allow()  # the probe is out: everyone else still fails fast
    breaker.record_success()
    assert state_of(breaker) is CircuitState.CLOSED
    assert breaker.allow()
    assert breaker.allow()


def test_a_failed_probe_opens_the_circuit_for_another_full_reset_time() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, reset_after_s=5, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now = 6.0
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough while probing
    assert state_of(breaker) is CircuitState.OPEN
    clock.now = 10.9
    assert not breaker.allow()
    clock.now = 11.0
    assert breaker.allow()


def test_an_abandoned_probe_lets_the_next_caller_probe() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after_s=1, clock=clock)
    breaker.record_failure()
    clock.now = 1.0
    assert breaker.allow()
    breaker.abandon()  # that request was cancelled: it learnt nothing
    assert breaker.allow()
