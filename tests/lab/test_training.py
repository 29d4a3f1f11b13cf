"""`latentguard sae train` on the tiny model: metrics, SAELens output, checkpoint and resume."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from latentguard.cli.main import build_parser, main
from latentguard.lab import training
from latentguard.lab.activations import layer_rows
from latentguard.lab.tinymodel import build_tiny_model
from latentguard.monitors.sae import TopKSAE, load_sae
from latentguard.monitors.train import SAETrainer, StepStats

CORPUS = Path(json.__file__).parent  # the json package of the standard library: 5 documents
SETTINGS = [
    "--layer", "1", "--corpus", str(CORPUS), "--tokens", "4096", "--ctx-len", "32",
    "--model-batch", "4", "--buffer-contexts", "16", "--eval-every", "3", "--eval-tokens", "992",
    "--eval-lm-contexts", "4", "--checkpoint-every", "5", "--d-sae", "128", "--k", "8",
    "--batch-size", "128", "--lr", "3e-3", "--dead-after-tokens", "2000",
]  # 32 steps; a buffer holds 16 * 31 = 496 rows = 3 batches


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def config(model_dir: Path, out: Path, *extra: str) -> training.TrainRunConfig:
    args = build_parser().parse_args(
        ["sae", "train", "--model", str(model_dir), "--out", str(out), *SETTINGS, *extra])
    return training.config_from_args(args)


def spy_on_steps(mp: pytest.MonkeyPatch) -> list:
    """Records every training step's stats from now on."""
    seen: list = []
    real = SAETrainer.train_step

    def step(self: SAETrainer, x: torch.Tensor) -> StepStats:
        seen.append(real(self, x))
        return seen[-1]

    mp.setattr(SAETrainer, "train_step", step)
    return seen


@pytest.fixture(scope="module")
def cli_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list]:
    """One full run through the CLI: the output folder, what it printed, each step's stats."""
    out = tmp_path_factory.mktemp("run") / "sae"
    buf = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(buf):
        steps = spy_on_steps(mp)
        code = main(["sae", "train", "--model", str(model_dir), "--out", str(out), *SETTINGS])
    assert code == 0
    return out, buf.getvalue(), steps


def test_cli_prints_and_writes_sane_metrics(cli_run: tuple[Path, str, list]) -> None:
    out, printed, _ = cli_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert "FVU" in printed and "LM loss" in printed and f"{metrics['fvu']:.4f}" in printed
    assert 0 < metrics["fvu"] < 0.9
    assert 0 < metrics["l0"] <= 8
    assert 0 <= metrics["dead_fraction"] < 1 and 0 <= metrics["dead_fraction_train"] < 1
    assert metrics["eval_tokens"] == 992 and metrics["steps"] == 32
    assert metrics["train_tokens"] == 32 * 128
    for key in ("lm_loss_clean", "lm_loss_spliced", "lm_loss_zero_ablated"):
        assert 0 < metrics[key] < 20
    assert metrics["lm_loss_spliced"] != metrics["lm_loss_clean"]
    assert metrics["lm_loss_increase"] == pytest.approx(
        metrics["lm_loss_spliced"] - metrics["lm_loss_clean"])
    assert metrics["eval_lm_tokens"] == 4 * 31


def test_saved_folder_loads_back_and_encodes_with_the_same_numbers(
    cli_run: tuple[Path, str, list], model_dir: Path
) -> None:
    out, _, _ = cli_run
    sae = load_sae(out)
    assert isinstance(sae, TopKSAE)
    assert (sae.hook_name, sae.layer, sae.k, sae.d_in, sae.d_sae) == (
        "blocks.1.hook_resid_post", 1, 8, 64, 128)
    assert sae.cfg.model_name == "model"
    # The trainer state in the checkpoint exports to exactly the saved SAE.
    cfg = config(model_dir, out)
    trainer = SAETrainer(cfg.sae, 64, cfg.total_steps)
    training.load_checkpoint(out / training.CHECKPOINT_DIR, trainer)
    assert trainer.step == 32
    exported = trainer.export(hook_name=sae.hook_name, layer=1)
    model, _ = training.load_model(cfg)
    ids = torch.randint(2, 300, (3, 32))
    rows = layer_rows(model, 1, ids, 4)
    assert rows.shape == (3 * 31, 64)
    torch.testing.assert_close(sae.encode(rows), exported.encode(rows))
    # The rows are the residual stream after the decoder layer: HF's hidden_states[L + 1],
    # which for the last layer has the final norm applied already.
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        torch.testing.assert_close(layer_rows(model, 0, ids, 4),
                                   hidden[1][:, 1:].flatten(0, 1))
        torch.testing.assert_close(model.model.norm(rows), hidden[2][:, 1:].flatten(0, 1))
    # Evaluating the loaded SAE gives the recorded metrics.
    metrics = json.loads((out / "metrics.json").read_text())
    again = training.evaluate(model, sae, cfg.model_copy(update={"eval_lm_contexts": 0}),
                              _eval_contexts(cfg))
    assert again["fvu"] == pytest.approx(metrics["fvu"], rel=1e-5)
    assert again["l0"] == pytest.approx(metrics["l0"])


def _eval_contexts(cfg: training.TrainRunConfig) -> torch.Tensor:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model)
    _, held = training.split_documents(training.list_documents(cfg.corpus, cfg.suffixes), 3)
    docs = training._token_docs(held, tok)
    return torch.stack(list(training.pack_contexts(docs, 32, tok.bos_token_id,
                                                   tok.eos_token_id)))[:32]


def test_loss_falls_during_training(cli_run: tuple[Path, str, list]) -> None:
    steps = cli_run[2]
    assert len(steps) == 32
    first = sum(s.fvu for s in steps[:4]) / 4
    last = sum(s.fvu for s in steps[-4:]) / 4
    assert last < 0.8 * first
    assert all(s.l0 <= 8 for s in steps)


def test_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(
    model_dir: Path, tmp_path: Path, cli_run: tuple[Path, str, list],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = config(model_dir, tmp_path / "sae")
    spy_steps = spy_on_steps(monkeypatch)
    spying = SAETrainer.train_step

    def crash_at_12(self: SAETrainer, x: torch.Tensor) -> StepStats:
        if self.step == 12:
            raise KeyboardInterrupt
        return spying(self, x)

    monkeypatch.setattr(SAETrainer, "train_step", crash_at_12)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, progress=False)
    state = json.loads((cfg.out / "checkpoint" / "state.json").read_text())
    assert state["step"] == 10  # the last checkpoint (every 5 steps)
    assert not (cfg.out / "cfg.json").exists()
    with pytest.raises(training.TrainingError, match="--resume"):
        training.train(cfg, progress=False)

    monkeypatch.setattr(SAETrainer, "train_step", spying)
    spy_steps.clear()
    metrics = training.train(cfg, resume=True, progress=False)
    assert len(spy_steps) == 32 - 10 and metrics["steps"] == 32
    resumed, uninterrupted = load_sae(cfg.out), load_sae(cli_run[0])
    for name, tensor in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, msg=name)
    assert metrics["fvu"] == pytest.approx(json.loads((cli_run[0] / "metrics.json")
                                                      .read_text())["fvu"])


def test_resume_with_other_settings_names_the_field(
    model_dir: Path, cli_run: tuple[Path, str, list]
) -> None:
    cfg = config(model_dir, cli_run[0], "--k", "4")
    with pytest.raises(training.TrainingError, match=r"^sae\.k: .* 8, not 4"):
        training.train(cfg, resume=True, progress=False)


def test_cli_errors_name_the_field(model_dir: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sae", "train", "--model", str(model_dir), "--out", str(tmp_path / "x"), *SETTINGS]
    assert main([*base, "--buffer-contexts", "6"]) == 1
    assert "buffer_contexts: 6 is not a multiple of model_batch (4)" in capsys.readouterr().err
    assert main([*base, "--k", "500"]) == 1
    assert "k: 500 is larger than d_sae (128)" in capsys.readouterr().err
    assert main([*base, "--layer", "2"]) == 1
    assert "layer: 2 is out of range" in capsys.readouterr().err
    assert main([*base, "--corpus", str(tmp_path / "missing")]) == 1
    assert "corpus:" in capsys.readouterr().err
    assert main([*base, "--resume"]) == 1
    assert "out: " in (err := capsys.readouterr().err) and "no checkpoint" in err


def test_sae_eval_per_source_reproduces_the_runs_own_held_out_metrics(
        cli_run: tuple[Path, str, list], model_dir: Path, tmp_path: Path) -> None:
    """`sae eval --corpus` measures the documents the run held out, per top folder: for a
    corpus with no folders that is the run's own evaluation set, so the numbers must agree."""
    out, _, _ = cli_run
    report = tmp_path / "eval.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["sae", "eval", str(out), "--model", str(model_dir), "--corpus",
                     str(CORPUS), "--eval-every", "3", "--suffixes", ".py", "--ctx-len", "32",
                     "--eval-tokens", "992", "--eval-lm-contexts", "4", "--out", str(report)])
    assert code == 0
    got = json.loads(report.read_text())
    (name,) = got
    assert name.startswith(". (held out of")
    run = json.loads((out / "metrics.json").read_text())
    for key in ("fvu", "l0", "lm_loss_clean", "lm_loss_spliced", "lm_loss_recovered"):
        assert got[name][key] == pytest.approx(run[key], rel=1e-5), key
    assert "FVU" in buf.getvalue() and "recovered" in buf.getvalue()


def test_sae_eval_without_anything_to_measure_says_so(cli_run: tuple[Path, str, list],
                                                      model_dir: Path) -> None:
    out, _, _ = cli_run
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(["sae", "eval", str(out), "--model", str(model_dir)])
    assert code != 0 and "give --corpus and/or --source" in err.getvalue()
