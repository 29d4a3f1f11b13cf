"""Sliding-window aggregates with O(1) amortised work per token.

Each window sees only the tokens in its rule's scope, in arrival order. Until ``size`` tokens
have been seen it aggregates over the tokens seen so far (so ``mean`` is the mean of those, and
``count``/``sum`` count/sum them). A window without ``size`` aggregates every token seen.
"""

from __future__ import annotations

import math
from collections import deque

from latentguard.monitors.rules.schema import Window

__all__ = ["WindowAgg", "make_window"]


class WindowAgg:
    """Push one value per token; get the aggregate and the position it is best explained by."""

    def __init__(self, size: int) -> None:
        self.size = size

    def push(self, value: float, position: int) -> tuple[float, int]:
        """Add the newest token; return (aggregate over the window, position of interest)."""
        raise NotImplementedError


class _Max(WindowAgg):
    """Monotonic deque: candidates with decreasing values; each value enters and leaves once."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._q: deque[tuple[int, float, int]] = deque()  # (token index, value, position)
        self._i = 0

    def push(self, value: float, position: int) -> tuple[float, int]:
        q = self._q
        while q and q[-1][1] <= value:
            q.pop()
        q.append((self._i, value, position))
        if q[0][0] <= self._i - self.size:
            q.popleft()
        self._i += 1
        return q[0][1], q[0][2]


class _Sum(WindowAgg):
    """Ring buffer and running sum, recomputed exactly once per ``size`` tokens (no drift)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self._buf = [0.0] * size
        self._n = 0
        self._sum = 0.0

    def push(self, value: float, position: int) -> tuple[float, int]:
        slot = self._n % self.size
        if self._n >= self.size:
            self._sum -= self._buf[slot]
        self._buf[slot] = value
        self._sum += value
        self._n += 1
        if slot == self.size - 1:
            self._sum = math.fsum(self._buf)
        return self._sum, position

    @property
    def seen(self) -> int:
        return min(self._n, self.size)


class _Mean(_Sum):
    def push(self, value: float, position: int) -> tuple[float, int]:
        total, pos = super().push(value, position)
        return total / self.seen, pos


class _Count(WindowAgg):
    """Ring buffer of booleans and an exact running count of values above ``above``."""

    def __init__(self, size: int, above: float) -> None:
        super().__init__(size)
        self.above = above
        self._buf = [False] * size
        self._n = 0
        self._count = 0

    def push(self, value: float, position: int) -> tuple[float, int]:
        slot = self._n % self.size
        hit = value > self.above
        if self._n >= self.size:
            self._count -= self._buf[slot]
        self._buf[slot] = hit
        self._count += hit
        self._n += 1
        return float(self._count), position


class _Whole(WindowAgg):
    """Every token seen so far: running max (with its position), sum (compensated, so a long
    request does not drift), mean or count."""

    def __init__(self, agg: str, above: float) -> None:
        super().__init__(0)
        self.agg, self.above = agg, above
        self._n = 0
        self._sum = 0.0
        self._carry = 0.0  # Neumaier compensation of _sum
        self._max = -math.inf
        self._argmax = 0

    def push(self, value: float, position: int) -> tuple[float, int]:
        self._n += 1
        if self.agg == "max":
            if value > self._max or self._n == 1:
                self._max, self._argmax = value, position
            return self._max, self._argmax
        if self.agg == "count":
            value = 1.0 if value > self.above else 0.0
        total = self._sum + value
        if abs(self._sum) >= abs(value):
            self._carry += (self._sum - total) + value
        else:
            self._carry += (value - total) + self._sum
        self._sum = total
        exact = self._sum + self._carry
        return (exact / self._n if self.agg == "mean" else exact), position


def make_window(window: Window) -> WindowAgg:
    if window.size is None:
        return _Whole(window.agg, window.above if window.above is not None else 0.0)
    if window.agg == "max":
        return _Max(window.size)
    if window.agg == "sum":
        return _Sum(window.size)
    if window.agg == "mean":
        return _Mean(window.size)
    return _Count(window.size, window.above if window.above is not None else 0.0)
