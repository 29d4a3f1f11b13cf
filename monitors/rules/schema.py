"""Pydantic models of rules, policies and rule packs (the YAML rule files).

Every model forbids unknown keys, so a typo in a rule file is an error rather than a silently
ignored setting. Cross-references (policy -> rule names, unique names) are checked on
:class:`RulePack` and reported as :class:`~latentguard.monitors.errors.RuleValidationError` with
the dotted path of the offending field.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from latentguard.monitors.errors import RuleValidationError
from latentguard.monitors.sae.identity import SAEIdentity

__all__ = [
    "NAME_PATTERN",
    "SEVERITY_ORDER",
    "Action",
    "Condition",
    "Policy",
    "Rule",
    "RulePack",
    "Scope",
    "Severity",
    "Signal",
    "Steer",
    "SteerFeature",
    "Window",
    "severity_rank",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
Scope = Literal["prompt", "generation", "both"]

SEVERITY_ORDER: tuple[str, ...] = get_args(Severity)
"""Severities from least to most severe."""

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
"""Pattern of rule and policy names."""

MAX_WINDOW = 4096


def severity_rank(severity: str) -> int:
    """Rank of a severity: 0 for ``info`` up to 4 for ``critical``."""
    try:
        return SEVERITY_ORDER.index(severity)
    except ValueError:
        raise RuleValidationError("severity", f"unknown severity {severity!r}") from None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Window(_Model):
    """Aggregate a signal over the last ``size`` tokens in the rule's scope, or over all of them."""

    size: int | None = Field(default=None, ge=1, le=MAX_WINDOW)
    """Number of most recent in-scope tokens aggregated (1..4096); None (the default): every
    in-scope token of the request so far (what an end-of-request rule usually reads)."""
    agg: Literal["max", "mean", "sum", "count"] = "max"
    """Aggregate: max, mean, sum, or count of tokens whose value is above ``above``."""
    above: float | None = None
    """Required iff ``agg == "count"``: a token counts when its value is strictly above this."""

    @model_validator(mode="after")
    def _check_above(self) -> Window:
        if self.agg == "count" and self.above is None:
            raise ValueError("'above' is required when agg is 'count'")
        if self.agg != "count" and self.above is not None:
            raise ValueError("'above' is only allowed when agg is 'count'")
        return self


class Signal(_Model):
    """A comparison of one SAE feature or one linear probe against a threshold."""

    feature: int | None = Field(default=None, ge=0)
    """SAE feature index."""
    probe: str | None = Field(default=None, min_length=1, max_length=128)
    """Name of a linear probe."""
    op: Literal[">", ">=", "<", "<="] = ">"
    """Comparison of the (windowed) value against ``threshold``."""
    threshold: float
    window: Window | None = None
    """Aggregate over recent tokens; None compares the current token's value."""
    consecutive: int = Field(default=1, ge=1, le=MAX_WINDOW)
    """The comparison must hold for this many consecutive in-scope tokens."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Signal:
        if (self.feature is None) == (self.probe is None):
            raise ValueError("exactly one of 'feature' or 'probe' must be set")
        return self

    @property
    def source_name(self) -> str:
        """Human-readable name of the value source, e.g. ``feature 123`` or ``probe deception``."""
        return f"feature {self.feature}" if self.feature is not None else f"probe {self.probe}"


class Condition(_Model):
    """Exactly one of a signal, ``all`` of sub-conditions, or ``any`` of sub-conditions.

    In YAML a signal may be written directly (``{feature: 3, threshold: 1.0}``) without the
    ``signal:`` wrapper.
    """

    signal: Signal | None = None
    all: list[Condition] | None = Field(default=None, min_length=1)
    any: list[Condition] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("feature" in data or "probe" in data):
            if not {"signal", "all", "any"} & data.keys():
                return {"signal": data}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> Condition:
        n = sum(x is not None for x in (self.signal, self.all, self.any))
        if n != 1:
            raise ValueError("exactly one of 'signal', 'all' or 'any' must be set")
        return self

    def signals(self) -> list[Signal]:
        """All signals in this condition tree, depth first."""
        return [s for _, s in self.signal_paths()]

    def signal_paths(self, path: str = "") -> list[tuple[str, Signal]]:
        """(dotted field path, signal) for every signal in this tree, depth first; paths are
        ``path`` followed by ``signal``, ``all[1].signal``, ``any[0].all[2].signal``, ..."""
        at = f"{path}." if path else ""
        if self.signal is not None:
            return [(f"{at}signal", self.signal)]
        kind = "all" if self.all is not None else "any"
        out: list[tuple[str, Signal]] = []
        for i, child in enumerate(self.all or self.any or []):
            out.extend(child.signal_paths(f"{at}{kind}[{i}]"))
        return out


class SteerFeature(_Model):
    feature: int = Field(ge=0)
    """SAE feature index whose decoder direction is used."""
    value: float = 0.0
    """Clamp target (mode clamp), or strength (mode add). Ignored by ablate."""


class Steer(_Model):
    mode: Literal["add", "clamp", "ablate"]
    features: list[SteerFeature] = Field(min_length=1)
    tokens: int = Field(default=0, ge=0)
    """How many tokens the steer lasts; 0 = until the request ends."""
    preserve_norm: bool = False
    """Rescale each steered row to its original L2 norm."""


class Action(_Model):
    type: Literal["alert", "block", "steer"] = "alert"
    steer: Steer | None = None
    """Required iff ``type == "steer"``."""

    @model_validator(mode="after")
    def _check_steer(self) -> Action:
        if self.type == "steer" and self.steer is None:
            raise ValueError("'steer' is required when type is 'steer'")
        if self.type != "steer" and self.steer is not None:
            raise ValueError("'steer' is only allowed when type is 'steer'")
        return self


class Rule(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    severity: Severity = "medium"
    enabled: bool = True
    scope: Scope = "generation"
    """Which tokens the rule looks at: prompt tokens, generated tokens, or both."""
    check: Literal["token", "end"] = "token"
    """When the condition is checked: on every in-scope token (``token``), or once when the
    request ends (``end``), on each signal's window over the request. Some signals only mean
    something over a whole answer (a mean probe score over the generation reads deception far
    better than any token or short window does); an end rule can only alert, since the text
    has been sent by then."""
    when: Condition
    action: Action = Action()
    sae: SAEIdentity | None = None
    """The SAE the rule was written for: its feature indices and probes mean something only
    there, so a sidecar that loads another SAE does not apply it (``monitors.rules.binding``).
    None until the rule is bound (a pack's ``sae:``, or the sidecar it is applied to)."""

    # Field validators (not one on the model) so that an error is located at the field.
    @field_validator("when")
    @classmethod
    def _end_reads_windows(cls, when: Condition, info: ValidationInfo) -> Condition:
        if info.data.get("check") != "end":
            return when
        for path, sig in when.signal_paths("when"):
            if sig.window is None:
                raise ValueError(f"{path}.window: a rule checked at the end of the request needs "
                                 "a window on every signal (e.g. {agg: mean}: the whole request)")
            if sig.consecutive != 1:
                raise ValueError(f"{path}.consecutive: a rule checked at the end of the request "
                                 "is checked once, so it must be 1")
        return when

    @field_validator("action")
    @classmethod
    def _end_only_alerts(cls, action: Action, info: ValidationInfo) -> Action:
        if info.data.get("check") == "end" and action.type != "alert":
            raise ValueError(f"a rule checked at the end of the request can only alert (its "
                             f"text has been sent by then), not {action.type}")
        return action


class Policy(_Model):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    rules: list[str] = []
    """Names of the rules in this policy; ``["*"]`` means every enabled rule."""
    mode: Literal["sync", "async"] = "async"
    on_failure: Literal["open", "closed"] = "open"
    timeout_ms: int = Field(default=200, gt=0)
    monitoring: bool = True
    """False turns monitoring off for requests using this policy."""

    @field_validator("rules")
    @classmethod
    def _star_alone(cls, value: list[str]) -> list[str]:
        if "*" in value and len(value) != 1:
            raise ValueError("'*' must be the only entry when used")
        return value


class RulePack(_Model):
    """The content of one rule file."""

    sae: SAEIdentity | None = None
    """The SAE the pack was written for: every rule without its own ``sae`` gets it."""
    rules: list[Rule] = []
    policies: list[Policy] = []

    @model_validator(mode="before")
    @classmethod
    def _rules_get_the_pack_sae(cls, data: Any) -> Any:
        """The pack's ``sae`` copied into each rule that has none, so each rule records the
        SAE it was written for when it is stored on its own. An invalid pack ``sae`` is left
        for the field's own error (and not repeated on every rule)."""
        if not isinstance(data, dict) or data.get("sae") is None \
                or not isinstance(data.get("rules"), list):
            return data
        try:
            sae = SAEIdentity.model_validate(data["sae"])
        except ValidationError:
            return data
        rules: list[Any] = []
        for rule in data["rules"]:
            if isinstance(rule, dict) and rule.get("sae") is None:
                rule = {**rule, "sae": sae}
            elif isinstance(rule, Rule) and rule.sae is None:
                rule = rule.model_copy(update={"sae": sae})
            rules.append(rule)
        return {**data, "rules": rules}

    @model_validator(mode="after")
    def _check_references(self) -> RulePack:
        errors: list[tuple[str, str]] = []
        errors += _duplicates("rules", [r.name for r in self.rules])
        errors += _duplicates("policies", [p.name for p in self.policies])
        known = {r.name for r in self.rules}
        for i, policy in enumerate(self.policies):
            for j, name in enumerate(policy.rules):
                if name != "*" and name not in known:
                    errors.append((f"policies[{i}].rules[{j}]", f"unknown rule {name!r}"))
        if errors:
            # Not a ValueError on purpose: pydantic would report it without the field path.
            raise RuleValidationError(errors[0][0], errors[0][1], errors=errors)
        return self

    def policy(self, name: str) -> Policy:
        """The policy called ``name``."""
        for p in self.policies:
            if p.name == name:
                return p
        raise RuleValidationError("policies", f"no policy named {name!r}")

    def rules_for(self, policy: Policy) -> list[Rule]:
        """The enabled rules a policy selects, in pack order."""
        wanted = None if policy.rules == ["*"] else set(policy.rules)
        return [r for r in self.rules if r.enabled and (wanted is None or r.name in wanted)]


def _duplicates(field: str, names: list[str]) -> list[tuple[str, str]]:
    seen: set[str] = set()
    out = []
    for i, name in enumerate(names):
        if name in seen:
            out.append((f"{field}[{i}].name", f"duplicate name {name!r}"))
        seen.add(name)
    return out
