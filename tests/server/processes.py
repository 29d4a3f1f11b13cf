"""`latentguard serve` as a real process, for tests that restart, SIGTERM or SIGKILL it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from latentguard.cli.main import main as cli


def serve(data: Path, sae: Path, **env: str) -> subprocess.Popen[bytes]:
    """Starts a sidecar on `<data>/latentguard.sock` and waits until it serves. Without
    LATENTGUARD_REDIS_URL in `env` it uses the embedded store."""
    return wait_serving(spawn(data, sae, **env), data)


def spawn(data: Path, sae: Path, log: Path | None = None,
          **env: str) -> subprocess.Popen[bytes]:
    """Starts a sidecar without waiting (several start at once; `wait_serving` each); its
    output goes to `log` when given (a long run's logs would fill a pipe no one reads)."""
    full = {**os.environ, "LATENTGUARD_DATA_DIR": str(data), "LATENTGUARD_SAE_PATH": str(sae)}
    full.pop("LATENTGUARD_REDIS_URL", None)
    full.update(env)
    if log is None:
        return subprocess.Popen([sys.executable, "-m", "latentguard.cli.main", "serve"],
                                env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "latentguard.cli.main", "serve"],
                                env=full, stdout=out, stderr=subprocess.STDOUT)


def wait_serving(proc: subprocess.Popen[bytes], data: Path, timeout: float = 60,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    deadline = time.monotonic() + timeout
    while cli(["health", "--target", target(data), "--timeout", "1"]) != 0:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            if log is not None:
                out += log.read_text(errors="replace")
            raise AssertionError(f"sidecar exited with {proc.returncode}: {out[-4000:]}")
        assert time.monotonic() < deadline, "sidecar did not start"
        time.sleep(0.2)
    return proc


def target(data: Path) -> str:
    return f"unix://{data / 'latentguard.sock'}"


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout) == 0
