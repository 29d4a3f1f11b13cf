"""Settings resolve argument > environment > YAML > default, and errors name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentguard.server.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LATENTGUARD_"):
            monkeypatch.delenv(key)


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "lg.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\ntop_k: 5\ntrace_store: flagged\n")
    monkeypatch.setenv("LATENTGUARD_CONFIG", str(cfg))
    monkeypatch.setenv("LATENTGUARD_TOP_K", "6")
    s = load_settings()
    assert s.top_k == 6 and s.trace_store == "flagged"
    assert s.listen == f"unix://{tmp_path}/latentguard.sock"
    assert load_settings(top_k=7).top_k == 7


def test_errors_name_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_TOP_K", "0")
    with pytest.raises(ConfigError, match="LATENTGUARD_TOP_K"):
        load_settings()
    monkeypatch.delenv("LATENTGUARD_TOP_K")
    monkeypatch.setenv("LATENTGUARD_TLS__CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="tls.cert_file and tls.key_file"):
        load_settings()
    monkeypatch.delenv("LATENTGUARD_TLS__CERT_FILE")
    cfg = tmp_path / "lg.yaml"
    cfg.write_text("top_kk: 3\n")
    monkeypatch.setenv("LATENTGUARD_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match=r"LATENTGUARD_TOP_KK \(in .*lg.yaml\)"):
        load_settings()
    cfg.write_text("top_k: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings()


def test_tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("- {name: ci, role: admin, token_sha256: " + "a" * 64 + "}\n")
    monkeypatch.setenv("LATENTGUARD_AUTH__TOKENS_FILE", str(tokens))
    assert load_settings().auth.tokens[0].role == "admin"
    tokens.write_text("- {name: ci, role: root, token_sha256: " + "a" * 64 + "}\n")
    with pytest.raises(ConfigError, match="LATENTGUARD_AUTH"):
        load_settings()
