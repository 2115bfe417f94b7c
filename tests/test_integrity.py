"""Issue 12, defect 5: integrity cannot be bypassed. The manifest names its hash algorithm, must
list every file the model needs, checks its own digest, refuses unlisted files a loader would
read; an Ed25519 signature with a user-held key catches deliberate tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import lepton
from lepton.core.errors import ArtifactError, SignatureError
from lepton.pipeline.artifact import DIGEST_KEY, MANIFEST, manifest_digest, read_manifest, save_artifact
from lepton.pipeline.signing import SIGNATURE, keygen
from tests.test_artifact import sequence_bundle
from tests.test_cli import _quiet_transformers, assert_user_error, cli  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def saved(tiny_model_dir, tmp_path_factory) -> Path:
    return save_artifact(sequence_bundle(tiny_model_dir), tmp_path_factory.mktemp("integrity") / "model",
                         recipe={"name": "unit"})


@pytest.fixture
def model(saved, tmp_path) -> Path:
    return Path(shutil.copytree(saved, tmp_path / "model"))


def edit(folder: Path, change, *, redigest: bool) -> None:
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    change(manifest)
    if redigest:
        manifest[DIGEST_KEY] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def flip_a_weight(folder: Path) -> None:
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))


@pytest.mark.parametrize("redigest", [False, True])
def test_deleting_the_weights_entry_no_longer_bypasses_the_checksums(capsys, model, redigest):
    # Reported: drop files["model.safetensors"] from lepton.json, flip a byte of the weights:
    # `lepton info` said "files: 4 verified", and evaluate and serve loaded the damaged weights.
    edit(model, lambda m: m["files"].pop("model.safetensors"), redigest=redigest)
    flip_a_weight(model)
    with pytest.raises(ArtifactError) as info:
        lepton.load(model)
    needle = "model.safetensors" if redigest else "edited after it was saved"
    assert needle in str(info.value)
    assert_user_error(cli(capsys, "info", model), needle)
    assert_user_error(cli(capsys, "evaluate", model, "--limit", "2"), needle)


def test_the_files_map_names_the_algorithm_and_old_manifests_still_load(model):
    manifest = read_manifest(model)
    assert all(set(v) == {"sha256"} for v in manifest["files"].values())
    # A manifest as Lepton wrote it before: bare hex digests, no manifest digest.
    edit(model, lambda m: (m.update(files={k: v["sha256"] for k, v in m["files"].items()}), m.pop(DIGEST_KEY)),
         redigest=False)
    assert lepton.load(model).labels == ["neg", "pos"]
    flip_a_weight(model)
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        lepton.load(model)


@pytest.mark.parametrize(("change", "needle"), [
    (lambda m: m["files"].update({"config.json": {"md5": "0" * 32}}), "sha256 only"),
    (lambda m: m["files"].update({"config.json": "abc"}), "64 hex digits"),
    (lambda m: m["files"].update({"../outside.json": {"sha256": "0" * 64}}), "not a path inside"),
    (lambda m: m["files"].update({"/etc/passwd": {"sha256": "0" * 64}}), "not a path inside"),
    (lambda m: m["files"].pop("config.json"), "does not list config.json"),
    (lambda m: m["files"].pop("tokenizer_config.json"), "does not list tokenizer_config.json"),
])
def test_a_malformed_files_map_is_refused(model, change, needle):
    edit(model, change, redigest=True)
    with pytest.raises(ArtifactError, match=needle):
        read_manifest(model)


def test_an_edited_manifest_is_refused(model):
    edit(model, lambda m: m["task"].update(labels=["pos", "neg"]), redigest=False)  # swapped labels
    with pytest.raises(ArtifactError, match="edited after it was saved"):
        lepton.load(model)


def test_unlisted_files_a_loader_could_read_are_refused_others_reported(capsys, model, caplog):
    (model / "notes.md").write_text("my notes")  # never loaded: reported
    assert lepton.load(model).labels == ["neg", "pos"]
    assert any("notes.md" in r.getMessage() for r in caplog.records)
    code, out, _ = cli(capsys, "info", model)
    assert code == 0 and "not covered by the manifest (not loaded): notes.md" in out
    (model / "added_tokens.json").write_text('{"evil": 1}')  # the tokenizer would read it
    assert_user_error(cli(capsys, "info", model), "added_tokens.json", "not listed")


# ------------------------------------------------------------------- signatures


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    mine, _, _ = keygen(folder / "mine")
    theirs, _, _ = keygen(folder / "theirs")
    return {"private": mine, "public": Path(f"{mine}.pub"), "other": theirs,
            "other_public": Path(f"{theirs}.pub")}


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(capsys, keys):
    assert keys["private"].stat().st_mode & 0o777 == 0o600
    before = keys["private"].read_bytes()
    assert_user_error(cli(capsys, "keygen", keys["private"]), "already exists")
    assert keys["private"].read_bytes() == before


def test_a_signed_model_loads_with_its_key(capsys, model, keys):
    assert cli(capsys, "sign", model, "--key", keys["private"])[0] == 0
    assert (model / SIGNATURE).is_file()
    assert lepton.load(model, public_key=keys["public"]).labels == ["neg", "pos"]
    code, out, _ = cli(capsys, "info", model, "--require-signature", keys["public"])
    assert code == 0 and "signature: valid" in out
    code, out, _ = cli(capsys, "info", model)
    assert code == 0 and "not checked" in out


def test_tampering_that_rewrites_the_checksums_is_caught_by_the_signature(capsys, model, keys):
    # Without a key anyone can rewrite lepton.json consistently; the signature cannot be redone.
    assert cli(capsys, "sign", model, "--key", keys["private"])[0] == 0
    flip_a_weight(model)
    import hashlib

    digest = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    edit(model, lambda m: m["files"].update({"model.safetensors": {"sha256": digest}}), redigest=True)
    lepton.load(model)  # consistent again: without --require-signature it loads
    with pytest.raises(SignatureError, match="does not match"):
        lepton.load(model, public_key=keys["public"])
    assert_user_error(cli(capsys, "evaluate", model, "--require-signature", keys["public"]), "does not match")


def test_a_model_signed_by_another_key_or_not_at_all_is_refused(capsys, model, keys):
    with pytest.raises(SignatureError, match="not signed"):
        lepton.load(model, public_key=keys["public"])
    assert cli(capsys, "sign", model, "--key", keys["other"])[0] == 0
    with pytest.raises(SignatureError, match="not with the trusted key"):
        lepton.load(model, public_key=keys["public"])
    assert_user_error(cli(capsys, "compare", model, "--require-signature", keys["public"]), "trusted key")


@pytest.mark.parametrize("content", [b"", b"not a key",
                                     b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_a_bad_key_file_is_one_line(capsys, model, tmp_path, content):
    key = tmp_path / "key.pub"
    key.write_bytes(content)
    assert_user_error(cli(capsys, "info", model, "--require-signature", key), str(key))
    assert_user_error(cli(capsys, "sign", model, "--key", key), str(key))


def test_a_damaged_model_is_never_signed(capsys, model, keys):
    flip_a_weight(model)
    assert_user_error(cli(capsys, "sign", model, "--key", keys["private"]), "checksum mismatch")
    assert not (model / SIGNATURE).exists()


def test_serve_requires_the_signature_before_listening(model, keys):
    from lepton.serve import ServeSettings
    from lepton.serve.app import create_app

    with pytest.raises(SignatureError, match="not signed"):
        create_app(model, ServeSettings(require_signature=str(keys["public"]), max_batch=1))
