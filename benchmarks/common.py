"""What the benchmark scripts share: running one stage outside a recipe, and writing results.

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path`` and they
import it as ``common``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from lepton.evaluation.scorecard import Report
from lepton.pipeline.artifact import now_iso
from lepton.runtimes.bundle import ModelBundle, RunContext, StageRecord
from lepton.stages import configs, handler_for

log = logging.getLogger("benchmark")


def stage(bundle: ModelBundle, ctx: RunContext, name: str, **settings: Any) -> ModelBundle:
    config = configs.get(settings["kind"]).model_validate(settings)
    ctx.stage_dir = ctx.work_dir / name
    ctx.stage_summary = {}
    started, t0 = now_iso(), time.perf_counter()
    out = handler_for(config)(bundle, config, ctx)
    record = StageRecord(index=len(bundle.history), kind=config.kind, name=name,
                         settings=config.model_dump(mode="json"), started=started,
                         seconds=round(time.perf_counter() - t0, 2), summary=ctx.stage_summary)
    out.history = [*bundle.history, record]
    log.info("%s: %s", name, json.dumps(ctx.stage_summary, default=str)[:400])
    return out


def save_results(report: Report, out: Path, name: str, text: str) -> None:
    """``OUT/NAME.md`` (the markdown ``text``) and ``OUT/NAME.json`` (the report)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(report.model_dump_json(indent=2))
    print(f"written: {out / f'{name}.md'}")
