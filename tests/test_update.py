"""lepton update: a saved tiny model trained further on a toy domain shift.

The toy: the parent learns sentiment from word lists A (good/bad ...). The new domain decides the
label by word lists B (profit/loss ...), and every new sentence also holds an A word of the
opposite polarity, so that plain fine-tuning learns the A words backwards (it forgets the old
domain), while replaying a sample of the old data keeps their old meaning where no B word is.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml

from lepton.cli import main
from tests.conftest import NEGATIVE, POSITIVE, tiny_recipe, write_sentiment_tsv

B_POSITIVE = ["profit", "growth", "gain", "surge", "rally", "boom"]
B_NEGATIVE = ["loss", "decline", "debt", "slump", "crash", "deficit"]
B_NEUTRAL = ["meeting", "report", "schedule", "office", "memo", "agenda"]
FILLER = ["the", "company", "said", "this", "quarter", "shares", "of", "a"]


def write_shift_tsv(path: Path, n: int, seed: int, *, neutral: bool = False, clash: bool = True,
                    header: str = "sentence\tlabel") -> Path:
    """New-domain sentences: a B word decides the label, beside an A word saying the opposite."""
    rng = random.Random(seed)
    lines = [header]
    for _ in range(n):
        label = rng.choice(["0", "1", "neutral"] if neutral else ["0", "1"])
        deciding = {"1": B_POSITIVE, "0": B_NEGATIVE, "neutral": B_NEUTRAL}[label]
        # The A word says the opposite of the label (neutral: either): a shortcut plain fine-tuning takes.
        other = {"1": NEGATIVE, "0": POSITIVE}.get(label, POSITIVE + NEGATIVE) if clash else POSITIVE + NEGATIVE
        tokens = [rng.choice(deciding), rng.choice(other), *rng.sample(FILLER, 3)]
        rng.shuffle(tokens)
        lines.append(f"{' '.join(tokens)}\t{label}" if "\t" in header else " ".join(tokens))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def shift(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The parent (trained on A, with its rehearsal sample) and the new domain's files."""
    folder = tmp_path_factory.mktemp("update")
    recipe = tiny_recipe(tiny_model_dir, write_sentiment_tsv(folder / "a-train.tsv", 240, seed=1),
                         write_sentiment_tsv(folder / "a-dev.tsv", 80, seed=2), folder / "parent", epochs=3)
    recipe["evaluate"].update({"memory": False, "robustness": False, "rounds": 1})
    (folder / "parent.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["-q", "run", str(folder / "parent.yaml"), "--no-progress"]) == 0
    return {"folder": folder, "parent": folder / "parent" / "model", "recipe": folder / "parent.yaml",
            "train": write_shift_tsv(folder / "b-train.tsv", 240, seed=3),
            "dev": write_shift_tsv(folder / "b-dev.tsv", 80, seed=4)}


def _update(shift: dict[str, Path], out: Path, *args: str) -> int:
    return main(["-q", "update", str(shift["parent"]), "--data", str(shift["train"]), "--dev", str(shift["dev"]),
                 "-o", str(out), "--no-progress", "--set", "stages.0.epochs=3", *args])


def test_replay_gains_on_new_data_and_forgets_less_than_naive(shift: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "replay"
    assert _update(shift, out, "--method", "replay") == 0
    report = json.loads((out / "report.json").read_text())["update"]
    rows = {r["variant"]: r for r in report["new"]["rows"]}
    assert set(rows) == {"parent", "naive", "update-replay"}
    gain = rows["update-replay"]["vs_parent"]
    assert gain["delta"] > 0.15 and gain["significant"], gain  # the new domain is learned
    old = {r["variant"]: r for r in report["old"]["rows"]}
    forgot_naive = -old["naive"]["vs_parent"]["delta"]
    forgot_replay = -old["update-replay"]["vs_parent"]["delta"]
    assert forgot_naive > 0.1, old  # the toy makes plain fine-tuning forget
    assert forgot_replay < forgot_naive - 0.05, old  # rehearsal forgets less, same seed
    verdict = report["verdict"]
    assert verdict["variant"] == "update-replay" and "forgetting_points" in verdict
    md = (out / "report.md").read_text()
    assert "Original data (forgetting)" in md and "New data (the gain)" in md and "**Verdict**" in md

    manifest = json.loads((out / "model" / "lepton.json").read_text())
    parent_manifest = json.loads((shift["parent"] / "lepton.json").read_text())
    lineage = manifest["lineage"]
    assert lineage["parent"]["manifest_sha256"] == parent_manifest["manifest_sha256"]
    learned = {d["split"]: d for d in lineage["data"]}
    assert learned["train"]["path"] == str(shift["train"])
    assert len(learned["train"]["sha256"]) == 64
    assert learned["update-replay.replay"]["sha256"] == parent_manifest["files"]["data/rehearsal.jsonl"]["sha256"]
    assert "data/rehearsal.jsonl" in manifest["files"]  # the new sample: old and new data, checksummed
    sample = [json.loads(x) for x in (out / "model" / "data" / "rehearsal.jsonl").read_text().splitlines()]
    assert len(sample) == 200 and any(any(w in r["text"] for w in B_POSITIVE + B_NEGATIVE) for r in sample)
    assert not (out / "work").exists()
    capsys.readouterr()
    assert main(["info", str(out / "model")]) == 0  # every checksum verified
    assert "verified" in capsys.readouterr().out


def test_new_class_with_lora_keeps_the_parent_rows(shift: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import load_file

    train = write_shift_tsv(tmp_path / "train3.tsv", 240, seed=5, neutral=True, clash=False)
    dev = write_shift_tsv(tmp_path / "dev3.tsv", 90, seed=6, neutral=True, clash=False)
    out = tmp_path / "lora"
    assert main(["-q", "update", str(shift["parent"]), "--data", str(train), "--dev", str(dev), "-o", str(out),
                 "--method", "lora", "--no-naive", "--no-progress", "--set", "stages.0.epochs=6",
                 "--set", "stages.0.lora.r=16", "--set", "stages.0.lr=0.01"]) == 0
    manifest = json.loads((out / "model" / "lepton.json").read_text())
    assert manifest["task"]["labels"] == ["0", "1", "neutral"]  # the parent's first, the new one appended
    before = load_file(str(shift["parent"] / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert after["classifier.weight"].shape[0] == 3
    assert (after["classifier.weight"][:2] == before["classifier.weight"]).all()
    assert (after["classifier.bias"][:2] == before["classifier.bias"]).all()
    full = json.loads((out / "report.json").read_text())
    card = next(c for c in full["variants"] if c["name"] == "update-lora")
    per_class = {c["label"]: c for c in card["quality"]["per_class"]}
    assert per_class["neutral"]["recall"] > 0.3, per_class  # the new class is learned (chance: never predicted)
    assert full["update"]["old"] is not None


def test_rebuild_with_export_and_quantize(shift: dict[str, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    recipe = yaml.safe_load(shift["recipe"].read_text())
    recipe["stages"] += [{"kind": "export", "parity_items": 8}, {"kind": "quantize", "method": "dynamic_int8"}]
    (tmp_path / "full.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "int8"
    assert _update(shift, out, "--method", "l2sp", "--no-naive", "--recipe", str(tmp_path / "full.yaml"),
                   "--set", "stages.0.l2sp=0.1") == 0
    manifest = json.loads((out / "model" / "lepton.json").read_text())
    assert manifest["runtime"] == "onnxruntime"
    kinds = [r["kind"] for r in manifest["history"]]
    assert kinds == ["update", "export", "quantize"]
    assert manifest["history"][1]["summary"]  # the export's parity record, as in a run
    report = json.loads((out / "report.json").read_text())["update"]
    assert [r["variant"] for r in report["new"]["rows"]] == ["parent", "update-l2sp", "quantize"]
    capsys.readouterr()
    assert main(["info", str(out / "model")]) == 0
    # the INT8 artifact cannot be updated itself: one line pointing at its float parent
    rc = main(["update", str(out / "model"), "--data", str(shift["train"]), "--dev", str(shift["dev"]),
               "-o", str(tmp_path / "again")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "float parent" in err[0], err


@pytest.mark.parametrize("case", ["missing-model", "unknown-method", "no-labels", "no-rehearsal"])
def test_bad_inputs_are_one_line(case: str, shift: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, data, extra = str(shift["parent"]), str(shift["train"]), []
    expected = {"missing-model": "no such model folder", "unknown-method": "--method",
                "no-labels": "label column", "no-rehearsal": "rehearsal"}[case]
    if case == "missing-model":
        model = str(tmp_path / "nothing")
    elif case == "unknown-method":
        extra = ["--method", "ewc"]
    elif case == "no-labels":
        data = str(write_shift_tsv(tmp_path / "unlabelled.tsv", 20, seed=7, header="sentence"))
    else:
        extra = ["--method", "replay", "--set", "stages.0.max_steps=1"]
        (tmp_path / "parent").mkdir()
        import shutil

        model = str(tmp_path / "parent" / "model")
        shutil.copytree(shift["parent"], model)
        manifest = json.loads((Path(model) / "lepton.json").read_text())
        (Path(model) / "data" / "rehearsal.jsonl").unlink()
        del manifest["files"]["data/rehearsal.jsonl"]
        from lepton.pipeline.artifact import DIGEST_KEY, manifest_digest

        manifest[DIGEST_KEY] = manifest_digest(manifest)
        (Path(model) / "lepton.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    rc = main(["update", model, "--data", data, "--dev", str(shift["dev"]), "-o", str(tmp_path / "out"),
               "--no-progress", *extra])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("lepton:")]
    assert rc == 2 and len(err) == 1 and expected in err[0], err


def test_naive_model_is_reused_and_checked(shift: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           caplog: pytest.LogCaptureFixture) -> None:
    quick = ["--set", "stages.0.max_steps=2"]
    assert _update(shift, tmp_path / "naive", "--method", "naive", *quick) == 0
    caplog.clear()
    with caplog.at_level("INFO", logger="lepton"):
        assert _update(shift, tmp_path / "l2sp", "--method", "l2sp", "--naive-model",
                       str(tmp_path / "naive" / "model"), *quick) == 0
    assert not any("with method naive, for comparison" in r.getMessage() for r in caplog.records)  # not retrained
    update = json.loads((tmp_path / "l2sp" / "report.json").read_text())["update"]
    assert {r["variant"] for r in update["new"]["rows"]} == {"parent", "naive", "update-l2sp"}
    capsys.readouterr()
    # The parent is not a naive update of itself: refused in one line before anything trains.
    assert _update(shift, tmp_path / "bad", "--method", "l2sp", "--naive-model", str(shift["parent"]), *quick) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lepton:")]
    assert len(err) == 1 and "--naive-model" in err[0] and "not an update of" in err[0], err
    assert not (tmp_path / "bad" / "model").exists()
