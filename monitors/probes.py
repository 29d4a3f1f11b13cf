"""Linear probes: a direction, a bias and a threshold per probe, scored in one matmul.

On disk a probe is ``<name>.safetensors`` (tensor ``direction [d_in]``, optional scalar
``bias``) beside ``<name>.json``::

    {"name": "deception", "bias": -0.3, "threshold": 0.5, "activation": "sigmoid",
     "description": "..."}

``activation`` is ``linear`` (score = x . direction + bias, the default) or ``sigmoid`` (a
probability). Rules use a probe like a feature: ``{probe: deception, threshold: 0.5}``; the
threshold in the file is the probe author's suggestion, rules carry their own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save_file
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError, ShapeError, UnknownFeatureError
from latentguard.monitors.sae.formats._io import read_json, read_safetensors

__all__ = ["Probe", "ProbeMeta", "ProbeSet"]

logger = logging.getLogger(__name__)

PROBE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class ProbeMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=PROBE_NAME)
    bias: float = 0.0
    threshold: float = 0.0
    """Suggested decision threshold on the score."""
    activation: Literal["linear", "sigmoid"] = "linear"
    description: str = ""
    layer: int | None = None
    """Decoder layer whose residual the probe reads, when the author recorded it."""


class Probe:
    def __init__(self, meta: ProbeMeta, direction: Tensor) -> None:
        if direction.ndim != 1 or not direction.is_floating_point():
            got = f"{direction.dtype} {list(direction.shape)}"
            raise ShapeError("direction", f"expected a 1-D float tensor, got {got}")
        self.meta = meta
        self.direction = direction.detach().float().contiguous()

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def d_in(self) -> int:
        return int(self.direction.shape[0])

    def save(self, folder: str | Path) -> Path:
        """Write ``<name>.safetensors`` and ``<name>.json`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        save_file({"direction": self.direction}, str(out / f"{self.name}.safetensors"))
        (out / f"{self.name}.json").write_text(self.meta.model_dump_json(indent=2), "utf-8")
        return out

    @classmethod
    def load(cls, json_path: Path) -> Probe:
        raw = read_json(json_path)
        raw.setdefault("name", json_path.stem)
        st_path = json_path.with_suffix(".safetensors")
        tensors = read_safetensors(st_path)
        if "direction" not in tensors:
            raise SAEFormatError(st_path, "missing key", key="direction")
        if "bias" in tensors:
            if tensors["bias"].numel() != 1:
                raise SAEFormatError(st_path, "expected a scalar", key="bias")
            raw.setdefault("bias", float(tensors["bias"].reshape(())))
        try:
            meta = ProbeMeta.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise SAEFormatError(json_path, str(err["msg"]), key=key) from None
        try:
            return cls(meta, tensors["direction"])
        except ShapeError as exc:
            raise SAEFormatError(st_path, exc.problem, key="direction") from None


class ProbeSet:
    """Probes scored together: ``score(rows)`` is one ``[n, d_in] @ [d_in, P]`` matmul."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise UnknownFeatureError(f"duplicate probe names in {names}")
        widths = {p.d_in for p in probes}
        if len(widths) > 1:
            raise ShapeError("direction", f"probes have different widths {sorted(widths)}")
        self.probes = list(probes)
        self.d_in = widths.pop() if widths else 0
        self._w = (torch.stack([p.direction for p in probes], dim=1) if probes
                   else torch.zeros(0, 0))
        self._b = torch.tensor([p.meta.bias for p in probes], dtype=torch.float32)
        self._sigmoid = torch.tensor([p.meta.activation == "sigmoid" for p in probes])

    @property
    def names(self) -> list[str]:
        """Probe names, in score-column order."""
        return [p.name for p in self.probes]

    def probe(self, name: str) -> Probe:
        for p in self.probes:
            if p.name == name:
                return p
        raise UnknownFeatureError(f"unknown probe {name!r} (loaded: {', '.join(self.names)})")

    @classmethod
    def load(cls, folder: str | Path, d_in: int | None = None) -> ProbeSet:
        """Every ``*.json`` + ``*.safetensors`` pair in ``folder`` (sorted by file name)."""
        path = Path(folder)
        if not path.is_dir():
            raise SAEFormatError(path, "probe folder not found")
        probes = [Probe.load(p) for p in sorted(path.glob("*.json"))]
        if d_in is not None:
            for p in probes:
                if p.d_in != d_in:
                    raise SAEFormatError(
                        path / f"{p.name}.safetensors",
                        f"direction has width {p.d_in}, the SAE reads {d_in}",
                        key="direction",
                    )
        logger.info("loaded %d probes from %s", len(probes), path)
        return cls(probes)

    @torch.inference_mode()
    def score(self, rows: Tensor) -> Tensor:
        """Scores ``[n, len(names)]`` (float32) of rows ``[n, d_in]``."""
        if rows.ndim != 2 or (self.probes and rows.shape[1] != self.d_in):
            raise ShapeError("rows", f"expected shape [n, {self.d_in}], got {list(rows.shape)}")
        if not self.probes:
            return torch.zeros(rows.shape[0], 0)
        out = torch.addmm(self._b, rows.float(), self._w)
        if bool(self._sigmoid.any()):
            out = torch.where(self._sigmoid, out.sigmoid(), out)
        return out
