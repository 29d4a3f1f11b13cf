"""Parse rule packs from YAML and turn every mistake into a :class:`RuleValidationError`.

Validation errors name the source, the line of the offending key (found by walking the composed
YAML node tree along the error's path) and the dotted field path as the user wrote it (the
``signal:`` wrapper that the shorthand adds is left out when the user did not write it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from latentguard.monitors.errors import RuleValidationError
from latentguard.monitors.rules.schema import Policy, Rule, RulePack

__all__ = ["dump_rule_pack", "load_rule_pack", "locate", "validate_policy", "validate_rule"]

MAX_ERRORS = 20
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's loader where PyYAML has it: the pure-Python one takes about 20 s per MiB."""
MAX_YAML_BYTES = 1 << 20
"""Largest rule pack text accepted (1 MiB): a pack this size already holds thousands of rules."""
MAX_YAML_DEPTH = 64
"""Deepest nesting of mappings and sequences accepted (real packs nest fewer than ten)."""


class _PlainDumper(yaml.SafeDumper):
    """Writes a repeated value out in full: the loader refuses anchors and aliases."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def dump_rule_pack(data: Mapping[str, Any], *, width: int = 100) -> str:
    """YAML of a rule pack's plain data that `load_rule_pack` reads back (no aliases, which
    PyYAML writes for any value that appears twice). A rule's ``sae`` equal to the pack's is
    left out: loading gives it back to the rule."""
    data = dict(data)
    sae = data.get("sae")
    if sae is not None and isinstance(data.get("rules"), list):
        data["rules"] = [{k: v for k, v in r.items() if k != "sae"}
                         if isinstance(r, Mapping) and r.get("sae") == sae else r
                         for r in data["rules"]]
    return yaml.dump(data, Dumper=_PlainDumper, sort_keys=False, allow_unicode=True,
                     width=width)


def load_rule_pack(text: str, source: str = "<string>") -> RulePack:
    """Parse and validate a YAML rule pack.

    Raises:
        RuleValidationError: on YAML syntax errors or invalid content; the message names
            ``source``, the line and the field.
    """
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_YAML_BYTES:
        problem = f"the YAML is {size} bytes, more than the {MAX_YAML_BYTES} accepted"
        raise RuleValidationError("", problem, source=source)
    try:
        _check_events(text, source)
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = f"invalid YAML: {exc.problem or exc.context or exc}"
        raise RuleValidationError("", problem, source=source, lines=[line]) from None
    except yaml.YAMLError as exc:
        raise RuleValidationError("", f"invalid YAML: {exc}", source=source) from None
    except RecursionError:
        raise RuleValidationError("", "the YAML is nested too deeply", source=source) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        line = root.start_mark.line + 1 if root is not None else None
        problem = f"a rule pack must be a mapping with 'rules' and 'policies', got {_kind(data)}"
        raise RuleValidationError("", problem, source=source, lines=[line])
    return _validate(RulePack, data, source=source, root=root)


def locate(text: str, field: str) -> tuple[str, int | None]:
    """A model field path of a pack ``load_rule_pack`` accepted (``rules[2].when.signal.feature``)
    as the user wrote it (``rules[2].when.feature`` where the shorthand left out ``signal:``),
    with its 1-based line: for problems found after parsing, such as a feature the SAE lacks."""
    loader = _Loader(text)
    try:
        root = loader.get_single_node()
    finally:
        loader.dispose()
    segments: list[int | str] = []
    node = root
    for seg in _parse_dotted(field):
        if seg == "signal" and isinstance(node, yaml.MappingNode) \
                and not any(isinstance(k, yaml.ScalarNode) and k.value == "signal"
                            for k, _ in node.value):
            continue  # shorthand: the signal's keys sit directly in the condition
        segments.append(seg)
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value
                         if isinstance(k, yaml.ScalarNode) and k.value == str(seg)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int) \
                and 0 <= seg < len(node.value):
            node = node.value[seg]
        else:
            node = None
    return _dotted(segments), _line(root, segments)


def _check_events(text: str, source: str) -> None:
    """Refuses anchors, aliases and deep nesting before anything is built: an alias costs
    nothing to write but is expanded on every use, so a few hundred bytes of nested aliases
    build gigabytes (the "billion laughs"), and a rule pack never needs them."""
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        line = event.start_mark.line + 1 if event.start_mark is not None else None
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise RuleValidationError(
                "", "YAML anchors and aliases (& and *) are not accepted in a rule pack",
                source=source, lines=[line])
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > MAX_YAML_DEPTH:
                raise RuleValidationError(
                    "", f"the YAML nests deeper than {MAX_YAML_DEPTH} levels", source=source,
                    lines=[line])
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def validate_rule(data: dict[str, Any]) -> Rule:
    """Validate one rule given as a plain mapping (e.g. from an API call)."""
    if not isinstance(data, dict):
        raise RuleValidationError("", f"a rule must be a mapping, got {_kind(data)}")
    return _validate(Rule, data, source="", root=None)


def validate_policy(data: dict[str, Any]) -> Policy:
    """Validate one policy given as a plain mapping (rule names are not checked here)."""
    if not isinstance(data, dict):
        raise RuleValidationError("", f"a policy must be a mapping, got {_kind(data)}")
    return _validate(Policy, data, source="", root=None)


M = TypeVar("M", RulePack, Rule, Policy)


def _validate(model: type[M], data: dict[str, Any], *, source: str, root: yaml.Node | None) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        lines: list[int | None] = []
        for err in exc.errors(include_url=False)[:MAX_ERRORS]:
            segments = _user_path(data, err["loc"])
            errors.append((_dotted(segments), _problem(err)))
            lines.append(_line(root, segments))
        raise RuleValidationError(
            errors[0][0], errors[0][1], errors=errors, source=source, lines=lines
        ) from None
    except RuleValidationError as exc:
        lines = [_line(root, _parse_dotted(field)) for field, _ in exc.errors]
        raise RuleValidationError(
            exc.field, exc.problem, errors=exc.errors, source=source, lines=lines
        ) from None
    except RecursionError:
        raise RuleValidationError("", "rule nesting is too deep", source=source) from None


def _problem(err: ErrorDetails) -> str:
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden":
        key = str(err["loc"][-1])
        shown = repr(key[:64]) + ("…" if len(key) > 64 else "")  # a key may be megabytes long
        return f"unknown key {shown} (not permitted)"
    return msg.removeprefix("Value error, ")


def _user_path(data: Any, loc: tuple[int | str, ...]) -> list[int | str]:
    """The error location as the user wrote it: drop a ``signal`` segment the shorthand added."""
    out: list[int | str] = []
    node = data
    for seg in loc:
        if seg == "signal" and isinstance(node, dict) and "signal" not in node:
            continue  # shorthand: the signal's keys sit directly in the condition
        out.append(seg)
        if isinstance(node, dict):
            node = node.get(seg)
        elif isinstance(node, list) and isinstance(seg, int) and 0 <= seg < len(node):
            node = node[seg]
        else:
            node = None
    return out


def _dotted(segments: list[int | str]) -> str:
    text = ""
    for seg in segments:
        text += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if text else str(seg))
    return text


def _parse_dotted(field: str) -> list[int | str]:
    out: list[int | str] = []
    for part in field.replace("[", ".[").split("."):
        if not part:
            continue
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def _line(root: yaml.Node | None, segments: list[int | str]) -> int | None:
    """1-based line of the deepest YAML node along ``segments`` (the key when found)."""
    if root is None:
        return None
    node = root
    line: int = node.start_mark.line + 1
    for seg in segments:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(seg):
                    line, node = int(key.start_mark.line) + 1, value
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(seg, int):
            if not 0 <= seg < len(node.value):
                return line
            node = node.value[seg]
            line = int(node.start_mark.line) + 1
        else:
            return line
    return line


def _kind(value: Any) -> str:
    return type(value).__name__
