"""The thin FastStream subscriber for commands: explicit acks, nak with back-off on transient failures,
dead-lettering at the last delivery. See DESIGN.md, "One command's way", for the traps this avoids:
FastStream's default policy would `term` on any exception, and JetStream applies no back-off to naks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
import orjson
from faststream.middlewares import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from faststream.nats.annotations import NatsMessage as NatsMessageParam
from nats.js.api import AckPolicy as JsAckPolicy
from opentelemetry.trace import SpanKind

from domain.errors import Unavailable
from handlers.answers import error_reply
from handlers.errors import ErrorCode, Rejection
from handlers.log_context import log_scope
from handlers.pipeline import CommandProcessor, CommandRequest, authorization_header
from handlers.ports import CommandObserver, NoObserver, TokenVerifier
from handlers.queries import (
    QUERY_SUBJECT,
    ROLLOUT_QUERY_SUBJECT,
    OutcomeReader,
    RolloutReader,
    command_outcome,
    rollout_query,
)
from handlers.reply_subjects import ReplySubjects
from handlers.tracing import TRACER, context_from, nats_attributes
from schemas.commands import COMMAND_SUBJECT_PREFIX
from schemas.replies import Reply

log = logging.getLogger(__name__)

COMMAND_STREAM = "CAREPLAN_COMMANDS"
COMMAND_SUBJECTS = "careplan.cmd.>"
COMMAND_CONSUMER = "careplan-commands"
DLQ_STREAM = "CAREPLAN_DLQ"
DLQ_SUBJECT_PREFIX = "careplan.dlq."


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """How hard we try. `ack_wait_s` must exceed the slowest handler (heartbeats extend it)."""

    max_deliver: int = 5
    ack_wait_s: float = 30.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    workers: int = 8

    def nak_delay(self, delivered: int, draw: Callable[[], float] = random.random) -> float:
        """Exponential back-off by delivery count (1, 2, 4 … seconds, capped), with "equal jitter": half the
        step fixed, half drawn at random. After an outage the commands it held back then return spread over
        that window instead of all in the same second."""
        step = min(self.backoff_base_s * 2 ** max(delivered - 1, 0), self.backoff_max_s)
        return float(step / 2 + draw() * step / 2)

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=COMMAND_CONSUMER,
            filter_subject=COMMAND_SUBJECTS,
            ack_policy=JsAckPolicy.EXPLICIT,
            max_deliver=self.max_deliver,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.workers * 4,
        )


class Drain:
    """The end of a graceful stop: commands in flight get until `deadline`; one still running then is
    cancelled by us (its transaction rolls back) and handed back to the stream at once, for another
    replica, instead of being cut off by FastStream (which would leave it to the ack wait)."""

    def __init__(self) -> None:
        self.deadline: float | None = None
        self._bounds: set[asyncio.Timeout] = set()

    def begin(self, grace_s: float) -> None:
        self.deadline = asyncio.get_running_loop().time() + grace_s
        for bound in self._bounds:
            bound.reschedule(self.deadline)

    @property
    def expired(self) -> bool:
        return self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline

    @contextlib.asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        async with asyncio.timeout_at(self.deadline) as bound:
            self._bounds.add(bound)
            try:
                yield
            finally:
                self._bounds.discard(bound)


def register_command_consumer(
    broker: NatsBroker,
    processor: CommandProcessor,
    policy: DeliveryPolicy,
    observer: CommandObserver | None = None,
    *,
    drain: Drain | None = None,
    replies: ReplySubjects | None = None,
    include_in_schema: bool = True,
) -> Any:
    """One durable pull consumer over `careplan.cmd.>`, up to `policy.workers` messages in flight.
    Returns FastStream's subscriber; hand it to `mend_pull_timeouts` once the broker has started."""

    subscriber = broker.subscriber(
        COMMAND_SUBJECTS,
        stream=JStream(COMMAND_STREAM, declare=False),
        durable=COMMAND_CONSUMER,
        config=policy.consumer_config(),
        # A batch of `workers` messages is fetched and all of them started at once; the next fetch waits for
        # the batch. Not FastStream's `max_workers`: that one prefetches into a queue, and on stop drops what
        # it queued without a nak, so those commands wait out the whole ack wait before another replica
        # may take them (a rolling deploy would stall them by `ack_wait_s`).
        pull_sub=PullSub(batch_size=policy.workers, timeout=1.0),
        ack_policy=AckPolicy.MANUAL,
        no_reply=True,
        title="careplan.cmd.{command}",
        include_in_schema=include_in_schema,
        description="Care-plan commands (CONTRACT §2-4). Replies go to the `reply_to` header's subject.",
    )

    watcher = observer or NoObserver()
    stop = drain or Drain()
    inboxes = replies or ReplySubjects.allowing()

    @subscriber
    async def on_command(msg: NatsMessageParam) -> None:
        await handle_delivery(broker, processor, policy, msg, watcher, stop, inboxes)

    return subscriber


def mend_pull_timeouts(subscriber: Any) -> None:
    """FastStream 0.7's pull loop suppresses nats-py's `nats.errors.TimeoutError` but not the plain
    `TimeoutError` that nats-py's `fetch` also raises when its deadline runs out between its two pull
    requests: the loop task then dies, FastStream's supervisor restarts it, and a traceback is logged at
    ERROR for an idle second. Raise the one FastStream expects instead."""
    subscription = subscriber.subscription
    fetch = subscription.fetch

    async def fetch_with_nats_timeout(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fetch(*args, **kwargs)
        except nats.errors.TimeoutError:
            raise
        except TimeoutError as exc:
            raise nats.errors.TimeoutError from exc

    subscription.fetch = fetch_with_nats_timeout


# A query's answer from (body, headers): the JSON to send back, and the command id to name in a refusal.
QueryAnswer = Callable[[bytes, dict[str, str]], Awaitable[tuple[dict[str, Any], str | None]]]


def register_outcome_query(
    broker: NatsBroker,
    verifier: TokenVerifier,
    read_outcome: OutcomeReader,
    *,
    replies: ReplySubjects | None = None,
    observer: CommandObserver | None = None,
) -> None:
    """`careplan.query.command`: a command's stored outcome."""

    async def answer(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], str | None]:
        reply = await command_outcome(body, headers, verifier=verifier, read_outcome=read_outcome)
        return reply.to_wire(), reply.command_id

    _register_query(
        broker,
        QUERY_SUBJECT,
        "A command's stored outcome: request {command_id} with the same JWT header.",
        answer,
        replies,
        observer,
    )


def register_rollout_query(
    broker: NatsBroker,
    verifier: TokenVerifier,
    read_rollout: RolloutReader,
    *,
    replies: ReplySubjects | None = None,
    observer: CommandObserver | None = None,
) -> None:
    """`careplan.query.rollout`: a program rollout's progress."""

    async def answer(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], str | None]:
        return await rollout_query(body, headers, verifier=verifier, read_rollout=read_rollout), None

    _register_query(
        broker,
        ROLLOUT_QUERY_SUBJECT,
        "A program rollout's progress: request {rollout_id} with the same JWT header.",
        answer,
        replies,
        observer,
    )


def _register_query(
    broker: NatsBroker,
    subject: str,
    description: str,
    answer: QueryAnswer,
    replies: ReplySubjects | None,
    observer: CommandObserver | None,
) -> None:
    """A query on core NATS request-reply, in the queue group replicas share. The answer goes to the
    request's reply subject under the same rule as a command's reply."""
    inboxes = replies or ReplySubjects.allowing()
    watcher = observer or NoObserver()

    @broker.subscriber(subject, queue="careplan-query", no_reply=True, title=subject, description=description)
    async def on_query(msg: NatsMessageParam) -> None:
        raw = msg.raw_message
        body, command_id = await answer(raw.data or b"", dict(raw.headers or {}))
        if raw.reply and _reply_allowed(raw.reply, inboxes, watcher, "query", command_id):
            await broker.publish(orjson.dumps(body), subject=raw.reply)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A command message as JetStream delivered it: what a reply, a retry or the dead-letter copy need."""

    subject: str
    body: bytes
    headers: dict[str, str]

    @property
    def command_name(self) -> str:
        return self.subject.removeprefix(COMMAND_SUBJECT_PREFIX)

    @property
    def message_id(self) -> str | None:
        return self.headers.get("Nats-Msg-Id")

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get("correlation_id")

    def request(self) -> CommandRequest:
        return CommandRequest(
            command=self.command_name,
            envelope=self.body,
            authorization=authorization_header(self.headers),
            message_id=self.message_id,
            correlation_id=self.correlation_id,
        )


async def handle_delivery(
    broker: NatsBroker,
    processor: CommandProcessor,
    policy: DeliveryPolicy,
    msg: NatsMessage,
    observer: CommandObserver | None = None,
    drain: Drain | None = None,
    replies: ReplySubjects | None = None,
) -> None:
    raw = msg.raw_message
    incoming = Delivery(raw.subject, raw.data or b"", dict(raw.headers or {}))
    # Every line about this delivery, here and below, names the command (its ids as learnt on the way),
    # and its span continues the caller's trace (`traceparent` header), or starts one.
    attributes: dict[str, str | int] = {
        **nats_attributes("process", raw.subject, incoming.message_id),
        "messaging.operation.type": "process",
        "messaging.consumer.group.name": COMMAND_CONSUMER,
        "messaging.message.delivery_count": raw.metadata.num_delivered or 1,
    }
    with (
        log_scope(command_id=incoming.message_id, correlation_id=incoming.correlation_id),
        TRACER.start_as_current_span(
            f"process {raw.subject}",
            context=context_from(incoming.headers),
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ),
    ):
        await _handle(broker, processor, policy, msg, incoming, observer, drain, replies)


async def _handle(
    broker: NatsBroker,
    processor: CommandProcessor,
    policy: DeliveryPolicy,
    msg: NatsMessage,
    incoming: Delivery,
    observer: CommandObserver | None,
    drain: Drain | None,
    replies: ReplySubjects | None,
) -> None:
    observer = observer or NoObserver()
    drain = drain or Drain()
    replies = replies or ReplySubjects.allowing()
    raw = msg.raw_message
    request = incoming.request()
    command = request.command if request.command in processor.commands else "unknown"
    delivered = raw.metadata.num_delivered or 1
    if delivered > 1:
        observer.command_redelivered(command, delivered)
    try:
        try:
            async with drain.bounded(), _heartbeat(msg, policy):
                reply = await processor.process(request)
        except TimeoutError:
            if not drain.expired:
                raise
            log.warning(
                "command %s %s still running when the shutdown grace period ended: handed back",
                incoming.command_name,
                incoming.message_id,
                extra={"subject": raw.subject, "delivered": delivered},
            )
            await msg.nack()
            # Out before the connection closes: a nak left in the client's buffer is lost, and the command
            # would wait out the ack wait after all.
            with contextlib.suppress(Exception):
                await broker.connection.flush(timeout=2)
            return
    except asyncio.CancelledError:
        # Cut off by FastStream all the same (a stop without our drain): hand it back in a task of its own,
        # since this one is inside FastStream's cancelled scope, where every await is cancelled again.
        _hand_back(msg)
        raise
    except Exception as exc:
        if delivered < policy.max_deliver:
            delay = policy.nak_delay(delivered)
            # Everything an operator needs in the line itself: which command, which try, when the next.
            log.warning(
                "command %s %s failed on delivery %d of %d, will retry in %.1fs: %s",
                incoming.command_name,
                incoming.message_id,
                delivered,
                policy.max_deliver,
                delay,
                _one_line(exc),
                extra={"subject": raw.subject, "delivered": delivered},
            )
            await msg.nack(delay=delay)
            return
        await _dead_letter(broker, incoming, delivered, exc)
        observer.command_dead_lettered(command)
        code = ErrorCode.UPSTREAM_UNAVAILABLE if _is_upstream(exc) else ErrorCode.INTERNAL
        reply = error_reply(
            incoming.message_id, Rejection(code, "the command could not be processed; retry later")
        )
    with TRACER.start_as_current_span("reply", attributes={"careplan.reply.status": reply.status}):
        await send_reply(broker, incoming, reply, replies, observer)
    # Ack only once the outcome is committed and the reply is out; a crash before here redelivers,
    # and the command log answers the redelivery. Not `ack_sync`: waiting for the server to confirm held
    # the worker (and the pull batch behind it) for a round trip that guarantees nothing more. An ack
    # lost on the way, like a crash, means one redelivery that the log answers; a stop drains the
    # connection, so the acks of the commands that finished go out before it closes.
    await raw.ack()


_HANDED_BACK: set[asyncio.Task[None]] = set()


def _hand_back(msg: NatsMessage) -> None:
    async def nak() -> None:
        with contextlib.suppress(Exception):
            await msg.raw_message.nak()

    task = asyncio.get_running_loop().create_task(nak())
    _HANDED_BACK.add(task)
    task.add_done_callback(_HANDED_BACK.discard)


async def send_reply(
    broker: NatsBroker,
    incoming: Delivery,
    reply: Reply,
    replies: ReplySubjects,
    observer: CommandObserver,
) -> None:
    """Best effort, like every core NATS reply: the outcome is stored, and a caller who misses the reply
    asks for it. A failed or refused reply must never keep the message from being acked."""
    reply_to = incoming.headers.get("reply_to")
    if not reply_to or not _reply_allowed(reply_to, replies, observer, "command", incoming.message_id):
        return
    headers = {"content-type": "application/json"}
    if incoming.correlation_id:
        headers["correlation_id"] = incoming.correlation_id
    try:
        await broker.publish(orjson.dumps(reply.to_wire()), subject=reply_to, headers=headers)
    except Exception as exc:
        log.warning("command %s: reply not sent: %s: %s", incoming.message_id, type(exc).__name__, exc)


def _reply_allowed(
    subject: str, replies: ReplySubjects, observer: CommandObserver, kind: str, command_id: str | None
) -> bool:
    """May a reply go to `subject`? A refusal is logged (without the subject: it is the caller's text) and
    counted; the command itself was processed all the same and its outcome can be queried."""
    refusal = replies.refusal(subject)
    if refusal is None:
        return True
    log.warning(
        "%s %s: reply_to refused (%s); the outcome is stored for the outcome query",
        kind,
        command_id,
        refusal,
        extra={"command_id": command_id, "reason": refusal},
    )
    observer.reply_refused(kind, refusal)
    return False


async def _dead_letter(broker: NatsBroker, incoming: Delivery, delivered: int, exc: BaseException) -> None:
    log.error(
        "command %s %s dead-lettered after %d deliveries: %s",
        incoming.command_name,
        incoming.message_id,
        delivered,
        _one_line(exc),
        extra={"subject": incoming.subject, "delivered": delivered},
    )
    headers = {k: v for k, v in incoming.headers.items() if k != "Nats-Msg-Id"}
    headers |= {
        "Careplan-Original-Subject": incoming.subject,
        "Careplan-Deliveries": str(delivered),
        "Careplan-Error": f"{type(exc).__name__}: {_one_line(exc)}",
    }
    if incoming.message_id:
        headers["Nats-Msg-Id"] = f"{incoming.message_id}:dlq"
    await broker.publish(
        incoming.body,
        subject=DLQ_SUBJECT_PREFIX + incoming.command_name,
        stream=DLQ_STREAM,
        headers=headers,
    )


def _one_line(exc: BaseException) -> str:
    """The first line only: later lines of driver errors hold SQL, and logs stay one record per line."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


def _is_upstream(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable) and exc.what != "database"


@contextlib.asynccontextmanager
async def _heartbeat(msg: NatsMessage, policy: DeliveryPolicy) -> AsyncIterator[None]:
    """Tell JetStream we are still at it, so a slow command is not redelivered to another worker. A timer,
    not a task per message: almost every command ends long before the first beat."""
    loop = asyncio.get_running_loop()
    interval = policy.ack_wait_s / 3
    timer: asyncio.TimerHandle | None = None

    async def tell() -> None:
        with contextlib.suppress(Exception):
            await msg.in_progress()

    def beat() -> None:
        nonlocal timer
        task = loop.create_task(tell())
        _BEATS.add(task)
        task.add_done_callback(_BEATS.discard)
        timer = loop.call_later(interval, beat)

    timer = loop.call_later(interval, beat)
    try:
        yield
    finally:
        timer.cancel()


_BEATS: set[asyncio.Task[None]] = set()
