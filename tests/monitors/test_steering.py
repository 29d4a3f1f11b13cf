import numpy as np
import pytest
import torch

from latentguard.monitors.errors import ShapeError, UnknownFeatureError
from latentguard.monitors.rules import Steer
from latentguard.monitors.sae import SAEConfig, architecture_class
from latentguard.monitors.steering import apply_steer, steer_delta

D_IN, D_SAE = 32, 16


def tied_sae(arch="standard", k=None, threshold=None, seed=0):
    """Orthonormal decoder rows, tied encoder (W_enc = W_dec.T): clamping reads back exactly."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=g))
    w_dec = q[:D_SAE].contiguous()
    t = {"W_enc": w_dec.T.contiguous(), "W_dec": w_dec, "b_enc": torch.zeros(D_SAE),
         "b_dec": torch.randn(D_IN, generator=g) * 0.1}
    if threshold is not None:
        t["threshold"] = torch.full((D_SAE,), threshold)
    cfg = SAEConfig(architecture=arch, d_in=D_IN, d_sae=D_SAE, hook_name="layers.0", layer=0,
                    k=k)
    return architecture_class(arch)(cfg, t)


def rows(sae, n=6, seed=1):
    """Rows where features 2, 5 and 9 are clearly active."""
    g = torch.Generator().manual_seed(seed)
    f = torch.rand(n, D_SAE, generator=g) * 0.2
    f[:, [2, 5, 9]] = torch.rand(n, 3, generator=g) * 2 + 1
    return sae.decode(f) + torch.randn(n, D_IN, generator=g) * 0.01


def steer(mode, feats, **kw):
    return Steer.model_validate(
        {"mode": mode, "features": [{"feature": f, "value": v} for f, v in feats], **kw})


def test_add_moves_along_decoder_rows():
    sae = tied_sae()
    h = rows(sae)
    out = apply_steer(h, sae, steer("add", [(2, 3.0), (7, -1.5)]))
    want = h + 3.0 * sae.W_dec[2] - 1.5 * sae.W_dec[7]
    torch.testing.assert_close(out, want)


def test_clamp_reads_back_the_target_for_tied_relu_sae_several_features():
    sae = tied_sae()
    h = rows(sae)
    out = apply_steer(h, sae, steer("clamp", [(2, 4.0), (5, 0.5), (9, 7.25)]))
    f = sae.encode(out)
    torch.testing.assert_close(f[:, [2, 5, 9]], torch.tensor([4.0, 0.5, 7.25]).expand(6, 3),
                               atol=1e-4, rtol=1e-4)
    # the other features did not move (orthogonal decoder rows)
    others = [i for i in range(D_SAE) if i not in (2, 5, 9)]
    torch.testing.assert_close(f[:, others], sae.encode(h)[:, others], atol=1e-4, rtol=1e-4)


def test_clamp_keeps_the_sae_error_term():
    sae = tied_sae()
    h = rows(sae)
    s = steer("clamp", [(2, 4.0)])
    out = apply_steer(h, sae, s)
    f = sae.encode(h)
    f_target = f.clone()
    f_target[:, 2] = 4.0
    error_before = h - sae.decode(f)
    error_after = out - sae.decode(f_target)
    torch.testing.assert_close(error_after, error_before, atol=1e-5, rtol=1e-5)


def test_ablate_zeroes_the_feature():
    sae = tied_sae()
    h = rows(sae)
    out = apply_steer(h, sae, steer("ablate", [(5, 123.0)]))
    assert sae.encode(out)[:, 5].abs().max() < 1e-5


def test_given_current_activations_are_used():
    sae = tied_sae()
    h = rows(sae)
    cur = sae.encode(h)[:, [2]]
    s = steer("clamp", [(2, 1.0)])
    torch.testing.assert_close(steer_delta(h, sae, s, cur), steer_delta(h, sae, s))
    with pytest.raises(ShapeError):
        steer_delta(h, sae, s, cur[:, :0])


def test_preserve_norm():
    sae = tied_sae()
    h = rows(sae)
    out = apply_steer(h, sae, steer("add", [(2, 10.0)], preserve_norm=True))
    torch.testing.assert_close(out.norm(dim=-1), h.norm(dim=-1))
    assert not torch.allclose(out, h)


def test_bf16_rows_come_back_bf16_and_input_is_untouched():
    sae = tied_sae()
    h = rows(sae).to(torch.bfloat16)
    before = h.clone()
    out = apply_steer(h, sae, steer("add", [(2, 1.0)]))
    assert out.dtype == torch.bfloat16
    assert torch.equal(h, before)


def test_unknown_feature():
    sae = tied_sae()
    with pytest.raises(UnknownFeatureError):
        apply_steer(rows(sae), sae, steer("add", [(D_SAE, 1.0)]))


# ---------------------------------------------------------------- where read-back fails
def test_topk_clamp_to_small_value_leaves_the_top_k():
    sae = tied_sae("topk", k=3)
    h = rows(sae)  # features 2, 5, 9 (>= 1) are the top 3
    big = sae.encode(apply_steer(h, sae, steer("clamp", [(2, 5.0)])))
    torch.testing.assert_close(big[:, 2], torch.full((6,), 5.0), atol=1e-4, rtol=1e-4)
    small = sae.encode(apply_steer(h, sae, steer("clamp", [(2, 0.01)])))
    # 0.01 is below other features' values: feature 2 drops out of the top 3, reads back 0
    assert torch.all(small[:, 2] == 0)


def test_jumprelu_clamp_below_threshold_reads_back_zero():
    sae = tied_sae("jumprelu", threshold=0.5)
    h = rows(sae)
    above = sae.encode(apply_steer(h, sae, steer("clamp", [(5, 0.8)])))
    torch.testing.assert_close(above[:, 5], torch.full((6,), 0.8), atol=1e-4, rtol=1e-4)
    below = sae.encode(apply_steer(h, sae, steer("clamp", [(5, 0.3)])))
    assert torch.all(below[:, 5] == 0)


def test_relu_clamp_of_inactive_feature_to_zero_is_exact_but_negative_target_is_not():
    sae = tied_sae()
    h = rows(sae)
    out = sae.encode(apply_steer(h, sae, steer("clamp", [(2, -1.0)])))
    assert torch.all(out[:, 2] == 0)  # ReLU cannot represent -1


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_runtime_normalised_sae_steers_in_row_scale(norm):
    base = tied_sae()
    cfg = base.cfg.model_copy(update={"normalize_activations": norm})
    sae = type(base)(cfg, base.state_dict())
    h = rows(base) * 5
    delta = steer_delta(h, sae, steer("add", [(2, 1.0)]))
    scale = sae.output_scale(h)
    torch.testing.assert_close(delta, scale * base.W_dec[2])
    assert not np.allclose(scale.numpy(), 1.0)
