"""Export a `latentguard sae train` result as an fp16 SAELens SAE, load it back, check it.

usage: python export_fp16.py RUN_DIR DEST_DIR [--from-checkpoint] [--eval-tokens N]

RUN_DIR is the trainer's --out folder. The fp16 SAE goes to DEST_DIR (cfg.json,
sae_weights.safetensors); it is read back with latentguard.monitors.sae.load_sae and evaluated
on the trainer's held-out documents (same split, same metrics as `sae train`); metrics.json in
DEST_DIR holds the trainer's metrics (fp32 SAE) plus "shipped_fp16", the same metrics for the
fp16 file.
"""
import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import torch

from latentguard.lab import training as T
from latentguard.lab.activations import layer_rows
from latentguard.monitors.sae import SAE, load_sae, save_saelens
from latentguard.monitors.train import SAETrainer

p = argparse.ArgumentParser()
p.add_argument("run", type=Path)
p.add_argument("dest", type=Path)
p.add_argument("--from-checkpoint", action="store_true",
               help="export the last checkpoint (a run that did not finish)")
p.add_argument("--eval-tokens", type=int)
p.add_argument("--eval-lm-contexts", type=int)
p.add_argument("--by-source-only", action="store_true",
               help="skip the overall re-evaluation (the trainer's metrics cover it in fp32)")
args = p.parse_args()

cfg = T.TrainRunConfig(**json.loads((args.run / T.RUN_FILE).read_text()))
if args.eval_tokens:
    cfg = cfg.model_copy(update={"eval_tokens": args.eval_tokens})
if args.eval_lm_contexts is not None:
    cfg = cfg.model_copy(update={"eval_lm_contexts": args.eval_lm_contexts})
model, tok = T.load_model(cfg)
d_in = int(model.config.get_text_config().hidden_size)
trained: dict = {}
if args.from_checkpoint:
    trainer = SAETrainer(cfg.sae, d_in, cfg.total_steps)
    T.load_checkpoint(args.run / T.CHECKPOINT_DIR, trainer)
    sae32 = trainer.export(hook_name=cfg.hook_name, layer=cfg.layer,
                           model_name=cfg.model_name or cfg.model.name)
    trained = {"steps": trainer.step, "train_tokens": trainer.tokens_seen,
               "dead_fraction_train": trainer.dead_fraction(),
               "note": f"checkpoint at step {trainer.step} of {cfg.total_steps}"}
else:
    sae32 = load_sae(args.run)
    trained = json.loads((args.run / T.METRICS_FILE).read_text())
for name, t in sae32.state_dict().items():
    m = float(t.abs().max())
    assert m < 60000, (name, m)
sae16 = sae32.to(torch.float16)
for name, t in sae16.state_dict().items():
    assert torch.isfinite(t).all(), name
save_saelens(sae16, args.dest, model_name=sae32.cfg.model_name)
back = load_sae(args.dest)          # fp16 file, fp32 compute (the loader's default)
print("loaded back:", back)
assert back.cfg.hook_name == cfg.hook_name and back.cfg.k == cfg.sae.k
assert back.d_in == d_in and back.d_sae == cfg.sae.d_sae

# Encode two texts: a code snippet and prose; compare fp32 and fp16 SAEs on them.
texts = {
    "code": "import subprocess\n\ndef run(cmd):\n    return subprocess.call(cmd, shell=True)\n",
    "prose": "The library is open every day except Sunday, and children under twelve must be "
             "accompanied by an adult.",
}
bos, _ = T._special_ids(tok)


def fvu(acts: torch.Tensor, sae: SAE, x: torch.Tensor) -> float:
    return float(((sae.decode(acts) - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


for label, text in texts.items():
    ids = torch.tensor([[bos, *tok(text, add_special_tokens=False)["input_ids"]]])
    x = layer_rows(model, cfg.layer, ids, 1)
    a32, a16 = sae32.encode(x), back.encode(x)
    top32 = a32.topk(cfg.sae.k).indices.sort(1).values
    top16 = a16.topk(cfg.sae.k).indices.sort(1).values
    same = float((torch.stack([torch.isin(top16[i], top32[i]).float().mean()
                               for i in range(len(x))])).mean())
    mean_top = a16.mean(0).topk(5)
    print(f"{label}: {len(x)} tokens, L0 {float((a16 > 0).sum(1).float().mean()):.1f}, "
          f"FVU fp32 {fvu(a32, sae32, x):.3f} fp16 {fvu(a16, back, x):.3f}, "
          f"top-k overlap fp16/fp32 {same:.1%}, strongest features "
          f"{mean_top.indices.tolist()}")

# Same held-out evaluation as `sae train`, on the fp16 file.
_, eval_files = T.split_documents(T.list_documents(cfg.corpus, cfg.suffixes), cfg.eval_every)
eval_ctx = T.pack_contexts(T._token_docs(eval_files, tok), cfg.ctx_len, bos, T._special_ids(tok)[1])
n_eval = max(math.ceil(cfg.eval_tokens / (cfg.ctx_len - 1)), cfg.eval_lm_contexts)
t0 = time.time()
shipped = None
if not args.by_source_only:
    shipped = T.evaluate(model, back, cfg, T._take(eval_ctx, n_eval, "held-out"))
    print(f"evaluated fp16 in {time.time() - t0:.0f} s:", json.dumps(shipped))
by_source = {}
for source in sorted({f.relative_to(c).parts[0] for c in cfg.corpus for f in eval_files
                      if f.is_relative_to(c)}):
    files = [f for f in eval_files if any(f.is_relative_to(c / source) for c in cfg.corpus)]
    sub = cfg.model_copy(update={"eval_tokens": min(cfg.eval_tokens, 32768),
                                 "eval_lm_contexts": min(cfg.eval_lm_contexts, 16)})
    ctx = T.pack_contexts(T._token_docs(files, tok), sub.ctx_len, bos, T._special_ids(tok)[1])
    n = max(math.ceil(sub.eval_tokens / (sub.ctx_len - 1)), sub.eval_lm_contexts)
    by_source[source] = T.evaluate(model, back, sub, T._take(ctx, n, "held-out"))
    print(f"held-out {source}:", json.dumps(by_source[source]))
metrics = dict(trained) | {"shipped_fp16_by_source": by_source}
if shipped is not None:
    metrics["shipped_fp16"] = shipped
(args.dest / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
digest = hashlib.sha256((args.dest / "sae_weights.safetensors").read_bytes()).hexdigest()
print("sha256", digest, "bytes", (args.dest / "sae_weights.safetensors").stat().st_size)
