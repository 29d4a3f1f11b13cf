"""What the sidecar monitors with: the SAE, its feature catalog and probes, and the current
rules and policies compiled into one rule engine, reloaded whenever the store says they changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentguard.monitors.errors import MonitorError
from latentguard.monitors.rules import Policy, Rule
from latentguard.server.config import Settings
from latentguard.server.store import Store
from latentguard.server.telemetry import Telemetry
from latentguard.server.writer import TraceWriter

log = logging.getLogger(__name__)

#: Used when the store has no policy of the configured default name.
BUILTIN_DEFAULT = Policy(name="default", description="every enabled rule", rules=["*"])

CATALOG_FILES = ("features.json", "features.yaml", "features.yml")
PROBES_DIR = "probes"
RULES_FILE = "rules.yaml"
"""An SAE folder's default rule pack, applied at start when no rules file is configured."""


def sae_folder(sae_path: Path) -> Path:
    """The folder holding an SAE and what ships beside it (catalog, probes, rule pack)."""
    return sae_path if sae_path.is_dir() else sae_path.parent


def sae_rules_file(sae_path: Path | None) -> Path | None:
    """The rule pack that ships beside an SAE (``<sae folder>/rules.yaml``), if any."""
    if sae_path is None:
        return None
    folder = sae_folder(Path(sae_path))
    return folder / RULES_FILE if (folder / RULES_FILE).is_file() else None


class Watcher(asyncio.Queue[tuple[Any, ...]]):
    """Events of one request as the sidecar sees them: ("tokens", records, series),
    ("hit", HitRecord), ("verdict", Verdict), ("end", TraceRecord | None)."""

    def __init__(self, features: list[int]) -> None:
        super().__init__()
        self.features = features


class MonitorRuntime:
    def __init__(self, settings: Settings, store: Store, telemetry: Telemetry) -> None:
        self.settings = settings
        self.store = store
        self.telemetry = telemetry
        self.sae: Any = None
        self.catalog: Any = None
        self.probes: Any = None
        self.rules: dict[str, Rule] = {}
        self.policies: dict[str, Policy] = {}
        self.engine: Any = None
        self.revision = -1
        self._lock = asyncio.Lock()
        self.writer = TraceWriter(store, settings.data_dir)
        self.watchers: dict[str, Watcher] = {}
        """Requests someone waits on (Generate, Inspect), by request tag."""
        self._decoders: dict[str, Callable[[int], str] | None] = {}
        self.taps: list[Callable[[str, list[int], list[int], Any], None]] = []
        """Called with (request tag, positions, token ids, rows) for every span received: for
        tests and debugging tools that need the raw rows."""

    @classmethod
    async def create(cls, settings: Settings, store: Store, telemetry: Telemetry
                     ) -> MonitorRuntime:
        runtime = cls(settings, store, telemetry)
        if settings.sae_path is not None:
            await asyncio.to_thread(runtime._load_sae, Path(settings.sae_path))
        await runtime.reload()
        runtime.writer.start()
        return runtime

    def _load_sae(self, path: Path) -> None:
        from latentguard.monitors.sae import load_sae

        self.sae = load_sae(path)
        folder = sae_folder(path)
        for name in CATALOG_FILES:
            if (folder / name).is_file():
                from latentguard.monitors.catalog import FeatureCatalog

                self.catalog = FeatureCatalog.load(folder / name, d_sae=self.sae.d_sae)
                break
        if (folder / PROBES_DIR).is_dir():
            from latentguard.monitors.probes import ProbeSet

            self.probes = ProbeSet.load(folder / PROBES_DIR, d_in=self.sae.d_in,
                                        d_sae=self.sae.d_sae)
        log.info("loaded %r (catalog: %s, probes: %s)", self.sae,
                 "yes" if self.catalog else "no", self.probes.names if self.probes else "none")

    # ---- rules ------------------------------------------------------------------------------

    def check_rule(self, rule: Rule) -> None:
        """Refuses a rule whose features or probes the loaded SAE does not have."""
        if self.sae is not None:
            from latentguard.monitors.rules import RuleEngine

            # Compiled as enabled, so a disabled rule is checked too before it is stored.
            enabled = rule.model_copy(update={"enabled": True})
            RuleEngine([enabled], probes=self.probes, d_sae=self.sae.d_sae)

    def rule_checker(self) -> Any:
        return self.check_rule if self.sae is not None else None

    def labels(self) -> dict[int, str]:
        return self.catalog.labels() if self.catalog is not None else {}

    async def on_change(self, notice: dict[str, Any]) -> None:
        log.debug("change notice %s", notice)
        await self.reload()

    async def reload(self) -> None:
        """Reads every rule and policy and recompiles the engine (one at a time)."""
        async with self._lock:
            revision = await self.store.revision()
            rules: dict[str, Rule] = {}
            for v in await self.store.rules.list():
                rule = Rule.model_validate(v.spec)
                try:
                    self.check_rule(rule)
                except MonitorError as exc:
                    log.error("rule %s left out: %s", rule.name, exc)
                    continue
                rules[rule.name] = rule
            policies = {v.name: Policy.model_validate(v.spec)
                        for v in await self.store.policies.list()}
            engine = None
            if self.sae is not None:
                from latentguard.monitors.rules import RuleEngine

                enabled = [r for r in rules.values() if r.enabled]
                engine = RuleEngine(enabled, probes=self.probes, d_sae=self.sae.d_sae)
            self.rules, self.policies, self.engine = rules, policies, engine
            self.revision = revision
            log.info("rules at revision %d: %d rules, %d policies", revision, len(rules),
                     len(policies))

    def token_decoder(self, model: str) -> Callable[[int], str] | None:
        """Token id -> text with the model's own tokenizer.json, when the model is a folder."""
        if model not in self._decoders:
            path = Path(model) / "tokenizer.json"
            decoder = None
            if path.is_file():
                try:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(str(path))
                    decoder = lambda i: tok.decode([i], skip_special_tokens=False)  # noqa: E731
                except Exception as exc:
                    log.warning("no token text for %s: %s", model, exc)
            self._decoders[model] = decoder
        return self._decoders[model]

    def watch(self, tag: str, features: list[int] | None = None) -> Watcher:
        watcher = Watcher(features=list(features or []))
        self.watchers[tag] = watcher
        return watcher

    def unwatch(self, tag: str) -> None:
        self.watchers.pop(tag, None)

    def policy_protos(self) -> list[Any]:
        """Every policy as wire messages, with the built-in default when none has its name."""
        from latentguard.server.convert import policy_proto

        default = self.default_policy()
        return [policy_proto(p) for p in {**self.policies, default.name: default}.values()]

    def default_policy(self) -> Policy:
        """The configured default policy; every enabled rule when the store has none by it."""
        name = self.settings.default_policy
        return self.policies.get(name) or BUILTIN_DEFAULT.model_copy(update={"name": name})

    def policy(self, name: str) -> Policy:
        """The named policy; unknown or empty names get the default policy."""
        if name and name in self.policies:
            return self.policies[name]
        default = self.default_policy()
        if name and name != default.name:
            log.warning("unknown policy %r: using %r", name, default.name)
        return default

    async def close(self) -> None:
        await self.writer.close()
        self.engine = None
