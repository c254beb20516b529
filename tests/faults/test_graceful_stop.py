"""Graceful stop with commands in flight (issue 5, scenario 7): on SIGTERM the commands being processed
finish, commit, reply and are acknowledged within the grace period; the ones not yet started stay in the
stream for the next process, which applies each once."""

from __future__ import annotations

import time

from sqlalchemy import text

from service.dev_identity import DevKeys
from storage.database import create_engine
from tests.faults.lab import Lab, until
from tests.faults.load import PLAN, CommandLoad, assert_each_command_applied_once, assert_events_once_in_order

TENANT = "t-stop"
WORKERS = 4
GRACE_S = 30
SLOW_COMMIT_S = 2

# Every command of TENANT takes SLOW_COMMIT_S inside its transaction, so several are surely in flight.
SLOW_WRITES = (
    f"""
    CREATE FUNCTION slow_writes() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
    BEGIN
        IF NEW.tenant_id = '{TENANT}' AND NEW.subject LIKE 'careplan.evt.%' THEN
            PERFORM pg_sleep({SLOW_COMMIT_S});
        END IF;
        RETURN NEW;
    END $$
    """,
    "CREATE TRIGGER slow_writes BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION slow_writes()",
)


async def test_sigterm_lets_commands_in_flight_finish_and_leaves_the_rest_queued(
    lab: Lab, keys: DevKeys
) -> None:
    engine = create_engine(lab.database.admin, pool_size=1)
    async with engine.begin() as conn:
        for statement in SLOW_WRITES:
            await conn.execute(text(statement))
    await engine.dispose()
    first = lab.serve("first", workers=WORKERS, ack_wait_s=GRACE_S)
    await first.ready()
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        for _ in range(3 * WORKERS):
            await load.send("careplan.create", PLAN)

        # Given WORKERS commands inside their transactions
        async def all_workers_busy() -> bool:
            sleeping = await lab.scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            return bool(sleeping == WORKERS)

        await until(all_workers_busy, 30, f"{WORKERS} commands in flight")

        # When the process is asked to stop
        asked_at = time.monotonic()
        code = await first.terminate(timeout=GRACE_S + 15)
        stop_s = time.monotonic() - asked_at

        # Then it exits cleanly within the grace period, having answered and acknowledged what it started
        assert code == 0, first.log()[-3000:]
        assert stop_s < GRACE_S, stop_s
        finished = [c for c in load.sent if load.replies.get(c)]
        assert len(finished) >= WORKERS
        assert all(load.replies[c][0]["ok"] for c in finished)
        assert await lab.scalar("SELECT count(*) FROM care_plans") == len(finished)
        consumer = await nc.jetstream().consumer_info("CAREPLAN_COMMANDS", "careplan-commands")
        assert consumer.num_ack_pending == 0, consumer
        assert consumer.num_pending == len(load.sent) - len(finished), consumer

        # And the next process takes the rest; nothing is applied or answered twice
        second = lab.serve("second", workers=WORKERS, ack_wait_s=GRACE_S)
        await second.ready()
        await load.answered(timeout=60)
        assert all(len(replies) == 1 for replies in load.replies.values()), load.replies
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        print(f"graceful stop: {len(finished)} in flight finished, stopped in {stop_s:.1f}s")
    finally:
        await nc.close()
