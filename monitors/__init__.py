"""latentguard's monitor core: SAE loading and encoding, rules, steering, probes, catalog.

Pure and fast: no network, no Redis, no vLLM. Everything raised on bad input derives from
:class:`~latentguard.monitors.errors.MonitorError`.
"""

from latentguard.monitors.catalog import FeatureCatalog, FeatureEntry
from latentguard.monitors.errors import (
    MonitorError,
    NotFoundError,
    RuleValidationError,
    SAEFormatError,
    ShapeError,
    UnknownFeatureError,
)
from latentguard.monitors.probes import Probe, ProbeMeta, ProbeSet
from latentguard.monitors.rules import (
    Action,
    Condition,
    Evidence,
    Policy,
    Rule,
    RuleEngine,
    RuleHit,
    RulePack,
    RuleSession,
    Signal,
    Steer,
    SteerFeature,
    Window,
    load_rule_pack,
    severity_rank,
    validate_rule,
)
from latentguard.monitors.sae import SAE, MonitorEncoding, SAEConfig, load_sae, save_saelens
from latentguard.monitors.steering import apply_steer, steer_delta

__all__ = [
    "SAE",
    "Action",
    "Condition",
    "Evidence",
    "FeatureCatalog",
    "FeatureEntry",
    "MonitorEncoding",
    "MonitorError",
    "NotFoundError",
    "Policy",
    "Probe",
    "ProbeMeta",
    "ProbeSet",
    "Rule",
    "RuleEngine",
    "RuleHit",
    "RulePack",
    "RuleSession",
    "RuleValidationError",
    "SAEConfig",
    "SAEFormatError",
    "ShapeError",
    "Signal",
    "Steer",
    "SteerFeature",
    "UnknownFeatureError",
    "Window",
    "apply_steer",
    "load_rule_pack",
    "load_sae",
    "save_saelens",
    "severity_rank",
    "steer_delta",
    "validate_rule",
]
