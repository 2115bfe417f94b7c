"""Data sets shipped inside the package, named in recipes as ``builtin:<set>/<split>``.

Only data whose terms allow redistribution is here (each set's README.md says where it comes
from and on what terms); everything else is read from a path, e.g. ``${LEPTON_DATA}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lepton.core.errors import UnknownNameError
from lepton.core.registry import suggest

__all__ = ["BUILTIN_DATA", "BuiltinSet", "PREFIX", "builtin_path", "is_builtin"]

PREFIX = "builtin:"
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class BuiltinSet:
    name: str
    title: str
    splits: dict[str, tuple[str, int]]  # split -> (file inside the set's folder, rows)
    labels: str
    licence: str  # one line; the set's README.md has the full terms and the citation
    source: str

    def readme(self) -> Path:
        return _HERE / self.name / "README.md"


BUILTIN_DATA: dict[str, BuiltinSet] = {s.name: s for s in [
    BuiltinSet(
        name="sst2",
        title="SST-2, GLUE version (Socher et al. 2013; Wang et al. 2018)",
        splits={"train": ("train.tsv.gz", 67_349), "dev": ("dev.tsv.gz", 872)},
        labels="label: 0 negative, 1 positive; text column: sentence",
        licence="Stanford Sentiment Treebank: research data without a separate licence, "
                "redistributed as GLUE does; cite Socher et al. 2013 and Wang et al. 2018",
        source="GLUE SST-2 (gluebenchmark.com), unchanged",
    ),
]}


def is_builtin(path: str) -> bool:
    return path.startswith(PREFIX)


def _known() -> list[str]:
    return [f"{PREFIX}{s.name}/{split}" for s in BUILTIN_DATA.values() for split in s.splits]


def builtin_path(spec: str) -> Path:
    """The packaged file behind ``builtin:<set>/<split>``; an unknown name suggests the closest."""
    name, _, split = spec.removeprefix(PREFIX).partition("/")
    dataset = BUILTIN_DATA.get(name)
    if dataset is None or split not in dataset.splits:
        raise UnknownNameError(f"unknown built-in data {spec!r}{suggest(spec, _known())} "
                               f"(known: {', '.join(_known())}; `lepton data` lists them)")
    return _HERE / name / dataset.splits[split][0]
