"""Assemble an SAE folder's default rule pack from evaluation results.

    .venv/bin/python -m bench.ship_pack --sae saes/gemma-3-270m/blocks.9.hook_resid_post \\
        bench/results/unsafe-code-gemma-3-270m-l9 bench/results/deception-gemma-3-270m-l9

Each results folder (from ``bench.unsafe_code_eval`` or ``bench.deception_eval``) brings its
``rules.yaml`` rules, its ``probes/`` and its ``features.json`` catalog entries. The SAE folder
gets ``rules.yaml`` (those rules, in order, plus a ``default`` policy with every rule in async
mode and a ``strict`` one in sync mode that fails closed), ``probes/`` and ``features.json``
(entries merged by feature index). The sidecar loads all three with the SAE.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from latentguard.monitors.catalog import FeatureCatalog
from latentguard.monitors.probes import ProbeSet
from latentguard.monitors.rules import dump_rule_pack, load_rule_pack
from latentguard.monitors.sae import load_sae

POLICIES = [
    {"name": "default", "description": "every rule; verdicts never hold up a step",
     "rules": ["*"], "mode": "async", "on_failure": "open"},
    {"name": "strict", "description": "every rule; no token after a block, and blocked when "
     "the sidecar is unreachable", "rules": ["*"], "mode": "sync", "on_failure": "closed",
     "timeout_ms": 500},
]


def merge_catalog(entries: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
    by_index = {e["index"]: e for e in entries}
    for e in new:
        old = by_index.get(e["index"])
        if old is None:
            entries.append(by_index.setdefault(e["index"], dict(e)))
            continue
        old["label"] = "; ".join(x for x in (old.get("label"), e.get("label")) if x)
        old["tags"] = sorted(set(old.get("tags", [])) | set(e.get("tags", [])))
        old["description"] = "\n".join(x for x in (old.get("description"),
                                                   e.get("description")) if x)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sae", type=Path, required=True, help="SAE folder to write into")
    p.add_argument("results", type=Path, nargs="+", help="evaluation results folders")
    p.add_argument("--disable", action="append", default=[], metavar="RULE=WHY",
                   help="ship RULE disabled, WHY (the measurement) appended to its description")
    args = p.parse_args(argv)
    disabled = dict(d.split("=", 1) for d in args.disable)
    sae = load_sae(args.sae)
    rules: list[dict[str, Any]] = []
    catalog: list[dict[str, Any]] = []
    probes = args.sae / "probes"
    if probes.exists():
        shutil.rmtree(probes)
    probes.mkdir()
    header = [f"# Default rule pack of this SAE, assembled by bench/ship_pack.py from "
              f"{', '.join(str(r) for r in args.results)};", "# the numbers in each description"
              " come from those folders' metrics.json. Feature indices are this SAE's."]
    for folder in args.results:
        rules += yaml.safe_load((folder / "rules.yaml").read_text("utf-8"))["rules"]
        for f in sorted((folder / "probes").glob("*")):
            shutil.copy2(f, probes / f.name)
        if (folder / "features.json").is_file():
            merge_catalog(catalog, json.loads((folder / "features.json").read_text())["features"])
    unknown = set(disabled) - {r["name"] for r in rules}
    if unknown:
        raise SystemExit(f"--disable: no rule named {', '.join(sorted(unknown))}")
    for r in rules:
        if r["name"] in disabled:
            r["enabled"] = False
            r["description"] = f"{r['description']} DISABLED: {disabled[r['name']]}"
    # The pack records the SAE it was written for: a sidecar that loads another does not apply it.
    text = "\n".join(header) + "\n" + dump_rule_pack(
        {"sae": sae.identity.model_dump(), "rules": rules, "policies": POLICIES})
    load_rule_pack(text, source="rules.yaml")
    probe_set = ProbeSet.load(probes, d_in=sae.d_in, d_sae=sae.d_sae)
    (args.sae / "rules.yaml").write_text(text, "utf-8")
    out = args.sae / "features.json"
    out.write_text(json.dumps({"features": sorted(catalog, key=lambda e: e["index"])},
                              indent=2) + "\n", "utf-8")
    FeatureCatalog.load(out, d_sae=sae.d_sae)
    print(f"{len(rules)} rules, probes {probe_set.names}, {len(catalog)} catalog "
          f"entries written to {args.sae}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
