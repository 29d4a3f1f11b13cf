"""Sidecar settings: argument, then `LATENTGUARD_*` variable, then YAML file, then default.

Every variable is listed below as a documented constant. Nested settings use `__`
(`LATENTGUARD_TLS__CERT_FILE`). Secrets (the Redis URL's password, tokens) are never logged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ENV_PREFIX = "LATENTGUARD_"
#: Path of an optional YAML settings file (same keys as the fields below).
LATENTGUARD_CONFIG = "LATENTGUARD_CONFIG"
#: Where the embedded Redis keeps its append-only file, and the default socket lives.
LATENTGUARD_DATA_DIR = "LATENTGUARD_DATA_DIR"
#: `unix:///path/to.sock` (default: `<data_dir>/latentguard.sock`) or `host:port` for TCP.
LATENTGUARD_LISTEN = "LATENTGUARD_LISTEN"
#: `redis://`, `rediss://` or `unix://` URL of a shared Redis; unset starts a private one.
LATENTGUARD_REDIS_URL = "LATENTGUARD_REDIS_URL"
#: Prefix of every Redis key, so several deployments can share one Redis.
LATENTGUARD_REDIS_PREFIX = "LATENTGUARD_REDIS_PREFIX"
#: Days a trace is kept (fractions allowed).
LATENTGUARD_TRACE_RETENTION_DAYS = "LATENTGUARD_TRACE_RETENTION_DAYS"
#: `all` stores every monitored request; `flagged` only those where a rule fired.
LATENTGUARD_TRACE_STORE = "LATENTGUARD_TRACE_STORE"
#: Approximate number of alerts the alert stream keeps.
LATENTGUARD_ALERT_STREAM_MAXLEN = "LATENTGUARD_ALERT_STREAM_MAXLEN"
#: Largest gRPC message accepted, in MiB.
LATENTGUARD_MAX_MESSAGE_MB = "LATENTGUARD_MAX_MESSAGE_MB"
#: Features kept per token in traces.
LATENTGUARD_TOP_K = "LATENTGUARD_TOP_K"
#: Folder or file of the SAE to load (any format `latentguard.monitors` reads).
LATENTGUARD_SAE_PATH = "LATENTGUARD_SAE_PATH"
#: A YAML rule pack applied at start (rules and policies not yet in the store are added);
#: unset, the SAE folder's own `rules.yaml` is applied when it has one.
LATENTGUARD_RULES_FILE = "LATENTGUARD_RULES_FILE"
#: Policy of requests that name none.
LATENTGUARD_DEFAULT_POLICY = "LATENTGUARD_DEFAULT_POLICY"
#: Base URL of the vLLM OpenAI-compatible server that Generate and Inspect call.
LATENTGUARD_VLLM_URL = "LATENTGUARD_VLLM_URL"
#: Model name for that server (its served model name) and for traces.
LATENTGUARD_MODEL_NAME = "LATENTGUARD_MODEL_NAME"
#: TLS for TCP listeners: certificate, key, and a client CA that turns on mTLS.
LATENTGUARD_TLS__CERT_FILE = "LATENTGUARD_TLS__CERT_FILE"
LATENTGUARD_TLS__KEY_FILE = "LATENTGUARD_TLS__KEY_FILE"
LATENTGUARD_TLS__CLIENT_CA_FILE = "LATENTGUARD_TLS__CLIENT_CA_FILE"
#: YAML list of `{name, role, token_sha256}`; with no tokens at all, auth is off.
LATENTGUARD_AUTH__TOKENS_FILE = "LATENTGUARD_AUTH__TOKENS_FILE"
#: Token a CLI sends (`authorization: Bearer ...`).
LATENTGUARD_TOKEN = "LATENTGUARD_TOKEN"
#: `DEBUG`, `INFO`, `WARNING`, `ERROR`.
LATENTGUARD_LOG_LEVEL = "LATENTGUARD_LOG_LEVEL"

Role = Literal["reader", "reviewer", "admin", "monitor"]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "latentguard"


class TLSSettings(BaseModel):
    """Server TLS. Both cert and key, or neither; a client CA requires both (mTLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

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
    name: str = Field(min_length=1)
    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthSettings(BaseModel):
    tokens_file: Path | None = None
    tokens: list[TokenEntry] = []

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


class Settings(BaseSettings):
    """Everything the sidecar reads at start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    listen: str = ""
    redis_url: SecretStr | None = None
    redis_prefix: str = Field(default="lg", pattern=r"^[A-Za-z0-9_.:-]{1,32}$")
    trace_retention_days: float = Field(default=7.0, gt=0)
    trace_store: Literal["all", "flagged"] = "all"
    alert_stream_maxlen: int = Field(default=100_000, ge=100)
    max_message_mb: int = Field(default=64, ge=1, le=2047)
    top_k: int = Field(default=8, ge=1, le=64)
    sae_path: Path | None = None
    rules_file: Path | None = None
    default_policy: str = "default"
    model_name: str = ""
    vllm_url: str = Field(default="", pattern=r"^(https?://.+)?$")
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings = AuthSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

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
            self.listen = f"unix://{self.data_dir / 'latentguard.sock'}"
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
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get(LATENTGUARD_CONFIG)
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


class ConfigError(ValueError):
    """A setting is wrong; the message names it and says why."""


def _setting_name(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if not isinstance(p, int)]
    return ENV_PREFIX + "__".join(parts).upper() if parts else "settings"


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, environment and YAML; raises ConfigError naming the setting."""
    if config_file is not None:
        os.environ[LATENTGUARD_CONFIG] = str(config_file)
    path = os.environ.get(LATENTGUARD_CONFIG)
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"{LATENTGUARD_CONFIG}: no such file: {path}")
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = _setting_name(err["loc"])
            origin = f" (in {path})" if path else ""
            problems.append(f"{where}{origin}: {err['msg']}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None
