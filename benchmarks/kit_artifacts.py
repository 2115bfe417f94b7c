"""The bad-input kit's signing, artifact and path cases (``python benchmarks/bad_inputs.py --surface artifacts``).

Damaged signatures and keys against every command that verifies one; model files that link out of
their folder; JSON nested past the parser's depth wherever a user's file is read; output folders
that sit inside the data or the model, or merely look like runs; data and recipes that are not
regular files. The core kit (bad_inputs.py) has the first signing cases; these are their
neighbours.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bad_inputs import Case, Ctx, recipe_tree

SHARED = ["artifacts/news", "artifacts/folder-recipe.yaml"]
DEEP = "[" * 100_000 + "]" * 100_000


def build(fix: Path) -> None:
    base = fix / "artifacts"
    news = base / "news"
    for label, words in (("pos", ["good", "great", "fine"]), ("neg", ["bad", "awful", "dull"])):
        (news / label).mkdir(parents=True)
        for i in range(8):
            (news / label / f"{i}.txt").write_text(f"a {words[i % 3]} film, number {i}")
    tree = recipe_tree(fix)
    tree["task"] = {"kind": "sequence_classification"}
    tree["data"] = {"train": {"path": str(news), "format": "folder"}, "dev": {"path": str(news), "format": "folder"}}
    (base / "folder-recipe.yaml").write_text(yaml.safe_dump(tree))


# ---------------------------------------------------------------------------- helpers


def signed_copy(x: Ctx, change: Callable[[Path], Any] | None = None) -> str:
    m = Path(shutil.copytree(x.fix / "signed", x.d / "signed"))
    if change is not None:
        change(m)
    return str(m)


def _sig(m: Path) -> Path:
    return m / "lepton.json.sig"


def _edit_sig(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def change(m: Path) -> None:
        record = json.loads(_sig(m).read_text())
        edit(record)
        _sig(m).write_text(json.dumps(record))
    return change


def _write_sig(data: str | bytes) -> Callable[[Path], None]:
    def change(m: Path) -> None:
        _sig(m).write_bytes(data if isinstance(data, bytes) else data.encode())
    return change


def _sig_of_another_model(m: Path) -> None:
    """The signature of a different (re-signed, relabelled) model copied over this one's."""
    from lepton.pipeline.artifact import DIGEST_KEY, manifest_digest, sign_model

    other = m.parent / "other"
    shutil.copytree(m, other)
    _sig(other).unlink()
    manifest = json.loads((other / "lepton.json").read_text())
    manifest["source_model"] = "someone else's"
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    (other / "lepton.json").write_text(json.dumps(manifest))
    sign_model(other, _key_of(m))
    shutil.copy(_sig(other), _sig(m))


def _key_of(m: Path) -> Path:
    # the case folder is scratch/case-N; the fixtures sit beside scratch
    return m.parents[2] / "fixtures" / "key"


def _relabel_after_signing(m: Path) -> None:
    from lepton.pipeline.artifact import DIGEST_KEY, manifest_digest

    manifest = json.loads((m / "lepton.json").read_text())
    manifest["task"]["labels"] = list(reversed(manifest["task"]["labels"]))
    manifest[DIGEST_KEY] = manifest_digest(manifest)
    (m / "lepton.json").write_text(json.dumps(manifest))


SIGNATURE_DAMAGE: list[tuple[str, Callable[[Path], Any]]] = [
    ("signature file empty", _write_sig("")),
    ("signature file not JSON", _write_sig("{ nope")),
    ("signature file binary", _write_sig(os.urandom(64))),
    ("signature file nested 100,000 deep", _write_sig(DEEP)),
    ("signature file a JSON list", _write_sig("[1, 2]")),
    ("signature algorithm rsa", _edit_sig(lambda r: r.update(algorithm="rsa"))),
    ("signature not base64", _edit_sig(lambda r: r.update(signature="%%%not base64%%%"))),
    ("signature 10 bytes long", _edit_sig(lambda r: r.update(signature=base64.b64encode(b"x" * 10).decode()))),
    ("signature all zeros", _edit_sig(lambda r: r.update(signature=base64.b64encode(bytes(64)).decode()))),
    ("signature a number", _edit_sig(lambda r: r.update(signature=12345))),
    ("signature field missing", _edit_sig(lambda r: r.pop("signature"))),
    ("signature file is a folder", lambda m: (_sig(m).unlink(), _sig(m).mkdir())),
    ("signature of another model copied in", _sig_of_another_model),
    ("manifest relabelled after signing", _relabel_after_signing),
    ("signature deleted", lambda m: _sig(m).unlink()),
]

PUBLIC_KEY_DAMAGE: list[tuple[str, str | bytes]] = [
    ("public key empty", ""), ("public key garbage", "garbage"), ("public key binary", os.urandom(48)),
    ("public key nested JSON", DEEP), ("public key half a PEM", "-----BEGIN PUBLIC KEY-----\nMCow\n"),
]


def _verifying(command: str, model: str, key: str) -> list[str]:
    if command == "compare":
        return ["compare", model, model, "--require-signature", key]
    return [command, model, "--require-signature", key]


# ---------------------------------------------------------------------------- cases


def cases() -> list[Case]:  # noqa: PLR0915 - a flat list of cases reads best as one
    c: list[Case] = []

    def add(kind: str, group: str, argv: Callable[[Ctx], list[str]], **kw: Any) -> None:
        c.append(Case(kind, group, argv, **kw))

    # --- a signed model whose signature (or manifest) was damaged, for every verifying command
    for name, change in SIGNATURE_DAMAGE:
        for command in ("info", "evaluate", "compare", "serve"):
            add(f"{command}: {name}", "signing",
                lambda x, ch=change, cmd=command: _verifying(cmd, signed_copy(x, ch), str(x.fix / "key.pub")))
    for name, data in PUBLIC_KEY_DAMAGE:
        for command in ("info", "evaluate"):
            add(f"{command}: {name}", "signing",
                lambda x, d=data, cmd=command: _verifying(cmd, str(x.fix / "signed"), x.write("k.pub", d)))
    add("info: public key is a folder", "signing",
        lambda x: ["info", str(x.fix / "signed"), "--require-signature", str(x.d)])
    add("info: the other key's public half", "signing",
        lambda x: ["info", str(x.fix / "signed"), "--require-signature", str(x.fix / "other-key.pub")])
    add("serve: signed by another key", "signing",
        lambda x: ["serve", str(x.fix / "signed"), "--require-signature", str(x.fix / "other-key.pub")])
    add("serve: unsigned model", "signing",
        lambda x: ["serve", str(x.fix / "finished" / "model"), "--require-signature", str(x.fix / "key.pub")])
    # --- keys and signing itself
    add("keygen with an empty name", "keys", lambda x: ["keygen", ""])
    add("keygen onto an existing folder", "keys", lambda x: ["keygen", str(x.d)])
    add("keygen where only KEY.pub exists", "keys", lambda x: ["keygen", _only_pub(x)],
        protect=lambda x: [x.d / "k.pub"])
    add("sign a file, not a folder", "keys", lambda x: ["sign", x.write("m.bin", "x"), "--key", str(x.fix / "key")])
    add("sign with a key that is a folder", "keys", lambda x: ["sign", str(x.copy_model()), "--key", str(x.d)])
    add("sign with an empty key file", "keys", lambda x: ["sign", str(x.copy_model()), "--key", x.write("k", "")])
    add("sign with a key nested deep", "keys", lambda x: ["sign", str(x.copy_model()), "--key", x.write("k", DEEP)])
    add("sign a model whose manifest is nested deep", "keys",
        lambda x: ["sign", _model_with(x, "lepton.json", DEEP), "--key", str(x.fix / "key")])
    add("sign a model with a file linked from outside", "keys",
        lambda x: ["sign", _linked_out(x, "config.json"), "--key", str(x.fix / "key")])
    # --- model files that are links leaving the folder
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "lepton.json"):
        for command in ("info", "evaluate", "serve"):
            add(f"{command}: {name} links outside the model folder", "links",
                lambda x, n=name, cmd=command: [cmd, _linked_out(x, n)])
    add("info: the whole model folder is a link (allowed)", "links", lambda x: ["info", _folder_link(x)],
        expect="accept", why="a link to a model folder is the folder: every file is inside what it points to")
    # --- JSON nested past the parser's depth, wherever a user's file is read
    for command in ("info", "evaluate", "serve", "compare"):
        add(f"{command}: lepton.json nested 100,000 deep", "deep JSON",
            lambda x, cmd=command: [cmd, _model_with(x, "lepton.json", DEEP)]
            + ([_model_with(x, "lepton.json", DEEP)] if cmd == "compare" else []))
    add("run: config.json of the model nested deep", "deep JSON",
        lambda x: ["run", x.recipe_with(lambda t: t.update(model=_plain_model_with(x, "config.json", DEEP))),
                   "-o", str(x.d / "o"), "--no-progress"])
    add("run: a JSONL data line nested deep", "deep JSON",
        lambda x: ["run", x.recipe_with(lambda t: t["data"]["train"].update(path=_jsonl(x))), "-o",
                   str(x.d / "o"), "--no-progress"])
    add("evaluate: a JSONL data file nested deep", "deep JSON",
        lambda x: ["evaluate", x.model, "--data", _jsonl(x, all_deep=True)])
    add("run --resume: a stage's quality cache nested deep", "deep JSON", _resume_with_deep_cache,
        protect=lambda x: [])
    # --- output folders
    add("run -o inside folder-format data", "output folder",
        lambda x: ["run", _folder_recipe(x), "-o", str(x.fix / "artifacts" / "news" / "run-1"), "--no-progress"])
    add("run -o is the data folder itself", "output folder",
        lambda x: ["run", _folder_recipe(x), "-o", str(x.fix / "artifacts" / "news"), "--no-progress"])
    add("run -o inside a data file's folder that holds it", "output folder", _holds_data,
        protect=lambda x: [x.d / "run"])
    add("run -o inside the model folder", "output folder",
        lambda x: ["run", x.recipe, "-o", str(x.fix / "tiny-bert" / "runs"), "--no-progress"])
    for flags in ([], ["--force"], ["--resume"]):
        add(f"run {' '.join(flags) or 'plain'} on a user folder with work/recipe.json", "output folder",
            lambda x, f=flags: ["run", x.recipe, "-o", _looks_like_run(x, "work"), *f, "--no-progress"],
            protect=lambda x: [x.d / "mine"])
        add(f"run {' '.join(flags) or 'plain'} on a user folder with model/lepton.json and report.json",
            "output folder",
            lambda x, f=flags: ["run", x.recipe, "-o", _looks_like_run(x, "model"), *f, "--no-progress"],
            protect=lambda x: [x.d / "mine"])
    add("run -o a link to a user's folder", "output folder",
        lambda x: ["run", x.recipe, "-o", _link_to_victim(x), "--force", "--no-progress"])
    add("run -o with a 300-character name", "output folder",
        lambda x: ["run", x.recipe, "-o", str(x.d / ("o" * 300)), "--no-progress"])
    add("run -o /dev/null", "output folder", lambda x: ["run", x.recipe, "-o", "/dev/null", "--no-progress"])
    add("search -o inside the data", "output folder",
        lambda x: ["search", _folder_recipe(x), "-o", str(x.fix / "artifacts" / "news" / "s"), "--trials", "1"])
    # --- files that are not regular files
    add("validate a recipe that is a FIFO", "not a file", lambda x: ["validate", _fifo(x, "r.yaml")])
    add("run with train data a FIFO", "not a file",
        lambda x: ["run", x.recipe_with(lambda t: t["data"]["train"].update(path=_fifo(x, "t.tsv"))), "-o",
                   str(x.d / "o"), "--no-progress"])
    add("evaluate --data a FIFO", "not a file", lambda x: ["evaluate", x.model, "--data", _fifo(x, "d.tsv")])
    add("evaluate --data /dev/zero", "not a file", lambda x: ["evaluate", x.model, "--data", "/dev/zero"])
    add("run with a recipe /dev/zero", "not a file", lambda x: ["run", "/dev/zero", "-o", str(x.d / "o")])
    add("sign --key a FIFO", "not a file", lambda x: ["sign", str(x.copy_model()), "--key", _fifo(x, "k")])
    add("info --require-signature a FIFO", "not a file",
        lambda x: ["info", str(x.fix / "signed"), "--require-signature", _fifo(x, "k.pub")])
    return c


def _only_pub(x: Ctx) -> str:
    (x.d / "k.pub").write_text("someone's public key")
    return str(x.d / "k")


def _model_with(x: Ctx, name: str, text: str) -> str:
    folder = x.d / "model"
    if not folder.exists():
        x.copy_model()
    (folder / name).write_text(text)
    return str(folder)


def _plain_model_with(x: Ctx, name: str, text: str) -> str:
    folder = Path(shutil.copytree(x.fix / "tiny-bert", x.d / "plain"))
    (folder / name).write_text(text)
    return str(folder)


def _linked_out(x: Ctx, name: str) -> str:
    m = x.copy_model()
    outside = x.d / f"outside-{name}"
    shutil.move(m / name, outside)  # the same bytes: only the link's place is wrong
    os.symlink(outside, m / name)
    return str(m)


def _folder_link(x: Ctx) -> str:
    link = x.d / "link"
    os.symlink(x.fix / "finished" / "model", link)
    return str(link)


def _jsonl(x: Ctx, all_deep: bool = False) -> str:
    good = [json.dumps({"sentence": f"a good film {i}", "label": i % 2}) for i in range(8)]
    lines = [DEEP] * 3 if all_deep else [*good[:4], DEEP, *good[4:]]
    return x.write("data.jsonl", "\n".join(lines) + "\n")


def _resume_with_deep_cache(x: Ctx) -> list[str]:
    # The interrupted run was killed inside stage 0: give it stage 0 done (the finished run's model
    # as that stage's snapshot), so --resume reuses the stage and reads its quality cache.
    run = x.copy_run("interrupted")
    stage_dir = next((run / "work").glob("stage-0-*"))
    shutil.copytree(x.fix / "finished" / "model", stage_dir / "snapshot")
    (stage_dir / "quality.json").write_text(DEEP)
    return ["run", x.recipe, "-o", str(run), "--resume", "--no-progress", "--set", "stages.0.checkpoint_every=1"]


def _folder_recipe(x: Ctx) -> str:
    return str(x.fix / "artifacts" / "folder-recipe.yaml")


def _holds_data(x: Ctx) -> list[str]:
    run = x.copy_run("finished")
    shutil.move(str(run), x.d / "run")
    run = x.d / "run"
    data = run / "train.tsv"
    shutil.copy(x.fix / "train.tsv", data)
    recipe = x.recipe_with(lambda t: t["data"]["train"].update(path=str(data)))
    return ["run", recipe, "-o", str(run), "--force", "--no-progress"]


def _looks_like_run(x: Ctx, how: str) -> str:
    mine = x.d / "mine"
    if how == "work":
        (mine / "work").mkdir(parents=True)
        (mine / "work" / "recipe.json").write_text(json.dumps({"schema_version": 1, "stages": []}))
        (mine / "work" / "thesis.tex").write_text("years of work")
    else:
        (mine / "model").mkdir(parents=True)
        (mine / "model" / "lepton.json").write_text("{}")
        (mine / "model" / "photo.bin").write_bytes(b"\x00" * 64)
        (mine / "report.json").write_text("{}")
    return str(mine)


def _link_to_victim(x: Ctx) -> str:
    link = x.d / "link"
    os.symlink(x.fix / "victim", link)
    return str(link)


def _fifo(x: Ctx, name: str) -> str:
    path = x.d / name
    os.mkfifo(path)
    return str(path)
