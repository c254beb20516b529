"""The relay's JetStream adapter on a real nats-server: a row the broker can never take is a
`PermanentPublishError` saying why; a broker that cannot answer just now is an outage, never the row's fault.
(A stream that exists but has no leader: tests/faults/test_stream_leader_failover.py, on a real cluster.)"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient
from nats.js.api import StreamConfig

from handlers.event_publisher import BrokerUnavailable, JetStreamEventPublisher
from service.embedded.nats_server import EmbeddedNats
from storage.outbox_relay import PermanentPublishError


@pytest.fixture
async def scratch_stream(nc: NatsClient) -> AsyncIterator[str]:
    """A stream of the test's own, taking `<prefix>.>` and messages up to 1 KiB; yields the prefix."""
    prefix = f"scratch{uuid.uuid4().hex[:10]}"
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=prefix.upper(), subjects=[f"{prefix}.>"], max_msg_size=1024))
    yield prefix
    await js.delete_stream(prefix.upper())


def headers() -> dict[str, str]:
    return {"Nats-Msg-Id": str(uuid.uuid4())}


async def test_an_event_is_stored_once_and_counted(nc: NatsClient, scratch_stream: str) -> None:
    published: list[str] = []
    publish = JetStreamEventPublisher(nc, on_published=lambda: published.append("one"))
    sent = headers()

    await publish(f"{scratch_stream}.ok", b"{}", sent)
    await publish(f"{scratch_stream}.ok", b"{}", sent)  # a re-publish after a lost mark

    info = await nc.jetstream().stream_info(scratch_stream.upper())
    assert info.state.messages == 1
    assert published == ["one", "one"]


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("with space", "token 3 contains ' '"),
        ("line\nbreak", "token 3 contains '\\n'"),
        ("tab\there", "token 3 contains '\\t'"),
        ("", "token 3 is empty"),
        ("*", "token 3 ('*') contains a wildcard"),
        (">", "token 3 ('>') contains a wildcard"),
        ("caf\u00e9", "token 3 contains '\u00e9'"),
        ("x" * 4001, "characters long, over the 4000 NATS takes"),
    ],
)
async def test_an_invalid_subject_is_permanent_and_says_what_is_wrong(
    nc: NatsClient, scratch_stream: str, token: str, problem: str
) -> None:
    subject = f"{scratch_stream}.bad.{token}"
    with pytest.raises(PermanentPublishError) as refused:
        await JetStreamEventPublisher(nc)(subject, b"{}", headers())
    assert str(refused.value).startswith(f"invalid subject {subject!r}: ")
    assert problem in str(refused.value)
    assert nc.is_connected  # nothing reached the server that would make it close the connection


async def test_an_empty_subject_is_permanent(nc: NatsClient) -> None:
    with pytest.raises(PermanentPublishError, match="the subject is empty"):
        await JetStreamEventPublisher(nc)("", b"{}", headers())


async def test_an_event_over_the_servers_max_payload_is_permanent(
    nc: NatsClient, scratch_stream: str
) -> None:
    too_large = b"x" * (nc.max_payload + 1)
    with pytest.raises(PermanentPublishError, match=f"over the server's max_payload of {nc.max_payload}"):
        await JetStreamEventPublisher(nc)(f"{scratch_stream}.big", too_large, headers())


async def test_an_event_over_the_streams_max_msg_size_is_permanent(
    nc: NatsClient, scratch_stream: str
) -> None:
    with pytest.raises(PermanentPublishError, match="larger than the stream's max_msg_size"):
        await JetStreamEventPublisher(nc)(f"{scratch_stream}.big", b"x" * 2048, headers())


async def test_a_subject_no_stream_takes_is_permanent(nc: NatsClient) -> None:
    subject = f"careplan.nowhere.{uuid.uuid4().hex}"
    with pytest.raises(PermanentPublishError) as refused:
        await JetStreamEventPublisher(nc)(subject, b"{}", headers())
    assert str(refused.value) == f"no stream takes subject {subject!r}"


@pytest.fixture
async def own_server(short_tmp: Path) -> AsyncIterator[EmbeddedNats]:
    """A nats-server the test may stop, apart from the session's."""
    server = EmbeddedNats(short_tmp / f"nats-{uuid.uuid4().hex[:8]}")
    server.start()
    yield server
    server.stop()


async def test_a_lost_connection_is_an_outage(own_server: EmbeddedNats) -> None:
    client = await nats.connect(
        own_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, error_cb=_reconnect_errors
    )
    try:
        await client.jetstream().add_stream(StreamConfig(name="LOST", subjects=["lost.>"]))
        publish = JetStreamEventPublisher(client, ack_timeout_s=1.0)
        await publish("lost.before", b"{}", headers())
        # When the server goes away under the connection
        own_server.stop()
        # Then publishing fails as an outage, not as a fault of the row, whether the client still thinks it
        # is connected, is reconnecting, or has its buffer full
        for _ in range(3):
            with pytest.raises(BrokerUnavailable):
                await publish("lost.during", b"{}", headers())
    finally:
        with contextlib.suppress(ConnectionResetError):  # nats-py's close while reconnecting
            await client.close()


async def _reconnect_errors(exc: Exception) -> None:
    """Each failed reconnect is expected here; nats-py would log a traceback for each."""


async def test_a_closed_connection_is_an_outage(own_server: EmbeddedNats) -> None:
    client = await nats.connect(own_server.url)
    await client.close()
    with pytest.raises(BrokerUnavailable, match="connection closed"):
        await JetStreamEventPublisher(client)("careplan.evt.t1.closed", b"{}", headers())
