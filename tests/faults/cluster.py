"""A nats-server cluster of the test's own (three nodes, JetStream on each, a store dir each), so a test may
kill -9 the node that leads a stream and watch the others elect a new leader."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from service.embedded import EmbeddedNats

CLUSTER_NAME = "careplan"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ClusterNode:
    name: str
    server: EmbeddedNats
    client_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"


class NatsCluster:
    """Nodes n1 … nN routed to each other; each keeps its ports across a restart, so the others (and the
    clients, which know every URL) find it again."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        client_ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        self.nodes: list[ClusterNode] = []
        for index in range(size):
            name = f"n{index + 1}"
            routes = ",".join(
                f"nats://127.0.0.1:{port}" for port in route_ports if port != route_ports[index]
            )
            args = [
                "--name", name,
                "--cluster", f"nats://127.0.0.1:{route_ports[index]}",
                "--routes", routes,
                "--cluster_name", CLUSTER_NAME,
            ]  # fmt: skip
            server = EmbeddedNats(workdir / name, client_ports[index], args)
            self.nodes.append(ClusterNode(name, server, client_ports[index]))

    @property
    def urls(self) -> str:
        """Every node's URL, comma separated, as `CAREPLAN_NATS_URL` takes them."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> ClusterNode:
        return next(node for node in self.nodes if node.name == name)

    def start(self) -> None:
        for node in self.nodes:
            node.server.start()

    def kill(self, name: str) -> None:
        """SIGKILL: no lame-duck hand-over of leadership, no clean JetStream shutdown."""
        server = self.node(name).server
        if server.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.pid, signal.SIGKILL)
        server.stop()  # reaps it and clears its pid file

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()


async def until_jetstream_answers(js: JetStreamContext, timeout: float = 60.0) -> None:
    """Until the cluster has elected its meta leader (JetStream's API answers nothing before)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await js.account_info()
                return
            except Exception:
                await asyncio.sleep(0.2)


async def replicate(js: JetStreamContext, stream: str, replicas: int, timeout: float = 60.0) -> None:
    """Scale `stream` to `replicas` and wait until every replica is current (caught up with its leader)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                config = (await js.stream_info(stream)).config
                if config.num_replicas != replicas:
                    await js.update_stream(config.evolve(num_replicas=replicas))
                cluster = (await js.stream_info(stream)).cluster
            except Exception:  # peers still joining, or the update still being applied
                await asyncio.sleep(0.2)
                continue
            if cluster is not None and cluster.leader:
                current = [follower for follower in cluster.replicas or [] if follower.current]
                if len(current) == replicas - 1:
                    return
            await asyncio.sleep(0.2)


async def stream_leader(
    js: JetStreamContext, stream: str, *, other_than: str | None = None, timeout: float = 60.0
) -> str:
    """The node leading `stream` once it has one (and, after a kill, once it is not the killed node)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):  # no leader yet: the request times out or is refused
                cluster = (await js.stream_info(stream)).cluster
                if cluster is not None and cluster.leader and cluster.leader != other_than:
                    return cluster.leader
            await asyncio.sleep(0.1)
