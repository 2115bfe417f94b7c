"""Tests for lepton.data: small files written per test, plus the real data sets when present."""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path

import pytest
from pydantic import ValidationError

from lepton.core.errors import DataError, LeptonError
from lepton.data import Columns, DataSplitConfig, Split, load_split


def data_root() -> Path:
    return Path(os.environ.get("LEPTON_DATA", Path(__file__).parents[2] / "shared" / "data"))


def real(relative: str) -> Path:
    path = data_root() / relative
    if not path.exists():
        pytest.skip(f"real data not found: {path}")
    return path


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def load(path: Path | str, cols: Columns, /, **config) -> Split:
    return load_split(DataSplitConfig(path=str(path), **config), cols, name="train")


SENTENCE = Columns(text="sentence", label="label")

# ---------------------------------------------------------------- tsv / csv / jsonl


def test_tsv_with_header(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\nit 's good . \t1\nbad\t0\n")
    split = load(f, SENTENCE)
    assert split.texts == ["it 's good .", "bad"]
    assert split.labels == ["1", "0"]
    assert split.text_pairs is None
    assert split.sources == [f"{f}:2", f"{f}:3"]
    assert len(split) == 2 and split.kind == "sequence" and split.skipped == []


def test_tsv_without_header_by_index_and_by_name(tmp_path):
    f = write(tmp_path / "a.tsv", "good movie\tpos\nawful\tneg\n")
    by_index = load(f, Columns(text=0, label=1), header=False)
    by_digits = load(f, Columns(text="0", label="1"), header=False)
    by_name = load(f, Columns(text="review", label="y"), header=False, columns=["review", "y"])
    for split in (by_index, by_digits, by_name):
        assert split.texts == ["good movie", "awful"]
        assert split.labels == ["pos", "neg"]
    assert by_index.sources[0] == f"{f}:1"  # no header: the first line is an example


def test_tsv_keeps_quote_characters(tmp_path):
    f = write(tmp_path / "a.tsv", 'sentence\tlabel\n"the " film\t1\nhe said "yes\t0\n')
    assert load(f, SENTENCE).texts == ['"the " film', 'he said "yes']


def test_csv_quoting_and_escapes(tmp_path):
    f = write(
        tmp_path / "a.csv",
        '"3","Fears, tears","He said ""no"", then left."\n"1","Plain","text"\n',
    )
    split = load(f, Columns(text=1, text_pair=2, label=0), header=False)
    assert split.texts == ["Fears, tears", "Plain"]
    assert split.text_pairs == ['He said "no", then left.', "text"]
    assert split.labels == ["3", "1"]


def test_csv_quoted_newline_reports_first_line(tmp_path):
    f = write(tmp_path / "a.csv", 'text,label\n"two\nlines",1\n,0\n')
    with pytest.raises(DataError, match=rf"{f.name}:4: empty text"):
        load(f, Columns(text="text", label="label"))


def test_jsonl(tmp_path):
    rows = [{"text": "good", "label": 1}, {"text": "bad", "label": "0", "extra": [1]}]
    f = write(tmp_path / "a.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    split = load(f, Columns(text="text", label="label"))
    assert split.texts == ["good", "bad"]
    assert split.labels == ["1", "0"]  # JSON numbers become strings, like TSV labels
    assert split.sources == [f"{f}:1", f"{f}:3"]  # the blank line still counts


def test_sentence_pairs(tmp_path):
    f = write(tmp_path / "a.tsv", "q\ta\tid\tl\nwho?\tme\t7\t1\nwhy?\tno\t8\t0\n")
    split = load(f, Columns(text="q", text_pair="a", label="l"))
    assert split.texts == ["who?", "why?"]
    assert split.text_pairs == ["me", "no"]
    assert split.labels == ["1", "0"]


def test_text_tuple_is_joined_with_a_space(tmp_path):
    f = write(tmp_path / "a.csv", '"2","Title"," Body text "\n"1","Only title",""\n')
    split = load(f, Columns(text=("title", "body"), label="y"), header=False,
                 columns=["y", "title", "body"])
    assert split.texts == ["Title Body text", "Only title"]


def test_bom_is_dropped_from_header(tmp_path):
    f = write(tmp_path / "a.tsv", "\ufeffQuality\tS\n1\tx\n")
    assert load(f, Columns(text="S", label="Quality")).labels == ["1"]


def test_unlabelled(tmp_path):
    f = write(tmp_path / "a.tsv", "index\tsentence\n0\tfoo\n1\tbar\n")
    split = load(f, Columns(text="sentence"))
    assert split.labels is None and split.texts == ["foo", "bar"]


# ---------------------------------------------------------------- errors


def test_malformed_row_names_file_and_line(tmp_path):
    f = write(tmp_path / "bad.tsv", "sentence\tlabel\nok\t1\none\ttoo\tmany\nfine\t0\n")
    with pytest.raises(DataError, match=r"bad\.tsv:3: expected 2 fields, found 3"):
        load(f, SENTENCE)


def test_malformed_row_skipped_and_counted(tmp_path, caplog):
    f = write(tmp_path / "bad.tsv", "sentence\tlabel\nok\t1\none\ttoo\tmany\nfine\t0\n")
    with caplog.at_level(logging.WARNING, logger="lepton.data"):
        split = load(f, SENTENCE, bad_rows="skip")
    assert split.texts == ["ok", "fine"]
    assert split.skipped == [f"{f}:3: expected 2 fields, found 3"]
    assert len(caplog.records) == 1 and "skipped 1 malformed" in caplog.text


@pytest.mark.parametrize(
    ("body", "reason"),
    [("   \t1\n", "empty text"), ("text\t \n", "missing label")],
)
def test_empty_text_or_label_is_malformed(tmp_path, body, reason):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\nok\t1\n" + body)
    with pytest.raises(DataError, match=rf"a\.tsv:3: {reason}"):
        load(f, SENTENCE)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"data\.train\.path: file not found: .*nope\.tsv"):
        load(tmp_path / "nope.tsv", SENTENCE)


def test_relative_path_resolves_against_base_dir(tmp_path):
    write(tmp_path / "d" / "a.tsv", "sentence\tlabel\nx\t1\n")
    split = load_split(DataSplitConfig(path="d/a.tsv"), SENTENCE, name="dev", base_dir=tmp_path)
    assert split.name == "dev" and split.texts == ["x"]


def test_unknown_column_lists_available(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\nx\t1\n")
    expected = r"a\.tsv: text column 'text' not found.*'sentence', 'label'"
    with pytest.raises(DataError, match=expected):
        load(f, Columns(text="text", label="label"))
    with pytest.raises(DataError, match=r"label column 5 not found.*0\.\.1"):
        load(f, Columns(text=0, label=5), header=False)


def test_unknown_jsonl_key_lists_available(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"sentence": "x", "y": 1}\n')
    with pytest.raises(DataError, match=r"label column 'label' not found.*'sentence', 'y'"):
        load(f, SENTENCE)


def test_empty_file(tmp_path):
    f = write(tmp_path / "empty.tsv", "")
    with pytest.raises(DataError, match=r"empty\.tsv"):
        load(f, SENTENCE)
    header_only = write(tmp_path / "header.tsv", "sentence\tlabel\n")
    with pytest.raises(DataError, match=r"no examples in .*header\.tsv"):
        load(header_only, SENTENCE)


def test_all_rows_skipped_is_an_error(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\n\t1\n")
    with pytest.raises(DataError, match=r"no examples.*1 malformed rows skipped"):
        load(f, SENTENCE, bad_rows="skip")


def test_invalid_json_line(tmp_path):
    f = write(tmp_path / "a.jsonl", '{"sentence": "x", "label": 1}\n{"sentence": "y", \n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: invalid JSON"):
        load(f, SENTENCE)
    assert load(f, SENTENCE, bad_rows="skip").texts == ["x"]


def test_undecodable_byte_names_line(tmp_path):
    f = tmp_path / "a.tsv"
    f.write_bytes(b"sentence\tlabel\nok\t1\ncaf\xe9\t0\n")
    with pytest.raises(DataError, match=r"a\.tsv:3: cannot decode as utf-8"):
        load(f, SENTENCE)
    assert load(f, SENTENCE, encoding="latin-1").texts == ["ok", "café"]


def test_format_inference_and_mismatched_options(tmp_path):
    f = write(tmp_path / "a.dat", "x\n")
    with pytest.raises(DataError, match=r"data\.train\.path: cannot tell the format.*a\.dat"):
        load(f, SENTENCE)
    j = write(tmp_path / "a.jsonl", '{"sentence": "x", "label": 1}\n')
    with pytest.raises(DataError, match=r"data\.train\.strip_headers: applies to format folder"):
        load(j, SENTENCE, strip_headers=True)
    with pytest.raises(DataError, match="token classification needs format conll"):
        load_split(DataSplitConfig(path=str(j)), SENTENCE, name="train", kind="tokens")


def test_config_is_strict():
    with pytest.raises(ValidationError):
        DataSplitConfig(path="a.tsv", limt=3)
    with pytest.raises(ValidationError):
        DataSplitConfig(path="a.tsv", limit=0)
    with pytest.raises(ValidationError, match="unknown encoding"):
        DataSplitConfig(path="a.tsv", encoding="utf-9")
    assert issubclass(DataError, LeptonError)


# ---------------------------------------------------------------- limit and seed


@pytest.fixture
def hundred(tmp_path) -> Path:
    rows = "".join(f"s{i}\t{i % 2}\n" for i in range(100))
    return write(tmp_path / "h.tsv", "sentence\tlabel\n" + rows)


def test_limit_without_seed_is_first_n(hundred):
    split = load(hundred, SENTENCE, limit=5)
    assert split.texts == ["s0", "s1", "s2", "s3", "s4"]


def test_limit_without_seed_stops_reading_early(tmp_path):
    f = write(tmp_path / "a.tsv", "sentence\tlabel\na\t1\nb\t0\nbroken\n")
    assert load(f, SENTENCE, limit=2).texts == ["a", "b"]  # the bad row is never reached


def test_limit_with_seed_is_reproducible_and_in_file_order(hundred):
    first = load(hundred, SENTENCE, limit=5, seed=0)
    again = load(hundred, SENTENCE, limit=5, seed=0)
    other = load(hundred, SENTENCE, limit=5, seed=1)
    assert first.texts == again.texts
    assert first.texts != other.texts
    lines = [int(s.rsplit(":", 1)[1]) for s in first.sources]
    assert lines == sorted(lines)
    # Pinned, so a change in the sampling (or in Python's random) shows up here.
    assert first.texts == ["s5", "s33", "s49", "s53", "s97"]
    assert first.labels == ["1", "1", "1", "1", "1"]


def test_limit_above_size_keeps_all(hundred):
    assert len(load(hundred, SENTENCE, limit=500, seed=3)) == 100


# ---------------------------------------------------------------- CoNLL

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC

"""


def test_conll_sentences_and_docstart(tmp_path):
    f = write(tmp_path / "a.txt", CONLL)
    split = load_split(DataSplitConfig(path=str(f)), Columns(text=0, label=-1), name="train",
                       kind="tokens")
    assert split.kind == "tokens"
    assert split.texts == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert split.labels == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert split.sources == [f"{f}:3", f"{f}:6", f"{f}:10"]


def test_conll_tag_column_choice(tmp_path):
    f = write(tmp_path / "a.conll", CONLL)
    split = load_split(DataSplitConfig(path=str(f)), Columns(text=0, label=1), name="train",
                       kind="tokens")
    assert split.labels[0] == ["NNP", "VBZ"]
    unlabelled = load_split(DataSplitConfig(path=str(f)), Columns(text=0), name="train",
                            kind="tokens")
    assert unlabelled.labels is None and len(unlabelled) == 3


def test_conll_short_line(tmp_path):
    f = write(tmp_path / "a.txt", "EU B-ORG\nrejects\n\nok O\n")
    config = DataSplitConfig(path=str(f))
    with pytest.raises(DataError, match=r"a\.txt:2: too few columns \(1\)"):
        load_split(config, Columns(text=0, label=-1), name="train", kind="tokens")
    skipping = config.model_copy(update={"bad_rows": "skip"})
    split = load_split(skipping, Columns(text=0, label=-1), name="train", kind="tokens")
    assert split.texts == [["ok"]] and len(split.skipped) == 1


def test_conll_limit(tmp_path):
    f = write(tmp_path / "a.txt", CONLL)
    split = load_split(DataSplitConfig(path=str(f), limit=2), Columns(text=0, label=-1),
                       name="train", kind="tokens")
    assert split.texts == [["EU", "rejects"], ["Peter", "Blackburn"]]


# ---------------------------------------------------------------- folders and archives

FILES = {
    "corpus/train/pos/1_9.txt": "Great film.<br /><br />Loved it.",
    "corpus/train/pos/0_8.txt": "Fine.",
    "corpus/train/neg/5_1.txt": "Awful<br />stuff.",
    "corpus/train/unsup/9_0.txt": "No label.",
    "corpus/train/urls.txt": "not in a label folder",
    "corpus/test/pos/2_7.txt": "Other split.",
}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        write(root / name, text)
    return root


def make_archive(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(params=["folder", "archive"])
def corpus(request, tmp_path) -> Path:
    if request.param == "folder":
        return make_tree(tmp_path / "tree", FILES)
    return make_archive(tmp_path / "corpus.tar.gz", FILES)


def test_folder_subdir_and_classes(corpus):
    split = load(corpus, Columns(text="text", label="label"), subdir="corpus/train",
                 classes=["pos", "neg"])
    assert split.labels == ["neg", "pos", "pos"]  # sorted by (label, file name)
    assert split.texts == ["Awful stuff.", "Fine.", "Great film.  Loved it."]  # no <br />
    assert split.sources[0].endswith("corpus/train/neg/5_1.txt")
    if corpus.is_file():
        assert split.sources[0] == f"{corpus}!corpus/train/neg/5_1.txt"


def test_folder_all_classes_by_default(corpus):
    split = load(corpus, Columns(text="text", label="label"), subdir="corpus/train")
    assert sorted(set(split.labels)) == ["neg", "pos", "unsup"]


def test_folder_missing_class_and_subdir(corpus):
    with pytest.raises(DataError, match=r"class folders nuetral not found.*neg, pos, unsup"):
        load(corpus, Columns(text="text"), subdir="corpus/train", classes=["pos", "nuetral"])
    with pytest.raises(DataError, match=r"sub-folder 'corpus/dev' not found"):
        load(corpus, Columns(text="text"), subdir="corpus/dev")


def test_folder_seeded_sample_matches_between_tree_and_archive(tmp_path):
    files = {f"c/{'ab'[i % 2]}/{i:03d}": f"text {i}" for i in range(40)}
    tree = load(make_tree(tmp_path / "t", files), Columns(text="t"), subdir="c", limit=7, seed=4)
    arch = load(make_archive(tmp_path / "c.tgz", files), Columns(text="t"), subdir="c", limit=7,
                seed=4)
    assert tree.texts == arch.texts and tree.labels == arch.labels and len(tree) == 7


def test_folder_strip_headers_and_empty_file(tmp_path):
    files = {
        "ng/sci.space/1": "From: a@b.c\nSubject: orbit\r\n\r\nBody of the post.\n\nMore.",
        "ng/sci.space/2": "From: x@y.z\nSubject: only headers\n",
        "ng/rec.autos/3": "",
    }
    root = make_tree(tmp_path / "t", files)
    with pytest.raises(DataError, match=r"rec\.autos/3: empty file"):
        load(root, Columns(text="t"), subdir="ng")
    split = load(root, Columns(text="t"), subdir="ng", strip_headers=True, bad_rows="skip")
    assert split.texts == ["Body of the post.\n\nMore."]
    assert split.labels == ["sci.space"]
    assert len(split.skipped) == 2
    assert any("empty text after stripping headers" in s for s in split.skipped)


# ---------------------------------------------------------------- real data


def test_real_sst2_dev():
    split = load(real("sst2/dev.tsv"), SENTENCE)
    assert len(split) == 872
    assert set(split.labels) == {"0", "1"}
    assert split.labels.count("1") == 444


def test_real_mrpc_dev_with_bom():
    split = load(real("mrpc/dev.tsv"), Columns("#1 String", "#2 String", "Quality"))
    assert len(split) == 408 and len(split.text_pairs) == 408
    assert split.labels.count("1") == 279


def test_real_conll_valid():
    config = DataSplitConfig(path=str(real("conll2003/valid.txt")))
    split = load_split(config, Columns(text=0, label=-1), name="dev", kind="tokens")
    assert len(split) == 3250
    assert sum(len(s) for s in split.texts) == 51362
    assert len({t for tags in split.labels for t in tags}) == 9


def test_real_ag_news_test_csv():
    split = load(real("ag_news/test.csv"), Columns(("title", "description"), label="label"),
                 header=False, columns=["label", "title", "description"])
    assert len(split) == 7600
    assert {split.labels.count(c) for c in "1234"} == {1900}


@pytest.mark.integration
def test_real_imdb_archive_sample():
    path = real("imdb/aclImdb_train_test.tar.gz")
    split = load(path, Columns(text="text", label="label"), subdir="aclImdb/test", limit=50, seed=0)
    assert len(split) == 50
    assert set(split.labels) == {"neg", "pos"}
    assert not any("<br" in t for t in split.texts)
    assert all(s.startswith(f"{path}!aclImdb/test/") for s in split.sources)
