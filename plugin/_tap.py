"""The capture point as a custom op, `latentguard::tap`, so that it survives compilation.

A Python forward hook runs only in eager mode: when vLLM compiles the model, dynamo traces
`forward()` without the hooks, and CUDA graphs replay kernels without running Python at all.
An op registered with torch's dispatcher is opaque to the compiler instead: the compiled graph
calls it at every step with the step's real tensors, and it may edit `hidden` in place
(declared in its schema, so the compiler orders it like any other write). Decoder layer L's
forward is wrapped to call it on the layer's output, in eager and compiled mode alike.

Under piecewise CUDA graphs the op must also be a splitting op, so that the graphs break around
it as they do around attention; full CUDA graphs cannot run it (`check_compilation` refuses
them with the flags that fix it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
from torch.library import Library

#: The op's name as vLLM's `splitting_ops` spell it.
OP_NAME = "latentguard::tap"

#: Called by the op with (hidden, residual, positions); set by `wrap_layer`.
sink: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], None] | None = None

_lib: Library | None = None


def _tap(hidden: torch.Tensor, residual: torch.Tensor | None, positions: torch.Tensor) -> None:
    if sink is not None:
        sink(hidden, residual, positions)


def _tap_fake(hidden: torch.Tensor, residual: torch.Tensor | None,
              positions: torch.Tensor) -> None:
    return None


def register_op() -> None:
    """Defines `torch.ops.latentguard.tap` once per process (for the platform's device)."""
    global _lib
    if _lib is not None:
        return
    from vllm.utils.torch_utils import direct_register_custom_op

    _lib = Library("latentguard", "FRAGMENT")
    direct_register_custom_op("tap", _tap, mutates_args=["hidden"], fake_impl=_tap_fake,
                              target_lib=_lib)


def wrap_layer(layer: torch.nn.Module,
               to: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], None]) -> None:
    """Makes `layer` call the tap on its output (vLLM layers return (hidden, residual)), and
    the tap call `to` (one per process: the op is global)."""
    global sink
    register_op()
    sink = to
    inner = layer.forward
    tap = torch.ops.latentguard.tap

    def forward(positions: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = inner(positions, *args, **kwargs)
        hidden, residual = out if isinstance(out, tuple) else (out, None)
        tap(hidden, residual, positions)
        return out

    layer.forward = forward


def compilation_config(splitting_ops: list[str] | None = None) -> dict[str, Any]:
    """vLLM's `--compilation-config` for monitored compiled serving on GPUs: piecewise CUDA
    graphs that break at the tap as well as at attention."""
    from vllm.config import CompilationConfig

    ops = list(splitting_ops if splitting_ops is not None
               else CompilationConfig._attention_ops)  # vLLM's own default list
    return {"cudagraph_mode": "PIECEWISE",
            "splitting_ops": ops if OP_NAME in ops else [*ops, OP_NAME]}


def key_compile_cache(vllm_config: Any, layer: int) -> None:
    """Keeps vLLM's compile cache of monitored models apart from plain ones.

    The cache key covers the config but not the files dynamo traces (vLLM checks those only
    after loading): without this, a monitored run would load a graph compiled without the tap
    and silently monitor nothing, and a plain run one that calls an op it never registered.
    The key does cover `additional_config`, so the tap's layer goes there. Called before the
    first forward, which is when vLLM compiles.
    """
    extra = vllm_config.additional_config
    if not isinstance(extra, dict):
        raise RuntimeError(f"latentguard: cannot key the compile cache: vLLM's "
                           f"additional_config is a {type(extra).__name__}, not a dict")
    extra["latentguard_tap"] = {"op": OP_NAME, "layer": layer}


def check_compilation(vllm_config: Any) -> None:
    """Refuses a compilation setting under which the tap would not run at every step."""
    from vllm.config import CUDAGraphMode

    cc = vllm_config.compilation_config
    mode = cc.cudagraph_mode
    if mode is None or mode == CUDAGraphMode.NONE or vllm_config.model_config.enforce_eager:
        return
    ops = list(cc.splitting_ops or [])
    if mode.has_full_cudagraphs() or OP_NAME not in ops:
        raise RuntimeError(
            f"latentguard: CUDA graph mode {mode.name} with splitting ops {ops} would replay "
            f"the model without the monitor's tap; start vLLM with --compilation-config "
            f"'{json.dumps(compilation_config(ops or None))}' (the `latentguard vllm "
            f"--compiled` launcher does), or --enforce-eager")
