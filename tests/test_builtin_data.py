"""Built-in data sets (``builtin:<set>/<split>``), gzip-compressed data files, ``lepton data``."""

from __future__ import annotations

import gzip

import pytest

from lepton.cli import main
from lepton.core.errors import DataError, RecipeError, UnknownNameError
from lepton.data import Columns, DataSplitConfig, load_split
from lepton.data.datasets import BUILTIN_DATA, builtin_path
from lepton.pipeline.recipe import parse_recipe

SST2 = Columns(text="sentence", label="label")


@pytest.mark.parametrize("name,split", [(d.name, s) for d in BUILTIN_DATA.values() for s in d.splits])
def test_every_builtin_split_loads_whole_with_the_stated_row_count(name, split):
    loaded = load_split(DataSplitConfig(path=f"builtin:{name}/{split}"), SST2, name=split)
    assert len(loaded) == BUILTIN_DATA[name].splits[split][1]
    assert set(loaded.labels) == {"0", "1"}
    assert BUILTIN_DATA[name].readme().is_file()


def test_sst2_is_the_glue_file_unchanged():
    import hashlib

    digest = hashlib.sha256(gzip.decompress(builtin_path("builtin:sst2/dev").read_bytes())).hexdigest()
    assert digest == "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0"
    readme = BUILTIN_DATA["sst2"].readme().read_text()
    assert "Socher" in readme and "GLUE" in readme and "Terms" in readme


def test_a_seeded_limit_samples_the_builtin_set():
    got = load_split(DataSplitConfig(path="builtin:sst2/train", limit=50, seed=3), SST2, name="train")
    assert len(got) == 50 and len(set(got.labels)) == 2


@pytest.mark.parametrize("spec,hint", [("builtin:sst2/trian", "builtin:sst2/train"),
                                       ("builtin:sst/dev", "builtin:sst2/dev")])
def test_an_unknown_builtin_name_suggests_the_closest(spec, hint):
    with pytest.raises(UnknownNameError, match=f"did you mean '{hint}'"):
        builtin_path(spec)
    tree = {"task": {"kind": "sequence_classification", "text": "sentence", "label": "label"},
            "data": {"dev": {"path": spec}}}
    with pytest.raises(RecipeError, match=f"data.dev.path: .*did you mean '{hint}'"):
        parse_recipe(tree)


def test_gzip_compressed_user_files_read_like_plain_ones(tmp_path):
    plain = tmp_path / "d.tsv"
    plain.write_text("sentence\tlabel\na good film\t1\na dull film\t0\n")
    packed = tmp_path / "d.tsv.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    a = load_split(DataSplitConfig(path=str(plain)), SST2, name="dev")
    b = load_split(DataSplitConfig(path=str(packed)), SST2, name="dev")
    assert (a.texts, a.labels) == (b.texts, b.labels)


def test_a_damaged_gzip_file_is_a_clean_error(tmp_path):
    bad = tmp_path / "d.tsv.gz"
    rows = "".join(f"film number {i * 7919 % 10007}\t{i % 2}\n" for i in range(2000))
    whole = gzip.compress(("sentence\tlabel\n" + rows).encode())
    bad.write_bytes(whole[:len(whole) // 2])  # cut off: the stream ends early
    with pytest.raises(DataError, match=r"d\.tsv\.gz: cannot read"):
        load_split(DataSplitConfig(path=str(bad)), SST2, name="dev")


def test_lepton_data_lists_sets_rows_and_terms(capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    assert "builtin:sst2/train  67,349 rows" in out
    assert "builtin:sst2/dev  872 rows" in out
    assert "terms:" in out and "Socher" in out
