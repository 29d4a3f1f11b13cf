"""``latentguard features effect``: what steering one direction at the SAE's layer does to the
model's next-token distribution on a set of prompts.

Each prompt (BOS, then its tokens) goes through the HF model once as it is and once per
condition (a mode and a strength) with a forward hook on the SAE's decoder layer that edits the
layer's output rows as the plugin does: ``rows += apply_steer(rows, sae, steer) - rows``
(:mod:`latentguard.monitors.steering`), on every position including BOS (a per-request steer in
the plugin steers every row of the prompt) unless ``skip_bos``. Per prompt it reports
KL(steered || plain) of the next-token distribution after the last prompt token and its mean
over the positions after each prompt token, the tokens whose probability after the last token
rose and fell most, and the change in log-probability of named target tokens (the first token
of each target string). Per condition it reports the means over prompts (the tokens gained and
lost by their mean change in probability). Prompts run in right-padded batches, sorted by
length: the models are causal, so the padding never changes the real positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from rich.progress import Progress
from torch import Tensor, nn

from latentguard.lab.activations import TextEncoder, decoder_layers
from latentguard.lab.directions import Direction, EffectError, Mode
from latentguard.lab.discovery import read_texts
from latentguard.lab.errors import DiscoveryError
from latentguard.monitors.rules.schema import Steer
from latentguard.monitors.steering import apply_steer

__all__ = [
    "Condition", "ConditionEffect", "DirectionInfo", "EffectError", "EffectReport",
    "FeatureCosine", "PromptEffect", "TargetShift", "TokenShift", "measure_effects",
    "read_prompts",
]

LOGPROB_BUDGET = 2**26
"""Floats of next-token log-probabilities one batch may hold (256 MB in fp32); a large
vocabulary makes batches smaller."""


class TokenShift(BaseModel):
    token: int
    text: str
    before: float
    """Probability without steering (for a condition: the mean over prompts)."""
    after: float
    delta: float


class TargetShift(BaseModel):
    target: str
    """As given; only its first token (``text``) is scored."""
    token: int
    text: str
    n_tokens: int
    """Tokens the target string has (more than one: only the first is scored)."""
    logprob_before: float
    logprob_after: float
    delta: float


class PromptEffect(BaseModel):
    index: int
    n_tokens: int
    truncated: bool
    """The prompt was longer than ``max_tokens``: its last ``max_tokens`` tokens were used."""
    kl_last: float
    """KL(steered || plain) of the next-token distribution after the last prompt token."""
    kl_mean: float
    """The same, averaged over the positions after each prompt token."""
    top1_before: TokenShift
    """The most likely next token without steering (its probability before and after)."""
    top1_after: TokenShift
    """The most likely next token with steering."""
    gained: list[TokenShift]
    lost: list[TokenShift]
    targets: list[TargetShift]


class ConditionEffect(BaseModel):
    mode: Mode
    strength: float | None
    kl_last: float
    """Mean over prompts."""
    kl_last_max: float
    kl_mean: float
    top1_changed: float
    """Fraction of prompts whose most likely next token changed."""
    gained: list[TokenShift]
    lost: list[TokenShift]
    targets: list[TargetShift]
    prompts: list[PromptEffect]


class FeatureCosine(BaseModel):
    feature: int
    cosine: float
    label: str = ""


class DirectionInfo(BaseModel):
    kind: str
    source: str
    feature: int | None = None
    label: str = ""
    norm: float
    """Norm of the feature's decoder row, or of the vector before it was made unit length
    (add and clamp strengths of a vector are along the unit vector)."""
    nearest_features: list[FeatureCosine] = []
    """For a vector: the SAE features whose decoder rows point most its way."""


class EffectReport(BaseModel):
    model: str = ""
    sae: str = ""
    layer: int
    direction: DirectionInfo
    skip_bos: bool
    preserve_norm: bool
    n_prompts: int
    value_last_mean: float
    """Mean over prompts of the direction's value (the feature's activation, or the projection
    on the unit vector) at the last prompt token, unsteered: the scale for clamp values."""
    value_max: float
    """Its largest value over all prompt tokens."""
    conditions: list[ConditionEffect]


@dataclass(frozen=True)
class Condition:
    mode: Mode
    strength: float | None = None
    """Clamp value or added strength; None for ablate."""

    def __post_init__(self) -> None:
        if self.mode == "ablate" and self.strength is not None:
            raise EffectError("--strengths: ablate takes no strength")
        if self.mode != "ablate" and (self.strength is None or self.strength != self.strength
                                      or abs(self.strength) == float("inf")):
            raise EffectError(f"--strengths: {self.mode} needs a finite strength, got "
                              f"{self.strength}")


# ---- inputs ---------------------------------------------------------------------------------

def read_prompts(paths: Sequence[str | Path] = (), texts: Sequence[str] = ()) -> list[str]:
    """Prompts from files (a ``.jsonl`` line is a JSON string or an object with a string
    ``prompt``, else ``text``; other files as :func:`latentguard.lab.discovery.read_texts` reads
    them) followed by ``texts``."""
    out: list[str] = []
    for raw in paths:
        path = Path(raw)
        if path.suffix != ".jsonl":
            try:
                out += read_texts([path])
            except DiscoveryError as exc:
                raise EffectError(f"--prompts: {exc}") from None
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise EffectError(f"--prompts: {path}: cannot read ({exc})") from None
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EffectError(f"--prompts: {path}:{n}: not JSON ({exc.msg})") from None
            text = item.get("prompt", item.get("text")) if isinstance(item, dict) else item
            if not isinstance(text, str) or not text:
                raise EffectError(f"--prompts: {path}:{n}: expected a non-empty string or an "
                                  "object with a string 'prompt' or 'text'")
            out.append(text)
    for i, text in enumerate(texts, start=1):
        if not text:
            raise EffectError(f"--prompt: prompt {i} is empty")
    out += texts
    if not out:
        raise EffectError("--prompts: no prompts (give --prompts FILE or --prompt TEXT)")
    return out


@dataclass(frozen=True)
class _Target:
    target: str
    token: int
    text: str
    n_tokens: int


def _targets(encoder: TextEncoder, targets: Sequence[str]) -> list[_Target]:
    out = []
    for t in targets:
        ids = encoder.tokenizer(t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EffectError(f"--target: {t!r} has no tokens")
        out.append(_Target(t, ids[0], encoder.tokenizer.decode([ids[0]]), len(ids)))
    return out


def _prompt_ids(encoder: TextEncoder, prompts: Sequence[str]) -> list[tuple[list[int], bool]]:
    out = []
    for i, text in enumerate(prompts, start=1):
        ids = encoder.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise EffectError(f"--prompt: prompt {i} ({text[:40]!r}) has no tokens")
        out.append((ids[-encoder.max_tokens:], len(ids) > encoder.max_tokens))
    return out


def _batches(lengths: Sequence[int], batch: int, vocab: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    max_positions = max(1, LOGPROB_BUDGET // vocab)
    out: list[list[int]] = []
    for i in order:
        width = lengths[i] + 1
        if out and len(out[-1]) < batch and width * (len(out[-1]) + 1) <= max_positions:
            out[-1].append(i)
        else:
            out.append([i])
    return out


# ---- the forwards ---------------------------------------------------------------------------

@contextmanager
def _hooked(encoder: TextEncoder, hook: Callable[..., Any]) -> Iterator[None]:
    handle = decoder_layers(encoder.model)[encoder.layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _steer_hook(direction: Direction, steer: Steer, start: int) -> Callable[..., Any]:
    def hook(_mod: nn.Module, _inp: Any, out: Any) -> Any:
        hidden = out[0] if isinstance(out, tuple) else out
        part = hidden[:, start:]
        rows = part.reshape(-1, part.shape[-1]).float()
        delta = (apply_steer(rows, direction.sae, steer) - rows).view_as(part)
        new = hidden.clone()
        new[:, start:] += delta.to(hidden)
        return (new, *out[1:]) if isinstance(out, tuple) else new
    return hook


def _logprobs(model: nn.Module, contexts: Tensor) -> Tensor:
    return model(input_ids=contexts, use_cache=False).logits.float().log_softmax(-1)


def _shift(decode: Callable[[int], str], before: Tensor, after: Tensor, i: int) -> TokenShift:
    return TokenShift(token=i, text=decode(i), before=float(before[i]), after=float(after[i]),
                      delta=float(after[i] - before[i]))


def _shifts(decode: Callable[[int], str], before: Tensor, after: Tensor, top: int
            ) -> tuple[list[TokenShift], list[TokenShift]]:
    delta = after - before
    k = min(top, delta.numel())

    def pick(values: Tensor, indices: Tensor) -> list[TokenShift]:
        return [_shift(decode, before, after, i)
                for v, i in zip(values.tolist(), indices.tolist(), strict=True) if v > 0]

    gained, lost = delta.topk(k), (-delta).topk(k)
    return pick(*gained), pick(*lost)


def _target_shifts(targets: Sequence[_Target], before: Tensor, after: Tensor
                   ) -> list[TargetShift]:
    return [TargetShift(target=t.target, token=t.token, text=t.text, n_tokens=t.n_tokens,
                        logprob_before=float(b), logprob_after=float(a), delta=float(a - b))
            for t, b, a in zip(targets, before.tolist(), after.tolist(), strict=True)]


class _Condition:
    """One condition's per-prompt effects and its sums over prompts."""

    def __init__(self, cond: Condition, targets: Sequence[_Target], top: int,
                 decode: Callable[[int], str]) -> None:
        self.cond, self.targets, self.top, self.decode = cond, targets, top, decode
        self.target_idx = torch.tensor([t.token for t in targets], dtype=torch.int64)
        self.p_before = self.p_after = torch.zeros(0, dtype=torch.float64)
        self.t_before = torch.zeros(len(targets), dtype=torch.float64)
        self.t_after = torch.zeros(len(targets), dtype=torch.float64)
        self.prompts: list[PromptEffect] = []

    def add(self, index: int, truncated: bool, plain: Tensor, steered: Tensor) -> None:
        """A prompt's next-token log-probs [n, vocab] after each of its tokens."""
        kl = (steered.exp() * (steered - plain)).sum(-1).clamp_min(0.0)
        before, after = plain[-1].exp().double().cpu(), steered[-1].exp().double().cpu()
        if not self.prompts:
            self.p_before, self.p_after = torch.zeros_like(before), torch.zeros_like(after)
        self.p_before += before
        self.p_after += after
        t_before, t_after = plain[-1].cpu()[self.target_idx], steered[-1].cpu()[self.target_idx]
        self.t_before += t_before.double()
        self.t_after += t_after.double()
        gained, lost = _shifts(self.decode, before, after, self.top)
        top1 = [_shift(self.decode, before, after, int(p.argmax())) for p in (before, after)]
        self.prompts.append(PromptEffect(
            index=index, n_tokens=plain.shape[0], truncated=truncated, kl_last=float(kl[-1]),
            kl_mean=float(kl.mean()), top1_before=top1[0], top1_after=top1[1], gained=gained,
            lost=lost, targets=_target_shifts(self.targets, t_before, t_after)))

    def result(self) -> ConditionEffect:
        per = sorted(self.prompts, key=lambda p: p.index)
        n = len(per)
        gained, lost = _shifts(self.decode, self.p_before / n, self.p_after / n, self.top)
        return ConditionEffect(
            mode=self.cond.mode, strength=self.cond.strength,
            kl_last=sum(p.kl_last for p in per) / n, kl_last_max=max(p.kl_last for p in per),
            kl_mean=sum(p.kl_mean for p in per) / n,
            top1_changed=sum(p.top1_before.token != p.top1_after.token for p in per) / n,
            gained=gained, lost=lost,
            targets=_target_shifts(self.targets, self.t_before / n, self.t_after / n),
            prompts=per)


def _contexts(encoder: TextEncoder, ids: Sequence[list[int]]) -> Tensor:
    """[len(ids), 1 + longest] BOS, then each prompt's ids, right-padded."""
    width = max(len(i) for i in ids)
    contexts = torch.full((len(ids), width + 1), encoder.pad, dtype=torch.long)
    contexts[:, 0] = encoder.bos
    for r, row in enumerate(ids):
        contexts[r, 1:1 + len(row)] = torch.tensor(row)
    return contexts


@torch.inference_mode()
def measure_effects(encoder: TextEncoder, direction: Direction, prompts: Sequence[str],
                    conditions: Sequence[Condition], *, targets: Sequence[str] = (),
                    top: int = 10, skip_bos: bool = False, preserve_norm: bool = False,
                    info: DirectionInfo | None = None, progress: Progress | None = None
                    ) -> EffectReport:
    """Each condition's effect on each prompt's next-token distributions (see the module)."""
    if encoder.layer != direction.sae.layer:
        raise EffectError(f"--sae: the encoder reads layer {encoder.layer}, the direction is "
                          f"steered at layer {direction.sae.layer}")
    if not conditions:
        raise EffectError("--strengths: no conditions to measure")
    if not prompts:
        raise EffectError("--prompts: no prompts")
    if top < 1:
        raise EffectError(f"--top: must be at least 1, got {top}")
    model, tok = encoder.model, encoder.tokenizer
    device = next(model.parameters()).device
    direction = direction.to(device)
    steers = [direction.steer(c.mode, c.strength, preserve_norm) for c in conditions]
    scored = _targets(encoder, targets)
    ids = _prompt_ids(encoder, prompts)
    chunks = _batches([len(i) for i, _ in ids], encoder.batch, len(tok))
    states = [_Condition(c, scored, top, lambda i: str(tok.decode([i]))) for c in conditions]
    value_last = torch.zeros(len(prompts), dtype=torch.float64)
    value_max = float("-inf")
    task = progress.add_task("forwards", total=len(chunks) * (1 + len(conditions))) \
        if progress is not None else None

    def tick() -> None:
        if progress is not None and task is not None:
            progress.update(task, advance=1)

    def capture(_mod: nn.Module, _inp: Any, out: Any) -> None:
        captured.append((out[0] if isinstance(out, tuple) else out).float())

    for chunk in chunks:
        contexts = _contexts(encoder, [ids[i][0] for i in chunk]).to(device)
        captured: list[Tensor] = []
        with _hooked(encoder, capture):
            plain = _logprobs(model, contexts)
        tick()
        for r, i in enumerate(chunk):
            vals = direction.values(captured[0][r, 1:1 + len(ids[i][0])])
            value_last[i] = float(vals[-1])
            value_max = max(value_max, float(vals.max()))
        for steer, state in zip(steers, states, strict=True):
            with _hooked(encoder, _steer_hook(direction, steer, 1 if skip_bos else 0)):
                steered = _logprobs(model, contexts)
            tick()
            for r, i in enumerate(chunk):
                n = len(ids[i][0])
                state.add(i, ids[i][1], plain[r, 1:n + 1], steered[r, 1:n + 1])
    info = info or DirectionInfo(kind=direction.kind, source=direction.source,
                                 feature=direction.feature, norm=direction.norm)
    return EffectReport(layer=encoder.layer, direction=info, skip_bos=skip_bos,
                        preserve_norm=preserve_norm, n_prompts=len(prompts),
                        value_last_mean=float(value_last.mean()), value_max=value_max,
                        conditions=[s.result() for s in states])
