"""`careplan serve` asked for replicated streams on a single nats-server (CONTRACT §11): it refuses to start,
in one line naming the setting and the server's reason, and changes none of the streams."""

from __future__ import annotations

import nats
from nats.js.errors import NotFoundError

from service.dev_identity import DevKeys
from service.topology import STREAMS
from tests.conftest import DatabaseUrls
from tests.e2e.test_cli import READY, clean_env, run_cli


async def test_serve_refuses_three_replicas_on_a_single_server_in_one_line(
    database: DatabaseUrls, nats_url: str, keys: DevKeys
) -> None:
    # Given one nats-server (not a cluster) and CAREPLAN_STREAM_REPLICAS=3
    env = clean_env(
        CAREPLAN_NATS_URL=nats_url,
        CAREPLAN_DATABASE_URL=database.runtime,
        CAREPLAN_SYSTEM_DATABASE_URL=database.system,
        CAREPLAN_JWKS_URL=keys.jwks_url,
        CAREPLAN_HTTP_PORT="0",
        CAREPLAN_STREAM_REPLICAS="3",
    )

    # When `careplan serve` starts
    done = run_cli(["serve"], env=env, timeout=30)

    # Then it exits 2 with one line: the setting, the stream and what nats-server said
    assert done.returncode == 2, f"stdout: {done.stdout}\nstderr: {done.stderr}"
    assert READY not in done.stdout
    assert done.stderr.splitlines() == [
        "careplan serve: refusing to start: stream CAREPLAN_COMMANDS with 3 replicas "
        "(CAREPLAN_STREAM_REPLICAS=3): nats-server says replicas > 1 not supported in non-clustered mode "
        "(error 10074)"
    ], done.stderr
    # and no stream was changed
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for config in STREAMS:
            try:
                replicas = (await js.stream_info(str(config.name))).config.num_replicas
            except NotFoundError:
                continue
            assert replicas == 1, config.name
    finally:
        await nc.close()
