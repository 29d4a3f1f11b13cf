"""Rules bound to the SAE they were written for.

A rule's feature indices and probe names mean something only in one SAE: feature 1234 of
another SAE is another feature. A rule records that SAE's identity (``Rule.sae``, a hash of its
weights); a monitor that loads another SAE does not apply it (`binding_problem` says why), and
a rule is bound to another SAE only when asked (`check_binding` with ``bind=True``).
"""

from __future__ import annotations

from latentguard.monitors.errors import SAEMismatchError
from latentguard.monitors.rules.schema import Rule, RulePack
from latentguard.monitors.sae.identity import SAEIdentity

__all__ = ["bind_pack", "binding_problem", "check_binding"]


def binding_problem(rule: Rule, loaded: SAEIdentity) -> str | None:
    """Why a monitor that loads ``loaded`` must not apply ``rule``; None when it may."""
    if rule.sae is None:
        return (f"records no SAE identity, so nothing says its features and probes are those of "
                f"the loaded SAE {loaded}; apply it again to bind it")
    if not rule.sae.same_sae(loaded):
        return f"written for SAE {rule.sae}; this sidecar loads SAE {loaded}"
    return None


def check_binding(rule: Rule, loaded: SAEIdentity, *, bind: bool = False,
                  field: str = "sae") -> Rule:
    """The rule as it is stored next to ``loaded``: bound to it when it names no SAE (it was
    checked against this one) or when ``bind`` is set.

    Raises:
        SAEMismatchError: the rule was written for another SAE and ``bind`` is not set; it
            names ``field``, the rule and both identities.
    """
    if rule.sae is not None and not rule.sae.same_sae(loaded) and not bind:
        raise SAEMismatchError(field, rule.name, written_for=rule.sae, loaded=loaded)
    if rule.sae == loaded:
        return rule
    return rule.model_copy(update={"sae": loaded})


def bind_pack(pack: RulePack, sae: SAEIdentity) -> RulePack:
    """The pack written for ``sae``: the pack's ``sae`` set, and each rule's that has none."""
    rules = [r if r.sae is not None else r.model_copy(update={"sae": sae}) for r in pack.rules]
    return pack.model_copy(update={"sae": sae, "rules": rules})
