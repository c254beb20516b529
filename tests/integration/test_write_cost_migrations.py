"""Migrations that cut what a command writes. 0008: the outbox keeps only waiting rows; existing rows move
as they should, the downgrade brings 0006's outbox back, and a relay of this release never leads on the
older schema. 0009: Provenance loses the index its readers cannot use."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from storage.database import create_engine, drop_database, ensure_database, with_database
from storage.migrate import alembic_config
from storage.outbox_relay import OutboxRelay, RelaySettings


@pytest.fixture
async def empty_database(postgres_server_url: str) -> AsyncIterator[str]:
    """The admin URL of a database of the test's own with no schema yet."""
    name = f"careplan_migration_{uuid.uuid4().hex[:10]}"
    await ensure_database(postgres_server_url, name)
    try:
        yield with_database(postgres_server_url, name)
    finally:
        await drop_database(postgres_server_url, name)


async def alembic_to(admin_url: str, revision: str, *, down: bool = False) -> None:
    step = command.downgrade if down else command.upgrade
    engine = create_engine(admin_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: step(alembic_config(sync), revision))
    finally:
        await engine.dispose()


async def outbox_shape(admin_url: str) -> dict[str, Any]:
    engine = create_engine(admin_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return {
                "columns": list(
                    (
                        await conn.execute(
                            text(
                                "SELECT column_name FROM information_schema.columns "
                                "WHERE table_name = 'outbox' ORDER BY ordinal_position"
                            )
                        )
                    ).scalars()
                ),
                "indexes": sorted(
                    (
                        await conn.execute(
                            text("SELECT indexname FROM pg_indexes WHERE tablename = 'outbox'")
                        )
                    ).scalars()
                ),
                "parked_table": await conn.scalar(text("SELECT to_regclass('outbox_parked') IS NOT NULL")),
            }
    finally:
        await engine.dispose()


ROW = "id, tenant_id, event_id, subject, payload, created_at"
WAITING_0006 = "published_at IS NULL AND parked_at IS NULL"
PARKED_ROWS_0006 = (
    f"SELECT {ROW}, parked_at, last_error FROM outbox WHERE published_at IS NULL AND parked_at IS NOT NULL"
)
# 0006's rows: (subject, age of the row, published … ago, parked … ago)
ROWS_0006 = (
    ("careplan.evt.t1.a", timedelta(minutes=2), None, None),
    ("careplan.evt.t1.b", timedelta(days=2), timedelta(days=1), None),
    ("careplan.nowhere.t2", timedelta(days=1), None, timedelta(hours=23)),
    ("careplan.evt.t2.c", timedelta(days=8), timedelta(days=7, hours=1), None),
    ("careplan.evt.t3.d", timedelta(0), None, None),
)
INSERT_0006 = text(
    "INSERT INTO outbox (tenant_id, event_id, subject, payload, created_at, published_at, attempts, "
    "last_error, parked_at) VALUES (split_part(:s, '.', 3), gen_random_uuid(), :s, convert_to(:s, 'UTF8'), "
    "now() - CAST(:age AS interval), now() - CAST(:pub AS interval), "
    "CASE WHEN CAST(:park AS interval) IS NULL THEN 0 ELSE 1 END, "
    "CASE WHEN CAST(:park AS interval) IS NULL THEN NULL ELSE 'no stream takes it' END, "
    "now() - CAST(:park AS interval))"
)


async def test_0008_keeps_waiting_rows_drops_published_ones_moves_parked_ones_and_downgrades(
    empty_database: str,
) -> None:
    # Given the outbox of 0006: two rows waiting, two published, one parked
    await alembic_to(empty_database, "0006")
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.begin() as conn:
            for subject, age, published, parked in ROWS_0006:
                await conn.execute(INSERT_0006, {"s": subject, "age": age, "pub": published, "park": parked})
            waiting = (
                await conn.execute(text(f"SELECT {ROW} FROM outbox WHERE {WAITING_0006} ORDER BY id"))
            ).all()
            parked_rows = (await conn.execute(text(PARKED_ROWS_0006))).all()
        assert (len(waiting), len(parked_rows)) == (2, 1)

        # When migrated to 0008
        await alembic_to(empty_database, "0008")

        # Then the outbox holds the waiting rows as they were, with only its primary key
        assert await outbox_shape(empty_database) == {
            "columns": ["id", "tenant_id", "event_id", "subject", "payload", "created_at"],
            "indexes": ["outbox_pkey"],
            "parked_table": True,
        }
        async with engine.connect() as conn:
            assert (await conn.execute(text(f"SELECT {ROW} FROM outbox ORDER BY id"))).all() == waiting
            # and the parked row is in outbox_parked with its time and reason; the published ones are gone
            moved = (
                await conn.execute(text(f"SELECT {ROW}, parked_at, last_error FROM outbox_parked"))
            ).all()
            assert moved == parked_rows

        # When migrated back down
        await alembic_to(empty_database, "0006", down=True)

        # Then the outbox of 0006 is back, the parked row in it again, the waiting rows still waiting
        shape = await outbox_shape(empty_database)
        assert shape["columns"][6:] == ["published_at", "attempts", "last_error", "parked_at"]
        assert shape["indexes"] == [
            "ix_outbox_parked",
            "ix_outbox_published",
            "ix_outbox_unpublished",
            "outbox_event_id_key",
            "outbox_pkey",
        ]
        assert shape["parked_table"] is False
        async with engine.connect() as conn:
            assert (
                await conn.execute(text(f"SELECT {ROW} FROM outbox WHERE {WAITING_0006} ORDER BY id"))
            ).all() == waiting
            parked_again = (await conn.execute(text(f"{PARKED_ROWS_0006} AND attempts = 1"))).all()
            assert parked_again == parked_rows
        # And up again, as a deploy rolled back is retried
        await alembic_to(empty_database, "head")
        assert (await outbox_shape(empty_database))["indexes"] == ["outbox_pkey"]
    finally:
        await engine.dispose()


async def test_a_relay_of_this_release_stands_by_until_its_outbox_schema_has_run(empty_database: str) -> None:
    """Rolling deploy, new code first: before 0008 the outbox also holds published rows (kept for the
    retention period), which this relay would take for waiting ones and publish again; before 0013 its
    rows have no `traceparent` to read."""
    await alembic_to(empty_database, "0006")
    engine = create_engine(empty_database, pool_size=2)
    published: list[str] = []

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> None:
        published.append(subject)

    relay = OutboxRelay(engine, publish, RelaySettings(poll_interval_s=0.1))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO outbox (tenant_id, event_id, subject, payload, published_at) VALUES "
                    "('t1', gen_random_uuid(), 'careplan.evt.t1.published', '\\x01', now()), "
                    "('t1', gen_random_uuid(), 'careplan.evt.t1.waiting', '\\x02', NULL)"
                )
            )
        await asyncio.sleep(1.5)  # three standby periods
        assert (relay.is_leader, published) == (False, [])
        await alembic_to(empty_database, "0008")
        await asyncio.sleep(0.5)
        assert (relay.is_leader, published) == (False, [])  # 0013 is still to come
        # When 0013 runs, the relay leads, and publishes the waiting row only
        await alembic_to(empty_database, "0013")
        async with asyncio.timeout(10):
            while not published:  # noqa: ASYNC110 (polling the fake's record)
                await asyncio.sleep(0.05)
        assert relay.is_leader
        assert published == ["careplan.evt.t1.waiting"]
    finally:
        stop.set()
        await task
        await engine.dispose()


# 0009: Provenance loses the index its readers cannot use.


async def test_0009_drops_the_provenance_targets_index_and_its_downgrade_brings_it_back(
    empty_database: str,
) -> None:
    async def indexes() -> set[str]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text("SELECT indexname FROM pg_indexes WHERE tablename = 'provenance'")
                )
                return {row[0] for row in rows}
        finally:
            await engine.dispose()

    await alembic_to(empty_database, "0008")
    assert "ix_provenance_targets" in await indexes()
    await alembic_to(empty_database, "0009")
    assert "ix_provenance_targets" not in await indexes()
    assert {"ix_provenance_recorded", "ix_provenance_patient"} <= await indexes()
    await alembic_to(empty_database, "0008", down=True)
    assert "ix_provenance_targets" in await indexes()


# 0010: the patient references are searched on `patient_id`, their index rows go.


async def test_0010_drops_the_patient_reference_rows_and_its_downgrade_rebuilds_them(
    empty_database: str,
) -> None:
    async def references() -> list[tuple[str, str, str, str]]:
        engine = create_engine(empty_database, pool_size=1)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT resource_type, param, ref_type, ref_id FROM search_reference ORDER BY 1, 2, 4"
                    )
                )
                return [(row[0], row[1], row[2], row[3]) for row in rows]
        finally:
            await engine.dispose()

    await alembic_to(empty_database, "0009")
    engine = create_engine(empty_database, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT set_config('app.tenant_id', 't1', true)"))
            await conn.execute(
                text(
                    "INSERT INTO care_plans (tenant_id, id, version, patient_id, status, last_updated, "
                    "resource) VALUES ('t1', 'cp1', 1, 'p1', 'active', now(), '{}')"
                )
            )
            await conn.execute(
                text(
                    "INSERT INTO search_reference VALUES ('t1', 'CarePlan', 'cp1', 'patient', 'Patient', "
                    "'p1'), ('t1', 'CarePlan', 'cp1', 'subject', 'Patient', 'p1'), "
                    "('t1', 'CarePlan', 'cp1', 'goal', 'Goal', 'g1')"
                )
            )
    finally:
        await engine.dispose()
    await alembic_to(empty_database, "0010")
    assert await references() == [("CarePlan", "goal", "Goal", "g1")]
    await alembic_to(empty_database, "0009", down=True)
    assert await references() == [
        ("CarePlan", "goal", "Goal", "g1"),
        ("CarePlan", "patient", "Patient", "p1"),
        ("CarePlan", "subject", "Patient", "p1"),
    ]
