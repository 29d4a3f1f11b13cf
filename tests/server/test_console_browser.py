"""The review console in a real headless Chromium: a sidecar started with `serve --ui`, a
trace flagged through Monitor.Stream, reviewed in the browser, the review read over gRPC;
the live alerts page receives an alert; the sidecar then stops with that page still open.

CI installs chromium and chromium-driver (.ci/run); without them this test fails, it does
not skip."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from latentguard.server.store.embedded import free_port
from latentguard.v1 import traces_pb2, traces_pb2_grpc
from tests.server import browser
from tests.server.console_scenario import (
    NAMES,
    SECRETS,
    Requests,
    md,
    model_folder,
    tokens_file,
    wait_for_traces,
)
from tests.server.fixtures import RULES, build_sae


def test_review_a_flagged_trace_in_chromium(tmp_path: Path) -> None:
    if (why := browser.missing()) is not None:
        pytest.fail(why)
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    data, port = tmp_path / "data", free_port()
    proc = browser.serve_with_ui(data, port, {
        "LATENTGUARD_SAE_PATH": str(build_sae(tmp_path / "sae")),
        "LATENTGUARD_RULES_FILE": str(rules),
        "LATENTGUARD_AUTH__TOKENS_FILE": str(tokens_file(tmp_path / "tokens.yaml"))})
    channel = grpc.insecure_channel(f"unix://{data / 'latentguard.sock'}")
    requests = Requests(channel, str(model_folder(tmp_path / "model")))
    driver = None
    try:
        assert requests.unsafe("in-the-browser")
        (trace,) = wait_for_traces(channel, 1)
        console = f"http://127.0.0.1:{port}"
        driver = browser.chromium()
        wait = WebDriverWait(driver, 30)

        # Not logged in: the login form (the page answered 401); log in as the reviewer.
        driver.get(f"{console}/traces")
        wait.until(ec.presence_of_element_located((By.ID, "token"))).send_keys(
            SECRETS["reviewer"])
        driver.find_element(By.ID, "login-button").click()
        link = wait.until(ec.element_to_be_clickable(
            (By.CSS_SELECTOR, f"a.trace-link[href='/traces/{trace.id}']")))
        assert driver.find_element(By.ID, "whoami").text == NAMES["reviewer"]
        cookie = driver.get_cookie("lg_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        link.click()

        # The trace: ` shell` passed the threshold and is shaded darkest; hover shows its
        # top features with their catalog labels.
        shell = wait.until(ec.presence_of_element_located((By.ID, "tok-15")))
        assert shell.text.strip() == "shell"
        assert {"holds", "hit", "s10"} <= set(shell.get_attribute("class").split())
        assert driver.find_element(By.ID, "signal-name").text == "feature 3"
        assert driver.find_element(By.ID, "plot-threshold") is not None
        ActionChains(driver).move_to_element(shell).perform()
        tip = wait.until(ec.visibility_of_element_located((By.ID, "tooltip")))
        assert "unsafe code" in tip.text and "feature 3: 2.60" in tip.text

        # Review it: the reviewer is the token's name, not typed.
        driver.find_element(By.ID, "note").send_keys("shell=True on user input")
        driver.find_element(By.ID, "review-tp").click()
        done = wait.until(ec.presence_of_element_located((By.ID, "review-done")))
        assert NAMES["reviewer"] in done.text
        assert driver.find_element(By.ID, "trace-status").text == "reviewed"

        got = traces_pb2_grpc.TracesStub(channel).GetTrace(
            traces_pb2.GetTraceRequest(id=trace.id), metadata=md("reader"))
        assert got.status == traces_pb2.TRACE_STATUS_REVIEWED
        assert [(r.reviewer, r.label, r.note) for r in got.reviews] == [
            (NAMES["reviewer"], traces_pb2.REVIEW_LABEL_TRUE_POSITIVE,
             "shell=True on user input")]

        # Live alerts: the page is connected, and a new hit appears on it.
        driver.get(f"{console}/alerts")
        wait.until(ec.text_to_be_present_in_element((By.ID, "live-status"), "live"))
        assert requests.unsafe("live-in-the-browser")
        row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#alerts tr.alert")))
        assert "unsafe-code" in row.text
        requests.close()
        # The sidecar stops promptly with a live page still connected.
        out = browser.stop(proc)
        assert f"review console on http://127.0.0.1:{port}" in out
    finally:
        if driver is not None:
            driver.quit()
        channel.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
