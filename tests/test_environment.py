"""Environment fingerprint: sane on this machine, comparable with itself, differences reported."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from lepton.evaluation import environment
from lepton.evaluation.environment import (
    Environment,
    describe,
    fingerprint,
    int8_fast,
    same_machine,
)


def test_fingerprint_is_sane():
    env = fingerprint(seed=3)
    assert isinstance(env, Environment)
    assert env.cpu_model
    assert env.cores_logical >= 1
    assert env.cores_physical is None or 1 <= env.cores_physical <= env.cores_logical
    assert env.torch_threads >= 1
    assert env.packages["torch"].startswith("2.")
    assert env.packages["numpy"]
    assert set(env.packages) >= {"lepton", "torch", "transformers", "onnxruntime", "peft"}
    assert env.seed == 3
    assert len(env.hostname_hash) == 12 and int(env.hostname_hash, 16) >= 0
    assert env.lepton_commit is None or len(env.lepton_commit.removesuffix("-dirty")) >= 40
    if env.cpu_flags:  # Linux
        assert set(env.cpu_flags) == {
            "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16"
        }  # fmt: skip
    json.loads(env.model_dump_json())  # serializable into a scorecard


def test_same_machine_with_itself():
    env = fingerprint()
    assert same_machine(env, env) == []
    assert same_machine(env, env.model_copy(update={"seed": 99})) == []


def test_same_machine_reports_differences():
    env = fingerprint()
    flags = dict(env.cpu_flags, avx512_vnni=not env.cpu_flags.get("avx512_vnni", False))
    other = env.model_copy(
        update={
            "torch_threads": env.torch_threads + 3,
            "cpu_model": "Other CPU",
            "cpu_flags": flags,
            "gpu": "NVIDIA H200",
            "packages": dict(env.packages, torch="2.0.0"),
        }
    )
    differences = same_machine(env, other)
    text = "\n".join(differences)
    assert len(differences) == 5
    for word in ("torch_threads", "cpu_model", "avx512_vnni", "gpu", "torch:"):
        assert word in text


def _env(**flags) -> Environment:
    base = fingerprint()
    names = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8",
             "amx_bf16")  # fmt: skip
    return base.model_copy(update={"cpu_flags": {name: flags.get(name, False) for name in names}})


def test_int8_fast():
    assert not int8_fast(_env(avx2=True, fma=True))
    assert int8_fast(_env(avx2=True, avx512f=True, avx512_vnni=True))
    assert int8_fast(_env(avx2=True, avx_vnni=True))
    assert int8_fast(_env(amx_int8=True))
    assert not int8_fast(fingerprint().model_copy(update={"cpu_flags": {}}))


def test_describe():
    env = fingerprint()
    line = describe(env)
    assert f"{env.torch_threads} thread" in line
    assert env.cpu_model in line and "torch 2." in line
    plain = _env(avx2=True, fma=True).model_copy(
        update={"cpu_model": "AMD EPYC 7B12", "cores_logical": 2, "cores_physical": 2,
                "torch_threads": 2, "gpu": None, "packages": {"torch": "2.13.0"}}
    )  # fmt: skip
    expected = "AMD EPYC 7B12, 2 cores, 2 threads, AVX2 (no AVX-512/VNNI/AMX), torch 2.13.0"
    assert describe(plain) == expected
    smt = plain.model_copy(update={"cores_physical": 1})
    assert describe(smt).startswith("AMD EPYC 7B12, 1 core (2 logical), 2 threads")


def _git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd, check=True, capture_output=True,
    )  # fmt: skip


def test_lepton_commit_from_a_checkout(tmp_path, monkeypatch):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    package = tmp_path / "src" / "lepton" / "evaluation"
    package.mkdir(parents=True)
    (package / "environment.py").write_text("# stand-in\n")
    monkeypatch.setattr(environment, "__file__", str(package / "environment.py"))
    assert environment._lepton_commit() is None  # not a git checkout

    _git("init", "-q", cwd=tmp_path)
    _git("add", ".", cwd=tmp_path)
    _git("commit", "-q", "-m", "x", cwd=tmp_path)
    commit = environment._lepton_commit()
    assert commit is not None and len(commit) == 40
    (package / "environment.py").write_text("# changed\n")
    assert environment._lepton_commit() == commit + "-dirty"


def test_lepton_commit_without_git(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert environment._lepton_commit() is None
