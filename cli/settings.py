"""The README's table of `LATENTGUARD_*` variables, rendered from the settings models of the
sidecar and the plugin (`python -m latentguard.cli.settings`); a test keeps the README equal."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic.fields import FieldInfo

from latentguard.plugin import LATENTGUARD_DISABLE
from latentguard.plugin._settings import PluginSettings
from latentguard.server.config import CONFIG_VAR, Settings, env_variables


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, who reads it, its default and what it means."""

    name: str
    read_by: str
    default: str
    meaning: str


def _shown_default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and isinstance(extra.get("shown_default"), str):
        return str(extra["shown_default"])
    value = field.get_default(call_default_factory=False)
    if value in (None, "", []):
        return "unset"
    return f"`{value}`"


def variables() -> list[Variable]:
    """Every `LATENTGUARD_*` variable: the sidecar's, then the plugin's, then the two that are
    no field (the YAML file, and the plugin's off switch). A variable both read is listed once,
    with the sidecar's description."""
    rows: dict[str, Variable] = {
        CONFIG_VAR: Variable(CONFIG_VAR, "sidecar", "unset", "YAML settings file: the variables' "
                             "names, lower case without the prefix, nested as mappings"),
    }
    for reader, model in (("sidecar", Settings), ("plugin", PluginSettings)):
        for name, field in env_variables(model):
            if name in rows:
                known = rows[name]
                rows[name] = Variable(name, f"{known.read_by}, {reader}", known.default,
                                      known.meaning)
            else:
                rows[name] = Variable(name, reader, _shown_default(field), field.description or "")
    rows[LATENTGUARD_DISABLE] = Variable(LATENTGUARD_DISABLE, "plugin", "unset",
                                         "`1` loads the plugin without doing anything")
    return list(rows.values())


def settings_table() -> str:
    """The README's table of variables (section "Configuration"), as Markdown."""
    lines = ["| variable | read by | default | meaning |", "|---|---|---|---|"]
    for v in variables():
        cells = (f"`{v.name}`", v.read_by, v.default, v.meaning)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(settings_table(), end="")
