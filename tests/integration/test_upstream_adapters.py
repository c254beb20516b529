"""The NATS adapters of the services we do not own, against real responders on a real nats-server:
found, not found, slow, absent, garbage, and a service that flaps (its circuit opens, then closes)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from domain.errors import Unavailable
from handlers.ports import CodeVerdict, EncounterRecord, PatientRecord, PractitionerRecord
from integrations.circuit_breaker import CircuitState, state_of
from integrations.upstream import (
    NatsProviderDirectory,
    NatsRegistration,
    NatsScheduling,
    NatsTerminology,
    UpstreamClient,
    UpstreamSettings,
)
from tests.upstream_responders import UpstreamResponders, start_responders

TOKEN = "header.payload.signature"
SNOMED = "http://snomed.info/sct"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def upstream(nc: NatsClient) -> AsyncIterator[UpstreamResponders]:
    responders = await start_responders(nc)
    yield responders
    for responder in responders.all:
        await responder.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def client_for(
    nc: NatsClient, subject: str, clock: FakeClock, *, timeout_s: float = 0.3, failures: int = 3
) -> UpstreamClient:
    settings = UpstreamSettings(
        subject=subject, timeout_s=timeout_s, cache_ttl_s=60, breaker_failures=failures, breaker_reset_s=10
    )
    return UpstreamClient(nc, "registration", settings, clock=clock)


async def test_registration_answers_found_not_found_and_inactive_with_the_callers_token(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.world.patients[("t1", "p-active")] = True
    upstream.world.patients[("t1", "p-inactive")] = False
    registration = NatsRegistration(client_for(nc, upstream.subjects.registration, clock))

    assert await registration.patient("t1", "p-active", token=TOKEN) == PatientRecord(found=True, active=True)
    assert await registration.patient("t1", "p-inactive", token=TOKEN) == PatientRecord(True, False)
    # The same id in another tenant is another patient.
    assert await registration.patient("t2", "p-active", token=TOKEN) == PatientRecord(False, False)

    first = upstream.registration.requests[0]
    assert first.body == {"tenant_id": "t1", "patient_id": "p-active"}
    assert first.headers["Authorization"] == f"Bearer {TOKEN}"


async def test_scheduling_providers_and_terminology_speak_the_contracts_shapes(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.world.encounters[("t1", "e1")] = "p1"
    upstream.world.practitioners[("t1", "dr-a")] = True
    upstream.world.unknown_codes[(SNOMED, "44054006")] = "retired concept"
    scheduling = NatsScheduling(client_for(nc, upstream.subjects.scheduling, clock))
    providers = NatsProviderDirectory(client_for(nc, upstream.subjects.providers, clock))
    terminology = NatsTerminology(client_for(nc, upstream.subjects.terminology, clock))

    assert await scheduling.encounter("t1", "e1", token=TOKEN) == EncounterRecord(True, "p1")
    assert await scheduling.encounter("t1", "e2", token=TOKEN) == EncounterRecord(False, None)
    assert await providers.practitioner("t1", "dr-a", token=TOKEN) == PractitionerRecord(True, True)
    assert await providers.practitioner("t1", "dr-b", token=TOKEN) == PractitionerRecord(False, False)
    assert await terminology.validate_code(SNOMED, "73211009", "Diabetes", token=TOKEN) == CodeVerdict(
        True, "Diabetes", None
    )
    refused = await terminology.validate_code(SNOMED, "44054006", None, token=TOKEN)
    assert refused == CodeVerdict(valid=False, display=None, message="retired concept")

    assert upstream.scheduling.requests[0].body == {"tenant_id": "t1", "encounter_id": "e1"}
    assert upstream.providers.requests[0].body == {"tenant_id": "t1", "practitioner_id": "dr-a"}
    assert upstream.terminology.requests[0].body == {
        "system": SNOMED,
        "code": "73211009",
        "display": "Diabetes",
    }


async def test_positive_answers_are_cached_for_their_ttl_and_refusals_never(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.world.patients[("t1", "p1")] = True
    registration = NatsRegistration(client_for(nc, upstream.subjects.registration, clock))

    for _ in range(3):
        assert (await registration.patient("t1", "p1", token=TOKEN)).found
        assert not (await registration.patient("t1", "p-unknown", token=TOKEN)).found
    asked = [r.body["patient_id"] for r in upstream.registration.requests]
    assert asked == ["p1", "p-unknown", "p-unknown", "p-unknown"]

    # A patient registered after a refusal is found at once: the refusal was not kept.
    upstream.world.patients[("t1", "p-unknown")] = True
    assert (await registration.patient("t1", "p-unknown", token=TOKEN)).found

    # Past the TTL the answer is asked for again (the patient may have been deactivated meanwhile).
    upstream.world.patients[("t1", "p1")] = False
    clock.now += 61
    assert await registration.patient("t1", "p1", token=TOKEN) == PatientRecord(True, False)


async def test_a_slow_service_is_unavailable_after_the_timeout(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.registration.delay_s = 1.0
    registration = NatsRegistration(client_for(nc, upstream.subjects.registration, clock, timeout_s=0.2))
    with pytest.raises(Unavailable, match="no reply within 200 ms") as raised:
        await registration.patient("t1", "p1", token=TOKEN)
    assert raised.value.what == "registration"
    assert len(upstream.registration.requests) == 1


async def test_an_absent_service_is_unavailable_at_once(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    await upstream.registration.stop()
    registration = NatsRegistration(client_for(nc, upstream.subjects.registration, clock, timeout_s=5))
    with pytest.raises(Unavailable, match="no responders"):
        await registration.patient("t1", "p1", token=TOKEN)


@pytest.mark.parametrize(
    "reply",
    [
        b"not json",
        b"[]",
        b'{"found": "yes", "active": true}',
        b'{"found": true}',
        b'{"found": 1, "active": 1}',
        b"",
    ],
)
async def test_a_reply_that_is_not_the_contracts_shape_counts_as_silence(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock, reply: bytes
) -> None:
    upstream.registration.raw_reply = reply
    client = client_for(nc, upstream.subjects.registration, clock, timeout_s=0.5)
    with pytest.raises(Unavailable, match="registration unavailable"):
        await NatsRegistration(client).patient("t1", "p1", token=TOKEN)
    assert state_of(client.breaker) is CircuitState.CLOSED  # one silence is not yet a pattern


async def test_an_encounter_found_without_its_patient_is_no_answer(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.scheduling.raw_reply = b'{"found": true}'
    scheduling = NatsScheduling(client_for(nc, upstream.subjects.scheduling, clock))
    with pytest.raises(Unavailable, match="without its patient_id"):
        await scheduling.encounter("t1", "e1", token=TOKEN)


async def test_a_flapping_service_opens_its_circuit_then_closes_it_when_it_answers_again(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    upstream.world.patients[("t1", "p1")] = True
    client = client_for(nc, upstream.subjects.registration, clock, failures=3)
    registration = NatsRegistration(client)

    # Given the service goes away: three silences in a row open the circuit
    await upstream.registration.stop()
    for _ in range(3):
        with pytest.raises(Unavailable, match="no responders"):
            await registration.patient("t1", "p-new", token=TOKEN)
    assert state_of(client.breaker) is CircuitState.OPEN

    # When it is back, an open circuit still fails fast, without asking it
    await upstream.registration.start()
    with pytest.raises(Unavailable, match="circuit open"):
        await registration.patient("t1", "p1", token=TOKEN)
    assert upstream.registration.requests == []

    # Then after the reset time one probe goes out; it fails while the service is away again
    await upstream.registration.stop()
    clock.now += 10
    with pytest.raises(Unavailable, match="no responders"):
        await registration.patient("t1", "p1", token=TOKEN)
    assert state_of(client.breaker) is CircuitState.OPEN  # a failed probe opens it again at once
    with pytest.raises(Unavailable, match="circuit open"):
        await registration.patient("t1", "p1", token=TOKEN)

    # And the next probe, with the service back, closes it: requests flow again
    await upstream.registration.start()
    clock.now += 10
    assert await registration.patient("t1", "p1", token=TOKEN) == PatientRecord(True, True)
    assert state_of(client.breaker) is CircuitState.CLOSED
    assert await registration.patient("t1", "p2", token=TOKEN) == PatientRecord(False, False)
    assert [r.body["patient_id"] for r in upstream.registration.requests] == ["p1", "p2"]


async def test_refusals_are_answers_and_keep_the_circuit_closed(
    nc: NatsClient, upstream: UpstreamResponders, clock: FakeClock
) -> None:
    client = client_for(nc, upstream.subjects.registration, clock, failures=2)
    for n in range(5):
        assert not (await NatsRegistration(client).patient("t1", f"p{n}", token=TOKEN)).found
    assert state_of(client.breaker) is CircuitState.CLOSED
