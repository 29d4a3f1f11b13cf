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


def test_load_settings_leaves_the_environment_alone(tmp_path: Path) -> None:
    import os

    cfg = tmp_path / "lg.yaml"
    cfg.write_text(f"data_dir: {tmp_path}\ntop_k: 5\n")
    assert load_settings(cfg).top_k == 5
    assert "LATENTGUARD_CONFIG" not in os.environ
    assert load_settings().top_k == 8  # the file was for that call only


def test_every_field_has_a_description_and_a_derived_variable() -> None:
    from latentguard.plugin._settings import PluginSettings
    from latentguard.server.config import Settings, env_variables

    sidecar = dict(env_variables(Settings))
    assert {"LATENTGUARD_TOP_K", "LATENTGUARD_TLS__CERT_FILE",
            "LATENTGUARD_AUTH__TOKENS_FILE"} <= set(sidecar)
    plugin = dict(env_variables(PluginSettings))
    assert {"LATENTGUARD_SIDECAR", "LATENTGUARD_PLUGIN_CPUS", "LATENTGUARD_TOKEN"} <= set(plugin)
    assert "LATENTGUARD_TARGET" not in plugin and "LATENTGUARD_CPUS" not in plugin
    missing = [name for name, field in {**sidecar, **plugin}.items() if not field.description]
    assert not missing, f"fields without a description: {missing}"


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_readme_table_is_the_settings() -> None:
    """The README's table lists exactly the variables the models read, as rendered from them."""
    import re

    from latentguard.cli.settings import settings_table, variables

    rows = [line for line in _readme_section("Configuration").splitlines()
            if line.startswith("|")]
    named = {m for line in rows[2:] for m in re.findall(r"`(LATENTGUARD_[A-Z_]+)`",
                                                         line.split("|")[1])}
    known = {v.name for v in variables()}
    assert not known - named, f"missing from the README table: {sorted(known - named)}"
    assert not named - known, f"in the README table but read by nothing: {sorted(named - known)}"
    assert "\n".join(rows) + "\n" == settings_table(), \
        "README table out of date: paste `python -m latentguard.cli.settings` into it"


def test_readme_names_only_real_variables() -> None:
    import re

    from latentguard.cli.settings import variables

    known = {v.name for v in variables()}
    named = set(re.findall(r"LATENTGUARD_[A-Z_]*[A-Z]", README.read_text()))
    assert not named - known, f"README names unknown variables: {sorted(named - known)}"
