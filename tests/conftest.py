"""Shared fixtures: real Redis servers started by the tests themselves, on free ports/sockets."""

from __future__ import annotations

import contextlib
import importlib
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from latentguard.server.store import Store
from latentguard.server.store.embedded import RedisServer, find_redis_server, free_port
from latentguard.server.store.local_cluster import LocalCluster

# setuptools before any test module: torch (imported by vLLM) imports it, and its distutils shim
# refuses to load once another package has imported the standard library's distutils.
importlib.import_module("setuptools")


def external_redis_binary() -> str:
    """Prefer a system redis-server (a different build from the embedded one) when present."""
    return shutil.which("redis-server") or find_redis_server()


@pytest.fixture(scope="session")
def external_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server on a free loopback port, as a shared production Redis would be."""
    server = RedisServer(
        tmp_path_factory.mktemp("external-redis"), port=free_port(), persistent=False,
        binary=external_redis_binary(),
    )
    with server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node Redis Cluster (no replicas) on free loopback ports."""
    with LocalCluster(tmp_path_factory.mktemp("redis-cluster"), 3) as cluster:
        yield cluster


@contextlib.asynccontextmanager
async def opened_store(kind: str, request: pytest.FixtureRequest,
                       tmp_path: Path) -> AsyncIterator[Store]:
    """A store of `kind`: "embedded", "external" (one Redis) or "cluster" (a Redis Cluster,
    through the URL naming only one of its nodes)."""
    if kind == "embedded":
        opened = await Store.open(None, tmp_path / "data", retention=timedelta(days=1))
    else:
        if kind == "external":
            url = request.getfixturevalue("external_redis")
        else:
            cluster: LocalCluster = request.getfixturevalue("redis_cluster")
            url = cluster.node_url(abs(hash(request.node.nodeid)) % len(cluster.servers))
        # A fresh key prefix per test isolates tests sharing the external server.
        prefix = f"t{abs(hash(request.node.nodeid)) % 10**8}"
        opened = await Store.open(url, tmp_path, prefix=prefix, retention=timedelta(days=1))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture(params=["embedded", "external"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    """The same contract runs against the embedded store and an external Redis."""
    async with opened_store(request.param, request, tmp_path) as opened:
        yield opened
