"""The results committed under bench/results/ are exactly what the results dataclasses write:
the README tables and readers depend on their keys and nesting, so a change to a dataclass that
would change a file fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import deception_eval as de
from bench import deception_loso as dl
from bench import serve_bench as sb
from bench import steering_eval as se
from bench import store_cluster as sc
from bench import unsafe_code_eval as uce
from bench.common import read_results, write_results

RESULTS = Path(__file__).parents[2] / "bench" / "results"


@pytest.mark.parametrize(("name", "cls"), [
    ("unsafe-code-gemma-3-270m-l9/metrics.json", uce.UnsafeCodeResults),
    ("unsafe-code-thirdparty-gemma-3-270m-l9/metrics.json", uce.UnsafeCodeResults),
    ("deception-gemma-3-270m-l9/metrics.json", de.DeceptionResults),
    ("deception-loso-gemma-3-270m-l9/metrics.json", dl.LosoResults),
    ("steering-gemma-3-270m-l9/metrics.json", se.SteeringResults),
    ("serve-cpu.json", sb.ServeResults),
    ("serve-cpu-compiled.json", sb.ServeResults),
    ("store-cluster.json", sc.Results),
])
def test_committed_results_read_back_and_write_the_same_bytes(name: str, cls: type,
                                                              tmp_path: Path) -> None:
    path = RESULTS / name
    results = read_results(path, cls)
    out = tmp_path / "again.json"
    write_results(out, results)
    assert out.read_text() == path.read_text()


def test_results_with_other_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text('{"feature": 1, "train_auroc": 0.5, "heldout_auroc": 0.5, "extra": 1}')
    with pytest.raises(ValueError, match=r"TopFeature has fields .*'extra'"):
        read_results(path, uce.TopFeature)
    with pytest.raises(TypeError, match="dataclass instance"):
        write_results(path, {"not": "a dataclass"})
