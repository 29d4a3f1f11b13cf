"""`latentguard serve` as a real process: the embedded store keeps everything across restarts."""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from latentguard.cli.main import main as cli
from latentguard.v1 import monitor_pb2, traces_pb2, traces_pb2_grpc
from tests.server.fixtures import RULES, StreamDriver, build_sae, rows
from tests.server.processes import serve, stop


def test_restart_keeps_rules_traces_and_reviews(tmp_path: Path, capsys) -> None:
    data, sae = tmp_path / "data", build_sae(tmp_path / "sae")
    target = ["--target", f"unix://{data / 'latentguard.sock'}"]
    pack = tmp_path / "rules.yaml"
    pack.write_text(RULES)

    proc = serve(data, sae)
    try:
        assert cli(["rules", "apply", str(pack), *target]) == 0
        with grpc.insecure_channel(target[1]) as channel:
            drive = StreamDriver(channel)
            drive.hello()
            drive.step(step=1, started=[monitor_pb2.RequestStart(request_tag="r1")],
                       spans=[monitor_pb2.RowSpan(request_tag="r1", row_start=0,
                                                  positions=[0], token_ids=[5])],
                       rows=rows({3: 7.0}))
            drive.step(step=2, finished=[monitor_pb2.RequestEnd(request_tag="r1")])
            drive.close()
            stub = traces_pb2_grpc.TracesStub(channel)
            for _ in range(100):
                listed = stub.ListTraces(traces_pb2.ListTracesRequest()).traces
                if listed:
                    break
                time.sleep(0.05)
        trace_id = listed[0].id
        assert cli(["traces", "review", trace_id, "--label", "fp", "--reviewer", "kim",
                    *target]) == 0
    finally:
        stop(proc)

    proc = serve(data, sae)
    try:
        capsys.readouterr()
        assert cli(["rules", "list", "--json", *target]) == 0
        out = capsys.readouterr().out
        assert '"unsafe-code"' in out and '"quiet"' in out
        assert cli(["traces", "show", trace_id, *target]) == 0
        out = capsys.readouterr().out
        assert "BLOCKED by unsafe-code" in out and "false_positive by kim" in out
    finally:
        stop(proc)
