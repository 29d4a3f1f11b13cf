"""The review console over real HTTP, served by a real sidecar (`ui.enabled`): tokens and
roles (401 / 403), login and CSRF, and each page on traces produced through Monitor.Stream."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator

import httpx
import pytest

from latentguard.cli.main import main as cli
from latentguard.server.config import ConfigError, load_settings
from latentguard.v1 import traces_pb2, traces_pb2_grpc
from tests.server.console_scenario import (
    NAMES,
    SECRETS,
    Requests,
    bearer,
    entries,
    md,
    model_folder,
    wait_for_traces,
)
from tests.server.fixtures import RULES, build_sae
from tests.server.helpers import RunningSidecar, running_sidecar


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningSidecar, dict]]:
    """A sidecar with the console and tokens, and three flagged traces and a clean one:
    {"unsafe": id, "unsafe2": id, "legal": id, "safe": id}."""
    tmp = tmp_path_factory.mktemp("console")
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    model = model_folder(tmp / "model")
    with running_sidecar(tmp / "data", sae_path=build_sae(tmp / "sae"), rules_file=rules,
                         auth={"tokens": entries()}, ui={"enabled": True, "port": 0}) as s:
        requests = Requests(s.channel(), str(model))
        assert requests.unsafe("unsafe") and requests.unsafe("unsafe2")
        assert not requests.legal("legal") and not requests.safe("safe")
        requests.close()
        listed = wait_for_traces(s.channel(), 4)
        yield s, {t.request_tag: t.id for t in listed}


def url(s: RunningSidecar, path: str) -> str:
    assert s.sidecar.console is not None
    return s.sidecar.console.url + path


def get(s: RunningSidecar, path: str, role: str | None = "reader", **kw) -> httpx.Response:
    headers = bearer(role) if role else {}
    return httpx.get(url(s, path), headers=headers, follow_redirects=False, timeout=30, **kw)


def test_the_console_needs_tokens() -> None:
    with pytest.raises(ConfigError, match="LATENTGUARD_UI__ENABLED.*tokens"):
        load_settings(ui={"enabled": True})


def test_pages_answer_401_without_a_token_and_403_without_the_role(console) -> None:
    s, ids = console
    trace = f"/traces/{ids['unsafe']}"
    for path in ("/traces", trace, "/stats", "/alerts", "/features", "/features/3",
                 "/alerts/events"):
        no_token = get(s, path, role=None)
        assert no_token.status_code == 401, path
        assert no_token.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(url(s, path), headers={"Authorization": "Bearer nope"}, timeout=30)
        assert wrong.status_code == 401, path
        # The plugin's token reads nothing, as over gRPC.
        assert get(s, path, role="monitor").status_code == 403, path
    assert 'name="token"' in get(s, "/traces", role=None).text  # the login form
    assert "needs role admin or reader or reviewer" in get(s, "/traces", role="monitor").text
    # Reviewing needs reviewer (or admin): a reader is refused before anything is stored.
    review = httpx.post(url(s, trace + "/review"), data={"label": "true_positive"},
                        headers=bearer("reader"), timeout=30)
    assert review.status_code == 403
    assert "needs role admin or reviewer" in review.text
    assert httpx.post(url(s, trace + "/review"), data={"label": "true_positive"},
                      timeout=30).status_code == 401
    got = traces_pb2_grpc.TracesStub(s.channel()).GetTrace(
        traces_pb2.GetTraceRequest(id=ids["unsafe"]), metadata=md("reader"))
    assert not got.reviews
    assert httpx.get(url(s, "/healthz"), timeout=30).text == "ok"


def test_browser_login_sets_an_httponly_session_and_forms_carry_csrf(console) -> None:
    s, ids = console
    with httpx.Client(base_url=url(s, ""), timeout=30) as browser:
        bad = browser.post("/login", data={"token": "wrong", "next": "/stats"})
        assert bad.status_code == 401 and "unknown token" in bad.text
        done = browser.post("/login", data={"token": SECRETS["reviewer"],
                                            "next": "https://elsewhere.example/"})
        assert done.status_code == 303 and done.headers["location"] == "/traces"
        cookie = done.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert SECRETS["reviewer"] not in done.headers["set-cookie"]  # a session id, not the token
        page = browser.get(f"/traces/{ids['unsafe2']}")
        assert page.status_code == 200 and NAMES["reviewer"] in page.text
        csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert csrf is not None
        # Without the form's CSRF token (another site's form), nothing is filed.
        forged = browser.post(f"/traces/{ids['unsafe2']}/review",
                              data={"label": "false_positive"})
        assert forged.status_code == 403
        filed = browser.post(f"/traces/{ids['unsafe2']}/review",
                             data={"label": "false_positive", "note": "a test fixture",
                                   "csrf": csrf.group(1), "reviewer": "someone-else"})
        assert filed.status_code == 303
        stub = traces_pb2_grpc.TracesStub(s.channel())
        got = stub.GetTrace(traces_pb2.GetTraceRequest(id=ids["unsafe2"]), metadata=md("reader"))
        assert [(r.reviewer, r.label, r.note) for r in got.reviews] == [
            (NAMES["reviewer"], traces_pb2.REVIEW_LABEL_FALSE_POSITIVE, "a test fixture")]
        assert browser.post("/logout", data={"csrf": csrf.group(1)}).status_code == 303
        browser.cookies.clear()
        browser.cookies.set("lg_session", done.cookies["lg_session"])
        assert browser.get("/traces").status_code == 401  # the session ended with the logout


def test_list_filters_and_pages(console) -> None:
    s, ids = console
    listed = get(s, "/traces").text
    flagged = {ids["unsafe"], ids["unsafe2"], ids["legal"]}
    assert all(i in listed for i in flagged) and ids["safe"] not in listed
    only = get(s, "/traces", params={"rule": "unsafe-code"}).text
    assert ids["unsafe"] in only and ids["legal"] not in only
    high = get(s, "/traces", params={"severity": "high"}).text
    assert ids["unsafe"] in high and ids["legal"] not in high
    old = get(s, "/traces", params={"end": "2001-01-01T00:00"}).text
    assert 'id="no-traces"' in old
    first = get(s, "/traces", params={"size": "1"}).text
    more = re.search(r'id="next-page" href="([^"]+)"', first)
    assert more is not None
    second = get(s, more.group(1).replace("&amp;", "&")).text
    shown = [i for i in flagged if i in first] + [i for i in flagged if i in second]
    assert len(shown) == 2 and len(set(shown)) == 2
    bad = get(s, "/traces", params={"severity": "urgent"})
    assert bad.status_code == 400 and "severity" in bad.text


def test_trace_page_shades_tokens_by_the_signal_that_fired(console) -> None:
    s, ids = console
    page = get(s, f"/traces/{ids['unsafe']}").text
    assert 'id="signal-name">feature 3<' in page
    assert "&gt; 2" in page and 'id="plot-threshold"' in page
    # ` shell` (feature 3 at 2.6) passes the threshold and is where the rule fired.
    shell = re.search(r'<span id="tok-15" data-p="15" class="tok (s\d+) holds hit">'
                      r' shell</span>', page)
    assert shell is not None and shell.group(1) == "s10"  # the largest value: darkest
    assert re.search(r'id="tok-12" data-p="12" class="tok s\d"> *run</span>', page)
    assert "rule unsafe-code (high) fired" in page  # the hit's explanation
    data = json.loads(re.search(r'id="trace-data">(.*?)</script>', page, re.S).group(1))
    assert data["labels"]["3"] == "unsafe code" and data["values"]["15"] == pytest.approx(2.6)
    assert [3, pytest.approx(2.6)] in data["features"]["15"]
    assert get(s, "/traces/" + "0" * 25).status_code == 404
    assert get(s, "/traces/not-an-id").status_code == 404
    # A reader sees no review buttons.
    assert 'id="review-tp"' not in page
    assert 'id="review-tp"' in get(s, f"/traces/{ids['unsafe']}", role="reviewer").text


def test_traces_record_each_tokens_rule_signals(console) -> None:
    s, ids = console
    record = s.run(s.sidecar.store.traces.get(ids["unsafe"]))
    by_position = {t.position: t.signals for t in record.tokens}
    assert by_position[15] == {"feature 3": pytest.approx(2.6), "feature 5": 0.0,
                               "feature 7": 0.0}
    assert by_position[1]["feature 3"] == pytest.approx(0.3)  # prompt tokens too


def test_windowed_signal_is_compared_after_its_window(console) -> None:
    s, ids = console
    page = get(s, f"/traces/{ids['legal']}").text
    assert 'id="signal-name">feature 5<' in page and "sum over 2 tokens" in page
    # The second hit's token (` lawyer`, 1.2 alone) holds after the window; ` a` (0) does not.
    assert re.search(r'class="tok s\d+ holds( hit)?"> lawyer<', page)
    assert re.search(r'class="tok s\d+"> a<', page)
    assert "plot-raw" in page  # the raw value beside the window aggregate


def test_stats_page_and_cli_print_the_same(console, capsys) -> None:
    s, ids = console
    stub = traces_pb2_grpc.TracesStub(s.channel())
    stub.ReviewTrace(traces_pb2.ReviewTraceRequest(
        id=ids["unsafe"], label=traces_pb2.REVIEW_LABEL_TRUE_POSITIVE), metadata=md("admin"))
    stub.ReviewTrace(traces_pb2.ReviewTraceRequest(
        id=ids["unsafe2"], label=traces_pb2.REVIEW_LABEL_FALSE_POSITIVE), metadata=md("admin"))
    stub.ReviewTrace(traces_pb2.ReviewTraceRequest(
        id=ids["legal"], label=traces_pb2.REVIEW_LABEL_ESCALATE), metadata=md("admin"))
    page = get(s, "/stats", params={"period": "24h"}).text
    row = re.search(r'<tr data-rule="unsafe-code">(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[1:7] == ["2", "2", "1", "1", "0", "0"]  # flagged, hits, tp, fp, esc, open
    assert cells[7].startswith("50%")
    assert cli(["rules", "stats", "--since", "24h", "--json", "--target", s.target,
                "--token", SECRETS["reader"]]) == 0
    report = json.loads(capsys.readouterr().out)
    by_rule = {r["rule"]: r for r in report["rules"]}
    unsafe = by_rule["unsafe-code"]
    assert (unsafe["flagged"], unsafe["hits"], unsafe["true_positive"],
            unsafe["false_positive"], unsafe["escalated"]) == (2, 2, 1, 1, 0)
    assert unsafe["precision"] == 0.5
    assert by_rule["watch-5"]["escalated"] == 1 and by_rule["watch-5"]["precision"] is None
    assert report["traces"] == 4
    assert cli(["rules", "stats", "--since", "24h", "--target", s.target,
                "--token", SECRETS["reader"]]) == 0
    out = capsys.readouterr().out
    assert "unsafe-code" in out and "50%" in out


def test_feature_page_shows_its_label_and_where_it_fired(console) -> None:
    s, ids = console
    page = get(s, "/features/3").text
    assert 'id="feature-label">unsafe code<' in page
    assert "shell injection" in page  # the description
    first = re.search(r'<td class="context">(.*?)</td>', page, re.S).group(1)
    assert "<mark>=True</mark>" in first or "<mark> shell</mark>" in first
    assert ids["unsafe"] in page or ids["unsafe2"] in page
    found = get(s, "/features", params={"q": "anger"}).text
    assert 'href="/features/7"' in found
    assert get(s, "/features/99").status_code == 404  # past the SAE's 32 features


def test_live_alerts_arrive_as_server_sent_events(console) -> None:
    s, _ = console
    assert 'data-source="/alerts/events?rule=unsafe-code"' in get(
        s, "/alerts", params={"rule": "unsafe-code"}).text
    got: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", url(s, "/alerts/events"), params={"rule": "unsafe-code"},
                          headers=bearer("reader"), timeout=30) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            ready.set()
            event = ""
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "alert":
                    got.append(json.loads(line.split(":", 1)[1]))
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(10)
    import time

    time.sleep(0.5)  # the stream resolves "now" on its first read
    requests = Requests(s.channel(), "")
    requests.legal("live-legal")  # filtered out: another rule
    requests.unsafe("live-unsafe")
    requests.close()
    thread.join(20)
    assert got and got[0]["rule"] == "unsafe-code" and got[0]["request_tag"] == "live-unsafe"
    assert "rule unsafe-code (high) fired" in got[0]["explanation"]
