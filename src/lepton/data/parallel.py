"""Prompt/target pairs for generation: line-aligned parallel files, or columns of TSV/CSV/JSONL.

A parallel split is two files of the same length, one sentence a line (``train.en.gz`` /
``train.de.gz``, as Multi30k ships them); line i of one is the translation of line i of the
other. Inside a template the two are ``{source}`` and ``{target}``. A TSV/CSV/JSONL split names
its prompt and target columns, or builds the prompt from a ``prompt_template`` over any columns
(``"Translate English to German: {en}"``). Errors name the file and its 1-based line.
"""

from __future__ import annotations

import csv
import itertools
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from lepton import data as tabular
from lepton.core.config import StrictModel
from lepton.core.errors import DataError


class GenerationDataError(DataError):
    """A prompt/target file is malformed: a missing column, an empty target, unequal line counts."""


class ParallelSplitConfig(StrictModel):
    """One split as two line-aligned files (plain or .gz)."""

    source: str
    target: str
    encoding: str = "utf-8"
    limit: int | None = Field(default=None, gt=0)
    seed: int | None = None  # with limit: a seeded sample, kept in file order

    smoke_caps = {"limit": 64}
    smoke_defaults = {"seed": 0}

    @field_validator("source", "target")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


class PromptSpec(StrictModel):
    """Where the prompt and the target come from (the ``task:`` keys of a generation recipe)."""

    prompt: str | None = None  # a column; default "prompt" (or "source" for parallel files)
    target: str | None = None  # a column; default "target"
    prompt_template: str | None = None  # str.format over columns: "Translate ...: {source}"

    @field_validator("prompt_template")
    @classmethod
    def _fields_named(cls, value: str | None) -> str | None:
        if value is not None:
            names = template_fields(value)
            if not names:
                raise ValueError("must name at least one column in braces, e.g. {source}")
        return value


@dataclass
class PairSplit:
    name: str
    prompts: list[str]
    targets: list[str]
    sources: list[str]  # "path:line" per example
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def template_fields(template: str) -> list[str]:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ValueError(f"bad template {template!r}: {err}") from None
    if any(not n or not n.isidentifier() for n in names):
        raise ValueError(f"bad template {template!r}: every {{...}} must name a column")
    return names


def _resolve(base_dir: Path | None, raw: str) -> Path:
    path = Path(raw).expanduser()
    return Path(base_dir) / path if base_dir is not None and not path.is_absolute() else path


def _read_lines(path: Path, encoding: str, role: str, name: str) -> list[str]:
    if not path.is_file():
        raise GenerationDataError(f"data.{name}.{role}: file not found: {path}")
    with tabular._open_text(path, encoding) as handle:
        try:
            return [line.rstrip("\r\n") for line in tabular._lines(handle)]
        except UnicodeDecodeError as err:
            raise tabular._decode_error(path, encoding, err) from None
        except (OSError, EOFError) as err:
            raise GenerationDataError(f"{path}: cannot read: {err}") from None


def load_parallel(config: ParallelSplitConfig, spec: PromptSpec, *, name: str,
                  base_dir: Path | None = None) -> PairSplit:
    src_path, tgt_path = _resolve(base_dir, config.source), _resolve(base_dir, config.target)
    src = _read_lines(src_path, config.encoding, "source", name)
    tgt = _read_lines(tgt_path, config.encoding, "target", name)
    if len(src) != len(tgt):
        raise GenerationDataError(f"data.{name}: {src_path} has {len(src)} lines but {tgt_path} has "
                                  f"{len(tgt)}; parallel files must be line-aligned")
    rows = [({"source": s, "target": t}, f"{src_path}:{i}") for i, (s, t) in enumerate(zip(src, tgt), 1)]
    return _build(rows, spec, name=name, default_prompt="source", limit=config.limit, seed=config.seed)


def load_pairs(config: tabular.DataSplitConfig, spec: PromptSpec, *, name: str,
               base_dir: Path | None = None) -> PairSplit:
    """Prompt/target pairs from a TSV, CSV or JSONL split (``bad_rows`` and ``limit`` as usual)."""
    path = _resolve(base_dir, config.path)
    if not path.exists():
        raise GenerationDataError(f"data.{name}.path: file not found: {path}")
    if not path.is_file():  # a folder, a FIFO, a device
        raise GenerationDataError(f"data.{name}.path: {path} is not a regular file")
    fmt = config.format or tabular._infer_format(path, name)
    if fmt not in ("tsv", "csv", "jsonl"):
        raise GenerationDataError(f"data.{name}: generation reads tsv, csv or jsonl (or parallel "
                                  f"source/target files), not {fmt} ({path})")
    rows = list(_json_rows(path, config) if fmt == "jsonl" else _delimited_rows(path, fmt, config))
    if not rows:
        raise GenerationDataError(f"data.{name}: no examples in {path}")
    return _build(rows, spec, name=name, default_prompt="prompt", limit=config.limit,
                  seed=config.seed, bad_rows=config.bad_rows)


def _delimited_rows(path: Path, fmt: str, config: Any):
    dialect: dict[str, Any] = ({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv"
                               else {"delimiter": ","})
    with tabular._open_text(path, config.encoding, newline="") as handle:
        try:
            records = tabular._records(csv.reader(tabular._lines(handle), **dialect), path)
            first = next(records, None)
            if first is None:
                raise GenerationDataError(f"{path}: file is empty")
            names = tabular._column_names(first, config, path)
            if not config.header:
                records = itertools.chain([first], records)
            width = len(names) if names is not None else len(first[1])
            keys = names if names is not None else [str(i) for i in range(width)]
            for line, record in records:
                where = f"{path}:{line}"
                if len(record) != width:
                    yield {"__bad__": f"expected {width} fields, found {len(record)}"}, where
                else:
                    yield dict(zip(keys, record)), where
        except UnicodeDecodeError as err:
            raise tabular._decode_error(path, config.encoding, err) from None


def _json_rows(path: Path, config: Any):
    for obj, where in tabular.json_objects(path, config.encoding):
        if isinstance(obj, str):
            yield {"__bad__": obj}, where
        else:
            yield {k: "" if v is None else str(v) for k, v in obj.items()}, where


def _build(rows: list[tuple[dict[str, str], str]], spec: PromptSpec, *, name: str,
           default_prompt: str, limit: int | None, seed: int | None,
           bad_rows: str = "error") -> PairSplit:
    target_col = spec.target or "target"
    needed = (template_fields(spec.prompt_template) if spec.prompt_template
              else [spec.prompt or default_prompt])
    first = next((r for r, _ in rows if "__bad__" not in r), None)
    file = rows[0][1].rsplit(":", 1)[0]
    for role, col in [*(("prompt", c) for c in needed), ("target", target_col)]:
        if first is not None and col not in first:
            available = ", ".join(repr(k) for k in first)
            what = "prompt_template field" if spec.prompt_template and role == "prompt" else f"{role} column"
            raise GenerationDataError(f"{file}: {what} {col!r} not found; available columns: {available}")
    prompts, targets, sources, skipped = [], [], [], []
    for row, where in rows:
        problem = row.get("__bad__") or _row_problem(row, needed, target_col)
        if problem:
            if bad_rows == "error":
                raise GenerationDataError(f"{where}: {problem}")
            skipped.append(f"{where}: {problem}")
            continue
        values = {k: v.strip() for k, v in row.items()}
        prompts.append(spec.prompt_template.format(**values) if spec.prompt_template
                       else values[needed[0]])
        targets.append(values[target_col])
        sources.append(where)
    if not prompts:
        raise GenerationDataError(f"data.{name}: no usable examples in {file} ({len(skipped)} skipped)")
    keep = tabular._sample_indices(len(prompts), limit, seed)
    pick = (lambda xs: xs) if keep is None else (lambda xs: [xs[i] for i in keep])
    return PairSplit(name=name, prompts=pick(prompts), targets=pick(targets), sources=pick(sources),
                     skipped=skipped)


def _row_problem(row: dict[str, str], needed: list[str], target_col: str) -> str | None:
    for col in needed:
        if col not in row:
            return f"missing column {col!r}"
        if not row[col].strip():
            return f"empty prompt column {col!r}"
    if target_col not in row:
        return f"missing target column {target_col!r}"
    if not row[target_col].strip():
        return f"empty target (column {target_col!r})"
    return None


def load_pair_split(config: tabular.DataSplitConfig, columns: tabular.Columns, *, name: str,
                    base_dir: Path | None = None) -> tabular.Split:
    """A recipe's data split for ``generation``: prompts in ``texts``, targets in ``labels``.

    ``columns.text`` names the prompt column (or the template's fields come from ``columns.template``),
    ``columns.label`` the target column; a split with ``target:`` (or ``format: parallel``) is a
    pair of line-aligned files whose columns are ``source`` and ``target``."""
    if isinstance(columns.text, tuple):
        raise GenerationDataError(f"data.{name}: the prompt is one column; use prompt_template to combine columns")
    parallel = config.target is not None or config.format == "parallel"
    prompt = str(columns.text)
    if parallel:
        if config.target is None:
            raise GenerationDataError(f"data.{name}.target: format parallel needs the target file")
        spec = PromptSpec(prompt="source" if prompt == "prompt" else prompt, target="target",
                          prompt_template=columns.template)
        pairs = load_parallel(ParallelSplitConfig(source=config.path, target=config.target,
                                                  encoding=config.encoding, limit=config.limit,
                                                  seed=config.seed), spec, name=name, base_dir=base_dir)
    else:
        target = "target" if columns.label is None else str(columns.label)
        spec = PromptSpec(prompt=prompt, target=target, prompt_template=columns.template)
        pairs = load_pairs(config, spec, name=name, base_dir=base_dir)
    return tabular.Split(name=name, kind="pairs", texts=pairs.prompts, text_pairs=None, labels=pairs.targets,
                         sources=pairs.sources, skipped=pairs.skipped)
