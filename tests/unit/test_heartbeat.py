"""A command slower than a third of the ack wait tells JetStream it is still at it, and stops telling the
moment it ends (the heartbeat's timer; JetStream's side is covered by the fault scenarios)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from handlers.nats_consumer import DeliveryPolicy, _heartbeat


class Delivery:
    def __init__(self) -> None:
        self.beats = 0

    async def in_progress(self) -> None:
        self.beats += 1


async def test_a_slow_command_beats_every_third_of_the_ack_wait_and_not_after_it_ends() -> None:
    delivery = Delivery()
    async with _heartbeat(cast(Any, delivery), DeliveryPolicy(ack_wait_s=0.3)):
        await asyncio.sleep(0.35)  # beats at ~0.1, 0.2, 0.3
    beats = delivery.beats
    await asyncio.sleep(0.25)
    assert beats >= 2
    assert delivery.beats == beats


async def test_a_quick_command_never_beats() -> None:
    delivery = Delivery()
    async with _heartbeat(cast(Any, delivery), DeliveryPolicy(ack_wait_s=3)):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert delivery.beats == 0


async def test_a_failing_beat_does_not_stop_the_next() -> None:
    class Flaky(Delivery):
        async def in_progress(self) -> None:
            self.beats += 1
            raise ConnectionError("broker away")

    delivery = Flaky()
    async with _heartbeat(cast(Any, delivery), DeliveryPolicy(ack_wait_s=0.15)):
        await asyncio.sleep(0.2)
    assert delivery.beats >= 2
