"""Redis key names. Every key carries the hash tag `{prefix}`, so the multi-key scripts and
transactions below stay on one slot when the store is a Redis Cluster."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.base = "{" + prefix + "}"

    # rules and policies
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

    # traces
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
        """Set of rule names that have a per-rule index (for retention trimming)."""
        return f"{self.base}:traces:rules"

    # alerts
    @property
    def alerts(self) -> str:
        return f"{self.base}:alerts"


def text(value: bytes | str) -> str:
    """A Redis reply as text (the store's clients return bytes)."""
    return value.decode() if isinstance(value, bytes) else value
