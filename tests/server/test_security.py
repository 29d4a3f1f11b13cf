"""Bearer tokens with roles, TLS and mTLS, over real channels."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from latentguard.server.auth import PERMISSIONS, hash_token
from latentguard.server.config import TokenEntry
from latentguard.server.records import TraceRecord
from latentguard.server.store.embedded import free_port
from latentguard.v1 import (
    features_pb2,
    monitor_pb2,
    rules_pb2,
    rules_pb2_grpc,
    traces_pb2,
    traces_pb2_grpc,
)
from tests.server.helpers import running_sidecar, signal_rule, violations

TOKENS = {"reader": "r-secret", "reviewer": "v-secret", "admin": "a-secret",
          "monitor": "m-secret"}


def entries() -> list[TokenEntry]:
    return [TokenEntry(name=f"{role}-bot", role=role, token_sha256=hash_token(tok))
            for role, tok in TOKENS.items()]


def md(role: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {TOKENS[role]}"),)


def test_every_rpc_has_a_permission() -> None:
    services = [rules_pb2.DESCRIPTOR.services_by_name["Rules"],
                traces_pb2.DESCRIPTOR.services_by_name["Traces"],
                features_pb2.DESCRIPTOR.services_by_name["Features"],
                monitor_pb2.DESCRIPTOR.services_by_name["Monitor"]]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert methods == set(PERMISSIONS)


def test_roles(tmp_path: Path) -> None:
    with running_sidecar(tmp_path / "d", auth={"tokens": entries()}) as s:
        rules = rules_pb2_grpc.RulesStub(s.channel())
        traces = traces_pb2_grpc.TracesStub(s.channel())
        with pytest.raises(grpc.RpcError) as err:
            rules.ListRules(rules_pb2.ListRulesRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as err:
            rules.ListRules(rules_pb2.ListRulesRequest(),
                            metadata=(("authorization", "Bearer wrong"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        rules.ListRules(rules_pb2.ListRulesRequest(), metadata=md("reader"))
        for role in ("reader", "reviewer", "monitor"):
            with pytest.raises(grpc.RpcError) as err:
                rules.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r")),
                              metadata=md(role))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        put = rules.PutRule(rules_pb2.PutRuleRequest(rule=signal_rule("r")),
                            metadata=md("admin"))
        assert put.updated_by == "admin-bot"
        with pytest.raises(grpc.RpcError) as err:
            rules.ListRules(rules_pb2.ListRulesRequest(), metadata=md("monitor"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Review needs reviewer: a reader is refused before the trace is even looked up.
        review = traces_pb2.ReviewTraceRequest(id="0" * 25, label=1)
        with pytest.raises(grpc.RpcError) as err:
            traces.ReviewTrace(review, metadata=md("reader"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as err:
            traces.ReviewTrace(review, metadata=md("reviewer"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Streams are guarded too.
        with pytest.raises(grpc.RpcError) as err:
            next(iter(traces.StreamAlerts(traces_pb2.StreamAlertsRequest(), timeout=5)))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Health checking needs no token.
        health = health_pb2_grpc.HealthStub(s.channel()).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_review_is_filed_under_the_tokens_name(tmp_path: Path) -> None:
    """With tokens, the reviewer is the token's name: an empty field takes it, the same name is
    accepted, another name is refused (no reviewer files under someone else's name, an admin
    neither); without tokens the request's name is used, and required."""
    review = traces_pb2.ReviewTraceRequest
    with running_sidecar(tmp_path / "d", auth={"tokens": entries()}) as s:
        trace = TraceRecord(request_tag="t")
        s.run(s.sidecar.store.traces.save(trace))  # type: ignore[union-attr]
        traces = traces_pb2_grpc.TracesStub(s.channel())
        done = traces.ReviewTrace(review(id=trace.id, label=1), metadata=md("reviewer"))
        assert [r.reviewer for r in done.reviews] == ["reviewer-bot"]
        done = traces.ReviewTrace(review(id=trace.id, label=2, reviewer="admin-bot"),
                                  metadata=md("admin"))
        assert [r.reviewer for r in done.reviews] == ["reviewer-bot", "admin-bot"]
        for role, name in (("reviewer", "admin-bot"), ("reviewer", "someone"),
                           ("admin", "reviewer-bot")):
            with pytest.raises(grpc.RpcError) as err:
                traces.ReviewTrace(review(id=trace.id, label=1, reviewer=name),
                                   metadata=md(role))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert err.value.details().startswith("reviewer: ")
            assert f"'{role}-bot'" in err.value.details()
        # A long name is refused by length first, naming the field.
        with pytest.raises(grpc.RpcError) as err:
            traces.ReviewTrace(review(id=trace.id, label=1, reviewer="x" * 300),
                               metadata=md("reviewer"))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(err.value)] == ["reviewer"]
        stored = traces.GetTrace(traces_pb2.GetTraceRequest(id=trace.id), metadata=md("reader"))
        assert [r.reviewer for r in stored.reviews] == ["reviewer-bot", "admin-bot"]
    with running_sidecar(tmp_path / "open") as s:
        trace = TraceRecord(request_tag="t")
        s.run(s.sidecar.store.traces.save(trace))  # type: ignore[union-attr]
        traces = traces_pb2_grpc.TracesStub(s.channel())
        done = traces.ReviewTrace(review(id=trace.id, label=1, reviewer="ann"))
        assert [r.reviewer for r in done.reviews] == ["ann"]
        with pytest.raises(grpc.RpcError) as err:
            traces.ReviewTrace(review(id=trace.id, label=1))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in violations(err.value)] == ["reviewer"]


def test_token_names_are_capped() -> None:
    with pytest.raises(ValueError, match="128"):
        TokenEntry(name="n" * 129, role="reviewer", token_sha256="0" * 64)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"))
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
                 "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                 "-extfile", str(ext), "-out", str(d / f"{name}.crt"))
    return d


def test_mtls(tmp_path: Path, pki: Path) -> None:
    port = free_port()
    tls = {"cert_file": pki / "server.crt", "key_file": pki / "server.key",
           "client_ca_file": pki / "ca.crt"}
    with running_sidecar(tmp_path / "d", listen=f"127.0.0.1:{port}", tls=tls):
        ca = (pki / "ca.crt").read_bytes()
        good = grpc.ssl_channel_credentials(
            ca, (pki / "client.key").read_bytes(), (pki / "client.crt").read_bytes())
        with grpc.secure_channel(f"localhost:{port}", good) as ch:
            assert rules_pb2_grpc.RulesStub(ch).ListRules(rules_pb2.ListRulesRequest()).revision \
                == 0
        no_cert = grpc.ssl_channel_credentials(ca)
        with grpc.secure_channel(f"localhost:{port}", no_cert) as ch:
            with pytest.raises(grpc.RpcError) as err:
                rules_pb2_grpc.RulesStub(ch).ListRules(rules_pb2.ListRulesRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError):
                rules_pb2_grpc.RulesStub(ch).ListRules(rules_pb2.ListRulesRequest(), timeout=5)
