"""The README's screenshots of the review console, taken in the headless Chromium of its
browser test: ``python -m bench.console_screenshots [--out docs/console]``.

A real sidecar (``latentguard serve --ui``) with the tests' tiny readable SAE and rules, a
word-level tokenizer so the traces have text, and requests sent through Monitor.Stream as the
plugin sends them (tests/server/console_scenario.py); a few are reviewed over gRPC. Needs
Debian's ``chromium`` and ``chromium-driver`` and the dev extra (selenium).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import grpc
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from latentguard.server.store.embedded import free_port
from latentguard.v1 import traces_pb2, traces_pb2_grpc
from tests.server import browser
from tests.server.console_scenario import (
    SECRETS,
    Requests,
    md,
    model_folder,
    tokens_file,
    wait_for_traces,
)
from tests.server.fixtures import RULES, build_sae

log = logging.getLogger("console_screenshots")

LABELS = {"true_positive": traces_pb2.REVIEW_LABEL_TRUE_POSITIVE,
          "false_positive": traces_pb2.REVIEW_LABEL_FALSE_POSITIVE,
          "escalate": traces_pb2.REVIEW_LABEL_ESCALATE}


def scenario(channel: grpc.Channel, model: str) -> dict[str, str]:
    """Requests of three kinds, some reviewed; returns trace ids by request tag."""
    requests = Requests(channel, model)
    for i in range(3):
        requests.unsafe(f"unsafe-{i}")
        requests.safe(f"safe-{i}")
    for i in range(2):
        requests.legal(f"legal-{i}")
    requests.close()
    ids = {t.request_tag: t.id for t in wait_for_traces(channel, 8)}
    stub = traces_pb2_grpc.TracesStub(channel)
    for tag, label, note in (("unsafe-1", "true_positive", "shell=True on user input"),
                             ("unsafe-2", "false_positive", "a fixed command"),
                             ("legal-1", "escalate", "ask legal")):
        stub.ReviewTrace(traces_pb2.ReviewTraceRequest(id=ids[tag], label=LABELS[label],
                                                       note=note), metadata=md("reviewer"))
    return ids


def full_page(driver, path: Path, min_height: int = 600) -> None:
    """A screenshot of the whole page (the window grown to its height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1280, max(min_height, min(int(height) + 20, 2400)))
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.2)
    driver.save_screenshot(str(path))
    log.info("wrote %s", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if (why := browser.missing()) is not None:
        raise SystemExit(why)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        rules = tmp / "rules.yaml"
        rules.write_text(RULES)
        data, port = tmp / "data", free_port()
        proc = browser.serve_with_ui(data, port, {
            "LATENTGUARD_SAE_PATH": str(build_sae(tmp / "sae")),
            "LATENTGUARD_RULES_FILE": str(rules),
            "LATENTGUARD_AUTH__TOKENS_FILE": str(tokens_file(tmp / "tokens.yaml"))})
        channel = grpc.insecure_channel(f"unix://{data / 'latentguard.sock'}")
        driver = None
        try:
            ids = scenario(channel, str(model_folder(tmp / "model")))
            console = f"http://127.0.0.1:{port}"
            driver = browser.chromium(1280, 800)
            wait = WebDriverWait(driver, 30)
            driver.get(f"{console}/login")
            wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys(
                SECRETS["reviewer"])
            driver.find_element(By.ID, "login-button").click()
            wait.until(ec.presence_of_element_located((By.ID, "trace-list")))
            full_page(driver, args.out / "traces.png")

            driver.get(f"{console}/traces/{ids['unsafe-0']}")
            shell = wait.until(ec.presence_of_element_located((By.ID, "tok-15")))
            driver.find_element(By.ID, "note").send_keys("shell=True on user input")
            full_page(driver, args.out / "trace.png", 1100)
            ActionChains(driver).move_to_element(shell).perform()
            wait.until(ec.visibility_of_element_located((By.ID, "tooltip")))
            driver.save_screenshot(str(args.out / "trace-hover.png"))

            driver.get(f"{console}/stats?period=24h")
            wait.until(ec.presence_of_element_located((By.ID, "rule-stats")))
            full_page(driver, args.out / "stats.png")

            driver.get(f"{console}/alerts")
            wait.until(ec.text_to_be_present_in_element((By.ID, "live-status"), "live"))
            live = Requests(channel, str(tmp / "model"))
            live.legal("live-legal")
            live.unsafe("live-unsafe")
            live.close()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#alerts tr.alert")) >= 2)
            time.sleep(1.5)  # the new rows' highlight fades
            full_page(driver, args.out / "alerts.png")

            driver.get(f"{console}/features/3")
            wait.until(ec.presence_of_element_located((By.ID, "feature-tokens")))
            full_page(driver, args.out / "feature.png")
        finally:
            if driver is not None:
                driver.quit()
            channel.close()
            browser.stop(proc)


if __name__ == "__main__":
    main()
