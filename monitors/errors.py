"""Typed exceptions raised by ``latentguard.monitors``.

Everything the package raises on bad input derives from :class:`MonitorError`, so the server can
map errors to gRPC status codes in one place:

* :class:`SAEFormatError`, :class:`RuleValidationError`, :class:`ShapeError`,
  :class:`UnknownFeatureError` -> invalid argument (the caller sent or configured something wrong);
* :class:`NotFoundError` -> not found;
* :class:`SAEMismatchError` -> failed precondition (the rule is fine, the loaded SAE is another).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

__all__ = [
    "MonitorError",
    "NotFoundError",
    "RuleValidationError",
    "SAEFormatError",
    "SAEMismatchError",
    "ShapeError",
    "UnknownFeatureError",
]


class MonitorError(Exception):
    """Base class of every error raised by ``latentguard.monitors`` on bad input."""


class SAEFormatError(MonitorError):
    """An SAE (or probe / catalog) file cannot be read: unknown format, missing key, bad shape."""

    def __init__(self, path: str | Path, problem: str, *, key: str = "") -> None:
        self.path = str(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: key {key!r}: " if key else f"{self.path}: "
        super().__init__(where + problem)


class RuleValidationError(MonitorError):
    """A rule, policy or rule pack is invalid.

    ``field`` is a dotted path such as ``rules[2].when.any[0].threshold`` ("" when the problem is
    not tied to one field) and ``problem`` says what is wrong. When several problems were found,
    ``errors`` holds all of them as ``(field, problem)`` pairs (the first is ``field, problem``)
    and ``lines`` the matching 1-based line numbers in ``source`` where known.
    """

    def __init__(
        self,
        field: str,
        problem: str,
        *,
        errors: list[tuple[str, str]] | None = None,
        source: str = "",
        lines: list[int | None] | None = None,
    ) -> None:
        self.errors: list[tuple[str, str]] = list(errors) if errors else [(field, problem)]
        self.field, self.problem = self.errors[0]
        self.source = source
        self.lines: list[int | None] = list(lines) if lines else [None] * len(self.errors)
        if len(self.lines) != len(self.errors):
            raise ValueError("lines and errors must have the same length")
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        """Pickles with every field (rule packs are parsed in a worker process, whose errors
        come back pickled); the default would call ``__init__`` with the message alone."""
        rebuild = functools.partial(RuleValidationError, errors=self.errors, source=self.source,
                                    lines=self.lines)
        return rebuild, (self.field, self.problem)

    @property
    def line(self) -> int | None:
        """Line of the first problem in ``source`` (1-based), if known."""
        return self.lines[0]

    def __str__(self) -> str:
        parts = []
        for (field, problem), line in zip(self.errors, self.lines, strict=True):
            prefix = ""
            if self.source:
                prefix = f"{self.source}:{line}: " if line is not None else f"{self.source}: "
            parts.append(prefix + (f"{field}: {problem}" if field else problem))
        return "; ".join(parts)


class ShapeError(MonitorError):
    """An activation batch (or other tensor argument) has the wrong shape or dtype."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class UnknownFeatureError(MonitorError):
    """A feature index is out of range for the SAE, or a probe name is unknown.

    ``field`` is the dotted path of the offending value where the raiser knows it, relative to
    what it was given (the rule engine names the rule's field, such as
    ``when.all[1].signal.feature`` or ``action.steer.features[0].feature``, and the rule in
    ``rule``); "" when the problem is not tied to one field. ``problem`` says what is wrong.
    """

    def __init__(self, problem: str, *, field: str = "", rule: str = "") -> None:
        self.problem = problem
        self.field = field
        self.rule = rule
        where = f"rule {rule!r}: " if rule else ""
        super().__init__(where + (f"{field}: {problem}" if field else problem))

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        """Pickles with its field and rule (the default would pass the whole message as the
        problem and drop both)."""
        rebuild = functools.partial(UnknownFeatureError, field=self.field, rule=self.rule)
        return rebuild, (self.problem,)


class SAEMismatchError(MonitorError):
    """A rule written for one SAE was given to a monitor that loads another.

    ``field`` is the dotted path of the rule's ``sae`` (``rule.sae``, ``rules[2].sae``, or a
    pack's ``sae``), ``rule`` its name; ``written_for`` and ``loaded`` are the two SAEs'
    identities as shown to people (name, hook and hash); ``source`` and ``line`` the pack file
    and line, when the rule came from one.
    """

    def __init__(self, field: str, rule: str, *, written_for: object, loaded: object,
                 source: str = "", line: int | None = None) -> None:
        self.field = field
        self.rule = rule
        self.written_for = str(written_for)
        self.loaded = str(loaded)
        self.source = source
        self.line = line
        self.problem = (f"rule {rule!r} was written for SAE {self.written_for}, but this "
                        f"sidecar loads SAE {self.loaded}; feature indices and probes mean "
                        "nothing outside the SAE they were found in (bind to the loaded SAE "
                        "only if they mean the same there)")
        where = f"{source}:{line}: " if source and line else f"{source}: " if source else ""
        super().__init__(where + (f"{field}: {self.problem}" if field else self.problem))


class NotFoundError(MonitorError):
    """A looked-up item (e.g. a feature id in the catalog) does not exist."""
