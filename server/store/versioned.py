"""Versioned rules and policies with optimistic concurrency and change notices.

Each put or delete runs as one Lua script: it checks the expected version, writes, bumps the
store-wide revision, appends to the object's history and publishes a notice, atomically.
"""

from __future__ import annotations

import builtins
import json
import logging
from datetime import datetime
from typing import Any, cast

from latentguard.server.errors import NotFound, VersionConflict
from latentguard.server.records import ObjectKind, Versioned, utcnow
from latentguard.server.store.client import Client
from latentguard.server.store.keys import Keys, text

log = logging.getLogger(__name__)

HISTORY_LENGTH = 50

# KEYS: object, index, revision, history. ARGV: name, expected ('' = any), spec json,
# updated_at, updated_by, channel, kind, history length.
# A deleted object keeps its version counter (field `version`, no `spec`), so a re-created
# object continues the sequence and stale writers still conflict.
_PUT = """
local exists = redis.call('HEXISTS', KEYS[1], 'spec') == 1
local stored = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local current = exists and stored or 0
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= current then return {-1, current} end
local version = stored + 1
redis.call('HSET', KEYS[1], 'version', version, 'spec', ARGV[3], 'updated_at', ARGV[4],
           'updated_by', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
local rev = redis.call('INCR', KEYS[3])
redis.call('LPUSH', KEYS[4], cjson.encode({version=version, spec=ARGV[3], updated_at=ARGV[4],
           updated_by=ARGV[5]}))
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[8]) - 1)
redis.call('PUBLISH', ARGV[6], cjson.encode({kind=ARGV[7], name=ARGV[1], version=version,
           revision=rev}))
return {version, rev}
"""

# KEYS: object, index, revision. ARGV: name, expected, channel, kind.
_DELETE = """
local exists = redis.call('HEXISTS', KEYS[1], 'spec') == 1
if not exists then return {-2, 0} end
local version = tonumber(redis.call('HGET', KEYS[1], 'version'))
if ARGV[2] ~= '' and tonumber(ARGV[2]) ~= version then return {-1, version} end
redis.call('HDEL', KEYS[1], 'spec', 'updated_at', 'updated_by')
redis.call('SREM', KEYS[2], ARGV[1])
local rev = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[3], cjson.encode({kind=ARGV[4], name=ARGV[1], version=version,
           revision=rev, deleted=true}))
return {version, rev}
"""


class VersionedStore:
    """Rules (kind "rule") or policies (kind "policy")."""

    def __init__(self, client: Client, keys: Keys, kind: ObjectKind) -> None:
        self._r = client
        self._keys = keys
        self.kind = kind
        self._put = client.register_script(_PUT)
        self._delete = client.register_script(_DELETE)

    def _decode(self, name: str, fields: dict[bytes, bytes]) -> Versioned | None:
        if b"spec" not in fields:
            return None
        return Versioned(
            kind=self.kind,
            name=name,
            version=int(fields[b"version"]),
            spec=json.loads(fields[b"spec"]),
            updated_at=datetime.fromisoformat(fields[b"updated_at"].decode()),
            updated_by=fields.get(b"updated_by", b"").decode(),
        )

    async def get(self, name: str) -> Versioned:
        fields = cast(dict[bytes, bytes],
                      await self._r.hgetall(self._keys.object(self.kind, name)))
        found = self._decode(name, fields)
        if found is None:
            raise NotFound(f"no {self.kind} named {name!r}", field="name")
        return found

    async def list(self) -> list[Versioned]:
        names = sorted(text(n) for n in await self._r.smembers(self._keys.index(self.kind)))
        async with self._r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self._keys.object(self.kind, name))
            rows = await pipe.execute()
        out = [self._decode(name, fields) for name, fields in zip(names, rows, strict=True)]
        return [v for v in out if v is not None]

    async def put(
        self, name: str, spec: dict[str, Any], *, expected_version: int | None = None,
        actor: str = "",
    ) -> Versioned:
        now = utcnow()
        version, current = await self._put(
            keys=[
                self._keys.object(self.kind, name), self._keys.index(self.kind),
                self._keys.revision, self._keys.history(self.kind, name),
            ],
            args=[
                name, "" if expected_version is None else str(expected_version),
                json.dumps(spec, sort_keys=True), now.isoformat(), actor, self._keys.changes,
                self.kind, HISTORY_LENGTH,
            ],
        )
        if version == -1:
            raise VersionConflict(
                f"{self.kind} {name!r} is at version {current}, "
                f"not the expected {expected_version}",
                field="expected_version",
            )
        log.info("%s %s now at version %s (by %s)", self.kind, name, version, actor or "-")
        return Versioned(
            kind=self.kind, name=name, version=version, spec=spec, updated_at=now,
            updated_by=actor,
        )

    async def delete(self, name: str, *, expected_version: int | None = None) -> None:
        code, current = await self._delete(
            keys=[self._keys.object(self.kind, name), self._keys.index(self.kind),
                  self._keys.revision],
            args=[name, "" if expected_version is None else str(expected_version),
                  self._keys.changes, self.kind],
        )
        if code == -2:
            raise NotFound(f"no {self.kind} named {name!r}", field="name")
        if code == -1:
            raise VersionConflict(
                f"{self.kind} {name!r} is at version {current}, not the expected "
                f"{expected_version}", field="expected_version",
            )
        log.info("%s %s deleted", self.kind, name)

    async def history(self, name: str) -> builtins.list[dict[str, Any]]:
        rows = await self._r.lrange(self._keys.history(self.kind, name), 0, -1)
        return [json.loads(r) for r in rows]
