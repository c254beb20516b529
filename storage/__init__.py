"""Postgres: tables, migrations, the unit of work, read queries and the outbox relay."""
