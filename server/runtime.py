"""What the sidecar monitors with: the SAE, its feature catalog and probes, and the current
rules and policies compiled into one rule engine, reloaded whenever the store says they changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.errors import MonitorError, SAEFormatError
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import Policy, Rule, RuleEngine, binding_problem
from latentguard.monitors.rules.signals import rule_signals
from latentguard.monitors.sae import SAE, SAEIdentity, load_sae
from latentguard.server.config import Settings
from latentguard.server.store import Store
from latentguard.server.telemetry import Telemetry

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


class MonitorRuntime:
    def __init__(self, settings: Settings, store: Store, telemetry: Telemetry) -> None:
        self.settings = settings
        self.store = store
        self.telemetry = telemetry
        self.sae: SAE | None = None
        self.catalog: FeatureCatalog | None = None
        self.probes: ProbeSet | None = None
        self.rules: dict[str, Rule] = {}
        """The stored rules this sidecar applies (when enabled)."""
        self.inactive: dict[str, str] = {}
        """Stored rules it does not apply, with the reason (written for another SAE, ...)."""
        self.policies: dict[str, Policy] = {}
        self.engine: RuleEngine | None = None
        self.revision = -1
        self._lock = asyncio.Lock()

    @classmethod
    async def create(cls, settings: Settings, store: Store, telemetry: Telemetry
                     ) -> MonitorRuntime:
        """Loads the SAE, then the rules, then warms up (`Sidecar.start` applies its start-up
        rule pack between the first two: the pack is bound to the loaded SAE)."""
        runtime = cls(settings, store, telemetry)
        await runtime.load_sae()
        await runtime.reload()
        await asyncio.to_thread(runtime.warm_up)
        return runtime

    async def load_sae(self) -> None:
        """The configured SAE with its catalog and probes (none when no SAE is configured)."""
        if self.settings.sae_path is not None:
            await asyncio.to_thread(self._load_sae, Path(self.settings.sae_path))

    @property
    def sae_identity(self) -> SAEIdentity | None:
        """The loaded SAE's identity, which every rule it applies records."""
        return self.sae.identity if self.sae is not None else None

    def warm_up(self) -> None:
        """One encode, probe pass and rule step on blank rows, before the sidecar answers
        Ready: torch's first calls are slow, and a sync request must not pay for them."""
        if self.sae is None or self.engine is None:
            return
        rows = torch.zeros(8, self.sae.d_in)
        self.sae.topk(rows, self.settings.top_k)
        features, probes = rule_signals(self.sae, self.engine, self.probes, rows)
        self.engine.new_session(self.default_policy()).step(features, probes, list(range(8)),
                                                            [True] * 8)

    def _load_sae(self, path: Path) -> None:
        sae = load_sae(path)
        if sae.cfg.site != "resid_post":
            # The plugin captures the residual stream after a decoder layer; an SAE trained on
            # another site would read vectors it never saw, and nothing would say so.
            raise SAEFormatError(path, f"the SAE reads {sae.cfg.site!r} ({sae.hook_name}); the "
                                 "monitor captures the residual stream after a layer "
                                 "(resid_post), so only such SAEs can be served",
                                 key="hook_name")
        self.sae = sae
        folder = sae_folder(path)
        for name in CATALOG_FILES:
            if (folder / name).is_file():
                self.catalog = FeatureCatalog.load(folder / name, d_sae=self.sae.d_sae)
                break
        if (folder / PROBES_DIR).is_dir():
            self.probes = ProbeSet.load(folder / PROBES_DIR, d_in=self.sae.d_in,
                                        d_sae=self.sae.d_sae)
        log.info("loaded %r, %s (catalog: %s, probes: %s)", self.sae, self.sae.identity,
                 "yes" if self.catalog else "no", self.probes.names if self.probes else "none")

    # ---- rules ------------------------------------------------------------------------------

    def check_rule(self, rule: Rule) -> None:
        """Refuses a rule whose features or probes the loaded SAE does not have."""
        if self.sae is not None:
            # Compiled as enabled, so a disabled rule is checked too before it is stored.
            enabled = rule.model_copy(update={"enabled": True})
            RuleEngine([enabled], probes=self.probes, d_sae=self.sae.d_sae)

    def rule_checker(self) -> Callable[[Rule], None] | None:
        return self.check_rule if self.sae is not None else None

    def inactive_reason(self, rule: Rule) -> str | None:
        """Why this sidecar does not apply a stored rule, whether enabled or not (written for
        another SAE, no SAE recorded, a feature or probe its SAE lacks); None when it applies
        it, and always without an SAE (nothing is applied, and nothing to compare with)."""
        if self.sae is None:
            return None
        problem = binding_problem(rule, self.sae.identity)
        if problem is not None:
            return problem
        try:
            self.check_rule(rule)
        except MonitorError as exc:
            return str(exc)
        return None

    def labels(self) -> dict[int, str]:
        return self.catalog.labels() if self.catalog is not None else {}

    async def on_change(self, notice: Mapping[str, object]) -> None:
        log.debug("change notice %s", notice)
        await self.reload()

    async def reload(self) -> None:
        """Reads every rule and policy and recompiles the engine (one at a time)."""
        async with self._lock:
            revision = await self.store.revision()
            rules: dict[str, Rule] = {}
            inactive: dict[str, str] = {}
            for v in await self.store.rules.list():
                rule = Rule.model_validate(v.spec)
                reason = self.inactive_reason(rule)
                if reason is None:
                    rules[rule.name] = rule
                    continue
                inactive[rule.name] = reason
                if self.inactive.get(rule.name) != reason:  # said once, not at every reload
                    log.warning("rule %s is not applied: %s", rule.name, reason)
            policies = {v.name: Policy.model_validate(v.spec)
                        for v in await self.store.policies.list()}
            engine = None
            if self.sae is not None:
                enabled = [r for r in rules.values() if r.enabled]
                engine = RuleEngine(enabled, probes=self.probes, d_sae=self.sae.d_sae)
            self.rules, self.policies, self.engine = rules, policies, engine
            self.inactive = inactive
            self.revision = revision
            log.info("rules at revision %d: %d rules applied, %d not (%s), %d policies",
                     revision, len(rules), len(inactive), ", ".join(sorted(inactive)) or "none",
                     len(policies))

    def all_policies(self) -> list[Policy]:
        """Every policy, with the built-in default when none has the default's name."""
        default = self.default_policy()
        return list({**self.policies, default.name: default}.values())

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
        self.engine = None
