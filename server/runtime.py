"""What the sidecar monitors with: the SAE, its feature catalog and probes, and the current
rules and policies compiled into one rule engine, reloaded whenever the store says they changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.errors import MonitorError, SAEFormatError
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import Policy, Rule, RuleCheck, RuleEngine, binding_problem
from latentguard.monitors.rules.signals import rule_signals
from latentguard.monitors.sae import SAE, SAEIdentity, load_sae
from latentguard.server.config import Settings
from latentguard.server.errors import NotFound
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
        check = self.rule_checker()
        if check is not None:
            check(rule)

    def rule_checker(self) -> RuleCheck | None:
        """The loaded SAE's and probes' check of a rule, as plain data (it also runs in the
        pack-checking worker process); None without an SAE."""
        if self.sae is None:
            return None
        probes = self.probes
        return RuleCheck(
            self.sae.d_sae, tuple(probes.names) if probes is not None else (),
            tuple(int(f) for f in probes.feature_support) if probes is not None else ())

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
        if not await self._apply_notice(notice):
            await self.reload()

    async def _apply_notice(self, notice: Mapping[str, object]) -> bool:
        """Applies the one rule or policy a notice names, when it is the change right after
        the revision this runtime holds: only that object is read again, and the engine is
        recompiled in a thread (reading thousands of stored rules on the event loop would
        hold up every Monitor step meanwhile). False when a full reload is needed instead
        (a poll, a missed notice)."""
        kind, name, revision = notice.get("kind"), notice.get("name"), notice.get("revision")
        if kind not in ("rule", "policy") or not isinstance(name, str) \
                or not isinstance(revision, int):
            return False
        async with self._lock:
            if revision != self.revision + 1:
                return revision <= self.revision  # already read by a reload: nothing to do
            store = self.store.rules if kind == "rule" else self.store.policies
            spec: dict[str, Any] | None = None
            if not notice.get("deleted"):
                try:
                    spec = (await store.get(name)).spec
                except NotFound:  # deleted since: a later notice says so too
                    spec = None
            if kind == "rule":
                self.rules, self.inactive, self.engine = await asyncio.to_thread(
                    self._with_rule, name, spec)
            else:
                policies = dict(self.policies)
                policies.pop(name, None)
                if spec is not None:
                    policies[name] = Policy.model_validate(spec)
                self.policies = policies
            self.revision = revision
            log.info("rules at revision %d: %s %s %s; %d rules applied, %d not, %d policies",
                     revision, kind, name, "deleted" if spec is None else "stored",
                     len(self.rules), len(self.inactive), len(self.policies))
        return True

    def _with_rule(self, name: str, spec: dict[str, Any] | None
                   ) -> tuple[dict[str, Rule], dict[str, str], RuleEngine | None]:
        """The applied and inactive rules with ``name`` replaced by ``spec`` (None: removed),
        and the engine of the enabled ones."""
        rules, inactive = dict(self.rules), dict(self.inactive)
        rules.pop(name, None)
        inactive.pop(name, None)
        if spec is not None:
            self._place(spec, rules, inactive)
        return rules, inactive, self._engine(rules)

    def _place(self, spec: dict[str, Any], rules: dict[str, Rule],
               inactive: dict[str, str]) -> None:
        """A stored rule into ``rules`` (applied here) or ``inactive`` (with why not)."""
        rule = Rule.model_validate(spec)
        reason = self.inactive_reason(rule)
        if reason is None:
            rules[rule.name] = rule
            return
        inactive[rule.name] = reason
        if self.inactive.get(rule.name) != reason:  # said once, not at every reload
            log.warning("rule %s is not applied: %s", rule.name, reason)

    def _engine(self, rules: Mapping[str, Rule]) -> RuleEngine | None:
        if self.sae is None:
            return None
        return RuleEngine([r for r in rules.values() if r.enabled], probes=self.probes,
                          d_sae=self.sae.d_sae)

    async def reload(self) -> None:
        """Reads every rule and policy and recompiles the engine (one at a time). The
        compile runs in a thread: for thousands of rules it takes a while, and on the event
        loop it would hold up every Monitor step meanwhile."""
        async with self._lock:
            t0 = time.perf_counter()
            revision = await self.store.revision()
            rule_specs = [v.spec for v in await self.store.rules.list()]
            policy_specs = [v.spec for v in await self.store.policies.list()]
            t1 = time.perf_counter()
            rules, inactive, policies, engine = await asyncio.to_thread(
                self._compile, rule_specs, policy_specs)
            self.rules, self.policies, self.engine = rules, policies, engine
            self.inactive = inactive
            self.revision = revision
            log.info("rules at revision %d: %d rules applied, %d not (%s), %d policies (read "
                     "in %.0f ms, compiled in %.0f ms)", revision, len(rules), len(inactive),
                     ", ".join(sorted(inactive)) or "none", len(policies), (t1 - t0) * 1e3,
                     (time.perf_counter() - t1) * 1e3)

    def _compile(self, rule_specs: list[dict[str, Any]], policy_specs: list[dict[str, Any]]
                 ) -> tuple[dict[str, Rule], dict[str, str], dict[str, Policy],
                            RuleEngine | None]:
        """The stored specs as models, which rules this sidecar applies (and why not the
        others), and the engine of the enabled ones."""
        rules: dict[str, Rule] = {}
        inactive: dict[str, str] = {}
        for spec in rule_specs:
            self._place(spec, rules, inactive)
        policies = {p.name: p for p in (Policy.model_validate(spec) for spec in policy_specs)}
        return rules, inactive, policies, self._engine(rules)

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
