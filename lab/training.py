"""``latentguard sae train``: a TopK SAE on one layer's residual stream, from a text corpus.

Documents (files under the corpus paths) are tokenised with the model's tokenizer and packed
into fixed-length contexts, each starting with BOS; every ``eval_every``-th document (sorted by
path) is held out for evaluation. Contexts go through the HF model, which stops right after
decoder layer ``layer`` (a forward hook raises), and their rows (all positions but the first,
the BOS / attention-sink row) fill a buffer of ``buffer_contexts`` contexts that is shuffled and
cut into batches. Only one buffer is held in memory. Everything is deterministic given the seed,
so a checkpoint stores just the step: resuming re-reads the corpus up to the current buffer,
recomputes that buffer and skips the batches already used, then continues exactly.

The output folder is a SAELens SAE (``cfg.json``, ``sae_weights.safetensors``, hook name
``blocks.L.hook_resid_post``) with ``metrics.json``, ``training.json`` and ``checkpoint/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import shutil
import types
import typing
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from latentguard.lab.activations import decoder_layers, layer_rows
from latentguard.lab.errors import TrainingError
from latentguard.monitors.sae import SAE, save_saelens
from latentguard.monitors.train import (
    ReconstructionStats,
    SAETrainer,
    TrainerConfig,
    shuffled_batches,
)

__all__ = [
    "GroupEval", "TrainRunConfig", "TrainingError", "add_train_arguments", "config_from_args",
    "evaluate", "evaluate_groups", "format_metrics", "heldout_groups", "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_DIR, METRICS_FILE, RUN_FILE = "checkpoint", "metrics.json", "training.json"
_RESUMABLE_CHANGES = {"checkpoint_every", "eval_tokens", "eval_lm_contexts", "model_batch"}


class TrainRunConfig(BaseModel):
    """One SAE training run: the data side plus the trainer's hyperparameters (``sae``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    model: Path
    """HF model folder (config, weights, tokenizer)."""
    layer: int = Field(ge=0)
    """Decoder layer whose output (residual stream, blocks.L.hook_resid_post) is encoded."""
    corpus: list[Path] = Field(min_length=1)
    """Text files or folders of them, read as documents."""
    out: Path
    """Output folder: the SAELens SAE, metrics.json and checkpoints."""
    tokens: int = Field(default=2_000_000, gt=0)
    """Training tokens (activation rows)."""
    ctx_len: int = Field(default=256, ge=2)
    """Tokens per context, BOS included."""
    model_batch: int = Field(default=8, gt=0)
    """Contexts per model forward."""
    buffer_contexts: int = Field(default=256, gt=0)
    """Contexts per shuffle buffer (a multiple of model_batch)."""
    eval_every: int = Field(default=50, ge=2)
    """Every N-th document (sorted by path) is held out for evaluation."""
    eval_tokens: int = Field(default=65_536, gt=0)
    """Held-out tokens for FVU, L0 and the dead-feature fraction."""
    eval_lm_contexts: int = Field(default=32, ge=0)
    """Held-out contexts for the LM loss with the reconstruction spliced in (0: skip)."""
    checkpoint_every: int = Field(default=200, gt=0)
    """Optimiser steps between checkpoints."""
    suffixes: list[str] = [".py", ".txt", ".rst", ".md"]
    """File suffixes read inside corpus folders (files named directly are always read)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Model compute dtype (bf16 is slow on CPUs without AVX512-BF16)."""
    model_name: str = ""
    """Model name written into the SAE's metadata (default: the model folder's name)."""
    seed: int = 0
    """Seed of the document order and the batch shuffles."""
    sae: TrainerConfig = TrainerConfig()
    """SAE size and optimiser settings."""

    @model_validator(mode="after")
    def _check(self) -> TrainRunConfig:
        if self.buffer_contexts % self.model_batch:
            raise ValueError(f"buffer_contexts: {self.buffer_contexts} is not a multiple of "
                             f"model_batch ({self.model_batch})")
        if self.buffer_rows < self.sae.batch_size:
            raise ValueError(f"buffer_contexts: {self.buffer_contexts} contexts give "
                             f"{self.buffer_rows} rows, fewer than batch_size "
                             f"({self.sae.batch_size})")
        if self.tokens < self.sae.batch_size:
            raise ValueError(f"tokens: {self.tokens} is less than one batch "
                             f"({self.sae.batch_size})")
        return self

    @property
    def buffer_rows(self) -> int:
        return self.buffer_contexts * (self.ctx_len - 1)

    @property
    def total_steps(self) -> int:
        return self.tokens // self.sae.batch_size

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_post"


# ---- corpus ---------------------------------------------------------------------------------

def list_documents(paths: Sequence[Path], suffixes: Sequence[str]) -> list[Path]:
    """Files named in ``paths`` plus files with a wanted suffix under folders, sorted."""
    files: set[Path] = set()
    for path in paths:
        if path.is_file():
            files.add(path)
        elif path.is_dir():
            files.update(p for p in path.rglob("*") if p.is_file() and p.suffix in suffixes)
        else:
            raise TrainingError(f"corpus: {path} does not exist")
    if not files:
        raise TrainingError(f"corpus: no files with suffixes {list(suffixes)} found")
    return sorted(files)


def split_documents(files: list[Path], eval_every: int) -> tuple[list[Path], list[Path]]:
    """(train, eval): every ``eval_every``-th file goes to eval (at least one)."""
    held = set(files[eval_every - 1::eval_every] or files[-1:])
    train = [f for f in files if f not in held]
    if not train:
        raise TrainingError("corpus: needs at least two documents (one is held out)")
    return train, sorted(held)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        logger.debug("skipping %s: %s", path, exc)
        return None


def _token_docs(files: Sequence[Path], tokenizer: Any) -> Iterator[list[int]]:
    for path in files:
        text = _read(path)
        if text and text.strip():
            yield tokenizer(text, add_special_tokens=False)["input_ids"]


def pack_contexts(docs: Iterator[list[int]], ctx_len: int, bos: int, sep: int) -> Iterator[Tensor]:
    """Contexts ``[bos, t1 .. t_{ctx_len-1}]`` packed from documents joined by ``sep``."""
    pending: list[int] = []
    for ids in docs:
        pending += [*ids, sep]
        while len(pending) >= ctx_len - 1:
            yield torch.tensor([bos, *pending[:ctx_len - 1]])
            del pending[:ctx_len - 1]


def train_contexts(files: list[Path], tokenizer: Any, cfg: TrainRunConfig) -> Iterator[Tensor]:
    """Endless context stream: each pass over the documents in a new seeded order."""
    bos, sep = _special_ids(tokenizer)
    for epoch in range(1_000_000):
        order = list(files)
        random.Random(f"{cfg.seed}:{epoch}").shuffle(order)
        if epoch:
            logger.warning("corpus used up; starting pass %d over it", epoch + 1)
        empty = True
        for context in pack_contexts(_token_docs(order, tokenizer), cfg.ctx_len, bos, sep):
            empty = False
            yield context
        if empty:
            raise TrainingError("corpus: the training documents are too short for one context; "
                                "lower ctx_len or add text")


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        raise TrainingError("model: its tokenizer has neither a BOS nor an EOS token")
    return (bos if bos is not None else eos), (eos if eos is not None else bos)


def _take(contexts: Iterator[Tensor], n: int, what: str = "training") -> Tensor:
    got = list(islice(contexts, n))
    if not got:
        raise TrainingError(f"corpus: the {what} documents are too short for one context; "
                            "lower ctx_len or add text")
    return torch.stack(got)


# ---- model ----------------------------------------------------------------------------------

def load_model(cfg: TrainRunConfig) -> tuple[nn.Module, Any]:
    return load_model_dir(cfg.model, cfg.layer, cfg.dtype)


def load_model_dir(path: Path, layer: int, dtype: str = "float32") -> tuple[nn.Module, Any]:
    """The HF model (eval mode, no grads) and tokenizer in ``path``; ``layer`` must exist."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").is_file():
        raise TrainingError(f"model: {path} is not an HF model folder (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.eval().requires_grad_(False)
    n_layers = len(decoder_layers(model))
    if layer >= n_layers:
        raise TrainingError(f"layer: {layer} is out of range (the model has {n_layers})")
    return model, tokenizer


# ---- training -------------------------------------------------------------------------------

def train(cfg: TrainRunConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train, save the SAE and its metrics under ``cfg.out``; return the metrics."""
    model, tokenizer = load_model(cfg)
    train_files, eval_files = split_documents(list_documents(cfg.corpus, cfg.suffixes),
                                              cfg.eval_every)
    d_in = int(getattr(model, "config").get_text_config().hidden_size)  # noqa: B009
    trainer = SAETrainer(cfg.sae, d_in, cfg.total_steps)
    _prepare_out(cfg, trainer, resume)
    per_buffer = cfg.buffer_rows // cfg.sae.batch_size
    first_buffer, skip = divmod(trainer.step, per_buffer)
    contexts = train_contexts(train_files, tokenizer, cfg)
    for _ in islice(contexts, first_buffer * cfg.buffer_contexts):
        pass
    logger.info("training %d steps of %d rows on %d documents (%d held out), from step %d",
                cfg.total_steps, cfg.sae.batch_size, len(train_files), len(eval_files),
                trainer.step)
    with _progress_bar(progress) as bar:
        task = bar.add_task("sae train", total=cfg.total_steps, completed=trainer.step, info="")
        buffer = first_buffer
        while trainer.step < cfg.total_steps:
            rows = layer_rows(model, cfg.layer, _take(contexts, cfg.buffer_contexts),
                              cfg.model_batch)
            for batch in shuffled_batches(rows, cfg.sae.batch_size, cfg.seed * 1_000_003 + buffer,
                                          skip):
                stats = trainer.train_step(batch)
                bar.update(task, advance=1, info=f"fvu {stats.fvu:.3f} l0 {stats.l0:.1f} "
                           f"dead {stats.dead_fraction:.1%}")
                if trainer.step % cfg.checkpoint_every == 0 or trainer.step == cfg.total_steps:
                    save_checkpoint(cfg.out / CHECKPOINT_DIR, trainer)
                if trainer.step == cfg.total_steps:
                    break
            buffer, skip = buffer + 1, 0
    sae = trainer.export(hook_name=cfg.hook_name, layer=cfg.layer,
                         model_name=cfg.model_name or cfg.model.name)
    save_saelens(sae, cfg.out)
    bos, sep = _special_ids(tokenizer)
    eval_ctx = pack_contexts(_token_docs(eval_files, tokenizer), cfg.ctx_len, bos, sep)
    n_eval = max(math.ceil(cfg.eval_tokens / (cfg.ctx_len - 1)), cfg.eval_lm_contexts)
    metrics = evaluate(model, sae, cfg, _take(eval_ctx, n_eval, "held-out"))
    metrics |= {"dead_fraction_train": trainer.dead_fraction(), "steps": trainer.step,
                "train_tokens": trainer.tokens_seen, "hook_name": cfg.hook_name,
                "model": str(cfg.model)}
    (cfg.out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    logger.info("SAE saved to %s: %s", cfg.out, format_metrics(metrics).replace("\n", "; "))
    return metrics


def _progress_bar(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not enabled)


def _prepare_out(cfg: TrainRunConfig, trainer: SAETrainer, resume: bool) -> None:
    ckpt = cfg.out / CHECKPOINT_DIR
    run = cfg.model_dump(mode="json")
    if resume:
        if not (ckpt / "state.json").is_file():
            raise TrainingError(f"out: {cfg.out} holds no checkpoint to resume from")
        if not (cfg.out / RUN_FILE).is_file():
            raise TrainingError(f"out: {cfg.out} has a checkpoint but no {RUN_FILE}")
        saved = json.loads((cfg.out / RUN_FILE).read_text(encoding="utf-8"))
        _check_same_run(saved, run)
        load_checkpoint(ckpt, trainer)
        logger.info("resuming from step %d (%s)", trainer.step, ckpt)
        return
    if ckpt.exists():
        raise TrainingError(f"out: {cfg.out} already holds a training checkpoint; pass "
                            "--resume to continue it or choose another folder")
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")


def _check_same_run(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> None:
    for key in sorted(set(saved) | set(now)):
        if key in _RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _check_same_run(old, new, f"{prefix}{key}.")
        elif old != new:
            raise TrainingError(f"{prefix}{key}: the checkpoint was trained with {old!r}, "
                                f"not {new!r}; use the same settings to resume")


def save_checkpoint(path: Path, trainer: SAETrainer) -> None:
    """Write the trainer state to ``path`` atomically (a new folder replaces the old one)."""
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainer.state_tensors(), str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(trainer.state_meta()), encoding="utf-8")
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    logger.info("checkpoint at step %d", trainer.step)


def load_checkpoint(path: Path, trainer: SAETrainer) -> None:
    meta = json.loads((path / "state.json").read_text(encoding="utf-8"))
    trainer.load_state(load_file(str(path / "state.safetensors")), meta)


# ---- evaluation -----------------------------------------------------------------------------

class EvalSettings(typing.Protocol):
    """What :func:`evaluate` reads of a run (a :class:`TrainRunConfig` has all of it)."""

    @property
    def layer(self) -> int: ...
    @property
    def ctx_len(self) -> int: ...
    @property
    def eval_tokens(self) -> int: ...
    @property
    def eval_lm_contexts(self) -> int: ...
    @property
    def buffer_contexts(self) -> int: ...
    @property
    def model_batch(self) -> int: ...


@dataclasses.dataclass(frozen=True)
class GroupEval:
    """:func:`evaluate`'s settings for :func:`evaluate_groups`."""

    layer: int
    ctx_len: int = 256
    eval_tokens: int = 65_536
    eval_lm_contexts: int = 32
    buffer_contexts: int = 64
    model_batch: int = 8


def evaluate_groups(model: nn.Module, tokenizer: Any, sae: SAE, groups: dict[str, list[Path]],
                    settings: GroupEval) -> dict[str, dict[str, Any]]:
    """:func:`evaluate` on each named group of documents separately (contexts packed from that
    group's files only): reconstruction and LM loss per corpus source."""
    bos, sep = _special_ids(tokenizer)
    out = {}
    n_ctx = max(math.ceil(settings.eval_tokens / (settings.ctx_len - 1)),
                settings.eval_lm_contexts)
    for name, files in groups.items():
        contexts = pack_contexts(_token_docs(files, tokenizer), settings.ctx_len, bos, sep)
        out[name] = evaluate(model, sae, settings, _take(contexts, n_ctx, f"{name!r}"))
        logger.info("%s: %s", name, format_metrics(out[name]).replace("\n", "; "))
    return out


def heldout_groups(corpus: Path, eval_every: int, suffixes: Sequence[str]) -> dict[str, list[Path]]:
    """The documents a training run on ``corpus`` held out, grouped by their top folder (the
    source, for a corpus written by ``latentguard.lab.corpora sae``)."""
    _, held = split_documents(list_documents([corpus], suffixes), eval_every)
    groups: dict[str, list[Path]] = {}
    for path in held:
        rel = path.relative_to(corpus)
        groups.setdefault(rel.parts[0] if len(rel.parts) > 1 else ".", []).append(path)
    return groups


def evaluate(model: nn.Module, sae: SAE, cfg: EvalSettings, contexts: Tensor) -> dict[str, Any]:
    """FVU, L0 and dead fraction on held-out rows; LM loss clean, spliced and zero-ablated."""
    n_ctx = math.ceil(cfg.eval_tokens / (cfg.ctx_len - 1))
    stats = ReconstructionStats(sae.d_in, sae.d_sae)
    for chunk in contexts[:n_ctx].split(cfg.buffer_contexts):
        for x in layer_rows(model, cfg.layer, chunk, cfg.model_batch).split(4096):
            acts = sae.encode(x)
            stats.update(x, sae.decode(acts), acts)
    rec = stats.result()
    out: dict[str, Any] = {"fvu": rec.fvu, "l0": rec.l0, "dead_fraction": rec.dead_fraction,
                           "eval_tokens": rec.tokens}
    lm = contexts[:cfg.eval_lm_contexts]

    def reconstruct(x: Tensor) -> Tensor:
        return sae.decode(sae.encode(x))

    if len(lm):
        clean = lm_loss(model, lm, cfg.model_batch)
        spliced = lm_loss(model, lm, cfg.model_batch, (cfg.layer, reconstruct))
        ablated = lm_loss(model, lm, cfg.model_batch, (cfg.layer, torch.zeros_like))
        out |= {"lm_loss_clean": clean, "lm_loss_spliced": spliced,
                "lm_loss_increase": spliced - clean, "lm_loss_zero_ablated": ablated,
                "lm_loss_recovered": (ablated - spliced) / (ablated - clean)
                if ablated != clean else None, "eval_lm_tokens": lm.numel() - len(lm)}
    return out


@torch.no_grad()
def lm_loss(model: nn.Module, contexts: Tensor, model_batch: int,
            splice: tuple[int, typing.Callable[[Tensor], Tensor]] | None = None) -> float:
    """Mean next-token loss; with ``splice=(layer, f)`` rows 1.. after ``layer`` become f(rows)."""

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> Any:
        hidden = out[0] if isinstance(out, tuple) else out
        rows = hidden[:, 1:]
        new = f(rows.flatten(0, 1).float()).to(hidden.dtype).view_as(rows)
        hidden = torch.cat([hidden[:, :1], new], dim=1)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = None
    if splice is not None:
        layer, f = splice
        handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        # At most 2 contexts per forward: the logits of a large vocabulary are big.
        losses = [float(model(input_ids=c, labels=c, use_cache=False).loss) * len(c)
                  for c in contexts.split(min(model_batch, 2))]
    finally:
        if handle is not None:
            handle.remove()
    return sum(losses) / len(contexts)


def format_metrics(m: dict[str, Any]) -> str:
    """The metrics as two lines; the training dead fraction only where a run measured one."""
    train = (f", {m['dead_fraction_train']:.2%} (training)" if "dead_fraction_train" in m
             else "")
    lines = [f"FVU {m['fvu']:.4f}   L0 {m['l0']:.1f}   dead {m['dead_fraction']:.2%} "
             f"(eval, {m['eval_tokens']} tokens){train}"]
    if "lm_loss_clean" in m:
        lines.append(f"LM loss {m['lm_loss_clean']:.4f} -> {m['lm_loss_spliced']:.4f} spliced "
                     f"({m['lm_loss_increase']:+.4f}; zero-ablated {m['lm_loss_zero_ablated']:.4f},"
                     f" {m['lm_loss_recovered'] or 0:.1%} recovered)")
    return "\n".join(lines)


# ---- CLI ------------------------------------------------------------------------------------

def _flag_kwargs(annotation: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _flag_kwargs(next(a for a in args if a is not type(None)))
    if origin is list:
        return {"nargs": "+", **_flag_kwargs(args[0])}
    if origin is Literal:
        return {"choices": list(args)}
    return {"type": annotation}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (help from its docstring); unset flags keep the defaults."""
    required = {"model", "layer", "corpus", "out"}
    for name, field in [*TrainRunConfig.model_fields.items(),
                        *TrainerConfig.model_fields.items()]:
        if name == "sae":
            continue
        value = None if field.is_required() else field.get_default()
        default = f" (default: {value})" if value not in (None, "") else ""
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, required=name in required,
                            default=argparse.SUPPRESS, help=f"{field.description}{default}",
                            **_flag_kwargs(field.annotation))
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out (same settings)")


def config_from_args(args: argparse.Namespace) -> TrainRunConfig:
    values = vars(args)
    sae = {k: values[k] for k in TrainerConfig.model_fields if k in values}
    run = {k: values[k] for k in TrainRunConfig.model_fields if k in values}
    try:
        return TrainRunConfig(**run, sae=TrainerConfig(**sae))
    except ValidationError as exc:
        raise TrainingError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{field}: {msg}" if field else msg)
    return "\n".join(lines)
