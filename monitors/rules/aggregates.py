"""Window aggregates as arrays: one window kind's state for many requests and signals, advanced
over a ``[requests, tokens, signals]`` block in a few numpy operations.

Each class gives, bit for bit, what `monitors.rules.windows` gives token by token (the frozen
reference, `monitors.rules.reference`): the same float64 operations in the same order, only
vectorised. ``np.cumsum`` adds strictly left to right, so a running sum carried from an earlier
step and continued by a cumulative sum is the reference's running sum; a sliding maximum is the
monotonic deque's maximum, with the same position on ties.

State lives in arrays whose first axis is a request slot (``C`` slots); ``advance`` reads the
rows of the slots it is given, computes the block and writes the rows back. The slots of one
call are distinct. Every window of one instance has the same kind, size and scope, so the
signals of a slot have seen the same number of tokens.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

from latentguard.monitors.rules.schema import Window

__all__ = ["WindowArrays", "window_arrays"]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Spec = dict[str, tuple[tuple[int, ...], Any, float]]


class WindowArrays:
    """State of ``width`` signals' windows for ``capacity`` request slots."""

    positions = False
    """Whether ``advance`` gives a position of interest (a max window); otherwise it is each
    token's own position."""

    def __init__(self, spec: Spec, capacity: int) -> None:
        self._spec = spec
        self.a: dict[str, npt.NDArray[Any]] = {
            name: np.full((capacity, *shape), fill, dtype=dtype)
            for name, (shape, dtype, fill) in spec.items()}

    def grow(self, capacity: int) -> None:
        for name, (shape, dtype, fill) in self._spec.items():
            old = self.a[name]
            new = np.full((capacity, *shape), fill, dtype=dtype)
            new[: old.shape[0]] = old
            self.a[name] = new

    def reset(self, slot: int) -> None:
        for name, (_, _, fill) in self._spec.items():
            self.a[name][slot] = fill

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        """Push ``x`` ``[B, L, J]`` (the slots' next ``L`` in-scope tokens, at ``positions``
        ``[B, L]``); return each token's aggregate ``[B, L, J]`` and, for a max window, the
        position that holds it ``[B, L, J]``."""
        raise NotImplementedError

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        """The aggregate (and for a max window, its position) the last push gave ``slot``."""
        raise NotImplementedError


class _WholeSum(WindowArrays):
    """Every token so far: Neumaier-compensated sum (``sum``), its mean, or a count."""

    def __init__(self, agg: str, width: int, above: F64, capacity: int) -> None:
        self.agg, self.above = agg, above
        super().__init__({"s": ((width,), np.float64, 0.0), "c": ((width,), np.float64, 0.0),
                          "n": ((), np.int64, 0)}, capacity)

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        a, length = self.a, x.shape[1]
        s0, c0, n0 = a["s"][slots], a["c"][slots], a["n"][slots]
        v = (x > self.above).astype(np.float64) if self.agg == "count" else x
        if length == 1:
            prev, total = s0[:, None], s0[:, None] + v
        else:
            run = np.cumsum(np.concatenate([s0[:, None], v], axis=1), axis=1)
            prev, total = run[:, :-1], run[:, 1:]
        err = np.where(np.abs(prev) >= np.abs(v), (prev - total) + v, (v - total) + prev)
        carry = (c0[:, None] + err if length == 1 else
                 np.cumsum(np.concatenate([c0[:, None], err], axis=1), axis=1)[:, 1:])
        exact = total + carry
        if self.agg == "mean":
            exact = exact / (n0[:, None] + np.arange(1, length + 1))[:, :, None]
        a["s"][slots], a["c"][slots], a["n"][slots] = total[:, -1], carry[:, -1], n0 + length
        return exact, None

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        exact = self.a["s"][slot] + self.a["c"][slot]
        if self.agg == "mean":
            exact = exact / self.a["n"][slot]
        return exact.tolist(), None


class _WholeMax(WindowArrays):
    """Every token so far: running max and the first position holding it."""

    positions = True

    def __init__(self, width: int, capacity: int) -> None:
        super().__init__({"m": ((width,), np.float64, -math.inf),
                          "at": ((width,), np.int64, 0), "n": ((), np.int64, 0)}, capacity)

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        a, length = self.a, x.shape[1]
        m0, at0, n0 = a["m"][slots], a["at"][slots], a["n"][slots]
        if length == 1:
            new = (x[:, 0] > m0) | (n0 == 0)[:, None]
            m, at = np.where(new, x[:, 0], m0), np.where(new, positions, at0)
            a["m"][slots], a["at"][slots], a["n"][slots] = m, at, n0 + 1
            return m[:, None], at[:, None]
        prev = np.maximum.accumulate(np.concatenate([m0[:, None], x[:, :-1]], axis=1), axis=1)
        new = x > prev
        new[:, 0] |= (n0 == 0)[:, None]
        last = np.maximum.accumulate(
            np.where(new, np.arange(length)[None, :, None], -1), axis=1)
        # The value of the token that set the max (not np.maximum's: 0.0 and -0.0 tie).
        held = np.maximum(last, 0)
        cur = np.where(last >= 0, np.take_along_axis(x, held, axis=1), m0[:, None, :])
        pos = np.broadcast_to(positions[:, :, None], x.shape)
        where = np.where(last >= 0, np.take_along_axis(pos, held, axis=1), at0[:, None, :])
        a["m"][slots], a["at"][slots], a["n"][slots] = cur[:, -1], where[:, -1], n0 + length
        return cur, where

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        return self.a["m"][slot].tolist(), self.a["at"][slot].tolist()


class _SizedMax(WindowArrays):
    """Last ``size`` tokens: max and the latest position holding it (the deque's front)."""

    positions = True

    def __init__(self, size: int, width: int, capacity: int) -> None:
        self.size = size  # the last ``size`` values and positions, oldest first
        super().__init__({"v": ((size, width), np.float64, -math.inf),
                          "p": ((size, width), np.int64, 0)}, capacity)

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        a, w, (b, length, j) = self.a, self.size, x.shape
        ext = np.concatenate([a["v"][slots], x], axis=1)
        extp = np.concatenate([a["p"][slots], np.broadcast_to(positions[:, :, None], x.shape)],
                              axis=1)
        if length == 1:
            win = ext[:, 1:]
            k = (w - 1) - np.argmax(win[:, ::-1], axis=1)  # the latest of equal maxima
            rows, cols = np.arange(b)[:, None], np.arange(j)
            best, where = win[rows, k, cols][:, None], extp[:, 1:][rows, k, cols][:, None]
        else:
            view = sliding_window_view(ext[:, 1:], w, axis=1)  # [B, L, J, w], oldest first
            at = (w - 1) - np.argmax(view[..., ::-1], axis=-1)[..., None]
            best = np.take_along_axis(view, at, axis=-1)[..., 0]
            where = np.take_along_axis(sliding_window_view(extp[:, 1:], w, axis=1), at,
                                       axis=-1)[..., 0]
        a["v"][slots], a["p"][slots] = ext[:, -w:], extp[:, -w:]
        return best, where

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        win, w = self.a["v"][slot], self.size
        k = (w - 1) - np.argmax(win[::-1], axis=0)
        cols = np.arange(win.shape[1])
        return win[k, cols].tolist(), self.a["p"][slot][k, cols].tolist()


class _SizedCount(WindowArrays):
    """Last ``size`` tokens: how many are above ``above`` (exact integers)."""

    def __init__(self, size: int, width: int, above: F64, capacity: int) -> None:
        self.size, self.above = size, above  # whether each of the last ``size`` was above
        super().__init__({"b": ((size, width), np.int64, 0)}, capacity)

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        a, w, length = self.a, self.size, x.shape[1]
        ext = np.concatenate([a["b"][slots], (x > self.above).astype(np.int64)], axis=1)
        if length == 1:
            count = ext[:, 1:].sum(axis=1, keepdims=True)
        else:
            cs = np.cumsum(ext, axis=1)  # window of token i: ext[i+1 .. i+w]
            count = cs[:, w:] - cs[:, :length]
        a["b"][slots] = ext[:, -w:]
        return count.astype(np.float64), None

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        return self.a["b"][slot].sum(axis=0).astype(np.float64).tolist(), None


class _SizedSum(WindowArrays):
    """Last ``size`` tokens: the reference's running sum (subtract the token leaving, add the
    new one) recomputed with ``math.fsum`` whenever the ring buffer's last slot is written, and
    its mean over the tokens seen (at most ``size``)."""

    def __init__(self, size: int, width: int, mean: bool, capacity: int) -> None:
        self.size, self.mean = size, mean
        super().__init__({"v": ((size, width), np.float64, 0.0),
                          "s": ((width,), np.float64, 0.0), "n": ((), np.int64, 0)}, capacity)

    def advance(self, slots: I64, x: F64, positions: I64) -> tuple[F64, I64 | None]:
        a, w, (b, length, j) = self.a, self.size, x.shape
        s0, n0 = a["s"][slots], a["n"][slots]
        ext = np.concatenate([a["v"][slots], x], axis=1)  # ext[:, i] left when x[:, i] came
        refresh = (n0[:, None] + np.arange(length)) % w == w - 1
        fresh = np.zeros((b, length, j))
        if refresh.any():
            fresh[refresh] = self._fsums(ext, *np.nonzero(refresh))
        if length == 1:
            out = ((s0 - ext[:, 0]) + x[:, 0])[:, None]
        else:
            out = self._running(s0, n0 % w, ext[:, :length], x, fresh)
        if refresh.any():
            out = np.where(refresh[:, :, None], fresh, out)
        a["v"][slots], a["s"][slots], a["n"][slots] = ext[:, -w:], out[:, -1], n0 + length
        if self.mean:
            seen = np.minimum(n0[:, None] + np.arange(1, length + 1), w)
            return out / seen[:, :, None], None
        return out, None

    def current(self, slot: int) -> tuple[list[float], list[int] | None]:
        total = self.a["s"][slot]
        if self.mean:
            total = total / min(int(self.a["n"][slot]), self.size)
        return total.tolist(), None

    def _fsums(self, ext: F64, rows: I64, ts: I64) -> F64:
        """``math.fsum`` of the window ending at each (row, token): pushes ``t+1 .. t+size`` of
        ``ext``. fsum of one or two floats is their rounded sum (never -0.0)."""
        w = self.size
        if w <= 2:
            total = ext[rows, ts + 1] + (ext[rows, ts + 2] if w == 2 else 0.0)
            return total + 0.0
        out = [[math.fsum(col) for col in ext[r, t + 1:t + w + 1].T.tolist()]
               for r, t in zip(rows.tolist(), ts.tolist(), strict=True)]
        return np.array(out, dtype=np.float64).reshape(len(out), ext.shape[2])

    def _running(self, s0: F64, phase: I64, leaving: F64, x: F64, fresh: F64) -> F64:
        """The running sums of a block of tokens: each ring-buffer cycle is one left-to-right
        cumulative sum of (-leaving, +new) pairs, laid out so that cycles start on a row of a
        ``[B, cycles, 2 * size + 1, J]`` array; a cycle starts from the previous one's fsum."""
        w, (b, length, j) = self.size, x.shape
        u = phase[:, None] + np.arange(length)  # offset of each token from its first cycle
        cycles = (int(phase.max()) + length + w - 1) // w
        rows = np.arange(b)[:, None]
        steps = np.full((b, cycles * w, 2, j), -0.0)  # adding -0.0 changes nothing, even 0.0
        steps[rows, u, 0] = -leaving
        steps[rows, u, 1] = x
        starts = np.zeros((b, cycles, 1, j))
        starts[:, 0, 0] = s0
        t = np.arange(1, cycles)[None, :] * w - 1 - phase[:, None]  # ends of earlier cycles
        ok = (t >= 0) & (t < length)
        starts[:, 1:, 0] = np.where(ok[:, :, None], fresh[rows, np.clip(t, 0, length - 1)], 0.0)
        run = np.cumsum(np.concatenate([starts, steps.reshape(b, cycles, 2 * w, j)], axis=2),
                        axis=2)
        sums: F64 = run[:, :, 2::2].reshape(b, cycles * w, j)[rows, u]
        return sums


def window_arrays(window: Window | None, width: int, above: F64,
                  capacity: int) -> WindowArrays | None:
    """The arrays for ``width`` signals with ``window`` (None: no window, nothing to keep)."""
    if window is None:
        return None
    if window.size is None:
        if window.agg == "max":
            return _WholeMax(width, capacity)
        return _WholeSum(window.agg, width, above, capacity)
    if window.agg == "max":
        return _SizedMax(window.size, width, capacity)
    if window.agg == "count":
        return _SizedCount(window.size, width, above, capacity)
    return _SizedSum(window.size, width, window.agg == "mean", capacity)
