"""Load one split of a recipe's `data:` section into memory: TSV, CSV, JSONL, CoNLL or folders.

Every malformed row is either an error that names the file and its 1-based physical line, or,
with `bad_rows: skip`, an entry in `Split.skipped`; no row is ever dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import logging
import random
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from lepton.core import atomic
from lepton.core.config import StrictModel
from lepton.core.errors import DataError, UnknownNameError
from lepton.data import datasets

__all__ = ["Columns", "DataSplitConfig", "Split", "carve", "load_split"]

logger = logging.getLogger(__name__)

Format = Literal["tsv", "csv", "jsonl", "conll", "folder", "parallel"]
Kind = Literal["sequence", "tokens", "pairs"]  # pairs: prompt/target (lepton.data.parallel)
ColumnRef = str | int

_SUFFIX_FORMATS: dict[str, Format] = {
    ".tsv": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".txt": "conll",
    ".conll": "conll",
}
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
# Options that mean something for some formats only; a non-default value elsewhere is a mistake.
_FORMAT_OPTIONS: dict[str, tuple[Format, ...]] = {
    "header": ("tsv", "csv"),
    "columns": ("tsv", "csv"),
    "subdir": ("folder",),
    "classes": ("folder",),
    "strip_headers": ("folder",),
    "target": ("parallel",),
}
# IMDB reviews mark line breaks with "<br /><br />"; the tag is markup, not text a model should see.
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")


class DataSplitConfig(StrictModel):
    """One split of a recipe's `data:` section."""

    path: str  # file (plain or .gz), folder, .tar.gz / .tgz archive, or builtin:<set>/<split>
    # None: inferred from the suffix (.tsv .csv .jsonl/.json .txt/.conll; folder or .tar.gz/.tgz)
    format: Format | None = None
    header: bool = True  # tsv/csv: the first row holds column names
    columns: list[str] | None = None  # tsv/csv: names for the columns (replace the header's)
    subdir: str | None = None  # folder: sub-folder whose child folders are the labels
    classes: list[str] | None = None  # folder: only these label folders; default all
    strip_headers: bool = False  # folder: drop the e-mail header block (up to the first blank line)
    encoding: str = "utf-8"  # a leading BOM is dropped whatever the encoding
    limit: int | None = Field(default=None, gt=0)  # keep at most this many examples
    seed: int | None = None  # with limit: a seeded random sample, kept in file order
    bad_rows: Literal["error", "skip"] = "error"
    # Rows with these labels are left out (a class another model never had, say), before `limit`.
    drop_labels: list[str] | None = None
    # parallel (format inferred when set): the target file, line-aligned with `path` (the source)
    target: str | None = None

    # A seeded sample, so that a smoke run of a file sorted by label still sees every label.
    smoke_caps: ClassVar[dict[str, Any]] = {"limit": 64}
    smoke_defaults: ClassVar[dict[str, Any]] = {"seed": 0}

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("path must not be empty")
        if datasets.is_builtin(value):
            try:
                datasets.builtin_path(value)
            except UnknownNameError as err:
                raise ValueError(str(err)) from None
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown encoding {value!r}") from None
        return value

    @field_validator("drop_labels", mode="before")
    @classmethod
    def _labels_as_strings(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value

    @field_validator("columns", "classes", "drop_labels")
    @classmethod
    def _unique_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("must not be empty (leave it out instead)")
            dupes = sorted({v for v in value if value.count(v) > 1})
            if dupes:
                raise ValueError(f"duplicate names: {', '.join(dupes)}")
        return value


@dataclass(frozen=True)
class Columns:
    """Which columns hold what.

    Sequence classification: `text` is one column, or a tuple of columns joined with a space
    (AG News title + description); optional `text_pair`; `label`. Token classification (CoNLL):
    `text` is the token column index (usually 0), `label` the tag column index (usually -1).
    Folder data takes its texts from the files and its labels from the folder names.
    """

    text: str | int | tuple[str | int, ...]
    text_pair: str | int | None = None
    label: str | int | None = None  # None: unlabelled data
    template: str | None = None  # generation: the prompt as str.format over columns
    # More columns kept per example as strings (TSV, CSV, JSONL), e.g. the evaluation's slices.
    extra: tuple[str, ...] = ()


@dataclass
class Split:
    name: str  # "train", "dev", ...
    kind: Kind
    texts: list[str] | list[list[str]]  # sentences, or token lists for CoNLL
    text_pairs: list[str] | None
    labels: list[str] | list[list[str]] | None  # raw labels as strings; None when unlabelled
    sources: list[str]  # "path:line" (or "archive!member") per example
    skipped: list[str] = field(default_factory=list)  # "path:line: reason" per skipped row
    extra: dict[str, list[str]] = field(default_factory=dict)  # Columns.extra: column -> value per example

    def __len__(self) -> int:
        return len(self.texts)


def load_split(
    config: DataSplitConfig,
    columns: Columns,
    *,
    name: str,
    kind: Kind = "sequence",
    base_dir: Path | None = None,
) -> Split:
    """Read one split whole, then apply `limit`/`seed`.

    Relative paths resolve against base_dir (the recipe's folder) when given, else the CWD.
    """
    if datasets.is_builtin(config.path):
        path = datasets.builtin_path(config.path)
    else:
        path = Path(config.path).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
    if kind == "pairs":  # prompt/target pairs for generation
        from lepton.data.parallel import load_pair_split

        return load_pair_split(config, columns, name=name, base_dir=base_dir)
    if not path.exists():
        raise DataError(f"data.{name}.path: file not found: {path}")
    if not (path.is_file() or path.is_dir()):  # a FIFO, a device: reading would block or never end
        raise DataError(f"data.{name}.path: {path} is not a regular file or a folder")
    fmt = config.format or _infer_format(path, name)
    _check_options(config, columns, fmt, kind, name)

    rows = _Collector(config, columns)
    if fmt in ("tsv", "csv"):
        _read_delimited(path, fmt, config, columns, rows)
    elif fmt == "jsonl":
        _read_jsonl(path, config, columns, rows)
    elif fmt == "conll":
        _read_conll(path, config, columns, rows)
    else:
        _read_folder(path, config, rows)
    # Folder data is labelled by construction: the label is the folder name.
    return rows.finish(path, name, kind, labelled=fmt == "folder" or columns.label is not None)


# ---------------------------------------------------------------- checks


def _infer_format(path: Path, name: str) -> Format:
    if path.is_dir() or path.name.lower().endswith(_ARCHIVE_SUFFIXES):
        return "folder"
    # A gzip-compressed file has the format of its name without ".gz" (train.tsv.gz: tsv).
    plain = path.with_suffix("") if path.suffix.lower() == ".gz" else path
    fmt = _SUFFIX_FORMATS.get(plain.suffix.lower())
    if fmt is None:
        known = ", ".join([*_SUFFIX_FORMATS, *_ARCHIVE_SUFFIXES])
        raise DataError(
            f"data.{name}.path: cannot tell the format of {path} from its suffix "
            f"(known: {known}, each also as .gz, or a folder); set data.{name}.format"
        )
    return fmt


def _check_options(
    config: DataSplitConfig, columns: Columns, fmt: Format, kind: Kind, name: str
) -> None:
    for option, formats in _FORMAT_OPTIONS.items():
        default = DataSplitConfig.model_fields[option].default
        if fmt not in formats and getattr(config, option) != default:
            raise DataError(
                f"data.{name}.{option}: applies to format {' or '.join(formats)} only, "
                f"not {fmt} ({config.path})"
            )
    if kind == "tokens" and fmt != "conll":
        raise DataError(f"data.{name}: token classification needs format conll, not {fmt}")
    if kind == "sequence" and fmt == "conll":
        raise DataError(
            f"data.{name}: format conll holds token tags; it needs token classification"
        )
    if fmt in ("conll", "folder") and columns.text_pair is not None:
        raise DataError(f"data.{name}: format {fmt} has no text_pair column")
    if fmt in ("conll", "folder") and columns.extra:
        raise DataError(f"data.{name}: format {fmt} has no named columns for {', '.join(columns.extra)} "
                        "(slices read a TSV, CSV or JSONL column)")


# ---------------------------------------------------------------- collecting rows


class _Collector:
    """Accumulates examples; knows the bad-row policy and when an unseeded limit is reached."""

    def __init__(self, config: DataSplitConfig, columns: Columns) -> None:
        self.want_pair = columns.text_pair is not None
        self.want_label = columns.label is not None
        self.bad_rows = config.bad_rows
        self.drop = set(config.drop_labels or ())
        self.dropped = 0
        self.limit = config.limit
        self.seed = config.seed
        self.texts: list[Any] = []
        self.pairs: list[str] = []
        self.labels: list[Any] = []
        self.sources: list[str] = []
        self.skipped: list[str] = []
        self.extra: dict[str, list[str]] = {name: [] for name in columns.extra}
        self.pending_extra: list[str] = []  # the extra columns' values of the row being added

    @property
    def full(self) -> bool:
        # Without a seed "limit" means the first N, so the rest of the file need not be read.
        return self.seed is None and self.limit is not None and len(self.texts) >= self.limit

    def bad(self, where: str, reason: str) -> None:
        if self.bad_rows == "error":
            raise DataError(f"{where}: {reason}")
        self.skipped.append(f"{where}: {reason}")

    def add_sequence(
        self, where: str, parts: list[str], pair: str | None, label: str | None
    ) -> None:
        """Validate and keep one example; `parts` are the text columns, joined with a space."""
        text = " ".join(p.strip() for p in parts if p.strip())
        pair = (pair or "").strip()
        label = (label or "").strip()
        if not text:
            return self.bad(where, "empty text")
        if self.want_pair and not pair:
            return self.bad(where, "empty text_pair")
        if self.want_label and not label:
            return self.bad(where, "missing label")
        self.add(where, text, label if self.want_label else None, pair if self.want_pair else None)

    def add(self, where: str, text: Any, label: Any = None, pair: str | None = None) -> None:
        if isinstance(label, str) and label in self.drop:
            self.dropped += 1
            return
        self.texts.append(text)
        self.sources.append(where)
        for name, value in zip(self.extra, self.pending_extra):
            self.extra[name].append(value.strip())
        if label is not None:
            self.labels.append(label)
        if pair is not None:
            self.pairs.append(pair)

    def finish(self, path: Path, name: str, kind: Kind, *, labelled: bool) -> Split:
        if self.skipped:
            logger.warning(
                "%s: skipped %d malformed rows (bad_rows: skip); first: %s",
                path, len(self.skipped), self.skipped[0],
            )
        if self.dropped:
            logger.info("%s: left out %d rows labelled %s (drop_labels)", path, self.dropped,
                        ", ".join(sorted(self.drop)))
        if not self.texts:
            extra = f" ({len(self.skipped)} malformed rows skipped)" if self.skipped else ""
            extra += f" ({self.dropped} rows left out by drop_labels)" if self.dropped else ""
            raise DataError(f"data.{name}: no examples in {path}{extra}")
        keep = _sample_indices(len(self.texts), self.limit, self.seed)
        pick = (lambda xs: xs) if keep is None else (lambda xs: [xs[i] for i in keep])
        return Split(
            name=name,
            kind=kind,
            texts=pick(self.texts),
            text_pairs=pick(self.pairs) if self.want_pair else None,
            labels=pick(self.labels) if labelled else None,
            sources=pick(self.sources),
            skipped=self.skipped,
            extra={name: pick(values) for name, values in self.extra.items()},
        )


def subset(split: Split, indices: list[int], name: str) -> Split:
    """The examples at ``indices`` (in that order) as a split named ``name``."""
    def pick(values: list[Any] | None) -> Any:
        return None if values is None else [values[i] for i in indices]

    return Split(name=name, kind=split.kind, texts=pick(split.texts), text_pairs=pick(split.text_pairs),
                 labels=pick(split.labels), sources=pick(split.sources),
                 extra={k: pick(v) for k, v in split.extra.items()})


def carve(split: Split, fraction: float, seed: int, name: str, *,
          whole_texts: bool = False) -> tuple[Split, Split]:
    """(the rest, a seeded ``fraction`` of ``split`` named ``name``), both kept in file order.

    Sequence labels are carved per label (stratified: each class gives the same share, at least one
    example of a class with two or more), so a selection split of a sorted or skewed file still
    holds every class; token and pair splits are carved at random.

    ``whole_texts``: for data whose rows include pieces of other rows (SST-2's train split holds
    every labelled phrase of its sentences): the carved rows are drawn from the rows no longer row
    contains, and every row contained in a carved one leaves the rest too (it neither trains nor
    chooses), so no text that chooses was trained on in part.
    """
    rng = random.Random(seed)
    texts = [_row_text(split, i) for i in range(len(split))] if whole_texts else []
    candidates = _whole_rows(texts) if whole_texts else list(range(len(split)))
    groups: dict[str, list[int]] = {}
    for i in candidates:
        label = split.labels[i] if split.labels is not None and split.kind == "sequence" else ""
        groups.setdefault(str(label), []).append(i)
    chosen: set[int] = set()
    for members in groups.values():
        k = round(fraction * len(members))
        if len(members) >= 2:
            k = min(max(k, 1), len(members) - 1)
        chosen.update(rng.sample(members, k))
    if not chosen or len(chosen) == len(split):
        raise DataError(f"data.{split.name}: {len(split)} examples are too few to carve a "
                        f"{fraction:.0%} {name} split from (give data.{name} instead)")
    dropped = _pieces_of(texts, chosen) if whole_texts else set()
    rest = [i for i in range(len(split)) if i not in chosen and i not in dropped]
    return subset(split, rest, split.name), subset(split, sorted(chosen), name)


def _row_text(split: Split, i: int) -> str:
    pair = split.text_pairs[i] if split.text_pairs is not None else None
    text = split.texts[i]
    body = " ".join(text) if isinstance(text, list) else str(text)  # token splits: words
    # padded with spaces, so that containment is of whole words ("w2" is not inside "w24")
    return " " + " ".join(body.split()) + ("" if pair is None else " \t " + " ".join(str(pair).split())) + " "


def _containment_index(texts: list[str], rows: Iterable[int]) -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i in rows:
        for word in set(texts[i].split()):
            index.setdefault(word, []).append(i)
    return index


def _contained(i: int, texts: list[str], index: dict[str, list[int]]) -> int | None:
    """A row of ``index`` longer than row ``i`` that holds its text, found through the rarest word."""
    words = texts[i].split()
    if not words:
        return None
    rarest = min(words, key=lambda w: len(index.get(w, ())))
    return next((j for j in index.get(rarest, ()) if len(texts[j]) > len(texts[i]) and texts[i] in texts[j]),
                None)


def _whole_rows(texts: list[str]) -> list[int]:
    """Rows no longer row contains, the first of each text (written by hand: no library here does
    this containment check)."""
    index = _containment_index(texts, range(len(texts)))
    seen: set[str] = set()
    whole = []
    for i in range(len(texts)):
        if texts[i] not in seen and _contained(i, texts, index) is None:
            whole.append(i)
        seen.add(texts[i])
    return whole


def _pieces_of(texts: list[str], chosen: set[int]) -> set[int]:
    """Rows (outside ``chosen``) whose text a chosen row contains, or that repeat a chosen row."""
    index = _containment_index(texts, chosen)
    same = {texts[i] for i in chosen}
    return {i for i in range(len(texts)) if i not in chosen
            and (texts[i] in same or _contained(i, texts, index) is not None)}


def _sample_indices(n: int, limit: int | None, seed: int | None) -> list[int] | None:
    """Indices to keep, in file order; None keeps everything."""
    if limit is None or n <= limit:
        return None
    if seed is None:
        return list(range(limit))
    # random.Random(seed).sample over a range is stable across runs and CPython versions;
    # sorting keeps the sample in file order, which makes it readable and diffable.
    return sorted(random.Random(seed).sample(range(n), limit))


# ---------------------------------------------------------------- text files


def _lines(handle: Iterable[str]) -> Iterator[str]:
    """Lines of an open text file, less a leading BOM (MRPC's header has one) in any encoding."""
    it = iter(handle)
    first = next(it, None)
    if first is None:
        return
    yield first.removeprefix("\ufeff")
    yield from it


def _decode_error(path: Path, encoding: str, err: UnicodeDecodeError) -> DataError:
    """Say on which line the undecodable byte is; the decoder's offset is relative to a chunk."""
    raw = gzip.decompress(path.read_bytes()) if _gzipped(path) else path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as whole:
        line = raw.count(b"\n", 0, whole.start) + 1
        return DataError(
            f"{path}:{line}: cannot decode as {encoding}: {whole.reason}; set encoding"
        )
    return DataError(f"{path}: cannot decode as {encoding}: {err.reason}; set encoding")


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz") and not path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _open_text(path: Path, encoding: str, newline: str | None = None):
    try:
        if _gzipped(path) and path.is_file():
            return gzip.open(path, "rt", encoding=encoding, newline=newline)
        return open(path, encoding=encoding, newline=newline)  # noqa: SIM115 - caller closes
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; this format needs a file") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read: {err.strerror}") from None


def _resolve_column(
    ref: ColumnRef, names: list[str] | None, width: int, path: Path, role: str
) -> int:
    """Index of a column given by name, 0-based int (negative counts from the end) or digits."""
    if isinstance(ref, str) and names is not None and ref in names:
        if names.count(ref) > 1:
            raise DataError(f"{path}: {role} column {ref!r} is ambiguous: the header repeats it")
        return names.index(ref)
    index = int(ref) if isinstance(ref, str) and ref.isdigit() else ref
    if isinstance(index, int) and not isinstance(index, bool) and -width <= index < width:
        return index % width
    if names is not None:
        available = ", ".join(repr(n) for n in names) + f" (or 0-based indices 0..{width - 1})"
    else:
        available = f"0..{width - 1} (the file has no header; set columns: to name them)"
    raise DataError(f"{path}: {role} column {ref!r} not found; available columns: {available}")


def _text_refs(columns: Columns) -> tuple[ColumnRef, ...]:
    return columns.text if isinstance(columns.text, tuple) else (columns.text,)


def _read_delimited(
    path: Path, fmt: Format, config: DataSplitConfig, columns: Columns, rows: _Collector
) -> None:
    # SST-2 sentences contain bare quote characters, so TSV is read without any quoting;
    # CSV (AG News) uses standard quoting with "" escapes.
    dialect: dict[str, Any] = (
        {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if fmt == "tsv" else {"delimiter": ","}
    )
    with _open_text(path, config.encoding, newline="") as handle:
        try:
            records = _records(csv.reader(_lines(handle), **dialect), path)
            first = next(records, None)
            if first is None:
                raise DataError(f"{path}: file is empty")
            names = _column_names(first, config, path)
            if not config.header:
                records = itertools.chain([first], records)
            width = len(names) if names is not None else len(first[1])
            text_idx = [_resolve_column(r, names, width, path, "text") for r in _text_refs(columns)]
            pair_idx = _optional_column(columns.text_pair, names, width, path, "text_pair")
            label_idx = _optional_column(columns.label, names, width, path, "label")
            extra_idx = [_resolve_column(c, names, width, path, "extra") for c in columns.extra]
            for line, record in records:
                where = f"{path}:{line}"
                if len(record) != width:
                    rows.bad(where, f"expected {width} fields, found {len(record)}")
                else:
                    rows.pending_extra = [record[i] for i in extra_idx]
                    rows.add_sequence(
                        where,
                        [record[i] for i in text_idx],
                        None if pair_idx is None else record[pair_idx],
                        None if label_idx is None else record[label_idx],
                    )
                if rows.full:
                    break
        except UnicodeDecodeError as err:
            raise _decode_error(path, config.encoding, err) from None
        except (OSError, EOFError) as err:  # a damaged .gz file shows up while reading
            raise DataError(f"{path}: cannot read: {err}") from None


def _column_names(
    first: tuple[int, list[str]], config: DataSplitConfig, path: Path
) -> list[str] | None:
    """Column names: `columns:` if given, else the header row's; None when there are none."""
    if not config.header:
        return None if config.columns is None else list(config.columns)
    header = [n.strip() for n in first[1]]
    if config.columns is None:
        return header
    if len(config.columns) != len(header):
        raise DataError(
            f"{path}:{first[0]}: the header has {len(header)} columns "
            f"but columns: names {len(config.columns)}"
        )
    return list(config.columns)


def _records(reader: Any, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first physical line, fields) per non-blank record; a quoted field may span lines."""
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}:{start}: {err}") from None
        if record:  # csv yields [] for a blank line
            yield start, record


def _optional_column(
    ref: ColumnRef | None, names: list[str] | None, width: int, path: Path, role: str
) -> int | None:
    return None if ref is None else _resolve_column(ref, names, width, path, role)


def _roles(columns: Columns) -> list[tuple[str, ColumnRef]]:
    """(role, column) for every column a sequence example reads, text parts first."""
    roles: list[tuple[str, ColumnRef]] = [("text", ref) for ref in _text_refs(columns)]
    if columns.text_pair is not None:
        roles.append(("text_pair", columns.text_pair))
    if columns.label is not None:
        roles.append(("label", columns.label))
    return roles + [("extra", name) for name in columns.extra]


def _read_jsonl(path: Path, config: DataSplitConfig, columns: Columns, rows: _Collector) -> None:
    roles = _roles(columns)
    for role, key in roles:
        if not isinstance(key, str):
            raise DataError(f"{path}: {role} column {key!r}: JSONL columns are keys, not indices")
    checked = False
    for obj, where in json_objects(path, config.encoding):
        if isinstance(obj, str):
            rows.bad(where, obj)
            continue
        if not checked:
            # The first object stands for the file: a key it lacks is a wrong column name.
            for role, key in roles:
                if key not in obj:
                    available = ", ".join(repr(k) for k in obj)
                    raise DataError(f"{path}: {role} column {key!r} not found; "
                                    f"available columns: {available}")
            checked = True
        _add_json_row(obj, where, roles, rows)
        if rows.full:
            break


def json_objects(path: Path, encoding: str) -> Iterator[tuple[dict[str, Any] | str, str]]:
    """(object, "file:line") for each non-blank JSONL line, or (why it is bad, "file:line")."""
    with _open_text(path, encoding) as handle:
        try:
            for line, raw in enumerate(_lines(handle), start=1):
                if not raw.strip():
                    continue
                where = f"{path}:{line}"
                try:
                    obj = atomic.loads_json(raw)
                except json.JSONDecodeError as err:
                    yield f"invalid JSON: {err.msg} (column {err.colno})", where
                    continue
                except ValueError as err:  # nested too deeply
                    yield f"invalid JSON: {err}", where
                    continue
                if not isinstance(obj, dict):
                    yield f"expected a JSON object, found {type(obj).__name__}", where
                    continue
                yield obj, where
        except UnicodeDecodeError as err:
            raise _decode_error(path, encoding, err) from None
        except (OSError, EOFError) as err:  # a damaged .gz file shows up while reading
            raise DataError(f"{path}: cannot read: {err}") from None


def _add_json_row(
    obj: dict[str, Any], where: str, roles: list[tuple[str, ColumnRef]], rows: _Collector
) -> None:
    values: dict[str, list[str]] = {"text": []}
    for role, key in roles:
        if key not in obj:
            return rows.bad(where, f"missing key {key!r}")
        value = obj[key]
        if isinstance(value, (dict, list)):
            return rows.bad(where, f"key {key!r} holds a {type(value).__name__}, not a string")
        # JSON numbers (0/1 labels) become strings, like the labels of every other format.
        values.setdefault(role, []).append("" if value is None else str(value))
    rows.pending_extra = values.get("extra", [])
    rows.add_sequence(where, values["text"], *values.get("text_pair", [None]),
                      *values.get("label", [None]))


# ---------------------------------------------------------------- CoNLL


def _conll_index(ref: ColumnRef | tuple[ColumnRef, ...], path: Path, role: str) -> int:
    if isinstance(ref, str) and ref.isdigit():
        return int(ref)
    if isinstance(ref, int) and not isinstance(ref, bool):
        return ref
    raise DataError(
        f"{path}: {role} column {ref!r}: CoNLL columns are 0-based indices (e.g. 0, -1)"
    )


def _read_conll(path: Path, config: DataSplitConfig, columns: Columns, rows: _Collector) -> None:
    token_col = _conll_index(columns.text, path, "text")
    tag_col = None if columns.label is None else _conll_index(columns.label, path, "label")
    tokens: list[str] = []
    tags: list[str] = []
    first_line = 0
    error: tuple[str, str] | None = None  # a sentence with a bad line is dropped whole

    def flush() -> None:
        nonlocal tokens, tags, error
        if error is not None:
            rows.bad(*error)
        elif tokens:
            rows.add(f"{path}:{first_line}", tokens, tags if tag_col is not None else None)
        tokens, tags, error = [], [], None

    with _open_text(path, config.encoding) as handle:
        try:
            for line, raw in enumerate(_lines(handle), start=1):
                fields = raw.split()
                # -DOCSTART- separates documents: it ends a sentence and is never a token.
                if not fields or fields[0] == "-DOCSTART-":
                    flush()
                    if rows.full:
                        return
                    continue
                if not tokens and error is None:
                    first_line = line
                if error is not None:
                    continue
                if not _conll_fits(len(fields), token_col, tag_col):
                    wanted = f"token column {token_col}" + (
                        f" and tag column {tag_col}" if tag_col is not None else "")
                    error = (f"{path}:{line}", f"too few columns ({len(fields)}) for {wanted}")
                    continue
                tokens.append(fields[token_col])
                if tag_col is not None:
                    tags.append(fields[tag_col])
        except UnicodeDecodeError as err:
            raise _decode_error(path, config.encoding, err) from None
        except (OSError, EOFError) as err:  # a damaged .gz file shows up while reading
            raise DataError(f"{path}: cannot read: {err}") from None
    flush()


def _conll_fits(width: int, token_col: int, tag_col: int | None) -> bool:
    """Both columns exist on the line, and are not the same column (a 1-column line with 0, -1)."""
    cols = [token_col] if tag_col is None else [token_col, tag_col]
    if any(not -width <= c < width for c in cols):
        return False
    return tag_col is None or token_col % width != tag_col % width


# ---------------------------------------------------------------- folders and archives


def _read_folder(path: Path, config: DataSplitConfig, rows: _Collector) -> None:
    """One example per file in `<subdir>/<label>/`; sorted by (label, file name) for determinism."""
    parts = (config.subdir or "").replace("\\", "/").split("/")
    subdir = "/".join(p for p in parts if p not in ("", "."))
    if path.is_dir():
        found = _folder_files(path, subdir)
    else:
        found = _archive_files(path, subdir)
    if config.classes is not None:
        missing = [c for c in config.classes if c not in found]
        if missing:
            raise DataError(
                f"{path}: class folders {', '.join(missing)} not found under "
                f"{subdir or 'the top level'}; found: {', '.join(sorted(found)) or 'none'}"
            )
        found = {c: found[c] for c in config.classes}
    for label in sorted(found):
        for _, source, read in sorted(found[label], key=lambda entry: entry[:2]):
            text = _folder_text(read(), config)
            if not text:
                stripped = config.strip_headers
                rows.bad(source, "empty text after stripping headers" if stripped else "empty file")
            else:
                rows.add(source, text, label)
            if rows.full:
                return


_FileEntry = tuple[str, str, Any]  # (file name, source, () -> bytes)


def _folder_files(root: Path, subdir: str) -> dict[str, list[_FileEntry]]:
    base = root / subdir if subdir else root
    if not base.is_dir():
        raise DataError(f"{root}: sub-folder {subdir!r} not found; found: {_listing(root)}")
    found: dict[str, list[_FileEntry]] = {}
    for label_dir in base.iterdir():
        if not label_dir.is_dir() or label_dir.name.startswith("."):
            continue
        # Files are read lazily, so an unseeded limit reads only the files it keeps.
        found[label_dir.name] = [
            (f.name, str(f), f.read_bytes)
            for f in label_dir.iterdir()
            if f.is_file() and not f.name.startswith(".")
        ]
    return found


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return ", ".join(names[:20]) or "no sub-folders"


def _archive_files(archive: Path, subdir: str) -> dict[str, list[_FileEntry]]:
    # Streaming mode ("r|*") reads the members in one pass without extracting anything to disk;
    # the IMDB archive has 50k members, so random access would be far slower.
    prefix = f"{subdir}/" if subdir else ""
    n_sub = len(subdir.split("/")) if subdir else 0
    depth = n_sub + 2  # <subdir>/<label>/<file>
    found: dict[str, list[_FileEntry]] = {}
    folders: set[str] = set()  # the archive's folders at subdir's depth, for the error message
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                name = member.name
                while name.startswith("./"):
                    name = name[2:]
                parts = name.split("/")
                if n_sub and len(parts) > n_sub:
                    folders.add("/".join(parts[:n_sub]))
                if not member.isfile() or not name.startswith(prefix):
                    continue
                if len(parts) != depth or parts[-1].startswith("."):
                    continue
                label = parts[-2]
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                found.setdefault(label, []).append(
                    (parts[-1], f"{archive}!{name}", lambda data=data: data)
                )
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: cannot read as a folder or tar archive: {err}") from None
    if not found and subdir:
        shown = ", ".join(sorted(folders)[:20]) or "none"
        raise DataError(
            f"{archive}: sub-folder {subdir!r} not found or holds no label folders; found: {shown}"
        )
    return found


def _folder_text(data: bytes, config: DataSplitConfig) -> str:
    # errors="replace": raw mail and web dumps (the original 20 Newsgroups posts) hold stray
    # latin-1 bytes; a replaced character costs nothing for classification, failing loses the post.
    text = data.decode(config.encoding, errors="replace").removeprefix("\ufeff")
    text = text.replace("\r\n", "\n")
    if config.strip_headers:
        # E-mail style: the header block ends at the first blank line.
        parts = _BLANK_LINE.split(text, maxsplit=1)
        text = parts[1] if len(parts) == 2 else ""
    return _BR_TAG.sub(" ", text).strip()
