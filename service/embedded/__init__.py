"""Embedded PostgreSQL and NATS servers for local runs and tests.

Both servers keep their state in a caller-chosen directory so that data survives restarts, and both recover
from a previous owner that crashed or was SIGKILLed (stale pid files, orphaned server processes, leftover
sockets): `postgres_server`, `nats_server`, and the process helpers they share in `processes`."""
