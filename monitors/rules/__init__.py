"""Rules, policies and rule packs: the YAML schema and its loader."""

from latentguard.monitors.rules.binding import bind_pack, binding_problem, check_binding
from latentguard.monitors.rules.engine import RuleCheck, RuleEngine
from latentguard.monitors.rules.hits import Evidence, RuleHit
from latentguard.monitors.rules.loading import (
    dump_rule_pack,
    load_rule_pack,
    validate_policy,
    validate_rule,
)
from latentguard.monitors.rules.schema import (
    NAME_PATTERN,
    SEVERITY_ORDER,
    Action,
    Condition,
    Policy,
    Rule,
    RulePack,
    Scope,
    Severity,
    Signal,
    Steer,
    SteerFeature,
    Window,
    severity_rank,
)
from latentguard.monitors.rules.session import RuleSession
from latentguard.monitors.rules.signals import probe_scores, rule_signals, signal_series

__all__ = [
    "NAME_PATTERN",
    "SEVERITY_ORDER",
    "Action",
    "Condition",
    "Evidence",
    "Policy",
    "Rule",
    "RuleCheck",
    "RuleEngine",
    "RuleHit",
    "RulePack",
    "RuleSession",
    "Scope",
    "Severity",
    "Signal",
    "Steer",
    "SteerFeature",
    "Window",
    "bind_pack",
    "binding_problem",
    "check_binding",
    "dump_rule_pack",
    "load_rule_pack",
    "probe_scores",
    "rule_signals",
    "severity_rank",
    "signal_series",
    "validate_policy",
    "validate_rule",
]
