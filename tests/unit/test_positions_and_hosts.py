"""CONTRACT §11 without a server: the positions replies carry and FHIR reads send back, and the multi-host
URLs a failover-aware deployment gives (SQLAlchemy cannot parse libpq's `h1:p1,h2:p2`; we convert it)."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect

from schemas.replies import Reply, ResultBody
from service.settings import Settings
from storage.database import role_of, to_sqlalchemy_url
from storage.errors import is_transient
from storage.wal_position import WalPosition


def connect_args(url: str) -> dict[str, object]:
    """What asyncpg.connect would be called with."""
    _, kwargs = asyncpg_dialect().create_connect_args(to_sqlalchemy_url(url))  # type: ignore[no-untyped-call]
    return dict(kwargs)


def test_a_url_naming_two_hosts_connects_to_both_in_order_keeping_its_options() -> None:
    args = connect_args("postgresql://app:s%40cret@h1:5432,h2:5433/care?target_session_attrs=read-write")
    assert args == {
        "host": ["h1", "h2"],
        "port": [5432, 5433],
        "user": "app",
        "password": "s@cret",
        "database": "care",
        "target_session_attrs": "read-write",
    }


def test_a_host_without_a_port_gets_postgres_own_and_postgres_scheme_is_accepted() -> None:
    args = connect_args("postgres://app@db-a,db-b:6432/care")
    assert (args["host"], args["port"]) == (["db-a", "db-b"], [5432, 6432])
    assert role_of("postgres://app:pw@db-a,db-b/care").name == "app"


@pytest.mark.parametrize(
    ("url", "host", "port"),
    [
        ("postgresql://app@db/care", "db", None),
        ("postgresql://app@127.0.0.1:5433/care", "127.0.0.1", 5433),
        ("postgresql://app@/care?host=/run/a,/run/b&port=5432,5433", ["/run/a", "/run/b"], [5432, 5433]),
    ],
)
def test_single_host_and_query_host_urls_connect_as_before(url: str, host: object, port: object) -> None:
    args = connect_args(url)
    assert (args["host"], args.get("port")) == (host, port)


@pytest.mark.parametrize("hosts", ["[::1]:5432,h2", "h1:x,h2", ",h2"])
def test_a_multi_host_url_it_cannot_read_is_refused_by_name(hosts: str) -> None:
    with pytest.raises(ValueError, match="multi-host URL"):
        to_sqlalchemy_url(f"postgresql://app@{hosts}/care")


def test_no_host_taking_writes_is_a_failover_in_progress_and_retried() -> None:
    assert is_transient(asyncpg.TargetServerAttributeNotMatched("none of the hosts is read-write"))


@pytest.mark.parametrize("text", ["0/0", "0/16B3748", "16/B374D848", "FFFFFFFF/FFFFFFFF", " 1/a "])
def test_a_position_reads_back_as_postgres_writes_it(text: str) -> None:
    assert str(WalPosition.parse(text)) == text.strip().upper()


def test_positions_order_as_the_log_does() -> None:
    assert WalPosition.parse("0/FFFFFFFF") < WalPosition.parse("1/0") < WalPosition.parse("1/10")


@pytest.mark.parametrize("text", ["", "16B3748", "0/", "/1", "0/1/2", "123456789/0", "0/G", "-1/0", "0x1/0"])
def test_anything_else_is_not_a_position(text: str) -> None:
    with pytest.raises(ValueError, match="not a position"):
        WalPosition.parse(text)


def test_a_success_carries_its_position_and_an_error_has_none_to_carry() -> None:
    ok = Reply(
        command_id="c", ok=True, status=201, result=ResultBody(resource_type="CarePlan", id="p", version=1)
    )
    assert ok.at_position("0/1").to_wire()["result"]["position"] == "0/1"
    assert "position" not in ok.to_wire()["result"]  # the outcome as stored, before its commit
    refused = Reply(command_id="c", ok=False, status=409)
    assert refused.at_position("0/1") == refused


def test_reads_wait_half_a_second_for_the_replica_by_default() -> None:
    assert (Settings().read_database_url, Settings().read_wait_ms) == (None, 500)
