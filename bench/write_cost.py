"""What one `careplan.create` costs the database: WAL, heap tuples and index growth per command, measured
around `--creates` sequential creates through `careplan serve` on a fresh database after a CHECKPOINT
(so every run pays the same full-page images). `python -m bench.write_cost [--creates N]`.

A GIN index's pending list is merged before each snapshot, so that deferred cost is counted too. WAL is
the server's whole WAL (pg_stat_wal), so it includes the relay's own work on the outbox rows (marking them
published before migration 0008, deleting them since) and anything else the server does meanwhile: use
the embedded server (leave `CAREPLAN_BENCH_DATABASE_URL` unset) to have it to yourself."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import asyncpg
import orjson

from bench.commands import command_client
from bench.infra import Servers, careplan_serve, servers
from bench.workload import new_plan

_TABLES = "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables ORDER BY 1"
_INDEXES = (
    "SELECT c.relname, i.relname, pg_relation_size(i.oid) FROM pg_index x "
    "JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' ORDER BY 1, 2"
)
_CLEAN_PENDING_LISTS = (
    "SELECT gin_clean_pending_list(i.oid) FROM pg_class i JOIN pg_am a ON a.oid = i.relam "
    "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE a.amname = 'gin' AND n.nspname = 'public'"
)
_WAL = "SELECT wal_records, wal_fpi, wal_bytes::bigint FROM pg_stat_wal"


async def run_write_cost(running: Servers, *, creates: int) -> dict[str, Any]:
    database = await running.fresh_database()
    token = running.keys.mint(tenant_id="write-cost", roles=["clinician"])
    async with careplan_serve(running, database, name="write-cost") as _serve:
        admin = await asyncpg.connect(database.admin)
        try:
            async with command_client(running) as client:
                for n in range(20):  # warm the service and the tables' first pages
                    await client.send("careplan.create", new_plan(f"warm-{n}"), token)
                await asyncio.sleep(12)  # the relay's updates and the statistics of the warm-up
                await admin.execute("CHECKPOINT")
                before = await _snapshot(admin)
                for n in range(creates):
                    reply = await client.send("careplan.create", new_plan(f"p-{n}"), token)
                    if not reply.get("ok"):
                        raise RuntimeError(f"careplan.create failed: {reply}")
                # The relay's updates, and the service's backends flushing their statistics (an idle
                # backend flushes within 10 s).
                await asyncio.sleep(12)
                after = await _snapshot(admin)
        finally:
            await admin.close()
    return _per_create(before, after, creates)


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    # A GIN index's pending list is merged into the index later (by vacuum, or by the insert that fills
    # it): merged here, so its cost counts against the creates that filled it.
    await conn.execute(_CLEAN_PENDING_LISTS)
    await conn.execute("SELECT pg_stat_force_next_flush()")
    return {
        "wal": tuple(await conn.fetchrow(_WAL)),
        "tables": {r[0]: tuple(r[1:]) for r in await conn.fetch(_TABLES)},
        "indexes": {(r[0], r[1]): r[2] for r in await conn.fetch(_INDEXES)},
    }


def _per_create(before: dict[str, Any], after: dict[str, Any], creates: int) -> dict[str, Any]:
    wal = [(a - b) / creates for a, b in zip(after["wal"], before["wal"], strict=True)]
    tables = {}
    for name, counts in after["tables"].items():
        old = before["tables"].get(name, (0, 0, 0, 0))
        ins, upd, hot, dele = ((a - b) / creates for a, b in zip(counts, old, strict=True))
        if ins or upd or dele:
            tables[name] = {"inserted": ins, "updated": upd, "hot_updated": hot, "deleted": dele}
    indexes = {
        f"{table}.{index}": round((size - before["indexes"].get((table, index), 0)) / creates, 1)
        for (table, index), size in after["indexes"].items()
        if size != before["indexes"].get((table, index), 0)
    }
    return {
        "creates": creates,
        "wal_records_per_create": round(wal[0], 1),
        "wal_fpi_per_create": round(wal[1], 2),
        "wal_bytes_per_create": round(wal[2]),
        "heap_tuples_written_per_create": round(
            sum(t["inserted"] + t["updated"] + t["deleted"] for t in tables.values()), 2
        ),
        "tables_per_create": tables,
        "index_bytes_grown_per_create": indexes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.write_cost", description=__doc__)
    parser.add_argument("--creates", type=int, default=500)
    args = parser.parse_args()
    with servers() as running:
        result = asyncio.run(run_write_cost(running, creates=args.creates))
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
