"""The rule pack a sidecar applies at start: ``LATENTGUARD_RULES_FILE``, else the pack beside
its SAE. Its rules and policies that the store lacks are added, each rule bound to the loaded
SAE; names already stored are kept, except, with ``LATENTGUARD_REPLACE_STALE_RULES``, rules
stored for another SAE (or for none) and policies whose every rule is such a rule.
"""

from __future__ import annotations

import logging
from pathlib import Path

from latentguard.monitors.errors import SAEMismatchError
from latentguard.monitors.rules import Rule, binding_problem, check_binding, load_rule_pack
from latentguard.monitors.rules.loading import locate
from latentguard.monitors.sae import SAEIdentity
from latentguard.server.store import Store

__all__ = ["apply_rules_file"]

log = logging.getLogger(__name__)

REPLACE_VAR = "LATENTGUARD_REPLACE_STALE_RULES"


async def apply_rules_file(store: Store, path: Path, loaded: SAEIdentity | None, *,
                           replace_stale: bool = False) -> None:
    """Applies the pack at ``path`` to the store, bound to the ``loaded`` SAE (None: no SAE,
    the rules are stored as the pack wrote them).

    Raises:
        RuleValidationError: the pack is invalid.
        SAEMismatchError: a rule was written for another SAE than ``loaded`` (the message
            names the file, its line, the rule and both SAEs); nothing is applied.
    """
    text = path.read_text()
    pack = load_rule_pack(text, source=str(path))
    actor = f"file:{path.name}"
    rules = list(pack.rules)
    if loaded is not None:
        for i, rule in enumerate(rules):
            at_pack = pack.sae is not None and rule.sae == pack.sae
            try:
                rules[i] = check_binding(rule, loaded)
            except SAEMismatchError:
                field, line = locate(text, "sae" if at_pack else f"rules[{i}].sae")
                raise SAEMismatchError(field, rule.name, written_for=rule.sae, loaded=loaded,
                                       source=str(path), line=line) from None
    stored_rules = {v.name: v for v in await store.rules.list()}
    stale = ({name for name, v in stored_rules.items()
              if binding_problem(Rule.model_validate(v.spec), loaded) is not None}
             if loaded is not None else set())
    for rule in rules:
        stored = stored_rules.get(rule.name)
        if stored is None:
            await store.rules.put(rule.name, rule.model_dump(mode="json"), expected_version=0,
                                  actor=actor)
        elif rule.name in stale and replace_stale:
            await store.rules.put(rule.name, rule.model_dump(mode="json"),
                                  expected_version=stored.version, actor=actor)
            log.warning("rule %s was not for the loaded SAE: replaced by %s's", rule.name, path)
        elif rule.name in stale:
            log.warning("rule %s is stored for another SAE than the loaded one and kept (not "
                        "applied); set %s=1 to replace it with %s's", rule.name, REPLACE_VAR,
                        path)
    stored_policies = {v.name: v for v in await store.policies.list()}
    for policy in pack.policies:
        old = stored_policies.get(policy.name)
        if old is None:
            await store.policies.put(policy.name, policy.model_dump(mode="json"),
                                     expected_version=0, actor=actor)
            continue
        names = [n for n in old.spec.get("rules", []) if n != "*"]
        if replace_stale and names and all(n in stale for n in names):
            await store.policies.put(policy.name, policy.model_dump(mode="json"),
                                     expected_version=old.version, actor=actor)
            log.warning("policy %s held only rules for another SAE (%s): replaced by %s's",
                        policy.name, ", ".join(names), path)
