"""FastStream's pull loop survives only nats-py's own TimeoutError; the mend turns the plain one into it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from handlers.nats_consumer import mend_pull_timeouts


class Subscription:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error
        self.calls: list[dict[str, Any]] = []

    async def fetch(self, **kwargs: Any) -> list[str]:
        self.calls.append(kwargs)
        if self.error is not None:
            raise self.error
        return ["msg"]


async def test_a_plain_timeout_from_fetch_becomes_the_one_faststream_suppresses() -> None:
    subscription = Subscription(TimeoutError())
    mend_pull_timeouts(SimpleNamespace(subscription=subscription))
    with pytest.raises(nats.errors.TimeoutError):
        await subscription.fetch(batch=4, timeout=1.0)
    assert subscription.calls == [{"batch": 4, "timeout": 1.0}]


async def test_messages_and_other_errors_pass_through_unchanged() -> None:
    ok = Subscription(None)
    mend_pull_timeouts(SimpleNamespace(subscription=ok))
    assert await ok.fetch(batch=1, timeout=1.0) == ["msg"]
    closed = Subscription(nats.errors.ConnectionClosedError())
    mend_pull_timeouts(SimpleNamespace(subscription=closed))
    with pytest.raises(nats.errors.ConnectionClosedError):
        await closed.fetch(batch=1, timeout=1.0)
