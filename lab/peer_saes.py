"""Write tiny SAEs with the real ``sae-lens`` and ``eai-sparsify`` packages, plus their own outputs.

Why: our loaders must compute what the peers compute. Hand-written fixtures only test our own
reading of the peers' code; these are saved by the peers' own ``save_model`` /
``save_to_disk`` and carry the peers' own ``encode`` / ``decode`` outputs, so the tests in
``tests/monitors/sae/test_sae_peers.py`` compare against the real thing.

Run by hand (never by tests or CI; it needs the network the first time)::

    python lab/peer_saes.py            # venv under /tmp/latentguard-peers, output in
                                       # tests/monitors/sae/peers/

The script makes a throwaway venv, installs ``torch==2.13.0`` first (a CPU wheel), then
``sae-lens==6.54.12`` and ``eai-sparsify==1.3.3``, and re-runs itself inside it with ``--inside``.
Each fixture is a folder ``<name>/`` holding the peer's SAE files and ``peer_io.safetensors``
(``x`` input rows, ``encoded`` dense activations, ``decoded`` reconstruction).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "monitors" / "sae" / "peers"
VENV = Path("/tmp/latentguard-peers")
PINS = ("torch==2.13.0", "sae-lens==6.54.12", "eai-sparsify==1.3.3")
D_IN, D_SAE, N_ROWS = 12, 24, 6


def _bootstrap(venv: Path, out: Path) -> None:
    """Create the venv (torch first so pip keeps the CPU wheel), then re-run inside it."""
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", PINS[0]], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *PINS[1:]], check=True)
    subprocess.run([str(py), __file__, "--inside", "--out", str(out)], check=True)


def _randomize(module: Any, seed: int) -> None:
    """Give every parameter random non-zero values (peers initialise biases to zero)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 0.5 if p.ndim == 2 else 0.2
            p.copy_(torch.randn(p.shape, generator=gen) * scale)
            if name == "threshold":
                p.abs_()


def _rows(seed: int) -> Any:
    import torch

    gen = torch.Generator().manual_seed(1000 + seed)
    return torch.randn(N_ROWS, D_IN, generator=gen) * 2.0


def _save_io(folder: Path, x: Any, encoded: Any, decoded: Any) -> None:
    from safetensors.torch import save_file

    tensors = {"x": x, "encoded": encoded, "decoded": decoded}
    save_file({k: v.detach().contiguous().float() for k, v in tensors.items()},
              str(folder / "peer_io.safetensors"))


def _saelens(out: Path) -> None:
    import torch
    from sae_lens import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    kinds: dict[str, tuple[type, type]] = {
        "standard": (StandardSAE, StandardSAEConfig),
        "topk": (TopKSAE, TopKSAEConfig),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig),
        "gated": (GatedSAE, GatedSAEConfig),
    }
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("standard", "standard", {}),
        ("standard_no_b_dec", "standard", {"apply_b_dec_to_input": False}),
        ("standard_layer_norm", "standard", {"normalize_activations": "layer_norm"}),
        ("standard_constant_norm", "standard", {"normalize_activations": "constant_norm_rescale"}),
        ("standard_expected_average", "standard",
         {"normalize_activations": "expected_average_only_in"}),
        ("topk", "topk", {"k": 4}),
        ("topk_no_b_dec", "topk", {"k": 4, "apply_b_dec_to_input": False}),
        ("topk_rescale", "topk", {"k": 4, "rescale_acts_by_decoder_norm": True}),
        ("topk_rescale_layer_norm", "topk",
         {"k": 5, "rescale_acts_by_decoder_norm": True, "normalize_activations": "layer_norm"}),
        ("jumprelu", "jumprelu", {}),
        ("jumprelu_no_b_dec", "jumprelu", {"apply_b_dec_to_input": False}),
        ("gated", "gated", {}),
        ("gated_constant_norm", "gated", {"normalize_activations": "constant_norm_rescale"}),
    ]
    for seed, (name, arch, kw) in enumerate(variants):
        sae_cls, cfg_cls = kinds[arch]
        meta = SAEMetadata(model_name="tiny-peer", hook_name="blocks.2.hook_resid_post",
                           hook_head_index=None, prepend_bos=True, context_size=64)
        sae = sae_cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=meta, **kw))
        _randomize(sae, seed)
        folder = out / f"saelens_{name}"
        sae.save_model(folder)
        x = _rows(seed)
        with torch.no_grad():
            encoded = sae.encode(x)
            decoded = sae(x)  # forward = decode(encode(x)), undoing run-time normalisation
        _save_io(folder, x, encoded, decoded)
    _saelens_trained(out)


def _saelens_trained(out: Path) -> None:
    """A TopK training SAE saved with ``save_inference_model``, as the SAELens trainer does.

    Its metadata carries ``training_architecture`` and ``training_architecture_details``.
    """
    import torch
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    meta = SAEMetadata(model_name="tiny-peer", hook_name="blocks.2.hook_resid_post")
    cfg = TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4, metadata=meta)
    sae = TopKTrainingSAE(cfg)
    _randomize(sae, 99)
    folder = out / "saelens_topk_trained"
    sae.save_inference_model(folder)
    x = _rows(99)
    with torch.no_grad():
        encoded = sae.encode(x)
        decoded = sae.decode(encoded)
    _save_io(folder, x, encoded, decoded)


def _sparsify(out: Path) -> None:
    import torch
    from sparsify import SparseCoder, SparseCoderConfig

    variants: list[tuple[str, dict[str, Any]]] = [
        ("topk", {"k": 4, "num_latents": D_SAE}),
        ("topk_expansion", {"k": 3, "expansion_factor": 2}),
        ("topk_multi", {"k": 4, "num_latents": D_SAE, "multi_topk": True}),
        ("transcode", {"k": 4, "num_latents": D_SAE, "transcode": True}),
    ]
    for seed, (name, kw) in enumerate(variants, start=50):
        coder = SparseCoder(D_IN, SparseCoderConfig(**kw))
        _randomize(coder, seed)
        folder = out / f"sparsify_{name}" / "layers.3"
        coder.save_to_disk(folder)
        x = _rows(seed)
        with torch.no_grad():
            enc = coder.encode(x)
            dense = torch.zeros(N_ROWS, coder.num_latents).scatter_(
                -1, enc.top_indices, enc.top_acts
            )
            decoded = coder.decode(enc.top_acts, enc.top_indices)
        _save_io(folder, x, dense, decoded)


def _readme(out: Path) -> None:
    import sae_lens
    import sparsify
    import torch

    sparsify_version = getattr(sparsify, "__version__", "1.3.3")
    (out / "README.md").write_text(
        "Peer-written SAE fixtures (tiny, random weights). Made by `python lab/peer_saes.py` "
        f"with sae-lens {sae_lens.__version__}, eai-sparsify {sparsify_version}, "
        f"torch {torch.__version__}; each folder holds the peer's own save and "
        "`peer_io.safetensors` (x, encoded, decoded by the peer).\n",
        encoding="utf-8",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inside", action="store_true", help="already in the peer venv")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--venv", type=Path, default=VENV)
    args = parser.parse_args()
    if not args.inside:
        _bootstrap(args.venv, args.out)
        return
    import shutil

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    _saelens(args.out)
    _sparsify(args.out)
    _readme(args.out)


if __name__ == "__main__":
    main()
