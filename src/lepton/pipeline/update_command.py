"""``lepton update``: its arguments and what it prints (the CLI stays a thin layer)."""

from __future__ import annotations

import argparse
from typing import Any

from lepton.core.errors import RecipeError


def add_parser(u: argparse.ArgumentParser) -> None:
    u.add_argument("model", help="the saved float Lepton model to update (OUT/model)")
    u.add_argument("--data", required=True, help="the new labelled training data (any data file or builtin:...)")
    u.add_argument("--dev", help="the new data's labelled dev set: selection and the gain are measured on it")
    u.add_argument("--recipe", help="the recipe whose stages after training are re-applied (export, quantize "
                                    "...); default: the parent's own, from its manifest")
    u.add_argument("--method", default="naive", help="naive | replay | l2sp | lora (default naive)")
    u.add_argument("--label-map", action="append", default=[], metavar="RAW=LABEL",
                   help="map a label of the new data onto a label (e.g. negative=0); RAW= (empty) drops its "
                        "rows; an unmapped new label becomes a new class (repeatable)")
    u.add_argument("--old-dev", help="the original dev set for forgetting (default: the parent recipe's data.dev)")
    u.add_argument("--replay-data", help="replay: the original training data's sample to mix in (default: the "
                                         "parent's data/rehearsal.jsonl)")
    u.add_argument("--no-naive", action="store_true", help="skip the naive fine-tuning run compared against")
    u.add_argument("--naive-model", help="compare against this naive update of the same parent (OUT/model of an "
                                         "earlier lepton update --method naive) instead of training naive again")
    u.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the update's recipe, e.g. stages.0.epochs=1, stages.0.l2sp=0.1")
    u.add_argument("-o", "--output", required=True, help="output folder")
    u.add_argument("--smoke", action="store_true", help="a quick check: caps data, training, measurements")
    u.add_argument("--force", action="store_true", help="replace a previous Lepton run in the output folder")
    u.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_label_map(items: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for item in items:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise RecipeError(f"--label-map {item!r}: expected RAW=LABEL (RAW= drops its rows)")
        raw, name = (part.strip() for part in item.split("=", 1))
        out[raw] = name or None
    return out


def run(args: Any) -> int:
    from lepton.pipeline.report import print_table
    from lepton.pipeline.update import update
    from lepton.pipeline.update_report import to_markdown

    overrides = [*args.overrides, *(["smoke=true"] if args.smoke else [])]
    report = update(args.model, args.data, args.dev, recipe=args.recipe, method=args.method,
                    label_map=parse_label_map(args.label_map), old_dev=args.old_dev,
                    replay_data=args.replay_data, naive=not args.no_naive, overrides=overrides,
                    out_dir=args.output, force=args.force, progress=not args.no_progress,
                    naive_model=args.naive_model)
    print_table(report)
    if report.update:
        print("\n" + "\n".join(to_markdown(report.update)))
    out = args.output
    print(f"model: {out}/model\nreport: {out}/report.md (also .html and .json)\n"
          f"check it: lepton info {out}/model\nserve it: lepton serve {out}/model")
    return 0
