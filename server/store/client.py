"""The store's Redis client from a URL: one Redis, or a Redis Cluster.

`redis+cluster://[user:password@]host:port[,host:port...]` (`rediss+cluster://` for TLS) names
seed nodes of a Redis Cluster (or a managed cluster endpoint); the client learns the others
from them, follows MOVED and ASK redirections and re-reads the slot map when a node fails.
Every other URL (`redis://`, `rediss://`, `unix://`) is one Redis. The rest of the store is
the same code for both: it only uses commands and multi-key operations a cluster allows.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

__all__ = ["CLUSTER_SCHEMES", "Client", "StoreURLError", "connect", "is_cluster_url",
           "redacted"]

Client = aioredis.Redis | RedisCluster
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class StoreURLError(ValueError):
    """A Redis URL that cannot be used; the message says why (never with the password)."""


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The seed nodes of a cluster URL."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise StoreURLError(f"{redacted(url)}: seed node {part!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return nodes


def connect(url: str) -> Client:
    """A client for `url` (not yet connected)."""
    if not is_cluster_url(url):
        return aioredis.Redis.from_url(url, health_check_interval=30)
    parts = urlsplit(url)
    if parts.path not in ("", "/", "/0"):
        raise StoreURLError(f"{redacted(url)}: a Redis Cluster has only database 0")
    nodes = [ClusterNode(host, port) for host, port in cluster_nodes(url)]
    # The netloc holds several host:port pairs, which urlsplit cannot parse as one: the
    # credentials are what comes before the last "@".
    credentials = parts.netloc.rpartition("@")[0]
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=parts.scheme == "rediss+cluster",
        # A sidecar starts (and keeps serving from its spool) while part of the cluster is
        # down; commands for the missing slots fail, and the writer retries them.
        require_full_coverage=False,
    )
