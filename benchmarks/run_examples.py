"""Run example recipes one after another and print quality (with CI) and wall time side by side.

    python benchmarks/run_examples.py examples/sst2-minilm.yaml examples/conll2003-ner.yaml ...

Each recipe writes to its own output.dir as usual; a summary table goes to stdout at the end.
"""

from __future__ import annotations

import argparse
import logging
import time

import lepton
from lepton.evaluation.environment import describe, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    rows = []
    for path in args.recipes:
        start = time.perf_counter()
        report = lepton.run(path, overrides=args.overrides, progress=False)
        wall = time.perf_counter() - start
        card = report.variants[-1]
        metric = card.quality.metrics[card.quality.headline]
        finetunes = [s["summary"] for s in report.stages if s["kind"] == "finetune"]
        rate = finetunes[-1].get("items_per_s") if finetunes else None
        rows.append((path, card.quality.headline, metric, wall, rate, card.n_examples))
        print(f"done {path}: {card.quality.headline} {metric.value:.4f} in {wall:.0f} s", flush=True)

    print(f"\nMachine: {describe(fingerprint())}\n")
    print(f"{'recipe':40s} {'metric':10s} {'value [95% CI]':28s} {'n':>6s} {'wall s':>8s} {'train items/s':>14s}")
    for path, name, m, wall, rate, n in rows:
        ci = f"{m.value:.4f} [{m.ci95_low:.4f}, {m.ci95_high:.4f}]"
        print(f"{path:40s} {name:10s} {ci:28s} {n:6d} {wall:8.0f} {rate if rate else '-':>14}")


if __name__ == "__main__":
    main()
