"""Block notices: how vLLM's API server learns that the worker blocked a request, and why.

vLLM V1 runs the model, and so the plugin's block, in a worker process, and answers HTTP in the API
server process. What crosses between them is tokens and finish reasons: to vLLM a block is an EOS
like any other. So the plugin adds its own channel, one way and local. The middleware
(`latentguard.plugin.middleware`) listens on a unix socket in `<data dir>/notices/`, one per API
server process, and tags each request it passes on with a notice key (`vllm_xargs`). When the
logits processor forces a keyed request's EOS, the worker writes a notice (one JSON line: the key,
vLLM's request id, the rule, the reason, the trace's tag) to every socket there, before that EOS
is sampled. By the time the API server sees the request finish, the notice is in its socket's
buffer: the middleware reads whatever is there before it looks one up, and never waits.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from latentguard import paths

log = logging.getLogger(__name__)

#: The `vllm_xargs` entry the middleware adds to each request: the key its notices are filed under.
NOTICE_ARG = "latentguard_notice"
#: Notices nobody asked for (a client that hung up) are dropped after this long.
NOTICE_TTL_S = 600.0
#: Kernel buffer asked for each connection: a thousand notices or so before a send would wait.
SEND_BUFFER = 1 << 20
#: At most this many unsent bytes are kept per socket beyond that, when a reader falls behind.
MAX_PENDING = 1 << 20
#: What a unix socket path may hold (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
_MAX_TEXT = 1000


def notices_dir() -> Path:
    """`<data dir>/notices`: the folder of the API servers' sockets (`LATENTGUARD_DATA_DIR`)."""
    return paths.data_dir() / "notices"


@dataclass(frozen=True)
class Notice:
    """One blocked request, as the worker saw it."""

    key: str         # the middleware's key for the HTTP request (NOTICE_ARG)
    request_id: str  # vLLM's internal id: tells which choice of the response it is
    rule: str        # the rule that blocked it, or `sidecar-unavailable` (fail-closed)
    reason: str      # the verdict's explanation
    tag: str         # the trace's request tag

    def line(self) -> bytes:
        data = asdict(self)
        data["reason"] = self.reason[:_MAX_TEXT]
        return json.dumps(data, separators=(",", ":")).encode() + b"\n"

    @classmethod
    def parse(cls, line: bytes) -> Notice | None:
        try:
            data = json.loads(line)
            return cls(**{k: str(data[k]) for k in ("key", "request_id", "rule", "reason", "tag")})
        except (ValueError, TypeError, KeyError):
            log.warning("latentguard: unreadable block notice %r", line[:200])
            return None


class NoticeSender:
    """The worker's end: writes each notice to every API server socket in the folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._conns: dict[str, socket.socket] = {}
        self._pending: dict[str, bytes] = {}

    def send(self, notice: Notice) -> None:
        """Never blocks and never raises: a notice that cannot go is logged and dropped."""
        try:
            targets = sorted(str(p) for p in self.folder.glob("api-*.sock"))
        except OSError as exc:
            log.warning("latentguard: cannot list %s for block notices: %s", self.folder, exc)
            return
        for gone in set(self._conns) - set(targets):
            self._drop(gone)
        line = notice.line()
        for target in targets:
            self._send(target, line)

    def _send(self, target: str, line: bytes) -> None:
        for attempt in (0, 1):
            conn = self._conns.get(target)
            if conn is None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
                try:
                    conn.connect(target)
                except OSError as exc:  # a socket left by an API server that died
                    conn.close()
                    log.debug("latentguard: no API server at %s: %s", target, exc)
                    return
                self._conns[target] = conn
            data = self._pending.pop(target, b"") + line
            try:
                sent = conn.send(data, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._drop(target)
                if attempt:
                    log.warning("latentguard: block notice to %s lost: %s", target, exc)
                continue
            if sent < len(data):
                if len(data) - sent > MAX_PENDING:
                    log.warning("latentguard: the API server at %s reads no block notices; "
                                "dropping %d bytes", target, len(data) - sent)
                else:
                    self._pending[target] = data[sent:]
            return

    def _drop(self, target: str) -> None:
        conn = self._conns.pop(target, None)
        self._pending.pop(target, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for target in list(self._conns):
            self._drop(target)


class NoticeInbox:
    """The API server's end: one listening socket per process, read on demand."""

    _shared: ClassVar[NoticeInbox | None] = None

    def __init__(self, folder: Path) -> None:
        self.path = folder / f"api-{os.getpid()}.sock"
        if len(str(self.path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"latentguard: {self.path} is too long for a unix socket; set "
                             f"{paths.DATA_DIR_VAR} to a shorter folder")
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _remove_stale(folder)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.path.unlink(missing_ok=True)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._readers: list[tuple[socket.socket, bytearray]] = []
        self._notices: dict[str, tuple[float, list[Notice]]] = {}
        self._lock = threading.Lock()
        self._pruned = time.monotonic()

    @classmethod
    def shared(cls, folder: Path) -> NoticeInbox:
        """This process's inbox (made once; removed at exit)."""
        if cls._shared is None:
            cls._shared = cls(folder)
            atexit.register(cls._shared.close)
        return cls._shared

    def get(self, key: str) -> list[Notice]:
        """The notices filed under `key` so far, after reading everything already sent."""
        with self._lock:
            self._pump()
            entry = self._notices.get(key)
            return list(entry[1]) if entry else []

    def discard(self, key: str) -> None:
        with self._lock:
            self._notices.pop(key, None)

    def _pump(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(False)
            self._readers.append((conn, bytearray()))
        for conn, buf in list(self._readers):
            closed = False
            while True:
                try:
                    chunk = conn.recv(65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    chunk = b""
                if not chunk:
                    closed = True
                    break
                buf += chunk
            *lines, rest = bytes(buf).split(b"\n")
            buf[:] = rest
            for line in lines:
                notice = Notice.parse(line) if line else None
                if notice is not None:
                    _, filed = self._notices.setdefault(notice.key, (time.monotonic(), []))
                    filed.append(notice)
            if closed:
                conn.close()
                self._readers.remove((conn, buf))
        now = time.monotonic()
        if now - self._pruned > NOTICE_TTL_S / 10:
            self._pruned = now
            for key in [k for k, (at, _) in self._notices.items() if now - at > NOTICE_TTL_S]:
                del self._notices[key]

    def close(self) -> None:
        with self._lock:
            for conn, _ in self._readers:
                conn.close()
            self._readers.clear()
            self._listener.close()
            self.path.unlink(missing_ok=True)


def _remove_stale(folder: Path) -> None:
    """Removes the sockets of API servers that are gone (their pid no longer runs)."""
    for p in folder.glob("api-*.sock"):
        try:
            pid = int(p.name[4:-5])
        except ValueError:
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                p.unlink()
        except PermissionError:
            pass
