"""The write-ahead spool: every accepted trace and alert is on local disk, fsynced, before the
store sees it, and stays there until the store has it.

A *segment* is one fsynced file of records (`spool/seg-<time>-<n>.jsonl`, a JSON object per
line: ``{"kind": "trace" | "alert", "record": ...}``), written by one batch of the writer and
removed once all its records are in the store. The *in-flight journal* (`spool/inflight.jsonl`)
says which requests were open, so a crash leaves them recorded as gaps at the next start.
Everything here is blocking file I/O: the writer calls it from a worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ValidationError

from latentguard.server.records import AlertRecord, TraceRecord

log = logging.getLogger(__name__)

__all__ = ["Spool", "SpoolFull", "SpoolRecord"]

LEGACY_SPOOL = "spool-traces.jsonl"
"""The spool of earlier versions (one trace per line, in the data dir): imported at start."""
JOURNAL_COMPACT_BYTES = 4 << 20
"""The in-flight journal is rewritten with only the open requests past this size."""
BAD_FILE = "spool-traces.bad.jsonl"
"""Spool lines that are not a record (a torn write, a hand edit): kept, never replayed."""


class SpoolRecord(BaseModel):
    kind: Literal["trace", "alert"]
    record: TraceRecord | AlertRecord


class SpoolFull(OSError):
    """The spool has reached its disk budget: the batch could not be kept."""


@dataclass
class _Journal:
    path: Path
    open: dict[str, TraceRecord]


class Spool:
    def __init__(self, data_dir: Path, *, max_bytes: int = 1 << 30) -> None:
        self.data_dir = data_dir
        self.dir = data_dir / "spool"
        self.bad = data_dir / BAD_FILE
        self.max_bytes = max_bytes
        self._seq = 0
        self._journal = _Journal(self.dir / "inflight.jsonl", {})

    # ---- segments -----------------------------------------------------------------------

    def prepare(self) -> None:
        """Creates the folder and turns an earlier version's spool into a segment."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        legacy = self.data_dir / LEGACY_SPOOL
        if legacy.exists():
            lines = []
            for number, line in enumerate(legacy.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    trace = TraceRecord.model_validate_json(line)
                except ValidationError as exc:
                    self._set_aside(line, f"{legacy.name}:{number}", exc)
                    continue
                lines.append(SpoolRecord(kind="trace", record=trace))
            if lines:
                self.write(lines)
            legacy.unlink()

    def write(self, records: Iterable[SpoolRecord]) -> Path:
        """One new segment holding `records`, fsynced (file and folder) before it returns."""
        data = b"".join(r.model_dump_json().encode() + b"\n" for r in records)
        if self.size() + len(data) > self.max_bytes:
            raise SpoolFull(f"{self.dir}: the spool holds {self.size()} bytes, its budget "
                            f"(LATENTGUARD_SPOOL_MAX_MB) is {self.max_bytes}")
        self._seq += 1
        path = self.dir / f"seg-{time.time_ns():020d}-{self._seq:06d}.jsonl"
        tmp = path.with_suffix(".tmp")
        _write_synced(tmp, data, os.O_EXCL)
        os.replace(tmp, path)  # a segment is whole or absent
        _fsync_dir(self.dir)
        return path

    def segments(self) -> list[Path]:
        """Segments still to be stored, oldest first."""
        return sorted(self.dir.glob("seg-*.jsonl"))

    def read(self, path: Path) -> list[SpoolRecord]:
        """A segment's records; lines that are not a record go to the .bad file, logged."""
        records = []
        for number, line in enumerate(path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(SpoolRecord.model_validate_json(line))
            except ValidationError as exc:
                self._set_aside(line, f"{path.name}:{number}", exc)
        return records

    def remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)

    def set_aside(self, path: Path) -> Path:
        """Moves a segment that cannot be stored out of the way (never replayed)."""
        kept = path.with_name("failed-" + path.name)
        path.rename(kept)
        return kept

    def trace_ids(self) -> set[str]:
        """Ids of the traces the segments hold."""
        return {r.record.id for path in self.segments() for r in self.read(path)
                if isinstance(r.record, TraceRecord)}

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.dir.glob("seg-*.jsonl"))

    def _set_aside(self, line: bytes, where: str, exc: ValidationError) -> None:
        log.error("spool line %s is not a trace (%d errors: %s); moved to %s", where,
                  exc.error_count(), exc.errors()[0]["msg"], self.bad)
        fd = os.open(self.bad, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)

    # ---- the in-flight journal ----------------------------------------------------------

    def journal(self, opened: Iterable[TraceRecord], closed: Iterable[str]) -> None:
        """Appends opens and closes (fsynced); rewritten short when nothing is open."""
        lines = [b'{"open":' + t.model_dump_json().encode() + b"}\n" for t in opened]
        lines += [b'{"close":"' + i.encode() + b'"}\n' for i in closed]
        j = self._journal
        for t in opened:
            j.open[t.id] = t
        for i in closed:
            j.open.pop(i, None)
        if not j.open:
            j.path.unlink(missing_ok=True)  # nothing open: nothing to remember
            return
        if not lines:
            return
        if j.path.exists() and j.path.stat().st_size > JOURNAL_COMPACT_BYTES:
            # A busy sidecar always has requests open: keep only those, or the file grows
            # with every request ever served.
            lines = [b'{"open":' + t.model_dump_json().encode() + b"}\n"
                     for t in j.open.values()]
            tmp = j.path.with_suffix(".tmp")
            _write_synced(tmp, b"".join(lines), os.O_TRUNC)
            os.replace(tmp, j.path)
            _fsync_dir(self.dir)
            return
        _write_synced(j.path, b"".join(lines), os.O_APPEND)

    def interrupted(self, finished: set[str]) -> list[TraceRecord]:
        """Requests the journal says were open when the last run ended whose traces are not
        among `finished` (the segments' traces); the journal is cleared."""
        path = self._journal.path
        if not path.exists():
            return []
        open_: dict[str, TraceRecord] = {}
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
                if "open" in entry:
                    trace = TraceRecord.model_validate(entry["open"])
                    open_[trace.id] = trace
                else:
                    open_.pop(str(entry["close"]), None)
            except (ValueError, KeyError, TypeError, ValidationError):
                log.warning("in-flight journal: a torn line skipped")
        path.unlink()
        return [t for i, t in open_.items() if i not in finished]


def _write_synced(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
