"""Counterfactual rewrites: identity terms swapped, whole words only, case kept.

A term-pair file is tab-separated text, one pair a line: ``group<TAB>term<TAB>counterpart``; blank
lines and lines starting with ``#`` are skipped. Each row swaps both ways within its group. Where a
term is in several rows of one group its first row gives its replacement (the built-in lexicon
lists ``his her`` before ``him her``, so "her" becomes "his" and "him" becomes "her"). Terms are
single words (letters, digits, apostrophes, hyphens) matched without regard to case; the
replacement takes the matched word's case (he -> she, He -> She, HE -> SHE). The built-in lexicon
is ``fairness_terms.tsv`` beside this module, listed in full in docs/evaluation.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from lepton.core.errors import DataError

BUILTIN = Path(__file__).with_name("fairness_terms.tsv")
_WORD = re.compile(r"[^\W_](?:[\w'-]*[^\W_])?")  # one word: no spaces, no punctuation at the ends


class TermFileError(DataError):
    """A counterfactual term-pair file is missing, unreadable or malformed (names the file and line)."""


@dataclass
class TermGroup:
    """One group pair of a lexicon: each term (lower case) -> its replacement as written."""

    name: str
    swaps: dict[str, str] = field(default_factory=dict)
    rows: int = 0  # term pairs listed for the group
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def pattern(self) -> re.Pattern[str]:
        if self._pattern is None:
            # Longest first, so a term that begins another ("man", "manly") never cuts it short.
            terms = sorted(self.swaps, key=lambda t: (-len(t), t))
            self._pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)",
                                       re.IGNORECASE)
        return self._pattern

    def contains(self, text: str) -> bool:
        return self.pattern.search(text) is not None

    def rewrite(self, text: str) -> str:
        """``text`` with every term of the group swapped for its counterpart, nothing else changed."""
        return self.pattern.sub(lambda m: keep_case(m.group(0), self.swaps[m.group(0).lower()]), text)


def keep_case(word: str, replacement: str) -> str:
    """``replacement`` in the case of ``word``: lower, Title, UPPER; mixed case: as written."""
    if word.islower():
        return replacement.lower()
    if len(word) > 1 and word.isupper():
        return replacement.upper()
    if word[:1].isupper() and (len(word) == 1 or word[1:].islower()):
        return replacement[:1].upper() + replacement[1:]
    return replacement


@dataclass
class Lexicon:
    source: str  # "built-in" or the file's path
    groups: dict[str, TermGroup]

    @property
    def pairs(self) -> int:
        return sum(g.rows for g in self.groups.values())


def load_lexicon(path: str | Path | None = None) -> Lexicon:
    """The term pairs of ``path`` (a TSV of group, term, counterpart), or the built-in lexicon."""
    file = BUILTIN if path is None else Path(path).expanduser()
    if not file.is_file():
        raise TermFileError(f"evaluate.fairness.terms: {file}: term file not found")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        line = file.read_bytes().count(b"\n", 0, err.start) + 1
        raise TermFileError(f"{file}:{line}: not UTF-8 text") from None
    except OSError as err:
        raise TermFileError(f"{file}: cannot read the term file ({err.strerror})") from None
    groups: dict[str, TermGroup] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if raw.strip() and not raw.lstrip().startswith("#"):
            group, term, other = _row(raw, f"{file}:{number}")
            entry = groups.setdefault(group, TermGroup(group))
            entry.rows += 1
            entry.swaps.setdefault(term.lower(), other)
            entry.swaps.setdefault(other.lower(), term)
    if not groups:
        raise TermFileError(f"{file}: no term pairs (expected lines of group<TAB>term<TAB>counterpart)")
    return Lexicon("built-in" if path is None else str(file), groups)


def _row(raw: str, where: str) -> tuple[str, str, str]:
    fields = [f.strip() for f in raw.split("\t")]
    if len(fields) != 3:
        raise TermFileError(f"{where}: expected 3 tab-separated fields (group, term, counterpart), "
                            f"found {len(fields)}")
    group, term, other = fields
    if not group:
        raise TermFileError(f"{where}: the group (first field) is empty")
    for value in (term, other):
        if not _WORD.fullmatch(value):
            raise TermFileError(f"{where}: {value!r} is not one word (letters, digits, apostrophes, hyphens)")
    if term.lower() == other.lower():
        raise TermFileError(f"{where}: {term!r} is paired with itself")
    return group, term, other
