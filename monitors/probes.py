"""Linear probes: a direction, a bias and a threshold per probe, scored in one matmul.

On disk a probe is ``<name>.safetensors`` (tensor ``direction [d_in]``, optional scalar
``bias``) beside ``<name>.json``::

    {"name": "deception", "bias": -0.3, "threshold": 0.5, "activation": "sigmoid",
     "description": "..."}

``activation`` is ``linear`` (score = x . direction + bias, the default) or ``sigmoid`` (a
probability). Rules use a probe like a feature: ``{probe: deception, threshold: 0.5}``; the
threshold in the file is the probe author's suggestion, rules carry their own.

``input`` says what the direction reads: ``residual`` (the default) the residual rows the SAE
reads (width ``d_in``), ``features`` the SAE's feature activations (width ``d_sae``). A features
probe is a weighted sum of SAE features, an SAE rule whose every weight names a feature of the
catalog; only its nonzero weights are read, so the caller passes the activations of those
features only (``ProbeSet.feature_support``), gathered in the same encode as the rules' features.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save_file
from torch import Tensor

from latentguard.monitors.errors import SAEFormatError, ShapeError, UnknownFeatureError
from latentguard.monitors.sae.formats._io import read_json, read_safetensors

if TYPE_CHECKING:
    from latentguard.monitors.rules import RuleHit

__all__ = ["Probe", "ProbeMeta", "ProbeSet", "nonzero_weights"]

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
    input: Literal["residual", "features"] = "residual"
    """``residual``: the direction reads residual rows (``d_in``); ``features``: it reads the
    SAE's feature activations (``d_sae``)."""


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
        """Width of what the direction reads (``d_in`` or, for a features probe, ``d_sae``)."""
        return int(self.direction.shape[0])

    @property
    def reads_features(self) -> bool:
        return self.meta.input == "features"

    def weights(self) -> list[tuple[int, float]]:
        """A features probe's nonzero weights ``(feature, weight)``, largest magnitude first."""
        return nonzero_weights(self.direction)

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
    """Probes scored together: residual probes in one ``[n, d_in] @ [d_in, P]`` matmul, features
    probes in one ``[n, S] @ [S, P]`` matmul over the ``S`` features they weigh."""

    def __init__(self, probes: Sequence[Probe]) -> None:
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise UnknownFeatureError(f"duplicate probe names in {names}")
        self.probes = list(probes)
        residual = [i for i, p in enumerate(self.probes) if not p.reads_features]
        features = [i for i, p in enumerate(self.probes) if p.reads_features]
        self.d_in = _width([self.probes[i] for i in residual], "residual")
        self.d_sae = _width([self.probes[i] for i in features], "features")
        self._residual_cols = torch.tensor(residual, dtype=torch.int64)
        self._feature_cols = torch.tensor(features, dtype=torch.int64)
        self._w = (torch.stack([self.probes[i].direction for i in residual], dim=1) if residual
                   else torch.zeros(self.d_in, 0))
        if features:
            dirs = torch.stack([self.probes[i].direction for i in features], dim=1)
            support = dirs.abs().sum(1).nonzero().flatten()
            self._w_features = dirs.index_select(0, support).contiguous()
        else:
            support, self._w_features = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 0)
        self.feature_support: Tensor = support
        """Ascending SAE features the features probes weigh: the columns ``score`` expects in
        ``feature_values``."""
        self._b = torch.tensor([p.meta.bias for p in self.probes], dtype=torch.float32)
        self._sigmoid = torch.tensor([p.meta.activation == "sigmoid" for p in self.probes])

    @property
    def names(self) -> list[str]:
        """Probe names, in score-column order."""
        return [p.name for p in self.probes]

    def probe(self, name: str) -> Probe:
        for p in self.probes:
            if p.name == name:
                return p
        raise UnknownFeatureError(f"unknown probe {name!r} (loaded: {', '.join(self.names)})")

    @property
    def reads_features(self) -> bool:
        """Whether some probe weighs SAE features (``score`` then needs ``feature_values``)."""
        return bool(self._feature_cols.numel())

    def contributions(self, name: str, feature_values: Tensor, top: int = 5
                      ) -> list[tuple[int, float]]:
        """A features probe's largest terms ``(feature, weight * activation)`` on one token
        (``feature_values``: ``[len(feature_support)]``), largest magnitude first, zeros left
        out: what made its score (besides the bias)."""
        column = self.names.index(name) if name in self.names else -1
        where = (self._feature_cols == column).nonzero().flatten()
        if not where.numel():
            raise UnknownFeatureError(f"{name!r} is not a features probe of this set")
        terms = feature_values.float() * self._w_features[:, int(where[0])]
        order = terms.abs().argsort(descending=True)[:top]
        return [(int(self.feature_support[i]), float(terms[i])) for i in order if terms[i] != 0]

    def explain(self, hit: RuleHit, feature_values: Tensor,
                labels: Mapping[int, str] | None = None) -> RuleHit:
        """The hit with the features behind each features probe of its evidence appended to
        its explanation (``feature_values``: ``[len(feature_support)]`` on the hit's token):
        reviewers see which SAE features, with catalog labels, made the score."""
        labels = labels or {}
        parts = []
        for e in hit.evidence:
            name = e.signal.removeprefix("probe ")
            if not e.signal.startswith("probe ") or not self.probe(name).reads_features:
                continue
            terms = ", ".join(f"{f}{f' {labels[f]!r}' if f in labels else ''} {v:+.3g}"
                              for f, v in self.contributions(name, feature_values))
            parts.append(f"probe {name} from features {terms or 'none active'}")
        if not parts:
            return hit
        return hit.model_copy(update={"explanation": f"{hit.explanation} ({'; '.join(parts)})"})

    @classmethod
    def load(cls, folder: str | Path, d_in: int | None = None,
             d_sae: int | None = None) -> ProbeSet:
        """Every ``*.json`` + ``*.safetensors`` pair in ``folder`` (sorted by file name).

        ``d_in`` / ``d_sae`` (the SAE's widths) check residual / features probes' directions.
        """
        path = Path(folder)
        if not path.is_dir():
            raise SAEFormatError(path, "probe folder not found")
        probes = [Probe.load(p) for p in sorted(path.glob("*.json"))]
        for p in probes:
            want, what = (d_sae, "the SAE has {} features") if p.reads_features else (
                d_in, "the SAE reads {}")
            if want is not None and p.d_in != want:
                raise SAEFormatError(
                    path / f"{p.name}.safetensors",
                    f"direction has width {p.d_in}, {what.format(want)} (input {p.meta.input})",
                    key="direction",
                )
        logger.info("loaded %d probes from %s", len(probes), path)
        return cls(probes)

    @torch.inference_mode()
    def score(self, rows: Tensor, feature_values: Tensor | None = None) -> Tensor:
        """Scores ``[n, len(names)]`` (float32) of rows ``[n, d_in]``.

        ``feature_values`` ``[n, len(feature_support)]``: the activations of the features the
        features probes weigh; required when there are any.
        """
        n_res = int(self._residual_cols.numel())
        if rows.ndim != 2 or (n_res and rows.shape[1] != self.d_in):
            raise ShapeError("rows", f"expected shape [n, {self.d_in}], got {list(rows.shape)}")
        n = rows.shape[0]
        if not self.probes:
            return torch.zeros(n, 0)
        if n_res == len(self.probes):
            out = torch.addmm(self._b, rows.float(), self._w)
        else:
            support = int(self.feature_support.numel())
            if feature_values is None:
                raise ShapeError("feature_values", "required: a probe reads SAE features")
            if feature_values.shape != (n, support):
                raise ShapeError("feature_values", f"expected shape [{n}, {support}], got "
                                 f"{list(feature_values.shape)}")
            out = self._b.repeat(n, 1)
            out[:, self._feature_cols] += feature_values.float() @ self._w_features
            if n_res:
                out[:, self._residual_cols] += rows.float() @ self._w
        if bool(self._sigmoid.any()):
            out = torch.where(self._sigmoid, out.sigmoid(), out)
        return out


def nonzero_weights(direction: Tensor) -> list[tuple[int, float]]:
    """The nonzero entries ``(index, weight)`` of a direction, largest magnitude first."""
    idx = direction.nonzero().flatten()
    vals = direction[idx]
    return [(int(idx[i]), float(vals[i])) for i in vals.abs().argsort(descending=True)]


def _width(probes: Sequence[Probe], what: str) -> int:
    widths = {p.d_in for p in probes}
    if len(widths) > 1:
        raise ShapeError("direction", f"{what} probes have different widths {sorted(widths)}")
    return widths.pop() if widths else 0
