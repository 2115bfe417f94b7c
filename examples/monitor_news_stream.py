"""Build the news example's data: Financial PhraseBank split for training, and a replayable JSONL
stream of real labelled sentences with negative surges injected at known times.

    python examples/monitor_news_stream.py --out runs/monitor-news-stream

Writes, under OUT:
  data/phrasebank_{train,dev,stream}.csv   a seeded, disjoint split of Financial PhraseBank
                                           (dev 600, stream 1,200, train the other 2,562 rows)
  stream.jsonl                             {"text", "timestamp", "id", "source"} per line, in time order
  truth.json                               the surges: start, end, topic, how many items; the stream's make-up

The stream (default 22,000 background items over 20 hours of stream time, plus the surges):
  - background: items at Poisson times; 92% are AG News descriptions from the official test set
    outside the recipe's dev sample (6,600 rows, drawn with replacement: a text recurs about 3
    times), 8% Financial PhraseBank sentences of the stream part with their annotated labels
    (negative, neutral, positive as they come);
  - surges: extra Financial PhraseBank sentences annotated *negative* (from the stream part, drawn
    with replacement), at a fixed rate for a fixed time, on top of the background. Their ground
    truth: annotators' label negative; topic Business (financial news). The quiet first 4 hours
    let the monitor learn its baselines, and quiet stretches lie between the surges.
None of these sentences is in the model's training data or in the dev sets it was scored on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START = 1_704_067_200.0  # 2024-01-01T00:00:00Z
HOUR = 3600.0
# (start hour, minutes, seconds between injected negative items): strong, medium, weak, short strong
SURGES = [(4.0, 45, 8.0), (8.5, 60, 20.0), (13.0, 60, 45.0), (16.5, 20, 8.0)]


def data_root() -> Path:
    return Path(os.environ.get("LEPTON_DATA") or ROOT.parent / "shared" / "data")


def split_phrasebank(out: Path, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """A seeded shuffle of the 4,362 sentences cut into dev / stream / train."""
    with open(data_root() / "financial_phrasebank" / "sentences_50agree.csv", encoding="utf-8", newline="") as fh:
        rows = [(r["label"], r["sentence"]) for r in csv.DictReader(fh)]
    random.Random(seed).shuffle(rows)
    parts = {"dev": rows[:600], "stream": rows[600:1800], "train": rows[1800:]}
    (out / "data").mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        with open(out / "data" / f"phrasebank_{name}.csv", "w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["label", "sentence"])
            writer.writerows(part)
    return parts


def agnews_pool() -> list[tuple[str, str]]:
    """AG News test-set descriptions outside the dev sample that examples/monitor-news.yaml scores."""
    from lepton.data import load_split
    from lepton.pipeline.recipe import load_recipe

    recipe = load_recipe(ROOT / "examples" / "monitor-news.yaml")
    extra = recipe.stages[0].tasks["agnews"]
    dev = load_split(extra.data.dev, extra.task.columns(), name="dev")
    held = {t.strip() for t in dev.texts}  # the loader strips cells
    names = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
    with open(data_root() / "ag_news" / "test.csv", encoding="utf-8", newline="") as fh:
        rows = [(names[r[0]], r[2].strip()) for r in csv.reader(fh)]
    return [(label, text) for label, text in rows if text not in held]


def build_stream(out: Path, *, background: int = 22_000, hours: float = 20.0, seed: int = 0) -> dict:
    parts = split_phrasebank(out, seed)
    os.environ.setdefault("MONITOR_DATA", str(out / "data"))
    ag = agnews_pool()
    fpb = parts["stream"]
    negatives = [s for label, s in fpb if label == "negative"]
    rng = random.Random(seed + 1)
    items = []
    rate = background / (hours * HOUR)
    t = START
    for _ in range(background):
        t += rng.expovariate(rate)
        if rng.random() < 0.92:
            label, text = rng.choice(ag)
            items.append({"ts": t, "text": text, "source": "agnews", "topic": label, "sentiment": None})
        else:
            label, text = rng.choice(fpb)
            items.append({"ts": t, "text": text, "source": "phrasebank", "topic": "Business", "sentiment": label})
    truth = []
    for k, (at, minutes, every) in enumerate(SURGES):
        begin, end = START + at * HOUR, START + at * HOUR + minutes * 60
        n = 0
        t = begin + rng.uniform(0, every)
        while t < end:
            items.append({"ts": t, "text": rng.choice(negatives), "source": "phrasebank", "topic": "Business",
                          "sentiment": "negative", "surge": k})
            n += 1
            t += every
        truth.append({"surge": k, "start": begin, "end": end, "minutes": minutes, "topic": "Business",
                      "items": n, "per_minute": round(60 / every, 2)})
    items.sort(key=lambda it: it["ts"])
    with open(out / "stream.jsonl", "w", encoding="utf-8") as fh:
        for i, it in enumerate(items):
            fh.write(json.dumps({"text": it["text"], "timestamp": round(it["ts"], 3), "id": f"n{i}",
                                 "source": it["source"]}) + "\n")
    summary = {"start": START, "end": items[-1]["ts"], "items": len(items), "background": background,
               "surge_items": sum(s["items"] for s in truth), "surges": truth,
               "pools": {"agnews_test_outside_dev": len(ag), "phrasebank_stream": len(fpb),
                         "phrasebank_stream_negative": len(negatives)},
               "labels": {f"n{i}": [it["topic"], it["sentiment"], it.get("surge")] for i, it in enumerate(items)}}
    (out / "truth.json").write_text(json.dumps(summary))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/monitor-news-stream", help="output folder (default: %(default)s)")
    parser.add_argument("--background", type=int, default=22_000, help="background items (default: %(default)s)")
    parser.add_argument("--hours", type=float, default=20.0, help="stream time in hours (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    summary = build_stream(Path(args.out), background=args.background, hours=args.hours, seed=args.seed)
    print(f"{args.out}/stream.jsonl: {summary['items']} items ({summary['surge_items']} in "
          f"{len(summary['surges'])} surges); ground truth in {args.out}/truth.json")
    for s in summary["surges"]:
        print(f"  surge {s['surge']}: +{s['per_minute']}/min negative for {s['minutes']} min from "
              f"hour {(s['start'] - START) / HOUR:.1f} ({s['items']} items)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
