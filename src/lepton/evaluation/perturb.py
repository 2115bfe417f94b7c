"""Seeded input perturbations for robustness checks: character typos, word drops, adjacent word
swaps and case changes. Each is a pure function of (text, seed, rate), so reruns match exactly."""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable

_LETTERS = string.ascii_lowercase


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word
    i = rng.randrange(len(word) - 1)
    op = rng.randrange(4)
    if op == 0:  # swap two neighbouring characters
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == 1:  # delete one
        return word[:i] + word[i + 1:]
    if op == 2:  # insert one
        return word[:i] + rng.choice(_LETTERS) + word[i:]
    return word[:i] + rng.choice(_LETTERS) + word[i + 1:]  # substitute one


def typos(text: str, rng: random.Random, rate: float) -> str:
    return " ".join(_typo(w, rng) if rng.random() < rate else w for w in text.split(" "))


def word_drop(text: str, rng: random.Random, rate: float) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= rate]
    return " ".join(kept or words[:1])  # never drop a text to nothing


def word_swap(text: str, rng: random.Random, rate: float) -> str:
    words = text.split()
    i = 0
    while i < len(words) - 1:
        if rng.random() < rate:
            words[i], words[i + 1] = words[i + 1], words[i]
            i += 2
        else:
            i += 1
    return " ".join(words)


def case_change(text: str, rng: random.Random, rate: float) -> str:
    out = []
    for w in text.split(" "):
        if rng.random() < rate:
            w = rng.choice([w.upper(), w.lower(), w.capitalize()])
        out.append(w)
    return " ".join(out)


PERTURBATIONS: dict[str, Callable[[str, random.Random, float], str]] = {
    "typo": typos,
    "word_drop": word_drop,
    "word_swap": word_swap,
    "case": case_change,
}


def perturb(texts: list[str], kind: str, *, seed: int, rate: float) -> list[str]:
    """Apply one perturbation to every text; text i gets its own seeded generator."""
    fn = PERTURBATIONS[kind]
    base = zlib.crc32(kind.encode()) ^ seed
    return [fn(t, random.Random(base * 1_000_003 + i), rate) for i, t in enumerate(texts)]
