"""Load generation and its arithmetic: a closed loop of N callers (each sends its next request when the
last one is answered), latencies per request, throughput over the whole run, and percentiles."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from schemas.commands import COMMAND_SUBJECT_PREFIX


@dataclass
class Run:
    """What one loaded phase measured."""

    name: str
    concurrency: int
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies_s) / self.wall_s if self.wall_s else 0.0

    def percentile_ms(self, p: float) -> float:
        if not self.latencies_s:
            return float("nan")
        ordered = sorted(self.latencies_s)
        index = min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))
        return ordered[index] * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "requests": len(self.latencies_s),
            "errors": self.errors,
            "seconds": round(self.wall_s, 3),
            "throughput_per_s": round(self.throughput, 1),
            "p50_ms": round(self.percentile_ms(50), 2),
            "p95_ms": round(self.percentile_ms(95), 2),
            "p99_ms": round(self.percentile_ms(99), 2),
        }


Request = Callable[[int, int], Awaitable[bool]]  # (caller, n) -> ok


async def closed_loop(
    name: str, request: Request, *, concurrency: int, total: int | None = None, seconds: float | None = None
) -> Run:
    """`total` requests, or as many as fit in `seconds`, from `concurrency` callers; each call is timed
    from start to answer."""
    run = Run(name, concurrency)
    counter = itertools.count()
    deadline = time.perf_counter() + seconds if seconds is not None else float("inf")

    async def caller(index: int) -> None:
        while (n := next(counter)) < (total if total is not None else n + 1):
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            ok = await request(index, n)
            if ok:
                run.latencies_s.append(time.perf_counter() - started)
            else:
                run.errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    run.wall_s = time.perf_counter() - started
    return run


class CommandClient:
    """Commands as a careful caller sends them: JetStream publish (awaiting the PubAck) with `Nats-Msg-Id`
    and a `reply_to` header, the reply awaited on one wildcard inbox subscription shared by all callers."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self._js = nc.jetstream()
        self._inbox = nc.new_inbox()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.wall_reply_times: dict[str, float] = {}  # command id → when its reply arrived (epoch s)

    async def start(self) -> None:
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        key = msg.subject.rsplit(".", 1)[1]
        self.wall_reply_times[str(uuid.UUID(key))] = time.time()
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(orjson.loads(msg.data))

    async def send(
        self,
        command: str,
        data: dict[str, Any],
        token: str,
        *,
        expected_version: int | None = None,
        subject_prefix: str = COMMAND_SUBJECT_PREFIX,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        command_id = str(uuid.uuid4())
        body: dict[str, Any] = {"command_id": command_id, "data": data}
        if expected_version is not None:
            body["expected_version"] = expected_version
        key = command_id.replace("-", "")
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        headers = {
            "Nats-Msg-Id": command_id,
            "Authorization": f"Bearer {token}",
            "reply_to": f"{self._inbox}.{key}",
        }
        try:
            await self._js.publish(subject_prefix + command, orjson.dumps(body), headers=headers)
            reply = await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(key, None)
        return reply
