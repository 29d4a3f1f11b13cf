"""Random field values on the Monitor stream and a few unary RPCs (issue 15, item 6): never
INTERNAL or UNKNOWN, and the sidecar still serves a good request afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentguard.v1 import (
    features_pb2,
    features_pb2_grpc,
    monitor_pb2,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)
from tests.server.fixtures import D_IN, RULES, StreamDriver, build_sae, rows
from tests.server.helpers import RunningSidecar, running_sidecar

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
texts = st.text(max_size=300)
small = st.integers(min_value=0, max_value=40)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "rules.yaml").write_text(RULES)
    with running_sidecar(tmp / "data", sae_path=build_sae(tmp / "sae"),
                         rules_file=tmp / "rules.yaml", model_name="tiny-test") as running:
        yield running


spans = st.builds(monitor_pb2.RowSpan, request_tag=st.sampled_from(["a", "b", "", "zz"]),
                  row_start=small, positions=st.lists(small, max_size=4),
                  token_ids=st.lists(small, max_size=4), prefill=st.booleans())
steps = st.builds(
    monitor_pb2.StepBatch, step=small,
    started=st.lists(st.builds(monitor_pb2.RequestStart,
                               request_tag=st.sampled_from(["a", "b", "", "x" * 300]),
                               policy=st.sampled_from(["", "default", "quiet", "nope"]),
                               prompt_text=texts), max_size=3),
    spans=st.lists(spans, max_size=3),
    finished=st.lists(st.builds(monitor_pb2.RequestEnd,
                                request_tag=st.sampled_from(["a", "b", "c"])), max_size=2))


@FUZZ
@given(step=steps, n_rows=st.integers(min_value=0, max_value=6))
def test_stream_never_internal(sidecar: RunningSidecar, step: monitor_pb2.StepBatch,
                               n_rows: int) -> None:
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    step.rows.CopyFrom(rows(*[{} for _ in range(n_rows)], width=D_IN))
    reply = drive.send(monitor_pb2.MonitorMessage(step=step))
    if reply.HasField("error"):
        assert reply.error.code not in {"INTERNAL", "UNKNOWN"}, reply.error
    good = drive.step(step=99, started=[monitor_pb2.RequestStart(request_tag="ok")],
                      spans=[monitor_pb2.RowSpan(request_tag="ok", row_start=0, positions=[0],
                                                 token_ids=[1], prefill=True)],
                      rows=rows({}))
    assert good.HasField("verdicts"), good
    drive.close()


def _ok_or_refused(call: object) -> None:
    try:
        result = call()  # type: ignore[operator]
        if isinstance(result, Iterator):
            next(result)
    except grpc.RpcError as err:
        assert err.code() not in NEVER, (err.code(), err.details())  # type: ignore[attr-defined]


@FUZZ
@given(name=texts, page_token=texts, rule=texts, reviewer=texts, after_id=texts,
       seconds=st.integers(min_value=-(2**62), max_value=2**62))
def test_unary_never_internal(sidecar: RunningSidecar, name: str, page_token: str, rule: str,
                              reviewer: str, after_id: str, seconds: int) -> None:
    channel = sidecar.channel()
    rules = rules_pb2_grpc.RulesStub(channel)
    traces = traces_pb2_grpc.TracesStub(channel)
    features = features_pb2_grpc.FeaturesStub(channel)
    _ok_or_refused(lambda: rules.GetRule(rules_pb2.GetRuleRequest(name=name), timeout=10))
    _ok_or_refused(lambda: rules.ValidateRule(rules_pb2.ValidateRuleRequest(yaml=name),
                                              timeout=10))
    _ok_or_refused(lambda: features.ListFeatures(
        features_pb2.ListFeaturesRequest(page_token=page_token), timeout=10))
    req = traces_pb2.ListTracesRequest(rule=rule, page_token=page_token)
    req.start_time.seconds = seconds
    _ok_or_refused(lambda: traces.ListTraces(req, timeout=10))
    _ok_or_refused(lambda: traces.ReviewTrace(traces_pb2.ReviewTraceRequest(
        id=name, reviewer=reviewer, label=traces_pb2.REVIEW_LABEL_ESCALATE), timeout=10))
    if after_id:
        # Refused ids fail at once; a valid one would follow forever: one second is enough.
        try:
            next(traces.StreamAlerts(traces_pb2.StreamAlertsRequest(after_id=after_id),
                                     timeout=1))
        except grpc.RpcError as err:
            assert err.code() not in NEVER, (err.code(), err.details())  # type: ignore[attr-defined]
    assert rules.ListRules(rules_pb2.ListRulesRequest(), timeout=10) is not None
    channel.close()
