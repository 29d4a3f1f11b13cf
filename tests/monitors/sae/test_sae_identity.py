"""An SAE's identity: the hash of its weights as read, whatever dtype it is loaded in; and the
shipped SAE's pack records the shipped SAE's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from latentguard.monitors.rules import load_rule_pack
from latentguard.monitors.sae import SAEConfig, SAEIdentity, StandardSAE, load_sae, save_saelens

ROOT = Path(__file__).resolve().parents[3]
SHIPPED = ROOT / "saes" / "gemma-3-270m" / "blocks.9.hook_resid_post"


def file_sha256(weights: Path) -> str:
    """The documented recipe, computed here from the file with numpy, not with the loader:
    for each tensor by name, ``name dtype shape\\n`` then its bytes."""
    h = hashlib.sha256()
    with safe_open(str(weights), framework="np") as f:
        for name in sorted(f.keys()):
            array = np.ascontiguousarray(f.get_tensor(name))
            dtype = {np.float16: "torch.float16", np.float32: "torch.float32"}[array.dtype.type]
            h.update(f"{name} {dtype} {','.join(str(n) for n in array.shape)}\n".encode())
            h.update(array.tobytes())
    return h.hexdigest()[:16]


def tiny(folder: Path, shift: int = 0) -> Path:
    w = torch.zeros(4, 8)
    for i in range(8):
        w[(i + shift) % 4, i] = 1.0
    cfg = SAEConfig(architecture="standard", d_in=4, d_sae=8, hook_name="blocks.1.hook_resid_post",
                    layer=1)
    sae = StandardSAE(cfg, {"W_enc": w, "b_enc": torch.zeros(8), "W_dec": w.T.contiguous(),
                            "b_dec": torch.zeros(4)})
    return save_saelens(sae, folder, model_name="")


def test_the_shipped_pack_records_the_shipped_sae() -> None:
    expected = file_sha256(SHIPPED / "sae_weights.safetensors")
    sae = load_sae(SHIPPED)
    assert sae.identity == SAEIdentity(name="gemma-3-270m", hook="blocks.9.hook_resid_post",
                                       sha256=expected)
    pack = load_rule_pack((SHIPPED / "rules.yaml").read_text(), source="rules.yaml")
    assert pack.sae == sae.identity
    assert pack.rules and all(r.sae == sae.identity for r in pack.rules)


def test_the_identity_is_the_files_whatever_the_dtype_and_survives_to(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "blocks.1.hook_resid_post")
    fp32 = load_sae(folder)
    assert fp32.identity.sha256 == file_sha256(folder / "sae_weights.safetensors")
    assert load_sae(folder, dtype=torch.float16).identity == fp32.identity
    assert fp32.to(torch.float16).identity == fp32.identity
    # Named after the folder above the one named for the hook (no model name in the file).
    assert fp32.identity.name == tmp_path.name
    assert str(fp32.identity) == (f"{tmp_path.name}/blocks.1.hook_resid_post "
                                  f"(sha256 {fp32.identity.sha256})")


def test_an_sae_built_in_memory_hashes_like_its_saved_copy(tmp_path: Path) -> None:
    folder = tiny(tmp_path / "a")
    loaded = load_sae(folder)
    rebuilt = StandardSAE(loaded.cfg, loaded.state_dict())
    assert rebuilt.identity.same_sae(loaded.identity)


def test_other_weights_are_another_sae(tmp_path: Path) -> None:
    one, other = load_sae(tiny(tmp_path / "a")), load_sae(tiny(tmp_path / "b", shift=1))
    assert not one.identity.same_sae(other.identity)
    renamed = one.identity.model_copy(update={"name": "renamed", "hook": "x"})
    assert renamed.same_sae(one.identity)  # only the weights decide


@pytest.mark.parametrize("value", ["", "1CA60D8728BB5E6E", "1ca60d87", "1ca60d8728bb5e6e00"])
def test_a_bad_hash_says_what_is_expected(value: str) -> None:
    with pytest.raises(ValidationError, match="16 lowercase hex digits"):
        SAEIdentity(sha256=value)
