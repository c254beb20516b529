"""JetStream streams and the durable command consumer: created or updated on every start (idempotent),
with `CAREPLAN_STREAM_REPLICAS` replicas (CONTRACT §11)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, ServiceUnavailableError

from handlers.nats_consumer import (
    COMMAND_CONSUMER,
    COMMAND_STREAM,
    COMMAND_SUBJECTS,
    DLQ_STREAM,
    DeliveryPolicy,
)

DUPLICATE_WINDOW_S = 120.0
EVENT_STREAM = "CAREPLAN_EVENTS"
AUDIT_STREAM = "CAREPLAN_AUDIT"
THIRTY_DAYS_S = 30 * 24 * 3600.0


def _history_stream(name: str, subject: str, *, max_age_s: float | None = None) -> StreamConfig:
    """A limits-retention stream that keeps what was published for others to read (events, audit, DLQ)."""
    return StreamConfig(
        name=name,
        subjects=[subject],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=max_age_s,
    )


STREAMS: tuple[StreamConfig, ...] = (
    StreamConfig(
        name=COMMAND_STREAM,
        subjects=[COMMAND_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_msg_size=512
        * 1024,  # above our 256 KiB limit, so oversized bodies reach us and get a typed reply
        discard=DiscardPolicy.OLD,
    ),
    _history_stream(EVENT_STREAM, "careplan.evt.>", max_age_s=THIRTY_DAYS_S),
    _history_stream(AUDIT_STREAM, "careplan.audit.>", max_age_s=THIRTY_DAYS_S),
    _history_stream(DLQ_STREAM, "careplan.dlq.>"),
)


log = logging.getLogger(__name__)

# How long a start waits for JetStream to answer: a request about a stream another replica is creating at
# the same moment goes unanswered, and so does every request while a cluster elects its meta leader.
ANSWER_PATIENCE_S = 30.0
RETRY_PAUSE_S = 0.5
STREAM_NAME_IN_USE = 10058  # JetStream: the stream exists with another configuration


class TopologyRefused(RuntimeError):
    """A stream could not be created or updated as asked: nats-server refused it (more replicas than a
    single server or the nodes up can hold, for one) or JetStream did not answer. The message is one line."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason


def replicas_to_apply(configured: int, existing: int | None) -> int:
    """A stream's replicas after this start: `configured` for a new stream; an existing one is raised to it
    but never lowered, so a replica started with the default (or an older one in a rolling deploy) cannot
    take an R3 stream down to R1. Lowering is an operator's deliberate act (`nats stream edit --replicas`)."""
    if existing is None:
        return configured
    return max(configured, existing)


async def ensure_topology(
    js: JetStreamContext, policy: DeliveryPolicy, replicas: int = 1, *, patience_s: float = ANSWER_PATIENCE_S
) -> None:
    """Every stream the service owns, created or updated with `replicas` (see `replicas_to_apply`), then
    the durable command consumer, which follows the commands stream's replicas. nats-server scales an
    existing stream in the background (new replicas catch up from the leader, then the consumer is scaled);
    this returns once the change is accepted. A request JetStream leaves unanswered is asked again for up to
    `patience_s`."""
    for config in STREAMS:
        await _answered(partial(_ensure_stream, js, config, replicas), str(config.name), patience_s)
    # The consumer's replicas are left unset (0: its stream's), so nats-server scales it with the stream,
    # once the stream's new replicas have caught up. Set explicitly, it would be refused while the raised
    # stream is still being scaled ("replica count exceeds parent stream"). Create-or-update on >= 2.10.
    await _answered(
        lambda: js.add_consumer(COMMAND_STREAM, policy.consumer_config()), COMMAND_STREAM, patience_s
    )
    # Accepted is not yet answering: a new R3 consumer answers once its replicas have elected a leader, and
    # the pull subscription asks for it (with a 5 s limit that would fail the start) right after this.
    await _answered(
        lambda: js.consumer_info(COMMAND_STREAM, COMMAND_CONSUMER, timeout=5.0), COMMAND_STREAM, patience_s
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    name = str(config.name)
    # Create first rather than look first: an identical stream makes the create a no-op, and two replicas
    # starting at once on a fresh cluster would otherwise ask about a stream the other one is creating,
    # which nats-server leaves unanswered.
    try:
        await js.add_stream(config.evolve(num_replicas=replicas))
        return
    except ServiceUnavailableError:
        raise  # nobody answered: asked again
    except APIError as exc:
        if exc.err_code != STREAM_NAME_IN_USE:
            raise _refused(name, replicas, replicas, exc) from exc
    # It exists with another configuration: ours, with its replicas raised but never lowered.
    existing = (await js.stream_info(name)).config.num_replicas or 1
    target = replicas_to_apply(replicas, existing)
    try:
        await js.update_stream(config.evolve(num_replicas=target))
    except ServiceUnavailableError:
        raise
    except APIError as exc:
        raise _refused(name, target, replicas, exc) from exc
    if target > existing:
        log.info(
            "stream %s raised from %d to %d replicas; they catch up in the background", name, existing, target
        )
    elif target > replicas:
        log.warning(
            "stream %s keeps its %d replicas (CAREPLAN_STREAM_REPLICAS=%d; the service never lowers "
            "them: `nats stream edit %s --replicas %d` does)",
            name, target, replicas, name, replicas,
        )  # fmt: skip


def _refused(name: str, target: int, configured: int, exc: APIError) -> TopologyRefused:
    code = f" (error {exc.err_code})" if exc.err_code else ""
    return TopologyRefused(
        f"stream {name} with {target} replicas (CAREPLAN_STREAM_REPLICAS={configured})",
        f"nats-server says {exc.description or type(exc).__name__}{code}",
    )


async def _answered(call: Callable[[], Awaitable[object]], stream: str, patience_s: float) -> None:
    """`call`, made again while JetStream leaves it unanswered (a time-out, no responders, 503)."""
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            await call()
            return
        except (nats.errors.TimeoutError, ServiceUnavailableError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                reason = f"JetStream did not answer within {patience_s:g}s (is a meta leader elected?)"
                raise TopologyRefused(f"stream {stream}", reason) from exc
            await asyncio.sleep(RETRY_PAUSE_S)
