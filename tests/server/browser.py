"""Headless Chromium (Debian's `chromium` and `chromium-driver`) through selenium, for the
console's browser test and its README screenshots (bench/console_screenshots.py)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from latentguard.cli.main import main as cli

#: Where Debian puts them; LATENTGUARD_CHROMIUM / LATENTGUARD_CHROMEDRIVER point elsewhere.
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
DRIVER = ("chromedriver",)
INSTALL = "apt-get install -y chromium chromium-driver (what .ci/run does)"


def _find(variable: str, names: tuple[str, ...]) -> str | None:
    given = os.environ.get(variable)
    if given:
        return given
    return next((p for p in map(shutil.which, names) if p), None)


def missing() -> str | None:
    """Why no browser can start, or None."""
    if _find("LATENTGUARD_CHROMIUM", CHROMIUM) is None:
        return f"no chromium on PATH: {INSTALL}"
    if _find("LATENTGUARD_CHROMEDRIVER", DRIVER) is None:
        return f"no chromedriver on PATH: {INSTALL}"
    return None


def chromium(width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A headless Chromium driven by chromedriver (no download: both from the system)."""
    binary = _find("LATENTGUARD_CHROMIUM", CHROMIUM)
    driver = _find("LATENTGUARD_CHROMEDRIVER", DRIVER)
    assert binary is not None and driver is not None, missing()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1",
                "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def serve_with_ui(data: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`latentguard serve --ui --ui-port PORT` as a process, once it serves gRPC on
    `<data>/latentguard.sock`."""
    full = {**os.environ, "LATENTGUARD_DATA_DIR": str(data), **env}
    full.pop("LATENTGUARD_REDIS_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentguard.cli.main", "serve", "--ui", "--ui-port", str(port)],
        env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    target = f"unix://{data / 'latentguard.sock'}"
    while cli(["health", "--target", target, "--timeout", "1"]) != 0:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert time.monotonic() < deadline, "sidecar did not start"
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> str:
    """SIGTERM; its output, once it exited 0."""
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text
