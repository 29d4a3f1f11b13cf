"""Sidecar settings: argument, then `LATENTGUARD_*` variable, then YAML file, then default.

The fields below are the one list: each variable is the prefix and the field name, nested
with `__` (`LATENTGUARD_TLS__CERT_FILE`), each field carries its description, and the README's
table is rendered from them (`python -m latentguard.server.config`; a test keeps the two equal).
Secrets (the Redis URL's password, tokens) are never logged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from latentguard.paths import default_data_dir, socket_target

ENV_PREFIX = "LATENTGUARD_"
NESTED_DELIMITER = "__"
#: Path of an optional YAML settings file: the field names below as keys, nested as mappings.
CONFIG_VAR = "LATENTGUARD_CONFIG"

Role = Literal["reader", "reviewer", "admin", "monitor"]

#: The YAML file `load_settings` was given; read by the settings sources instead of a variable
#: written into `os.environ`, which would outlive the call and leak into child processes.
_config_file: ContextVar[Path | None] = ContextVar("latentguard_config_file", default=None)


class TLSSettings(BaseModel):
    """Server TLS. Both cert and key, or neither; a client CA requires both (mTLS)."""

    cert_file: Path | None = Field(default=None, description="server certificate (PEM), for "
                                   "TCP listeners; with `key_file`")
    key_file: Path | None = Field(default=None, description="its private key (PEM)")
    client_ca_file: Path | None = Field(default=None, description="CA of client certificates: "
                                        "turns on mTLS")

    @model_validator(mode="after")
    def _pairs(self) -> TLSSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls.cert_file and tls.key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("tls.client_ca_file (mTLS) needs tls.cert_file and tls.key_file")
        for name in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"tls.{name}: no such file: {path}")
        return self

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None


class TokenEntry(BaseModel):
    """One bearer token, stored only as its SHA-256 hex digest."""

    model_config = {"extra": "forbid"}
    name: str = Field(min_length=1, max_length=128)
    """Who holds the token: recorded as the author of the rule and policy changes it makes,
    and the reviewer of the reviews it files."""
    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(BaseModel):
    """Bearer tokens and their roles; with no tokens at all, auth is off."""

    tokens_file: Path | None = Field(default=None, description="YAML list of `{name, role, "
                                     "token_sha256}`; with no tokens at all, auth is off")
    tokens: list[TokenEntry] = Field(default=[], description="tokens given inline (a JSON list "
                                     "in the variable), added to the file's")

    @model_validator(mode="after")
    def _load_file(self) -> AuthSettings:
        if self.tokens_file is None:
            return self
        path = Path(self.tokens_file)
        if not path.is_file():
            raise ValueError(f"auth.tokens_file: no such file: {path}")
        data = yaml.safe_load(path.read_text()) or []
        entries = data.get("tokens", []) if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f"auth.tokens_file {path}: expected a list of tokens")
        self.tokens = [*self.tokens, *(TokenEntry.model_validate(e) for e in entries)]
        return self


class UISettings(BaseModel):
    """The review console (`latentguard serve --ui`): pages served by the sidecar over HTTP."""

    enabled: bool = Field(default=False, description="serve the review console (`serve --ui`); "
                          "it needs bearer tokens (`auth`)",
                          json_schema_extra={"shown_default": "`false`"})
    host: str = Field(default="127.0.0.1", min_length=1, description="address the console "
                      "listens on")
    port: int = Field(default=8710, ge=0, le=65535, description="its TCP port (0: any free "
                      "port, logged)")
    session_hours: float = Field(default=12.0, gt=0, le=24 * 30, description="how long a "
                                 "browser login lasts")
    stats_max_traces: int = Field(default=20_000, ge=100, description="most stored traces the "
                                  "stats page reads (newest first)")
    feature_scan_traces: int = Field(default=200, ge=1, le=5000, description="recent stored "
                                     "traces the feature page reads for the tokens where a "
                                     "feature fired most")


class Settings(BaseSettings):
    """Everything the sidecar reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED_DELIMITER, extra="forbid",
        validate_default=True,
    )

    # `default_data_dir` ignores LATENTGUARD_DATA_DIR on purpose: this field reads it itself.
    data_dir: Path = Field(default_factory=default_data_dir,
                           description="embedded Redis's append-only file, the default socket, "
                           "the trace spool",
                           json_schema_extra={"shown_default": "`$XDG_DATA_HOME/latentguard`"})
    listen: str = Field(default="", description="`unix:///path.sock` or `host:port` for TCP",
                        json_schema_extra={"shown_default": "`unix://<data_dir>/latentguard.sock`"})
    redis_url: SecretStr | None = Field(
        default=None, description="`redis://`, `rediss://` or `unix://` URL of a shared Redis / "
        "Valkey, or `redis+cluster://host:port,host:port` (`rediss+cluster://` for TLS) of a "
        "Redis Cluster's seed nodes; unset starts a private one (embedded)")
    redis_prefix: str = Field(default="lg", pattern=r"^[A-Za-z0-9_.:-]{1,32}$",
                              description="prefix of every Redis key, so several deployments "
                              "can share one Redis")
    trace_retention_days: float = Field(default=7.0, gt=0, description="days a trace is kept "
                                        "(fractions allowed)")
    trace_store: Literal["all", "flagged"] = Field(
        default="all", description="`all` stores every monitored request; `flagged` only those "
        "where a rule fired")
    alert_stream_maxlen: int = Field(default=100_000, ge=100, description="approximate number "
                                     "of alerts the alert stream keeps")
    alert_claim_idle_s: float = Field(default=30.0, gt=0, description="a consumer group's "
                                      "alert not acknowledged for this long goes to the next "
                                      "reader of the group")
    spool_max_mb: int = Field(default=1024, ge=1, description="disk budget of the write-ahead "
                              "spool (`<data_dir>/spool`), in MiB: how long a store outage "
                              "loses nothing")
    stop_drain_s: float = Field(default=10.0, ge=0, description="on SIGTERM, how long spooled "
                                "records may take to reach the store; the rest waits on disk "
                                "for the next start")
    max_message_mb: int = Field(default=64, ge=1, le=2047, description="largest gRPC message "
                                "accepted, in MiB")
    top_k: int = Field(default=8, ge=1, le=64, description="features per token kept in traces")
    max_tokens_per_request: int = Field(
        default=32_768, ge=1, description="tokens (prompt and generated) one trace keeps, and as "
        "many rule hits; past it the request is still monitored (rules fire, alerts go out, "
        "blocks and steers apply), but the trace keeps no more and counts what it dropped")
    max_open_requests: int = Field(
        default=4096, ge=1, description="requests one Monitor stream may have open at once; a "
        "step that would open more is refused with `RESOURCE_EXHAUSTED`")
    sae_path: Path | None = Field(default=None, description="folder or file of the SAE to load "
                                  "(SAELens, sparsify, Gemma Scope, Llama Scope)")
    rules_file: Path | None = Field(default=None, description="YAML rule pack applied at start "
                                    "(rules and policies not yet in the store are added, the "
                                    "rules bound to the loaded SAE; a rule written for another "
                                    "SAE stops the start); unset: the `rules.yaml` beside the "
                                    "SAE, if any")
    replace_stale_rules: bool = Field(
        default=False, description="at start, a rule of that pack whose name is stored for "
        "another SAE (or for none) replaces the stored one, and so does a policy whose rules "
        "are all such; `false` keeps them (such rules are listed, not applied)",
        json_schema_extra={"shown_default": "`false`"})
    default_policy: str = Field(default="default", description="policy of requests that name "
                                "none")
    model_name: str = Field(default="", description="the served model name, for vLLM's server "
                            "and for traces (the launcher sets it)")
    vllm_url: str = Field(default="", pattern=r"^(https?://.+)?$",
                          description="base URL of vLLM's OpenAI-compatible server, which "
                          "Generate and Inspect call (the launcher sets it)")
    tls: TLSSettings = Field(default=TLSSettings(), description="TLS for TCP listeners")
    auth: AuthSettings = Field(default=AuthSettings(), description="bearer-token auth")
    ui: UISettings = Field(default=UISettings(), description="the review console")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="`DEBUG`, `INFO`, `WARNING` or `ERROR`")

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, v: str) -> str:
        if v and not v.startswith("unix://") and ":" not in v:
            raise ValueError("expected unix:///path.sock or host:port")
        return v

    @field_validator("sae_path", "rules_file")
    @classmethod
    def _exists(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).exists():
            raise ValueError(f"no such file or folder: {v}")
        return v

    @model_validator(mode="after")
    def _default_listen(self) -> Settings:
        if not self.listen:
            self.listen = socket_target(self.data_dir)
        return self

    @model_validator(mode="after")
    def _ui_needs_tokens(self) -> Settings:
        # A browser on this machine reaches a TCP port from any page it opens: without tokens
        # every page (and every local user) could read traces and file reviews.
        if self.ui.enabled and not self.auth.tokens:
            raise ValueError("LATENTGUARD_UI__ENABLED (serve --ui): the review console needs "
                             "bearer tokens (set "
                             "LATENTGUARD_AUTH__TOKENS_FILE; README, section Review console)")
        return self

    @property
    def is_unix(self) -> bool:
        return self.listen.startswith("unix://")

    @property
    def socket_path(self) -> Path:
        return Path(self.listen.removeprefix("unix://"))

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments, then variables, then the YAML file, if one is named (no `.env`)."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = config_path()
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def config_path() -> Path | None:
    """The YAML file in force: the one `load_settings` was given, else `LATENTGUARD_CONFIG`."""
    given = _config_file.get()
    if given is not None:
        return given
    named = os.environ.get(CONFIG_VAR)
    return Path(named) if named else None


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says why."""


def _setting_name(loc: tuple[Any, ...]) -> str:
    """The variable an error location stands for (`("tls", "cert_file")` ->
    `LATENTGUARD_TLS__CERT_FILE`), the same rule `env_variables` documents."""
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + NESTED_DELIMITER.join(parts).upper() if parts else "settings"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, environment and YAML; raises ConfigError naming the setting.

    `config_file` wins over `LATENTGUARD_CONFIG` for this call only; the environment is left
    as it was.
    """
    token = _config_file.set(Path(config_file) if config_file is not None else None)
    try:
        path = config_path()
        if path is not None:
            if not path.is_file():
                raise ConfigError(f"{CONFIG_VAR}: no such file: {path}")
            try:
                yaml.safe_load(path.read_text())
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        try:
            return Settings(**overrides)
        except ValidationError as exc:
            origin = f" (in {path})" if path is not None else ""
            problems = [f"{_setting_name(err['loc'])}{origin}: {err['msg']}"
                        for err in exc.errors()]
            raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
    finally:
        _config_file.reset(token)


# ---- the variables, for the README ----------------------------------------------------------

def env_variables(settings_cls: type[BaseSettings]) -> Iterator[tuple[str, FieldInfo]]:
    """Each variable `settings_cls` reads, with its field, derived from the model as
    pydantic-settings reads it: a field's string validation alias as it is, else the prefix and
    the field name, and nested models' fields joined with the nested delimiter."""
    config = settings_cls.model_config
    prefix = config.get("env_prefix") or ""
    delimiter = config.get("env_nested_delimiter") or ""

    def walk(model: type[BaseModel], start: str) -> Iterator[tuple[str, FieldInfo]]:
        for name, field in model.model_fields.items():
            if isinstance(field.validation_alias, str):
                yield field.validation_alias, field
                continue
            var = start + name.upper()
            kind = field.annotation
            if delimiter and isinstance(kind, type) and issubclass(kind, BaseModel):
                yield from walk(kind, var + delimiter)
            else:
                yield var, field

    return walk(settings_cls, prefix)
