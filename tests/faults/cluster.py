"""A nats-server cluster of the test's own (three nodes, JetStream on each, a store dir each, a monitoring
port each), so a test may kill -9 the node that leads a stream or the JetStream meta group, or stop one for a
while, and watch the others elect new leaders and the node catch up when it returns."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from service.embedded.nats_server import EmbeddedNats

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
    monitor_port: int

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.server.pid is not None

    async def monitor(self, endpoint: str) -> dict[str, Any]:
        """One of the node's monitoring endpoints (`jsz`, `connz` …) as JSON."""
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"http://127.0.0.1:{self.monitor_port}/{endpoint}") as response,
        ):
            response.raise_for_status()
            body: dict[str, Any] = json.loads(await response.read())
            return body


class NatsCluster:
    """Nodes n1 … nN routed to each other; each keeps its ports across a restart, so the others (and the
    clients, which know every URL) find it again."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        client_ports = [free_port() for _ in range(size)]
        route_ports = [free_port() for _ in range(size)]
        monitor_ports = [free_port() for _ in range(size)]
        self.nodes: list[ClusterNode] = []
        self.frozen: set[str] = set()
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
                "--http_port", str(monitor_ports[index]),
            ]  # fmt: skip
            server = EmbeddedNats(workdir / name, client_ports[index], args)
            self.nodes.append(ClusterNode(name, server, client_ports[index], monitor_ports[index]))

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

    def freeze(self, name: str) -> None:
        """SIGSTOP: the node stops dead but its sockets stay open, as a paused VM or a partition looks;
        nothing tells its clients or its peers, who notice only when their pings or heartbeats go
        unanswered."""
        self._signal(name, signal.SIGSTOP)
        self.frozen.add(name)

    def thaw(self, name: str) -> None:
        """SIGCONT: a frozen node runs on from where it stopped."""
        self._signal(name, signal.SIGCONT)
        self.frozen.discard(name)

    def _signal(self, name: str, sig: signal.Signals) -> None:
        pid = self.node(name).server.pid
        assert pid is not None, f"{name} is not running"
        os.kill(pid, sig)

    def restart(self, name: str) -> None:
        """Start a killed or stopped node again, on its ports and its store."""
        self.node(name).server.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.server.stop()

    async def meta_leader(self, *, other_than: str | None = None, timeout: float = 60.0) -> str:
        """The node leading the JetStream meta group, as a running node's `/jsz` says (the JetStream API
        does not say), once there is one (and, after a kill, once it is not the killed node)."""
        async with asyncio.timeout(timeout):
            while True:
                for node in self.nodes:
                    if not node.running or node.name in self.frozen:
                        continue
                    with contextlib.suppress(Exception):  # the node still starting, or without a leader
                        leader = (await node.monitor("jsz"))["meta_cluster"].get("leader")
                        if leader and leader != other_than:
                            return str(leader)
                await asyncio.sleep(0.1)

    async def all_peers_current(self, timeout: float = 60.0) -> None:
        """Until the meta group's leader sees every other node as a current peer: before that, a stream
        asking for as many replicas as there are nodes finds "no suitable peers for placement"."""
        async with asyncio.timeout(timeout):
            while True:
                for node in self.nodes:
                    with contextlib.suppress(Exception):  # a node still starting, or without a leader
                        meta = (await node.monitor("jsz"))["meta_cluster"]
                        peers = meta.get("replicas") or []
                        leads = meta.get("leader") == node.name and len(peers) == len(self.nodes) - 1
                        if leads and all(peer.get("current") and not peer.get("offline") for peer in peers):
                            return
                await asyncio.sleep(0.1)

    async def leaders(self) -> dict[str, str]:
        """Who leads what, as a running node sees it: each stream, each consumer (`STREAM/consumer`) and
        the meta group (`meta`); a group that has no leader just now is left out."""
        for node in self.nodes:
            if not node.running or node.name in self.frozen:
                continue
            with contextlib.suppress(Exception):  # a node still starting: ask the next
                jsz = await node.monitor("jsz?streams=true&consumers=true")
                led = {"meta": jsz["meta_cluster"].get("leader")}
                for account in jsz.get("account_details") or []:
                    for stream in account.get("stream_detail") or []:
                        led[stream["name"]] = (stream.get("cluster") or {}).get("leader")
                        for consumer in stream.get("consumer_detail") or []:
                            key = f"{stream['name']}/{consumer['name']}"
                            led[key] = (consumer.get("cluster") or {}).get("leader")
                return {asset: str(leader) for asset, leader in led.items() if leader}
        raise AssertionError("no running node answers /jsz")


async def until_jetstream_answers(js: JetStreamContext, timeout: float = 60.0) -> None:
    """Until the cluster has elected its meta leader (JetStream's API answers nothing before)."""
    async with asyncio.timeout(timeout):
        while True:
            try:
                await js.account_info()
                return
            except Exception:
                await asyncio.sleep(0.2)


async def until_replicated(
    js: JetStreamContext, stream: str, replicas: int, *, consumer: str | None = None, timeout: float = 90.0
) -> None:
    """Until `stream` (and its `consumer`) has a leader and `replicas - 1` followers, every one current
    (caught up with its leader): the state a test must reach before it kills a node."""

    async def replicated() -> bool:
        info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
        cluster = info.cluster
        if cluster is None or not cluster.leader:
            return False
        return len([follower for follower in cluster.replicas or [] if follower.current]) == replicas - 1

    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):  # peers still joining, or a leader still being elected
                if await replicated():
                    return
            await asyncio.sleep(0.2)


async def move_leader(
    nc: NatsClient, stream: str, to: str, *, consumer: str | None = None, timeout: float = 60.0
) -> None:
    """Ask the leader of `stream` (or of its `consumer`) to step down in favour of node `to`."""
    api = f"CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}" if consumer else f"STREAM.LEADER.STEPDOWN.{stream}"
    js = nc.jetstream(timeout=2.0)
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):
                info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
                if info.cluster is not None and info.cluster.leader == to:
                    return
                await nc.request(f"$JS.API.{api}", json.dumps({"placement": {"preferred": to}}).encode())
            await asyncio.sleep(0.5)


async def stream_leader(
    js: JetStreamContext,
    stream: str,
    *,
    consumer: str | None = None,
    other_than: str | None = None,
    timeout: float = 60.0,
) -> str:
    """The node leading `stream` (or its `consumer`) once it has one (and, after a kill, once it is not the
    killed node)."""
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(Exception):  # no leader yet: the request times out or is refused
                info = await (js.consumer_info(stream, consumer) if consumer else js.stream_info(stream))
                cluster = info.cluster
                if cluster is not None and cluster.leader and cluster.leader != other_than:
                    return cluster.leader
            await asyncio.sleep(0.1)
