"""The entry point vLLM calls in each of its processes."""

from __future__ import annotations

import pytest

import latentguard.plugin as plugin
from latentguard.plugin import _attach


@pytest.fixture(autouse=True)
def fresh(monkeypatch: pytest.MonkeyPatch):
    for var in (*plugin.ACTIVATE, plugin.LATENTGUARD_DISABLE):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(plugin, "_registered", False)
    # An LLM built earlier in this process (vLLM loads its plugins here too) may have armed it.
    if _attach._handle is not None:
        _attach._handle.remove()
        _attach._handle = None
    yield
    if _attach._handle is not None:
        _attach._handle.remove()
        _attach._handle = None


def test_unconfigured_plugin_leaves_vllm_alone() -> None:
    plugin.register()
    assert _attach._handle is None


def test_disable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_SIDECAR", "unix:///tmp/x.sock")
    monkeypatch.setenv("LATENTGUARD_DISABLE", "1")
    plugin.register()
    assert _attach._handle is None


def test_configured_plugin_arms_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGUARD_SIDECAR", "unix:///tmp/x.sock")
    plugin.register()
    handle = _attach._handle
    assert handle is not None
    plugin.register()  # safe to call twice
    assert _attach._handle is handle


def test_settings_read_the_documented_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from latentguard.plugin._settings import PluginSettings

    monkeypatch.setenv("LATENTGUARD_SIDECAR", "unix:///tmp/x.sock")
    monkeypatch.setenv("LATENTGUARD_PLUGIN_CPUS", "0-1")
    monkeypatch.setenv("LATENTGUARD_TIMEOUT_MS", "250")
    monkeypatch.setenv("LATENTGUARD_LAYER", "")  # empty is unset, as the launcher means it
    monkeypatch.setenv("LATENTGUARD_TOP_K", "3")  # the sidecar's: ignored here
    monkeypatch.setenv("LATENTGUARD_TARGET", "unix:///wrong.sock")  # field names are no variables
    monkeypatch.setenv("LATENTGUARD_CPUS", "7")
    s = PluginSettings.from_env()
    assert (s.target, s.cpus, s.timeout_ms, s.layer) == ("unix:///tmp/x.sock", "0-1", 250, None)
    monkeypatch.delenv("LATENTGUARD_SIDECAR")
    monkeypatch.setenv("LATENTGUARD_DATA_DIR", "/tmp/lg-data")
    assert PluginSettings.from_env().target == "unix:///tmp/lg-data/latentguard.sock"
