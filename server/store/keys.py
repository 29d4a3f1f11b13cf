"""Redis key names, laid out so a Redis Cluster spreads the load (layout 2).

Three kinds of keys, by what must stay together (a Lua script or transaction may only touch
keys of one cluster slot):

* **config**: rules, policies, their history, the revision, the change channel, the layout
  marker and the alert stream carry the hash tag `{prefix}`: one slot, so a rule change is one
  atomic script. They are small and written rarely (the alert stream: see `alerts`).
* **a trace**: its hash and its reviews carry the trace id as hash tag (`prefix:trace:{id}`),
  so traces spread over every slot and a review is one transaction on one slot.
* **index shards**: the list indexes (time, status, rule) are split into `INDEX_SHARDS` shards;
  a trace's entries all go to the shard its id picks, and each shard has a hash tag chosen
  to land in its own sixteenth of the slot range, so the shards sit on different nodes of a
  cluster. Readers merge the shards (`traces.py`).

Layout 1 (before Redis Cluster support) put every key under `{prefix}`; `layout.py` moves its
traces into this one at start.
"""

from __future__ import annotations

from functools import cache

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

LAYOUT = 2
"""The key layout this code writes (stored at `Keys.layout`)."""
INDEX_SHARDS = 16
"""Shards of each trace index. Fixed: changing it would hide traces indexed before."""


@cache
def shard_tags(prefix: str, shards: int = INDEX_SHARDS) -> tuple[str, ...]:
    """One hash tag per shard, shard i's slot in the i-th of `shards` equal parts of the slot
    range (a cluster created with equal slot ranges per node puts them on different nodes)."""
    width = REDIS_CLUSTER_HASH_SLOTS // shards
    tags = []
    for i in range(shards):
        n = 0
        while key_slot(f"{prefix}/{i}.{n}".encode()) // width != i:
            n += 1
        tags.append(f"{prefix}/{i}.{n}")
    return tuple(tags)


def shard_of(trace_id: str, shards: int = INDEX_SHARDS) -> int:
    """The index shard of a trace: from the random tail of its id."""
    return int(trace_id[-4:], 16) % shards


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.base = "{" + prefix + "}"
        self.shards = shard_tags(prefix)

    # ---- config (one slot) -----------------------------------------------------------------

    def object(self, kind: str, name: str) -> str:
        return f"{self.base}:{kind}:{name}"

    def index(self, kind: str) -> str:
        return f"{self.base}:{kind}s"

    def history(self, kind: str, name: str) -> str:
        return f"{self.base}:{kind}:{name}:history"

    @property
    def revision(self) -> str:
        return f"{self.base}:revision"

    @property
    def changes(self) -> str:
        """Pub/sub channel of rule and policy change notices."""
        return f"{self.base}:changes"

    @property
    def layout(self) -> str:
        """The key layout of the stored data (absent: layout 1, or nothing stored yet)."""
        return f"{self.base}:layout"

    @property
    def alerts(self) -> str:
        return f"{self.base}:alerts"

    # ---- traces (a slot each) --------------------------------------------------------------

    def trace(self, trace_id: str) -> str:
        return f"{self.prefix}:trace:{{{trace_id}}}"

    def trace_reviews(self, trace_id: str) -> str:
        return f"{self.prefix}:trace:{{{trace_id}}}:reviews"

    # ---- index shards (a slot each) --------------------------------------------------------

    def _shard(self, shard: int) -> str:
        return f"{self.prefix}:idx:{{{self.shards[shard]}}}"

    def traces_all(self, shard: int) -> str:
        return f"{self._shard(shard)}:all"

    def traces_by_rule(self, shard: int, rule: str) -> str:
        return f"{self._shard(shard)}:rule:{rule}"

    def traces_by_status(self, shard: int, status: str) -> str:
        return f"{self._shard(shard)}:status:{status}"

    def trace_rules(self, shard: int) -> str:
        """Set of rule names that have a per-rule index in the shard (for retention trimming)."""
        return f"{self._shard(shard)}:rules"


class LegacyKeys:
    """Layout 1's trace keys, all under `{prefix}`: read once, by the migration."""

    def __init__(self, prefix: str) -> None:
        self.base = "{" + prefix + "}"

    def trace(self, trace_id: str) -> str:
        return f"{self.base}:trace:{trace_id}"

    def trace_reviews(self, trace_id: str) -> str:
        return f"{self.base}:trace:{trace_id}:reviews"

    @property
    def traces_all(self) -> str:
        return f"{self.base}:traces:all"

    def traces_by_rule(self, rule: str) -> str:
        return f"{self.base}:traces:rule:{rule}"

    def traces_by_status(self, status: str) -> str:
        return f"{self.base}:traces:status:{status}"

    @property
    def trace_rules(self) -> str:
        return f"{self.base}:traces:rules"


def text(value: bytes | str) -> str:
    """A Redis reply as text (the store's clients return bytes)."""
    return value.decode() if isinstance(value, bytes) else value
