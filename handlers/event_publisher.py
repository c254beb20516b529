"""The outbox relay's JetStream adapter: publishes one event and says whose fault a failure is.

A row the broker can never take (an invalid subject, too large, a subject no stream takes) is a
`PermanentPublishError`: the relay parks it at once so it stops holding up anyone. Anything else — no
responders while a stream elects its leader, a time-out, a lost connection, JetStream "temporarily
unavailable" — is `BrokerUnavailable`: the row is fine, the relay waits and publishes it later. When in
doubt it is an outage: a row parked by mistake is an event lost to consumers until an operator acts, a row
retried by mistake only costs a retry.
"""

from __future__ import annotations

from collections.abc import Callable

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient
from nats.js.api import DEFAULT_PREFIX
from nats.js.errors import APIError, NoStreamResponseError

from storage.outbox_relay import PermanentPublishError

# nats-server's default max_control_line is 4096 bytes; HPUB, the reply inbox and the sizes take ~80 of
# them. A longer subject makes the server close the connection (every tenant's events would stall).
MAX_SUBJECT_LENGTH = 4000

# JetStream API errors that depend on the message alone (nats-server errors.json), so retrying the same row
# can never succeed. Every other API error is the broker's state (no leader, storage, limits): an outage.
ROW_REFUSED_BY_STREAM = {
    10054: "larger than the stream's max_msg_size",  # JSStreamMessageExceedsMaximumErr
    10097: "its headers exceed the 64 KiB a stream takes",  # JSStreamHeaderExceedsMaximumErr
}


class BrokerUnavailable(Exception):
    """JetStream could not take the event just now; nothing is wrong with the event itself."""


def subject_problem(subject: str) -> str | None:
    """Why no NATS server can take `subject` as a publish subject, or None when it is a valid one:
    dot-separated tokens of printable ASCII, none empty, no wildcards, short enough for the protocol."""
    if not subject:
        return "the subject is empty"
    if len(subject) > MAX_SUBJECT_LENGTH:
        return f"the subject is {len(subject)} characters long, over the {MAX_SUBJECT_LENGTH} NATS takes"
    for position, token in enumerate(subject.split("."), start=1):
        if not token:
            return f"token {position} is empty"
        if "*" in token or ">" in token:
            return f"token {position} ({token!r}) contains a wildcard; events go to concrete subjects"
        outside = next((char for char in token if not "!" <= char <= "~"), None)
        if outside is not None:
            return f"token {position} contains {outside!r}; a subject is printable ASCII without spaces"
    return None


class JetStreamEventPublisher:
    """The relay's `Publish`: one event to JetStream, awaiting its PubAck."""

    def __init__(
        self,
        nc: NatsClient,
        *,
        ack_timeout_s: float = 5.0,
        lookup_timeout_s: float = 2.0,
        on_published: Callable[[], None] = lambda: None,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._ack_timeout_s = ack_timeout_s
        self._lookup_timeout_s = lookup_timeout_s
        self._on_published = on_published

    async def __call__(self, subject: str, payload: bytes, headers: dict[str, str]) -> None:
        problem = subject_problem(subject)
        if problem is not None:
            raise PermanentPublishError(f"invalid subject {subject!r}: {problem}")
        try:
            await self._js.publish(subject, payload, headers=headers, timeout=self._ack_timeout_s)
        except nats.errors.BadSubjectError as exc:
            raise PermanentPublishError(f"invalid subject {subject!r}: the NATS client refused it") from exc
        except nats.errors.MaxPayloadError as exc:
            raise PermanentPublishError(
                f"the event is {len(payload)} bytes, over the server's max_payload of {self._nc.max_payload}"
            ) from exc
        except NoStreamResponseError as exc:
            raise await self._unanswered(subject) from exc
        except APIError as exc:
            raise _classify_api_error(exc, len(payload)) from exc
        except nats.errors.Error as exc:  # a time-out, a lost, reconnecting or closed connection …
            raise BrokerUnavailable(f"publish to {subject!r} failed: {exc}") from exc
        self._on_published()

    async def _unanswered(self, subject: str) -> Exception:
        """No stream answered the publish (no responders). Either none takes the subject, which is the row's
        fault, or its stream has no leader just now (an election, its servers down), which is the broker's.
        Only JetStream itself saying that no stream matches makes it the row's; if JetStream cannot say,
        the broker is away."""
        try:
            streams = await self._streams_taking(subject)
        except (nats.errors.Error, ValueError) as exc:
            return BrokerUnavailable(
                f"no stream answered for {subject!r}, and JetStream could not say whether one takes it: {exc}"
            )
        if streams:
            return BrokerUnavailable(
                f"stream {streams[0]} takes {subject!r} but did not answer (no leader: an election, or its "
                "servers are down)"
            )
        return PermanentPublishError(f"no stream takes subject {subject!r}")

    async def _streams_taking(self, subject: str) -> list[str]:
        """The streams JetStream says take `subject` (`$JS.API.STREAM.NAMES` with a subject filter); raises
        when it gives no answer (no responders, a time-out, an API error such as no meta leader)."""
        request = orjson.dumps({"subject": subject})
        reply = await self._nc.request(
            f"{DEFAULT_PREFIX}.STREAM.NAMES", request, timeout=self._lookup_timeout_s
        )
        answer = orjson.loads(reply.data)
        if not isinstance(answer, dict):
            raise ValueError(f"JetStream answered {reply.data[:300]!r}")
        if isinstance(error := answer.get("error"), dict):
            raise ValueError(
                f"JetStream answered {error.get('code')} (err_code {error.get('err_code')}): "
                f"{error.get('description')}"
            )
        return [str(name) for name in answer.get("streams") or []]


def _classify_api_error(error: APIError, size: int) -> Exception:
    reason = ROW_REFUSED_BY_STREAM.get(error.err_code or 0)
    if reason is not None:
        return PermanentPublishError(
            f"the stream refused the {size}-byte event: {reason} ({error.description})"
        )
    return BrokerUnavailable(
        f"JetStream answered {error.code} (err_code {error.err_code}): {error.description}"
    )
