"""JetStream streams and the durable command consumer: created or updated on every start (idempotent)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from handlers.nats_consumer import COMMAND_STREAM, COMMAND_SUBJECTS, DLQ_STREAM, DeliveryPolicy

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


async def ensure_topology(js: JetStreamContext, policy: DeliveryPolicy) -> None:
    for config in STREAMS:
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await js.add_stream(config)
        else:
            await js.update_stream(config)
    # Consumer create is create-or-update on nats-server >= 2.10 for the fields that may change.
    await js.add_consumer(COMMAND_STREAM, policy.consumer_config())
