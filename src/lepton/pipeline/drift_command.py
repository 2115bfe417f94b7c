"""``lepton drift MODEL --data NEW``: is NEW still like the data the model was evaluated on?

The model's drift reference (``data/drift_reference.json``, recorded at the end of its run and
verified with the manifest's checksums) against NEW's profile as the model sees it: the tests of
``lepton.evaluation.drift``, a verdict, and exit 0 either way (1 with ``--fail-on-drift`` when
drift is found). A model saved before references were recorded takes ``--reference DATA``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lepton.core.errors import ArtifactError, RecipeError
from lepton.evaluation.drift import (
    REFERENCE_FILE,
    DriftError,
    DriftReference,
    DriftResult,
    build_reference,
    compare,
    effect_text,
    load_reference,
    profile_split,
)

EXIT_DRIFT = 1


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a Lepton model folder (OUT/model)")
    p.add_argument("--data", required=True, help="the new data: a file or folder in the model's text columns "
                                                 "(labels are not needed)")
    p.add_argument("--reference", metavar="DATA",
                   help="compare with this data instead of the reference recorded in the model (needed for "
                        "a model saved without one: give the data it was evaluated on)")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="significance level over all tests together (Holm-corrected; default 0.01)")
    p.add_argument("--fail-on-drift", action="store_true", help="exit with 1 when drift is found (CI gates)")
    p.add_argument("--format", choices=["tsv", "csv", "jsonl", "conll", "folder"])
    p.add_argument("--text", help="text column (default: as in the training recipe)")
    p.add_argument("--text-pair", help="second text column for sentence pairs")
    p.add_argument("--limit", type=int, help="use at most N examples of each data set")
    p.add_argument("--no-header", action="store_true", help="tsv/csv file without a header row")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--require-signature", metavar="PUBLIC_KEY",
                   help="refuse the model unless its manifest is signed by the holder of this Ed25519 "
                        "public key (lepton keygen / lepton sign)")


def saved_reference(model: Path, manifest: dict[str, Any]) -> DriftReference:
    """The reference recorded in ``model`` (its checksum already verified with the manifest)."""
    if REFERENCE_FILE not in (manifest.get("files") or {}):
        recipe = manifest.get("recipe") or {}
        split = (recipe.get("evaluate") or {}).get("split", "dev")
        path = ((recipe.get("data") or {}).get(split) or {}).get("path")
        hint = f" (its recipe evaluated on {path})" if path else ""
        raise DriftError(f"{model}: has no drift reference (saved before Lepton recorded one); pass "
                         f"--reference DATA, the data the model was evaluated on{hint}")
    ref = load_reference(model)
    if ref is None:
        raise ArtifactError(f"{model}: its manifest lists {REFERENCE_FILE} but the file is missing")
    return ref


def _data(path: str, args: dict[str, Any], bundle: Any, columns: Any, name: str) -> Any:
    from lepton.data import DataSplitConfig, load_split

    cfg = {"path": path, "format": args.get("format"), "limit": args.get("limit"),
           "header": not args.get("no_header", False)}
    try:
        config = DataSplitConfig.model_validate({k: v for k, v in cfg.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        raise RecipeError(f"--{name}: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
    return load_split(config, columns, name=name, kind=bundle.task.split_kind)


def _columns(manifest: dict[str, Any], text: Any, text_pair: Any) -> Any:
    """The text columns of the model's recipe (``text``/``text_pair`` instead where given); no label."""
    from lepton.pipeline.recipe import TaskConfig, task_recipe

    trained = task_recipe(manifest.get("recipe") or {}, None)[0] or {"kind": manifest["task"]["kind"]}
    given = {k: v for k, v in (("text", text), ("text_pair", text_pair)) if v is not None}
    try:
        task = TaskConfig.model_validate({**trained, **given})
    except ValidationError as err:
        raise RecipeError(f"task: {err.errors()[0]['msg']}") from None
    return dataclasses.replace(task.columns(), label=None)


def drift(model: str | os.PathLike[str], data: str, *, reference: str | None = None, alpha: float = 0.01,
          text: Any = None, text_pair: Any = None, data_options: dict[str, Any] | None = None,
          public_key: str | os.PathLike[str] | None = None) -> DriftResult:
    """Compare ``data`` (a file or folder, labels not needed) with ``model``'s drift reference, or
    with ``reference`` (data the model was evaluated on) profiled now the same way."""
    from lepton.pipeline.artifact import load_bundle, read_manifest
    from lepton.tasks import kind_of

    folder = Path(model)
    if not 0 < alpha < 1:
        raise DriftError(f"--alpha {alpha}: give a significance level between 0 and 1, e.g. 0.01")
    manifest = read_manifest(folder, public_key=public_key)  # every checksum, the reference's too
    bundle = load_bundle(folder, verify=False)
    reason = kind_of(bundle.task).drift_unsupported
    if reason is not None:
        raise DriftError(f"{folder}: {reason}")
    columns = _columns(manifest, text, text_pair)
    options = data_options or {}
    if reference is not None:
        ref = build_reference(bundle, _data(reference, options, bundle, columns, "reference"))
    else:
        ref = saved_reference(folder, manifest)
        if ref.task_kind != bundle.task.kind or ref.labels != list(bundle.task.labels):
            raise ArtifactError(f"{folder / REFERENCE_FILE}: describes a {ref.task_kind} task with labels "
                                f"{ref.labels}, the model a {bundle.task.kind} task with {bundle.task.labels}")
    new = _data(data, options, bundle, columns, "new")
    return compare(ref, profile_split(bundle, new), alpha=alpha)


def render(result: DriftResult, model: str, data: str) -> str:
    """The result as a table, the skipped tests and the verdict with its reasons."""
    lines = [f"drift check: {data} ({result.n_new} examples) against {model}'s reference "
             f"({result.n_reference} examples); alpha {result.alpha:g}, Holm-corrected", ""]
    head = ("test", "method", "effect", "p", "p (Holm)", "reference", "new")
    rows = [(t.title, t.method, effect_text(t), f"{t.p_value:.2g}", f"{t.p_adjusted:.2g}"
             + (" *" if t.flagged else ""), t.reference, t.new) for t in result.tests]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    for r in [head, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    for name, why in result.skipped.items():
        lines.append(f"not tested: {name} ({why})")
    lines += ["", f"verdict: {result.verdict}"]
    lines += [f"  - {reason}" for reason in result.reasons]
    return "\n".join(lines)


def _column(value: str | None) -> str | int | None:
    """A column given on the command line: a name, or an index (digits)."""
    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else value


def run(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise RecipeError(f"--limit {args.limit}: give a positive number of examples")
    options = {"format": args.format, "limit": args.limit, "no_header": args.no_header}
    result = drift(args.model, args.data, reference=args.reference, alpha=args.alpha, text=_column(args.text),
                   text_pair=_column(args.text_pair), data_options=options, public_key=args.require_signature)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=float))
    else:
        print(render(result, args.model, args.data))
    return EXIT_DRIFT if result.drift and args.fail_on_drift else 0
