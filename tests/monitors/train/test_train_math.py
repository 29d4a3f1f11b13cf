"""The training math on synthetic data: AuxK, decoder norms, export, metrics, state."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from latentguard.monitors.train import (
    ReconstructionStats,
    SAETrainer,
    TopKTrainee,
    TrainerConfig,
    auxk_loss,
    fraction_of_variance_unexplained,
    shuffled_batches,
)

D_IN, N_TRUE = 32, 128


def sparse_data(n: int, gen: torch.Generator, seed: int = 1) -> torch.Tensor:
    """Rows made of 2 of 128 fixed unit directions with positive weights, plus an offset."""
    dirs = torch.randn(N_TRUE, D_IN, generator=torch.Generator().manual_seed(seed))
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, N_TRUE)
    codes.scatter_(1, torch.randint(0, N_TRUE, (n, 2), generator=gen),
                   torch.rand(n, 2, generator=gen) * 4 + 1)
    return codes @ dirs


def make_trainer(steps: int, **kw: object) -> SAETrainer:
    cfg = TrainerConfig(**{"d_sae": 128, "k": 2, "batch_size": 256, "lr": 3e-3,
                           "dead_after_tokens": 1024, "lr_decay_fraction": 0.0, **kw})
    return SAETrainer(cfg, D_IN, steps)


def test_fvu_falls_and_l0_is_k() -> None:
    trainer, gen = make_trainer(150), torch.Generator().manual_seed(0)
    stats = [trainer.train_step(sparse_data(256, gen) * 40 + 5) for _ in range(150)]
    first = sum(s.fvu for s in stats[:10]) / 10
    last = sum(s.fvu for s in stats[-10:]) / 10
    assert last < 0.5 * first
    assert all(s.l0 <= 2 for s in stats) and stats[-1].l0 > 1.5
    # Rows were scaled by 40: the trainer rescales them to mean norm sqrt(d_in).
    assert trainer.scale == pytest.approx(1 / 40, rel=0.3)


def test_auxk_revives_features_that_never_win_the_topk() -> None:
    results = {}
    for alpha in (0.0, 1 / 32):
        trainer, gen = make_trainer(200, auxk_alpha=alpha), torch.Generator().manual_seed(0)
        with torch.no_grad():
            trainer.sae.W_enc[:, :64] *= 0.01  # half the features start out of the race
        for _ in range(200):
            last = trainer.train_step(sparse_data(256, gen))
        results[alpha] = last
    assert results[0.0].dead_fraction == 0.5
    assert results[1 / 32].dead_fraction < 0.35
    assert results[1 / 32].fvu < results[0.0].fvu - 0.05


def test_auxk_gradient_reaches_only_dead_features() -> None:
    sae = TopKTrainee(D_IN, 64, 4, seed=0)
    x = torch.randn(50, D_IN)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[40:] = True
    pre = sae.pre_acts(x)
    err = torch.randn(50, D_IN)
    loss = auxk_loss(sae, pre, err, dead, k_aux=8, total_variance=torch.tensor(10.0))
    loss.backward()
    grad_rows = sae.W_dec.grad.norm(dim=1)
    assert float(grad_rows[:40].abs().max()) == 0.0
    assert float(grad_rows[40:].max()) > 0
    # The formula: the top 8 dead pre-activations (ReLU) reconstruct the error, no b_dec.
    with torch.no_grad():
        masked = pre.masked_fill(~dead, float("-inf"))
        vals, idx = masked.topk(8, dim=1)
        dense = torch.zeros(50, 64).scatter(1, idx, vals.relu())
        want = (dense @ sae.W_dec - err).pow(2).sum() / 10.0
    torch.testing.assert_close(loss.detach(), want)
    # Fewer dead features than k_aux: the loss is scaled by num_dead / k_aux.
    few = torch.zeros(64, dtype=torch.bool)
    few[:2] = True
    half = auxk_loss(sae, pre, err, few, k_aux=4, total_variance=torch.tensor(10.0))
    full = auxk_loss(sae, pre, err, few, k_aux=2, total_variance=torch.tensor(10.0))
    torch.testing.assert_close(half, full / 2)
    assert float(auxk_loss(sae, pre, err, torch.zeros(64, dtype=torch.bool), 8,
                           torch.tensor(1.0))) == 0.0


def test_decoder_rows_stay_unit_norm_and_gradient_is_orthogonal() -> None:
    trainer, gen = make_trainer(5), torch.Generator().manual_seed(0)
    x = sparse_data(256, gen) * trainer.scale
    trainer.initialize(x)
    out = trainer.sae(x * trainer.scale)
    out.fvu.backward()
    trainer.sae.remove_parallel_gradient()
    parallel = (trainer.sae.W_dec.grad * trainer.sae.W_dec.detach()).sum(dim=1)
    assert float(parallel.abs().max()) < 1e-6
    for _ in range(5):
        trainer.train_step(sparse_data(256, gen))
    norms = trainer.sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_export_folds_the_input_scale() -> None:
    trainer, gen = make_trainer(20), torch.Generator().manual_seed(0)
    for _ in range(20):
        trainer.train_step(sparse_data(256, gen) * 40 + 5)
    sae = trainer.export(hook_name="blocks.3.hook_resid_post", layer=3, model_name="m")
    x = sparse_data(100, gen) * 40 + 5
    with torch.no_grad():
        acts, idx = trainer.sae.encode(x * trainer.scale)
        out = trainer.sae(x * trainer.scale)
    dense = torch.zeros(100, 128).scatter(1, idx, acts)
    torch.testing.assert_close(sae.encode(x), dense / trainer.scale, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae.decode(sae.encode(x)), out.recon / trainer.scale,
                               rtol=1e-4, atol=1e-3)
    assert (sae.cfg.k, sae.layer, sae.hook_name) == (2, 3, "blocks.3.hook_resid_post")


def test_state_round_trip_continues_identically() -> None:
    a, gen = make_trainer(30), torch.Generator().manual_seed(0)
    batches = [sparse_data(256, gen) for _ in range(12)]
    for x in batches[:6]:
        a.train_step(x)
    b = make_trainer(30, init_seed=7)
    b.load_state(a.state_tensors(), a.state_meta())
    for x in batches[6:]:
        sa, sb = a.train_step(x), b.train_step(x)
        assert sa == sb
    for (name, pa), pb in zip(a.sae.named_parameters(), b.sae.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    assert torch.equal(a.tokens_since_fired, b.tokens_since_fired)


def test_lr_schedule_warms_up_and_decays() -> None:
    t = SAETrainer(TrainerConfig(d_sae=16, k=2, lr=1.0, lr_warmup_steps=10,
                                 lr_decay_fraction=0.5), 4, 100)
    assert t.lr_at(0) == pytest.approx(0.1)
    assert t.lr_at(9) == pytest.approx(1.0)
    assert t.lr_at(50) == pytest.approx(1.0)
    assert t.lr_at(75) == pytest.approx(0.5)
    assert t.lr_at(99) == pytest.approx(0.02)


def test_metrics_accumulate_exactly_and_have_known_values() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=gen) * 3 + 1
    recon = x + torch.randn(300, 8, generator=gen) * 0.5
    acts = torch.zeros(300, 10)
    acts[:, 2] = 1.0
    acts[::2, 5] = 2.0
    whole = ReconstructionStats(8, 10)
    whole.update(x, recon, acts)
    parts = ReconstructionStats(8, 10)
    for xs, rs, as_ in zip(x.split(64), recon.split(64), acts.split(64), strict=True):
        parts.update(xs, rs, as_)
    assert whole.result() == pytest.approx(parts.result())
    res = whole.result()
    assert res.l0 == pytest.approx(1.5)
    assert res.dead_fraction == pytest.approx(0.8)
    assert res.tokens == 300
    assert fraction_of_variance_unexplained(x, x) == 0.0
    mean_recon = x.mean(0, keepdim=True).expand_as(x)
    assert fraction_of_variance_unexplained(x, mean_recon) == pytest.approx(1.0)
    assert res.fvu == pytest.approx(0.25 / 9, rel=0.2)


def test_shuffled_batches_cover_rows_once_and_resume_with_skip() -> None:
    rows = torch.arange(103.0).unsqueeze(1)
    full = list(shuffled_batches(rows, 10, seed=5))
    assert len(full) == 10
    seen = torch.cat(full).flatten()
    assert len(set(seen.tolist())) == 100
    assert not torch.equal(seen, torch.arange(100.0))
    resumed = list(shuffled_batches(rows, 10, seed=5, skip=4))
    assert all(torch.equal(a, b) for a, b in zip(full[4:], resumed, strict=True))


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="k: 40 is larger than d_sae"):
        TrainerConfig(d_sae=32, k=40)
    with pytest.raises(ValidationError, match="auxk_alpha"):
        TrainerConfig(auxk_alpha=-1)
    with pytest.raises(ValueError, match="total_steps"):
        SAETrainer(TrainerConfig(d_sae=16, k=2), 4, 0)
    assert TrainerConfig(d_sae=2**16).learning_rate() == pytest.approx(1e-4)


def _dense_reference(sae: TopKTrainee, x: torch.Tensor, dead: torch.Tensor | None,
                     k_aux: int) -> torch.Tensor:
    """The paper's loss written densely: every pre-activation in the graph."""
    pre = sae.pre_acts(x)
    values, indices = pre.topk(sae.k, dim=-1, sorted=False)
    recon = sae.decode(values.relu(), indices) + sae.b_dec
    err = x - recon
    total = (x - x.mean(0)).pow(2).sum()
    return err.pow(2).sum() / total + auxk_loss(sae, pre, err, dead, k_aux, total)


@pytest.mark.parametrize("n_dead", [0, 3, 40])
def test_sparse_encoder_backward_equals_the_dense_gradient(n_dead: int) -> None:
    """forward() gathers the selected pre-activations with a sparse backward; loss and every
    parameter's gradient must equal the dense formula's (with and without dead features,
    fewer dead than k_aux, and more)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(37, D_IN, generator=gen, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[64 - n_dead:] = True
    grads = []
    for use_forward in (True, False):
        sae = TopKTrainee(D_IN, 64, 5, seed=1).double()
        with torch.no_grad():
            sae.b_dec.normal_(generator=gen)
            sae.b_enc.normal_(generator=gen)
        if use_forward:
            out = sae(x, dead if n_dead else None, k_aux=8)
            loss = out.fvu + out.auxk_loss
        else:
            loss = _dense_reference(sae, x, dead if n_dead else None, 8)
        loss.backward()
        grads.append((float(loss.detach()), [p.grad.clone() for p in sae.parameters()]))
        gen = torch.Generator().manual_seed(3)
        torch.randn(37, D_IN, generator=gen, dtype=torch.float64)
    (loss_a, grads_a), (loss_b, grads_b) = grads
    assert loss_a == pytest.approx(loss_b, rel=1e-10)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
