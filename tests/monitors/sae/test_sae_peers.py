"""SAEs saved by the real sae-lens and eai-sparsify packages (``lab/peer_saes.py``) load and
encode/decode exactly as the peers themselves computed on the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from latentguard.monitors.sae import load_sae

PEERS = Path(__file__).parent / "peers"
IO_FILE = "peer_io.safetensors"
FIXTURES = sorted(p.parent for p in PEERS.rglob(IO_FILE))


def test_fixtures_cover_every_architecture_and_option() -> None:
    names = {p.relative_to(PEERS).parts[0] for p in FIXTURES}
    for want in ("saelens_standard", "saelens_topk", "saelens_topk_rescale", "saelens_jumprelu",
                 "saelens_gated", "saelens_standard_no_b_dec", "saelens_standard_layer_norm",
                 "saelens_standard_constant_norm", "sparsify_topk", "sparsify_transcode"):
        assert want in names


@pytest.mark.parametrize("folder", FIXTURES, ids=lambda p: str(p.relative_to(PEERS)))
def test_peer_sae_encodes_and_decodes_like_the_peer(folder: Path) -> None:
    io = load_file(str(folder / IO_FILE))
    sae = load_sae(folder)
    x = io["x"]
    encoded = sae.encode(x)
    torch.testing.assert_close(encoded, io["encoded"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(encoded, x), io["decoded"], rtol=1e-5, atol=1e-5)
    assert (encoded != 0).any()


def test_rescale_fixture_needs_the_rescale(tmp_path: Path) -> None:
    """Reading ``rescale_acts_by_decoder_norm`` as false would encode other features."""
    import json
    import shutil

    src = PEERS / "saelens_topk_rescale"
    dst = shutil.copytree(src, tmp_path / "sae")
    cfg = json.loads((dst / "cfg.json").read_text())
    cfg["rescale_acts_by_decoder_norm"] = False
    (dst / "cfg.json").write_text(json.dumps(cfg))
    io = load_file(str(src / IO_FILE))
    wrong = load_sae(dst).encode(io["x"])
    assert not torch.allclose(wrong, io["encoded"], atol=1e-3)
