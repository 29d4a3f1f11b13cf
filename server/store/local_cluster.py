"""A Redis Cluster of private redis-server processes on loopback: for the fleet tests and the
store benchmark, as an operator's cluster would be (no replicas).

The nodes are the same binary as the embedded store (`find_redis_server`), each in cluster
mode on a free port with its own folder (append-only file, `nodes.conf`); the cluster is
formed with CLUSTER ADDSLOTS and CLUSTER MEET, equal slot ranges per node, as
`redis-cli --cluster create --cluster-replicas 0` does, without needing redis-cli.
"""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import redis

from latentguard.server.store.embedded import RedisServer, RedisServerError

__all__ = ["LocalCluster"]

SLOTS = 16384
BUS_OFFSET = 10000
"""A node's cluster bus listens on its port plus this (redis-server 6.2 has no setting)."""


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port(taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free loopback port whose cluster bus port (+10000) is free too."""
    for _ in range(1000):
        port = random.randint(20000, 65535 - BUS_OFFSET)
        if ({port, port + BUS_OFFSET} & taken) or not (
                _bindable(port) and _bindable(port + BUS_OFFSET)):
            continue
        return port
    raise RedisServerError("no free port pair for a cluster node")


class LocalCluster:
    """`nodes` redis-server processes forming one cluster; `url` is a `redis+cluster://` URL
    seeded with every node, `node_url(i)` one naming only node i."""

    def __init__(self, folder: Path, nodes: int = 3, *, fsync_always: bool = False,
                 node_timeout_ms: int = 2000) -> None:
        self.folder = Path(folder)
        config = (
            "cluster-enabled yes",
            "cluster-config-file nodes.conf",
            f"cluster-node-timeout {node_timeout_ms}",
            # The nodes that are up keep serving their slots while one is down.
            "cluster-require-full-coverage no",
            *(("appendfsync always",) if fsync_always else ()),
        )
        taken: set[int] = set()
        self.servers = []
        for i in range(nodes):
            port = free_cluster_port(taken)
            taken |= {port, port + BUS_OFFSET}
            self.servers.append(RedisServer(self.folder / f"node{i}", port=port,
                                            persistent=True, extra_config=config))

    @property
    def ports(self) -> list[int]:
        return [int(s.port or 0) for s in self.servers]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node_url(self, i: int) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[i]}"

    def client(self, i: int) -> redis.Redis:
        """A plain client of node i (no redirections followed)."""
        return redis.Redis(port=self.ports[i], socket_timeout=5)

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for server in self.servers:
            server.start()
        n = len(self.servers)
        for i in range(n):
            first, last = i * SLOTS // n, (i + 1) * SLOTS // n
            with self.client(i) as node:
                node.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
        with self.client(0) as node:
            for port in self.ports[1:]:
                node.execute_command("CLUSTER", "MEET", "127.0.0.1", port)
        self.wait_ok(timeout)
        return self

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node is up and says the cluster is ok, with all slots assigned."""
        deadline = time.monotonic() + timeout
        while True:
            states = []
            for i in range(len(self.servers)):
                try:
                    with self.client(i) as node:
                        states.append(node.cluster("INFO"))
                except redis.RedisError as exc:
                    states.append({"error": str(exc)})
            if all(s.get("cluster_state") == "ok"
                   and int(s.get("cluster_slots_assigned", 0)) == SLOTS
                   and int(s.get("cluster_known_nodes", 0)) == len(self.servers)
                   for s in states):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(f"the cluster did not form within {timeout} s: {states}")
            time.sleep(0.1)

    def owner(self, key: str) -> int:
        """The node that serves `key`'s slot."""
        with self.client(0) as node:
            slot = int(node.execute_command("CLUSTER", "KEYSLOT", key))
        n = len(self.servers)
        return next(i for i in range(n) if i * SLOTS // n <= slot < (i + 1) * SLOTS // n)

    def restart(self, i: int, down_s: float = 0.0) -> None:
        """Stops node i (SIGTERM: its append-only file is flushed), waits, starts it again."""
        self.servers[i].stop()
        time.sleep(down_s)
        self.servers[i].start()
        self.wait_ok()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
