"""A circuit breaker per upstream service: after `failure_threshold` silences in a row we stop asking for
`reset_after_s` and fail at once (a command is retried later anyway), then let one probe through; its
answer closes the circuit, its silence opens it again. So a dead service costs each command microseconds,
not a full timeout, and a recovering one is not stormed by every waiting retry at once.

Small enough to own: the async breakers on PyPI are unmaintained or tied to other event loops."""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_after_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_after_s = reset_after_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._probing or self._clock() - self._opened_at >= self._reset_after_s:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def allow(self) -> bool:
        """May a request go out now? In half-open, only the one probe may, until it is settled."""
        state = self.state
        if state is CircuitState.CLOSED:
            return True
        if state is CircuitState.HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        """The service answered (a "no" is an answer too)."""
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def record_failure(self) -> None:
        """The service was silent: a time-out, no responders, or a reply we cannot read."""
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._clock()
        self._probing = False

    def abandon(self) -> None:
        """A request that was cancelled tells nothing about the service: let another probe go."""
        self._probing = False

    def retry_in_s(self) -> float:
        """How long until the next probe may go (0 when it may go now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._reset_after_s - (self._clock() - self._opened_at))


def state_of(breaker: CircuitBreaker) -> CircuitState:
    """The breaker's state now (a call, so a reader — or a type checker — never takes it as fixed)."""
    return breaker.state
