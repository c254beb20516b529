"""Baseline (b), the messaging limit: the same JetStream round trip as a command — publish to a work-queue
stream, a durable pull consumer fetching batches of `workers`, reply to the `reply_to` header, ack — with
no database and no framework. Runs as its own process, as `careplan serve` does:
`python -m bench.echo NATS_URL WORKERS`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError

STREAM = "BENCH_ECHO"
SUBJECT_PREFIX = "bench.echo."
CONSUMER = "bench-echo"
REPLY = b'{"ok": true, "status": 200, "result": {"resource_type": "Echo", "id": "x", "version": 1}}'


async def serve(url: str, workers: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    config = StreamConfig(
        name=STREAM,
        subjects=[SUBJECT_PREFIX + ">"],
        retention=RetentionPolicy.WORK_QUEUE,
        duplicate_window=120,
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
    subscription = await js.pull_subscribe(
        SUBJECT_PREFIX + ">",
        durable=CONSUMER,
        stream=STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=workers * 4, ack_wait=30),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def answer(msg: Msg) -> None:
        reply_to = (msg.headers or {}).get("reply_to")
        if reply_to:
            await nc.publish(reply_to, REPLY)
        await msg.ack_sync()

    print("echo ready", flush=True)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError, nats.errors.TimeoutError):
            messages = await subscription.fetch(batch=workers, timeout=1.0)
            await asyncio.gather(*(answer(m) for m in messages))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
