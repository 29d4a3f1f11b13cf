"""The `latentguard::tap` op: it runs inside torch.compile'd graphs, edits in place, and the
plugin refuses CUDA graph settings under which it would not run."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from vllm.config import CUDAGraphMode

from latentguard.plugin import _tap


class Layer(torch.nn.Module):
    """The shape of a vLLM decoder layer: (positions, hidden, residual) -> (hidden, residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor,
                residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else hidden + residual
        return self.proj(hidden), residual


class Model(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([Layer(), Layer()])

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        hidden, residual = x, None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return hidden + residual


@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_the_tap_runs_and_edits_inside_a_compiled_graph(backend: str) -> None:
    torch.manual_seed(0)
    model = Model().eval()
    x, positions = torch.randn(3, 4), torch.arange(3)
    with torch.no_grad():
        plain = model(positions, x)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sink(hidden: torch.Tensor, residual: Any, pos: torch.Tensor) -> None:
        seen.append(((hidden + residual).clone(), pos.clone()))
        hidden[1] += 100.0  # steer row 1 only

    saved = _tap.sink
    _tap.wrap_layer(model.layers[0], sink)
    try:
        compiled = torch.compile(model, backend=backend, fullgraph=True, dynamic=True)
        with torch.no_grad():
            outs = [compiled(positions, x), compiled(positions[:2], x[:2])]
    finally:
        _tap.sink = saved
    assert len(seen) == 2, "the op did not run at every call of the compiled graph"
    with torch.no_grad():
        h, r = model.layers[0].proj(x), x
    torch.testing.assert_close(seen[0][0], h + r)
    assert seen[1][1].tolist() == [0, 1]
    # Rows 0 and 2 untouched; row 1 changed downstream of the edit.
    torch.testing.assert_close(outs[0][[0, 2]], plain[[0, 2]])
    assert (outs[0][1] - plain[1]).abs().max() > 1.0


def config(mode: CUDAGraphMode, ops: list[str] | None, eager: bool = False) -> Any:
    return SimpleNamespace(
        compilation_config=SimpleNamespace(cudagraph_mode=mode, splitting_ops=ops),
        model_config=SimpleNamespace(enforce_eager=eager), additional_config={})


def test_cuda_graphs_without_the_tap_as_a_splitting_op_are_refused() -> None:
    attention = ["vllm::unified_attention_with_output"]
    for mode, ops in ((CUDAGraphMode.FULL_AND_PIECEWISE, attention),
                      (CUDAGraphMode.PIECEWISE, attention),
                      (CUDAGraphMode.FULL, [*attention, _tap.OP_NAME])):
        with pytest.raises(RuntimeError, match="--compilation-config") as err:
            _tap.check_compilation(config(mode, ops))
        assert '"cudagraph_mode": "PIECEWISE"' in str(err.value)
        assert _tap.OP_NAME in str(err.value)
    for ok in (config(CUDAGraphMode.PIECEWISE, [*attention, _tap.OP_NAME]),
               config(CUDAGraphMode.NONE, []),
               config(CUDAGraphMode.FULL_AND_PIECEWISE, attention, eager=True)):
        _tap.check_compilation(ok)


def test_the_suggested_config_keeps_vllms_splitting_ops_and_adds_the_tap() -> None:
    from vllm.config import CompilationConfig

    cfg = _tap.compilation_config()
    assert cfg["cudagraph_mode"] == "PIECEWISE"
    assert cfg["splitting_ops"][:-1] == CompilationConfig._attention_ops
    assert cfg["splitting_ops"][-1] == _tap.OP_NAME
    # A user's own list is kept, and the tap added once.
    assert _tap.compilation_config(["a", _tap.OP_NAME])["splitting_ops"] == ["a", _tap.OP_NAME]
    # vLLM accepts it.
    parsed = CompilationConfig(**cfg)
    assert _tap.OP_NAME in parsed.splitting_ops


def test_the_compile_cache_key_names_the_tapped_layer() -> None:
    cfg = config(CUDAGraphMode.NONE, [])
    _tap.key_compile_cache(cfg, 9)
    assert cfg.additional_config["latentguard_tap"] == {"op": _tap.OP_NAME, "layer": 9}
    cfg.additional_config = SimpleNamespace()
    with pytest.raises(RuntimeError, match="additional_config"):
        _tap.key_compile_cache(cfg, 9)
