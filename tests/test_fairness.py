"""Whom the errors fall on: slices with CIs and the worst slice, and counterfactual fairness
(the exact rewrite, flip rates of models that do or do not key on a gendered word, term files)."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lepton.core.errors import LeptonError
from lepton.data import Columns, DataSplitConfig, Split, load_split
from lepton.evaluation.counterfactual import BUILTIN, TermFileError, keep_case, load_lexicon
from lepton.evaluation.fairness import FairnessConfig, measure_fairness
from lepton.evaluation.harness import Variant
from lepton.evaluation.slices import length_bucket, measure_slices
from lepton.runtimes.bundle import ModelBundle
from tests.conftest import spec_for

ROOT = Path(__file__).resolve().parents[1]

# (original, gender-swapped): every term swapped, case kept, nothing else touched
REWRITES = [
    ("He told his brother that she liked him.", "She told her sister that he liked her."),
    ("HE SAID: Mr. Smith's wife is a fine actress", "SHE SAID: Mrs. Smith's husband is a fine actor"),
    ("the theme of the shell is manly, hence the he-man", "the theme of the shell is manly, hence the she-woman"),
    ("A King and his Queens; her mother, himself", "A Queen and her Queens; his father, herself"),
    ("no identity term here at all", "no identity term here at all"),
]


def test_rewrite_is_exact_on_a_fixture() -> None:
    gender = load_lexicon().groups["gender"]
    for original, expected in REWRITES:
        assert gender.rewrite(original) == expected
        assert gender.contains(original) == (original != expected)


def test_rewrite_swaps_terms_only_and_swaps_back() -> None:
    """Word by word: every changed word is a term replaced by its counterpart; the rest is as it was."""
    lexicon = load_lexicon()
    text = ("James met Mary at the church; the American priest and his Muslim friend, Lakisha, "
            "thought the Bible dull. BRAD laughed. John's son and Patricia's daughter.")
    for group in lexicon.groups.values():
        new = group.rewrite(text)
        old_parts, new_parts = re.split(r"(\w+)", text), re.split(r"(\w+)", new)
        assert len(old_parts) == len(new_parts)
        for a, b in zip(old_parts, new_parts):
            if a != b:
                assert group.swaps[a.lower()].lower() == b.lower() and keep_case(a, b) == b
    religion = lexicon.groups["religion"]
    assert religion.rewrite("A church, a Bible, CHRISTIANS.") == "A mosque, a Quran, MUSLIMS."
    assert religion.rewrite(religion.rewrite("A church, a Bible.")) == "A church, a Bible."


def test_keep_case() -> None:
    assert [keep_case(w, "she") for w in ("he", "He", "HE")] == ["she", "She", "SHE"]
    assert keep_case("hE", "she") == "she"  # mixed case: the replacement as written


# ------------------------------------------------------------------------ models keyed on a word


class KeywordModel(torch.nn.Module):
    """Predicts label 1 exactly when one of ``token_ids`` is in the input, else label 0."""

    def __init__(self, token_ids: list[int]) -> None:
        super().__init__()
        self.token_ids = torch.tensor(token_ids)
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids: torch.Tensor, **_: object) -> SimpleNamespace:
        hit = torch.isin(input_ids, self.token_ids).any(dim=1).float()
        return SimpleNamespace(logits=torch.stack([(1 - hit) * 4, hit * 4], dim=1))


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lepton.models import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("builtin:minilm-l6"))


MALE = ["he", "his", "him", "man", "boy", "father", "brother"]


def _split(texts: list[str], labels: list[str], **extra: list[str]) -> Split:
    return Split(name="dev", kind="sequence", texts=texts, text_pairs=None, labels=labels,
                 sources=[f"dev.tsv:{i + 2}" for i in range(len(texts))], extra=extra)


def _variant(name: str, words: list[str], tokenizer, split: Split, pred: list[int] | None = None) -> Variant:
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    bundle = ModelBundle(model=KeywordModel(ids), tokenizer=tokenizer, task=spec_for("sequence_classification",
                                                                                     ["0", "1"]))
    v = Variant(name=name, stage_path=[name], bundle=bundle)
    v.predictions = pred if pred is not None else [0] * len(split)
    return v


def _gendered_split() -> Split:
    male = [f"the {w} in the movie was {a}" for w in MALE for a in ("good", "dull", "long")]
    female = [f"the {w} in the movie was {a}" for w in ("she", "her", "woman", "girl") for a in ("good", "dull")]
    neutral = [f"the plot of the movie was {a}" for a in ("good", "dull", "long", "fine", "odd")]
    texts = male + female + neutral
    return _split(texts, ["0"] * len(texts))


def _card() -> SimpleNamespace:
    return SimpleNamespace(comparison=None, slices=None, fairness=None, stereotypes=None)


def _config(**fairness: object) -> SimpleNamespace:
    return SimpleNamespace(bootstrap=200, fairness=FairnessConfig(**fairness), slices=[], length_buckets=[16],
                           slice_min_examples=5, slice_quality=True)


def test_a_model_keyed_on_a_gendered_word_flips_one_that_ignores_it_does_not(tokenizer) -> None:
    split = _gendered_split()
    ignores = _variant("baseline", ["movie"], tokenizer, split)
    keyed = _variant("compressed", MALE, tokenizer, split)
    cards = [_card(), _card()]
    measure_fairness([ignores, keyed], cards, split, _config(), seed=0, baseline="baseline")
    base, other = (c.fairness for c in cards)
    gender = {g.group: g for g in other.groups}["gender"]
    assert gender.n_rewritten == len(MALE) * 3 + 8  # the neutral sentences are not rewritten
    assert gender.flip_rate.value == 1.0 and gender.prob_shift.value > 0.9
    assert {g.group: g for g in base.groups}["gender"].flip_rate.value == 0.0
    assert gender.flip_delta.significant and gender.flip_delta.delta == 1.0 and gender.increased
    assert other.increased == ["gender"] and base.baseline is None and base.increased == []
    # no example holds a religious term: nothing rewritten, no rate
    religion = {g.group: g for g in other.groups}["religion"]
    assert religion.n_rewritten == 0 and religion.flip_rate is None
    # too few rewrites: shown, never flagged
    cards = [_card(), _card()]
    measure_fairness([ignores, keyed], cards, split, _config(min_examples=1000), seed=0, baseline="baseline")
    assert cards[1].fairness.groups[0].small and cards[1].fairness.increased == []


def test_only_the_chosen_groups_and_a_user_term_file(tokenizer, tmp_path: Path) -> None:
    terms = tmp_path / "terms.tsv"
    terms.write_text("# my pairs\nfilm\tmovie\tplot\n\nfilm\tgood\tbad\n")
    split = _gendered_split()
    keyed = _variant("m", ["good"], tokenizer, split)
    cards = [_card()]
    measure_fairness([keyed], cards, split, _config(terms=str(terms)), seed=0, baseline=None)
    [film] = cards[0].fairness.groups
    assert cards[0].fairness.lexicon == str(terms) and cards[0].fairness.pairs == 2
    assert film.n_rewritten == len(split)
    assert film.flip_rate.value == pytest.approx(np.mean(["good" in t for t in split.texts]))
    with pytest.raises(TermFileError, match=r"evaluate\.fairness\.groups: 'nope' not in"):
        measure_fairness([keyed], [_card()], split, _config(groups=["nope"]), seed=0, baseline=None)


@pytest.mark.parametrize(("content", "message"), [
    ("gender\the\n", r"terms\.tsv:1: expected 3 tab-separated fields"),
    ("# comment\ngender\the\tshe\ngender\tbig word\tsmall\n", r"terms\.tsv:3: 'big word' is not one word"),
    ("gender\the\tHE\n", r"terms\.tsv:1: 'he' is paired with itself"),
    ("\tthe\tshe\n", r"terms\.tsv:1: the group \(first field\) is empty"),
    ("# nothing\n\n", r"terms\.tsv: no term pairs"),
])
def test_a_bad_term_file_is_one_line_naming_file_and_row(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "terms.tsv"
    path.write_text(content)
    with pytest.raises(LeptonError, match=message) as err:
        load_lexicon(path)
    assert isinstance(err.value, TermFileError) and "\n" not in str(err.value)


def test_missing_and_undecodable_term_files(tmp_path: Path) -> None:
    with pytest.raises(TermFileError, match="term file not found"):
        load_lexicon(tmp_path / "absent.tsv")
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"gender\the\tshe\ngender\tgar\xe7on\tfille\n")
    with pytest.raises(TermFileError, match=r"latin1\.tsv:2: not UTF-8"):
        load_lexicon(bad)


def test_the_documentation_lists_the_built_in_lexicon_in_full() -> None:
    doc = (ROOT / "docs" / "evaluation.md").read_text()
    for line in BUILTIN.read_text().splitlines():
        if line and not line.startswith("#"):
            group, term, other = line.split("\t")
            assert f"{term} ↔ {other}" in doc, f"docs/evaluation.md lacks {group}: {term} ↔ {other}"


# ------------------------------------------------------------------------------------- slices


def test_slice_cis_worst_slice_and_a_drop_the_average_hides(tokenizer) -> None:
    n = 120
    gold = [i % 2 for i in range(n)]
    source = ["news" if i < 80 else "forum" for i in range(n)]
    texts = [("a short one" if i % 3 else "a much longer sentence " * 5) for i in range(n)]
    split = _split(texts, [str(g) for g in gold], source=source)
    base = _variant("base", [], tokenizer, split, pred=list(gold))
    # right on news, wrong on 3 forum examples in 4
    pred = [g if s == "news" or i % 4 == 0 else 1 - g for i, (g, s) in enumerate(zip(gold, source))]
    other = _variant("int8", [], tokenizer, split, pred=pred)
    cards = [_card(), _card()]
    cards[1].comparison = SimpleNamespace(significant=False)  # as if the average held
    config = _config()
    config.slices = ["source"]
    measure_slices([base, other], cards, split, config, seed=0, baseline="base")
    s = cards[1].slices
    rows = {r.name: r for r in s.rows}
    assert set(rows) == {"class=0", "class=1", "length=1-16 tokens", "length=17+ tokens", "source=news",
                         "source=forum"}
    forum = rows["source=forum"]
    assert forum.n == 40 and forum.value == pytest.approx(10 / 40)
    assert forum.ci95_low <= forum.value <= forum.ci95_high and forum.ci95_high < 0.5
    assert rows["source=news"].value == 1.0 and rows["source=news"].delta == 0.0
    assert forum.significant and forum.delta == pytest.approx(-30 / 40)
    assert s.worst == "source=forum" and "source=forum" in s.dropped
    assert s.verdict.startswith("worst slice source=forum: accuracy 0.2500")
    assert "keeps the average but significantly worse than the baseline on" in s.verdict
    assert cards[0].slices.baseline is None and cards[0].slices.rows[0].delta is None


def test_length_buckets_and_a_column_the_data_lacks(tokenizer) -> None:
    assert [length_bucket(n, [16, 32]) for n in (3, 16, 17, 32, 33)] == [
        "1-16 tokens", "1-16 tokens", "17-32 tokens", "17-32 tokens", "33+ tokens"]
    split = _split(["a b c"] * 4, ["0", "1", "0", "1"])
    v = _variant("only", [], tokenizer, split, pred=[0, 1, 0, 0])
    config = _config()
    config.slices = ["source"]
    cards = [_card()]
    measure_slices([v], cards, split, config, seed=0, baseline=None)
    s = cards[0].slices
    assert s.notes == ["slice column 'source' was not read with this data"]
    assert all(r.small for r in s.rows) and s.worst is None  # 4 examples < slice_min_examples


def test_slice_columns_are_read_from_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\tsource\nfine film\t1\tnews\nbad film\t0\tforum\n")
    jsonl = tmp_path / "dev.jsonl"
    jsonl.write_text('{"sentence": "fine", "label": 1, "source": "news"}\n{"sentence": "bad", "label": 0, '
                     '"source": 7}\n')
    columns = Columns(text="sentence", label="label", extra=("source",))
    assert load_split(DataSplitConfig(path=str(tsv)), columns, name="dev").extra == {"source": ["news", "forum"]}
    assert load_split(DataSplitConfig(path=str(jsonl)), columns, name="dev").extra == {"source": ["news", "7"]}
    with pytest.raises(LeptonError, match="extra column 'lang' not found"):
        load_split(DataSplitConfig(path=str(tsv)), Columns(text="sentence", label="label", extra=("lang",)),
                   name="dev")


# ------------------------------------------------------------------------------ a whole run


def _write_sourced_tsv(path: Path, n: int) -> Path:
    lines = ["sentence\tlabel\tsource"]
    for i in range(n):
        who = ("he", "she", "the critic")[i % 3]
        mood, label = (("good", 1), ("dull", 0))[i % 2]
        lines.append(f"{who} said the movie was {mood}\t{label}\t{('news', 'forum')[i % 2 == 0 and i % 4 == 0]}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_run_reports_slices_and_fairness_everywhere(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    import lepton
    from tests.conftest import tiny_recipe

    train, dev = _write_sourced_tsv(tmp_path / "train.tsv", 64), _write_sourced_tsv(tmp_path / "dev.tsv", 60)
    recipe = tiny_recipe(tiny_model_dir, train, dev, tmp_path / "out", epochs=1)
    recipe["stages"].append({"kind": "quantize", "method": "dynamic_int8"})
    recipe["evaluate"].update(slices=["source"], memory=False, robustness=False, rounds=1)
    report = lepton.run(lepton.load_recipe(_yaml(tmp_path / "r.yaml", recipe)), progress=False)
    final = report.variants[-1]
    assert {r.name for r in final.slices.rows} >= {"source=news", "source=forum", "class=0", "length=1-16 tokens"}
    assert final.slices.baseline == "finetune" and final.slices.worst is not None
    gender = {g.group: g for g in final.fairness.groups}["gender"]
    assert gender.n_rewritten == 40 and gender.flip_delta is not None  # "he" and "she" rows, not the critic
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["variants"][-1]["fairness"]["groups"][0]["group"] == "gender"
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| source=forum" in md and "Counterfactual fairness (built-in lexicon" in md
    assert "worst slice" in md
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Counterfactual fairness (built-in lexicon" in html and "Δ: this variant minus <code>finetune</code>" in html
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    section = card.split("## Bias, risks and limitations")[1]
    assert "Counterfactual gender (built-in lexicon): swapping its terms changes" in section
    assert "worst slice" in section


def test_a_bad_term_file_stops_the_run_before_training(tiny_model_dir: Path, tmp_path: Path) -> None:
    import lepton
    from tests.conftest import tiny_recipe

    terms = tmp_path / "terms.tsv"
    terms.write_text("gender\the\tshe\ngender\the she\n")
    dev = _write_sourced_tsv(tmp_path / "dev.tsv", 12)
    recipe = tiny_recipe(tiny_model_dir, dev, dev, tmp_path / "out")
    recipe["evaluate"]["fairness"] = {"terms": str(terms)}
    with pytest.raises(TermFileError, match=r"terms\.tsv:2: expected 3 tab-separated fields"):
        lepton.run(lepton.load_recipe(_yaml(tmp_path / "r.yaml", recipe)), progress=False)
    assert not (tmp_path / "out" / "work").exists() or not any((tmp_path / "out" / "work").glob("stage-*"))


def _yaml(path: Path, tree: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(tree))
    return path


# ---------------------------------------------------------------- generative: stereotype preference


class PronounLM:
    """A stand-in decoder that scores a sentence by its words: likelier with a male pronoun."""

    config = SimpleNamespace(is_encoder_decoder=False)

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def token_nll_sums(self, enc, pad_id: int, *, batch_size: int = 8):
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in enc.input_ids]
        nll = [1.0 if re.search(r"\b(he|his)\b", t, re.IGNORECASE) else 2.0 for t in texts]
        return nll, [len(ids) - 1 for ids in enc.input_ids]


def _lm_variant(name: str, model, tokenizer) -> Variant:
    return Variant(name=name, stage_path=[name], bundle=ModelBundle(model=model, tokenizer=tokenizer,
                                                                    task=spec_for("language_modeling", [])))


def test_stereotype_preference_follows_the_likelihoods(model_dirs: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from lepton.evaluation.stereotypes import load_pairs, measure_stereotypes

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["decoder"])  # byte-level BPE: decodes exactly

    pairs = load_pairs()
    male_stereo = [bool(re.search(r"\b(he|his)\b", s)) for c, s, _ in pairs if c == "gender"]
    cards = [_card(), _card()]
    variants = [_lm_variant("base", PronounLM(tokenizer), tokenizer), _lm_variant("q", PronounLM(tokenizer),
                                                                                   tokenizer)]
    measure_stereotypes(variants, cards, _config(), seed=0, baseline="base")
    base, other = cards[0].stereotypes, cards[1].stereotypes
    gender = {c.category: c for c in other.categories}["gender"]
    assert gender.pairs == len(male_stereo) and gender.prefers_stereotype.value == pytest.approx(np.mean(male_stereo))
    # the other categories hold no pronoun: every pair ties, and a tie is no preference for the stereotype
    assert {c.category: c for c in other.categories}["age"].prefers_stereotype.value == 0.0
    assert other.pairs == len(pairs) and base.baseline is None and other.delta.delta == 0.0
    assert not other.delta.significant


def test_stereotype_probe_runs_on_a_tiny_llama(model_dirs: dict[str, Path]) -> None:
    from lepton.evaluation.stereotypes import measure_stereotypes
    from lepton.tasks import kind_of

    folder = model_dirs["decoder"]
    kind = kind_of("language_modeling")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = kind.auto_model().from_pretrained(folder)
    cards = [_card()]
    measure_stereotypes([_lm_variant("lm", model, tok)], cards, _config(), seed=0, baseline=None)
    m = cards[0].stereotypes.prefers_stereotype
    assert 0.0 <= m.ci95_low <= m.value <= m.ci95_high <= 1.0 and m.n == cards[0].stereotypes.pairs
    # classifiers are not probed
    split = _gendered_split()
    cards = [_card()]
    measure_stereotypes([_variant("clf", ["he"], AutoTokenizer.from_pretrained(folder), split)], cards, _config(),
                        seed=0, baseline=None)
    assert cards[0].stereotypes is None


def test_the_documentation_lists_the_stereotype_pairs_in_full() -> None:
    from lepton.evaluation.stereotypes import load_pairs

    doc = (ROOT / "docs" / "evaluation.md").read_text()
    for _, stereo, anti in load_pairs():
        assert f"| {stereo} | {anti} |" in doc


def test_recipe_settings_are_checked() -> None:
    from lepton.core.errors import RecipeError
    from lepton.pipeline.recipe import parse_recipe

    tree = {"task": {"kind": "sequence_classification"}, "model": "x", "stages": [{"kind": "finetune"}],
            "data": {"train": {"path": "train.tsv"}, "dev": {"path": "dev.tsv"}}}
    recipe = parse_recipe({**tree, "evaluate": {"slices": ["source"], "fairness": {"groups": ["gender"]}}})
    assert recipe.evaluate.fairness.counterfactual and recipe.evaluate.length_buckets == [16, 32, 64]
    with pytest.raises(RecipeError, match=r"unknown key 'evaluate\.fairness\.term'; did you mean 'terms'"):
        parse_recipe({**tree, "evaluate": {"fairness": {"term": "x.tsv"}}})
    with pytest.raises(RecipeError, match=r"evaluate\.length_buckets: .*positive"):
        parse_recipe({**tree, "evaluate": {"length_buckets": [0, 16]}})
