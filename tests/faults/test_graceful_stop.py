"""Graceful stop with commands in flight (issue 5, scenario 7; issue 9): on SIGTERM readiness goes false
first; the commands being processed finish, commit, reply and are acknowledged within the grace period;
the ones not yet started stay in the stream for the next process, which applies each once. When the grace
period is too short for them, they are handed back at once and the next process applies each once."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import orjson
from sqlalchemy import text

from service.dev_identity import DevKeys
from storage.database import create_engine
from tests.faults.lab import Lab, ServeProcess, until
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


async def _slow_down_writes(lab: Lab) -> None:
    engine = create_engine(lab.database.admin, pool_size=1)
    async with engine.begin() as conn:
        for statement in SLOW_WRITES:
            await conn.execute(text(statement))
    await engine.dispose()


async def _all_workers_busy(lab: Lab) -> None:
    async def busy() -> bool:
        sleeping = await lab.scalar("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
        return bool(sleeping == WORKERS)

    await until(busy, 30, f"{WORKERS} commands in flight")


async def _readiness_after_sigterm(process: ServeProcess) -> int | None:
    """SIGTERM, then the first answer of /readyz (None if the listener was already gone)."""
    process.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.1)
    try:
        return (await process.readiness())[0]
    except aiohttp.ClientConnectionError:
        return None


async def test_sigterm_lets_commands_in_flight_finish_and_leaves_the_rest_queued(
    lab: Lab, keys: DevKeys
) -> None:
    await _slow_down_writes(lab)
    first = lab.serve(
        "first", workers=WORKERS, ack_wait_s=GRACE_S, shutdown_grace_s=GRACE_S, drain_delay_s=0.5
    )
    await first.ready()
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        for _ in range(3 * WORKERS):
            await load.send("careplan.create", PLAN)

        # Given WORKERS commands inside their transactions
        await _all_workers_busy(lab)

        # When the process is asked to stop, readiness goes false first
        asked_at = time.monotonic()
        assert await _readiness_after_sigterm(first) == 503
        code = await first.exited(timeout=GRACE_S + 15)
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

    # Its log was JSON throughout, one line per answered command, with the command's ids.
    answered = [r for r in first.log_records() if r["logger"] == "careplan.commands"]
    assert {r["command_id"] for r in answered} == set(finished)
    assert all(r["tenant_id"] == TENANT and r["outcome"] == "ok" for r in answered)


async def test_commands_still_running_when_the_grace_period_ends_are_handed_back(
    lab: Lab, keys: DevKeys
) -> None:
    await _slow_down_writes(lab)
    grace_s = SLOW_COMMIT_S / 4
    first = lab.serve("first", workers=WORKERS, ack_wait_s=GRACE_S, shutdown_grace_s=grace_s)
    await first.ready()
    nc = await lab.connect()
    try:
        load = CommandLoad(nc, keys.mint(tenant_id=TENANT, roles=["clinician"]))
        await load.start()
        for _ in range(2 * WORKERS):
            await load.send("careplan.create", PLAN)
        await _all_workers_busy(lab)

        # When SIGTERM gives the commands in flight less time than they need
        asked_at = time.monotonic()
        code = await first.terminate(timeout=GRACE_S)
        stop_s = time.monotonic() - asked_at

        # Then the process still exits cleanly, soon after the grace period, having committed only what
        # it answered, and said which commands it handed back
        assert code == 0, first.log()[-3000:]
        assert stop_s < SLOW_COMMIT_S, stop_s
        finished = [c for c in load.sent if load.replies.get(c)]
        assert await lab.scalar("SELECT count(*) FROM care_plans") == len(finished)
        handed_back = first.log_lines("shutdown grace period ended: handed back")
        assert len(handed_back) == WORKERS, first.log()[-3000:]

        # And the next process applies every one of them once, the handed-back ones too, long before
        # their ack wait would have let it (the nak makes them due at once)
        second = lab.serve("second", workers=WORKERS, ack_wait_s=GRACE_S)
        await second.ready()
        started_at = time.monotonic()
        await load.answered(timeout=GRACE_S)
        answered_s = time.monotonic() - started_at
        assert answered_s < GRACE_S / 2, answered_s
        assert all(len(replies) == 1 for replies in load.replies.values()), load.replies
        await assert_each_command_applied_once(lab, load)
        await assert_events_once_in_order(lab, load, nc)
        print(
            f"grace {grace_s}s exceeded: stopped in {stop_s:.1f}s, {len(handed_back)} handed back, "
            f"all {len(load.sent)} applied once by the next process within {answered_s:.1f}s"
        )
    finally:
        await nc.close()


async def test_sigterm_lets_rest_commands_in_flight_finish_with_their_answers(
    lab: Lab, keys: DevKeys
) -> None:
    await _slow_down_writes(lab)
    first = lab.serve("first", workers=WORKERS, shutdown_grace_s=GRACE_S)
    await first.ready()
    token = keys.mint(tenant_id=TENANT, roles=["clinician"])

    async def create(http: aiohttp.ClientSession) -> int:
        async with http.post(
            f"{first.http_url}/api/v1/care-plans",
            data=orjson.dumps(PLAN),
            headers={"Authorization": f"Bearer {token}"},
        ) as response:
            return response.status

    async with aiohttp.ClientSession() as http:
        # Given REST commands inside their transactions
        requests = [asyncio.create_task(create(http)) for _ in range(WORKERS)]
        await _all_workers_busy(lab)
        # When the process is asked to stop
        asked_at = time.monotonic()
        code = await first.terminate(timeout=GRACE_S + 15)
        stop_s = time.monotonic() - asked_at
        statuses = await asyncio.gather(*requests)

    # Then each caller got its 201, each plan was committed once, and the process exited cleanly
    assert statuses == [201] * WORKERS
    assert code == 0, first.log()[-3000:]
    assert stop_s < GRACE_S, stop_s
    assert await lab.scalar("SELECT count(*) FROM care_plans") == WORKERS
    print(f"graceful stop over HTTP: {WORKERS} requests in flight answered 201, stopped in {stop_s:.1f}s")
