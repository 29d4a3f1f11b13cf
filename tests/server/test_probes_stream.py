"""Probes through Monitor.Stream: a residual probe and a features probe (an SAE rule over
weighted features) loaded from the SAE folder, scored from the same encode as the rules'
features, their rules blocking and alerting over a real gRPC channel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentguard.monitors.probes import Probe, ProbeMeta
from latentguard.v1 import monitor_pb2, traces_pb2, traces_pb2_grpc
from tests.server.fixtures import D_IN, D_SAE, StreamDriver, build_sae, rows
from tests.server.helpers import running_sidecar

RULES = """\
rules:
  - name: code-sae
    severity: high
    when: {probe: code-sae, threshold: 1.0}
    action: {type: block}
  - name: lies
    severity: low
    when: {probe: lies, threshold: 0.5}
policies:
  - {name: default, rules: ["*"]}
"""


@pytest.fixture
def sidecar(tmp_path: Path):
    sae = build_sae(tmp_path / "sae")
    # Features 3 and 4 read input dimensions 3 and 4 (fixtures.build_sae); no rule names them.
    weights = torch.zeros(D_SAE)
    weights[3], weights[4] = 1.0, 0.5
    Probe(ProbeMeta(name="code-sae", input="features", bias=-1.0), weights).save(sae / "probes")
    lies = torch.zeros(D_IN)
    lies[9] = 1.0
    Probe(ProbeMeta(name="lies"), lies).save(sae / "probes")
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    with running_sidecar(tmp_path / "data", sae_path=sae, rules_file=rules,
                         model_name="tiny-test") as running:
        yield running


def span(tag: str, start: int, position: int) -> monitor_pb2.RowSpan:
    return monitor_pb2.RowSpan(request_tag=tag, row_start=start, positions=[position],
                               token_ids=[100 + position])


def test_features_probe_blocks_and_residual_probe_alerts(sidecar) -> None:
    drive = StreamDriver(sidecar.channel())
    drive.hello()
    started = [monitor_pb2.RequestStart(request_tag=t, prompt_tokens=0) for t in "AB"]
    # A: 1.0 + 0.5 * 1.0 - 1 = 0.5, below 1.0; B: the residual probe reads dimension 9.
    reply = drive.step(step=1, started=started, spans=[span("A", 0, 0), span("B", 1, 0)],
                       rows=rows({3: 1.0, 4: 1.0}, {9: 0.7}))
    assert list(reply.verdicts.verdicts) == []
    # A: 2.0 + 0.5 * 0.5 - 1 = 1.25 > 1.0: blocked by the weighted-features rule.
    reply = drive.step(step=2, spans=[span("A", 0, 1), span("B", 1, 1)],
                       rows=rows({3: 2.0, 4: 0.5}, {}))
    verdicts = {v.request_tag: v for v in reply.verdicts.verdicts}
    assert set(verdicts) == {"A"} and verdicts["A"].kind == monitor_pb2.VERDICT_KIND_BLOCK
    assert verdicts["A"].rule == "code-sae" and "probe code-sae" in verdicts["A"].reason
    drive.step(step=3, finished=[monitor_pb2.RequestEnd(request_tag=t, finish_reason="stop")
                                 for t in "AB"])
    drive.close()
    sidecar.run(sidecar.sidecar.writer.flush())

    traces = traces_pb2_grpc.TracesStub(sidecar.channel())
    by_tag = {t.request_tag: t for t in traces.ListTraces(traces_pb2.ListTracesRequest()).traces}
    a = traces.GetTrace(traces_pb2.GetTraceRequest(id=by_tag["A"].id))
    assert a.blocked and [h.rule for h in a.hits] == ["code-sae"]
    assert a.hits[0].position == 1 and a.hits[0].evidence[0].value == pytest.approx(1.25)
    # The explanation names the features behind the score, largest term first, with labels.
    assert "probe code-sae from features 3 'unsafe code' +2, 4 +0.25" in a.hits[0].explanation
    b = traces.GetTrace(traces_pb2.GetTraceRequest(id=by_tag["B"].id))
    assert [h.rule for h in b.hits] == ["lies"] and not b.blocked
    assert b.hits[0].evidence[0].value == pytest.approx(0.7)
