"""The Postgres primary lost under load and its streaming replica promoted (issue 16): `careplan serve`, given
both hosts with `target_session_attrs=read-write` in CAREPLAN_DATABASE_URL and CAREPLAN_SYSTEM_DATABASE_URL,
finds the new primary by itself; every command is answered and applied exactly once, every event published
once, in order.

Two ways to lose it: as its machine dies (`pg_ctl stop -m immediate`: no checkpoint, nothing more sent to the
standby) with a synchronous standby, so every commit the service was told of is on the standby (what a
deployment that must lose no acknowledged write runs; with an asynchronous standby the same crash may lose
the last commits); and a planned switchover (a fast shutdown, which sends the standby all of its WAL before
it exits) with an asynchronous standby."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from service.dev_identity import DevKeys
from service.embedded.postgres_server import EmbeddedPostgres
from tests.conftest import RUNTIME_ROLE, SYSTEM_ROLE, DatabaseUrls
from tests.faults.lab import Lab, fault_lab, until
from tests.faults.load import CommandLoad, assert_each_command_applied_once, assert_events_once_in_order
from tests.replica import ReplicatedPostgres, crash

TENANT = "t-pg-failover"
PLANS = 10
IN_FLIGHT = 300
SENT_WITHOUT_PRIMARY = 50
DETECTION_S = 2.0  # what a failover manager takes to notice the primary is gone and promote the standby


@dataclass(frozen=True)
class PrimaryLoss:
    synchronous: bool  # the standby confirms each commit before COMMIT returns
    lose: Callable[[EmbeddedPostgres], None]


CRASH = PrimaryLoss(synchronous=True, lose=crash)
SWITCHOVER = PrimaryLoss(synchronous=False, lose=EmbeddedPostgres.stop)


@pytest.fixture
async def failover_lab(
    request: pytest.FixtureRequest, postgres_server_url: str, keys: DevKeys, lab_dir: Path
) -> AsyncIterator[tuple[Lab, ReplicatedPostgres]]:
    """A lab whose Postgres is a primary with a streaming standby, and whose URLs name both."""
    loss: PrimaryLoss = request.param
    with ReplicatedPostgres(lab_dir / "pg", synchronous=loss.synchronous) as postgres:
        await postgres.replicating()
        async with fault_lab(postgres_server_url, keys, lab_dir, own_postgres=postgres.primary) as lab:
            lab.database = both_hosts(postgres, lab.database.name)
            yield lab, postgres


def both_hosts(postgres: ReplicatedPostgres, database: str) -> DatabaseUrls:
    """Every role's URL naming the primary, then the standby, with target_session_attrs=read-write."""
    return DatabaseUrls(
        admin=postgres.url("postgres", None, database),
        runtime=postgres.url(*RUNTIME_ROLE, database),
        system=postgres.url(*SYSTEM_ROLE, database),
        server_admin=postgres.url("postgres", None, "postgres"),
        name=database,
    )


@pytest.mark.parametrize(
    ("failover_lab", "loss"),
    [
        pytest.param(CRASH, CRASH, id="crash-synchronous-standby"),
        pytest.param(SWITCHOVER, SWITCHOVER, id="switchover-asynchronous-standby"),
    ],
    indirect=["failover_lab"],
)
async def test_the_primary_lost_under_load_and_its_replica_promoted_applies_every_command_once(
    failover_lab: tuple[Lab, ReplicatedPostgres], loss: PrimaryLoss, keys: DevKeys
) -> None:
    lab, postgres = failover_lab
    # Deliveries enough to outlast the failover: retries after 1, 2, 2, 2 … s
    service = lab.serve("a", max_deliver=10, nak_backoff_max_s=2)
    await service.ready()
    nc = await lab.connect()
    rng = random.Random(16)
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        await load.create_plans(PLANS)
        in_flight = await load.send_changes(IN_FLIGHT, rng)
        await load.at_least_answered(PLANS + 40)

        # When the primary dies with commands in flight, more arrive, and the standby is promoted soon after
        loss.lose(postgres.primary)
        lost_at = time.monotonic()
        answered_before = load.answered_count()
        assert answered_before < PLANS + IN_FLIGHT, "the load finished before the primary died"
        sent_without_primary = await load.send_changes(SENT_WITHOUT_PRIMARY, rng)
        await asyncio.sleep(max(0.0, DETECTION_S - (time.monotonic() - lost_at)))
        answered_without_primary = load.answered_count() - answered_before
        postgres.standby.promote()
        promoted_at = time.monotonic()

        # Then the service finds the new primary by itself: commands are answered again
        await until(lambda: load.answered_count() > answered_before + answered_without_primary, 60, "a reply")
        first_reply_s = time.monotonic() - promoted_at
        # and every command is answered, applied once, and its events published once, in order
        await load.answered(timeout=120)
        all_answered_s = time.monotonic() - promoted_at
        assert all(load.replies[c][0]["ok"] for c in [*in_flight, *sent_without_primary])
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        assert (await service.readiness())[0] == 200
        assert await lab.scalar("SELECT NOT pg_is_in_recovery()")  # the lab's checks ran on the new primary
    finally:
        await nc.close()

    retries = service.log_lines("will retry in")
    retried = {line.split("command ", 1)[1].split()[1] for _, line in retries}
    assert retries, "no command was retried: the primary was not lost under load"
    how = "crash" if loss is CRASH else "switchover"
    print(
        f"postgres failover ({how}): {len(load.sent)} commands ({IN_FLIGHT} in flight, "
        f"{SENT_WITHOUT_PRIMARY} sent without a primary), {answered_before - PLANS} in-flight ones answered "
        f"before the primary went and {answered_without_primary} after (committed before); promoted "
        f"{DETECTION_S:.0f}s after its loss; first reply {first_reply_s:.1f}s after the promotion, all "
        f"answered after {all_answered_s:.1f}s; {len(retries)} retries of {len(retried)} commands; "
        "0 lost, 0 applied twice"
    )
