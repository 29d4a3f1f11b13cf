"""Config fields the loaders do not implement are refused with the field named, never ignored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from latentguard.monitors.errors import SAEFormatError
from latentguard.monitors.sae import load_sae

PEERS = Path(__file__).parent / "peers"


def _edit(tmp_path: Path, fixture: str, edit: dict[str, Any], meta: dict[str, Any] | None = None,
          cfg_dir: str = "") -> Path:
    dst = shutil.copytree(PEERS / fixture, tmp_path / "sae")
    cfg_path = dst / cfg_dir / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(edit)
    if meta:
        cfg["metadata"].update(meta)
    cfg_path.write_text(json.dumps(cfg))
    return dst / cfg_dir


@pytest.mark.parametrize(
    ("fixture", "edit", "meta", "key"),
    [
        ("saelens_standard", {"reshape_activations": "hook_z"}, None, "reshape_activations"),
        ("saelens_standard", {"normalize_activations": "covariance_whitening"}, None,
         "normalize_activations"),
        ("saelens_standard", {"made_up_field": 1}, None, "made_up_field"),
        ("saelens_standard", {"k": 4}, None, "k"),
        ("saelens_jumprelu", {"rescale_acts_by_decoder_norm": True}, None,
         "rescale_acts_by_decoder_norm"),
        ("saelens_topk", {"rescale_acts_by_decoder_norm": "yes"}, None,
         "rescale_acts_by_decoder_norm"),
        ("saelens_topk", {"apply_b_dec_to_input": "no"}, None, "apply_b_dec_to_input"),
        ("saelens_standard", {}, {"hook_head_index": 3}, "metadata.hook_head_index"),
        ("saelens_standard", {}, {"new_thing": True}, "metadata.new_thing"),
    ],
)
def test_saelens_unimplemented_field_is_refused_by_name(
    tmp_path: Path, fixture: str, edit: dict[str, Any], meta: dict[str, Any] | None, key: str
) -> None:
    with pytest.raises(SAEFormatError) as info:
        load_sae(_edit(tmp_path, fixture, edit, meta))
    assert info.value.key == key and key in str(info.value)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        ({"skip_connection": True}, "skip_connection"),
        ({"activation": "groupmax"}, "activation"),
        ({"signed": True}, "signed"),
    ],
)
def test_sparsify_unimplemented_field_is_refused_by_name(
    tmp_path: Path, edit: dict[str, Any], key: str
) -> None:
    with pytest.raises(SAEFormatError) as info:
        load_sae(_edit(tmp_path, "sparsify_topk", edit, cfg_dir="layers.3"))
    assert info.value.key == key


def test_pre6_activation_fn_and_unknown_tensor_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    cfg = {"architecture": "standard", "d_in": 2, "d_sae": 3,
           "hook_point": "blocks.1.hook_resid_post", "activation_fn_str": "tanh-relu"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    arrays = {"W_enc": np.zeros((2, 3), np.float32), "b_enc": np.zeros(3, np.float32),
              "W_dec": np.zeros((3, 2), np.float32), "b_dec": np.zeros(2, np.float32)}
    save_file(arrays, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError) as info:
        load_sae(folder)
    assert info.value.key == "activation_fn_str"
    cfg["activation_fn_str"] = "relu"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    load_sae(folder)
    extra = {**arrays, "W_extra": np.zeros(3, np.float32)}
    save_file(extra, str(folder / "sae_weights.safetensors"))
    with pytest.raises(SAEFormatError) as info:
        load_sae(folder)
    assert info.value.key == "W_extra"


@pytest.mark.parametrize(
    ("edit", "key"),
    [({"use_glu_encoder": True}, "use_glu_encoder"), ({"made_up": 0}, "made_up")],
)
def test_llama_scope_unimplemented_field_is_refused_by_name(
    tmp_path: Path, edit: dict[str, Any], key: str
) -> None:
    folder = tmp_path / "ls"
    (folder / "checkpoints").mkdir(parents=True)
    hp = {"d_model": 2, "d_sae": 3, "hook_point_in": "blocks.1.hook_resid_post",
          "act_fn": "relu", **edit}
    (folder / "hyperparams.json").write_text(json.dumps(hp))
    st = {"W_E": np.zeros((2, 3), np.float32), "b_E": np.zeros(3, np.float32),
          "W_D": np.zeros((3, 2), np.float32), "b_D": np.zeros(2, np.float32)}
    save_file(st, str(folder / "checkpoints" / "final.safetensors"))
    with pytest.raises(SAEFormatError) as info:
        load_sae(folder)
    assert info.value.key == key
