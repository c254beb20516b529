"""JetStream streams and the durable command consumer: created or updated on every start (idempotent)."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from handlers.nats_consumer import COMMAND_STREAM, COMMAND_SUBJECTS, DLQ_STREAM, DeliveryPolicy

DUPLICATE_WINDOW_S = 120.0
EVENT_STREAM = "CAREPLAN_EVENTS"
AUDIT_STREAM = "CAREPLAN_AUDIT"

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
    StreamConfig(
        name=EVENT_STREAM,
        subjects=["careplan.evt.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=30 * 24 * 3600.0,
    ),
    StreamConfig(
        name=AUDIT_STREAM,
        subjects=["careplan.audit.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
        max_age=30 * 24 * 3600.0,
    ),
    StreamConfig(
        name=DLQ_STREAM,
        subjects=["careplan.dlq.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        duplicate_window=DUPLICATE_WINDOW_S,
    ),
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
