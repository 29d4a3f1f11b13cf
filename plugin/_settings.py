"""Plugin settings, from `LATENTGUARD_*` variables (the launcher sets them).

Read like the sidecar's (`latentguard.server.config`): pydantic-settings, the same prefix, a
description on each field, so the README's settings table is generated from both. Two fields keep
the variable names they were documented under (`LATENTGUARD_SIDECAR`, `LATENTGUARD_PLUGIN_CPUS`)
through a validation alias; every other variable is the prefix and the field name. Variables
only the sidecar reads are ignored here: the launcher gives both processes one environment.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from latentguard.paths import default_target
from latentguard.plugin._affinity import parse_cpus


class PluginSettings(BaseSettings):
    """What the plugin inside vLLM reads at attach time."""

    # env_ignore_empty: a variable set to "" (the launcher and bench clear some that way) means
    # unset, as it did before these were a settings model.
    model_config = SettingsConfigDict(env_prefix="LATENTGUARD_", extra="ignore",
                                      env_ignore_empty=True, validate_default=True)

    target: str = Field(default_factory=default_target, validation_alias="LATENTGUARD_SIDECAR",
                        description="sidecar address: `unix:///path.sock` or `host:port`",
                        json_schema_extra={"shown_default": "the default socket"})
    token: str = Field(default="", description="bearer token with the `monitor` role, when the "
                       "sidecar has tokens (the CLI sends this variable too)")
    sae_path: str = Field(default="", description="the SAE the sidecar uses: gives the layer "
                          "to capture, and the steering math")
    layer: int | None = Field(default=None, description="decoder layer whose output is "
                              "captured; unset: the SAE's")
    on_failure: Literal["open", "closed"] = Field(
        default="open", description="for requests whose policy is unknown while the sidecar is "
        "unreachable: `open` generates, `closed` blocks")
    timeout_ms: int = Field(default=500, description="sync-mode wait for a verdict, in "
                            "ms, when the policy does not say")
    connect_timeout_s: float = Field(default=10.0, description="how long attaching waits "
                                     "for the sidecar before vLLM goes on without it")
    cpus: str = Field(default="auto", validation_alias="LATENTGUARD_PLUGIN_CPUS",
                      description="cores for the plugin's threads: `auto` = those vLLM's model "
                      "threads are not bound to, `inherit` = wherever they start, or a list "
                      "like `1,3-4`")

    def __init__(self, **values: Any) -> None:
        """Keyword arguments by field name too (`PluginSettings(cpus="1-2")`).

        Not `populate_by_name`: pydantic-settings would then also read `LATENTGUARD_TARGET`
        and `LATENTGUARD_CPUS` from the environment, two names nobody documented.
        """
        aliases = {name: field.validation_alias for name, field in type(self).model_fields.items()
                   if isinstance(field.validation_alias, str)}
        super().__init__(**{aliases.get(key, key): value for key, value in values.items()})

    @field_validator("cpus")
    @classmethod
    def _cpu_list(cls, value: str) -> str:
        if value not in ("auto", "inherit"):
            try:
                parse_cpus(value)
            except ValueError:
                raise ValueError("expected 'auto', 'inherit' or a list of cpus like '0,2-3', "
                                 f"not {value!r}") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Arguments and variables only: a `.env` or secrets folder in vLLM's working directory
        is vLLM's business, not the plugin's."""
        return init_settings, env_settings

    @classmethod
    def from_env(cls) -> PluginSettings:
        """The settings from this process's environment (what attaching reads)."""
        return cls()
