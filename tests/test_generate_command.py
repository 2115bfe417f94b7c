"""`lepton generate` under bad input: each mistake is one `lepton: error:` line at once (exit 2),
never a traceback or a long wait; `--require-signature` as on serve, evaluate, compare and info.
A tiny random Llama (tests/gen_tiny.py) as a model folder and as a saved (and signed) Lepton model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from lepton.cli import main
from tests.gen_tiny import save_tiny_llama

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    # In a fresh `lepton` process the CLI turns these off before transformers loads; here it is loaded.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return save_tiny_llama(tmp_path_factory.mktemp("llama") / "llama")


@pytest.fixture(scope="module")
def saved(llama, tmp_path_factory) -> dict[str, str]:
    """A saved generative Lepton model, a signed copy and the keys."""
    import shutil

    from lepton.models.decoder import load_generative
    from lepton.pipeline.artifact import save_artifact, sign_model
    from lepton.pipeline.signing import keygen
    from lepton.runtimes.bundle import ModelBundle
    from lepton.tasks import TaskSpec

    pytest.importorskip("cryptography")
    root = tmp_path_factory.mktemp("saved")
    model, tokenizer = load_generative(str(llama))
    task = TaskSpec(kind="generation", max_length=32, options={"generation": {"max_new_tokens": 3}})
    plain = save_artifact(ModelBundle(model, tokenizer, task), root / "model")
    signed = Path(shutil.copytree(plain, root / "signed"))
    keygen(root / "key")
    keygen(root / "other")
    sign_model(signed, root / "key")
    return {"model": str(plain), "signed": str(signed), "pub": str(root / "key.pub"),
            "other": str(root / "other.pub")}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line(result: tuple[int, str, str], *needles: str) -> str:
    code, _, err = result
    lines = err.strip("\n").splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lepton: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_a_prompt_longer_than_the_context_is_refused_at_once(capsys, llama) -> None:
    started = time.monotonic()
    _one_line(_run(capsys, "generate", llama, " ".join(["word"] * 20_000)), "prompt", "characters")
    _one_line(_run(capsys, "generate", llama, "a " * 300), "prompt", "over the model's context of 256")
    _one_line(_run(capsys, "generate", llama, "a", "a " * 100, "--max-new-tokens", "200"),
              "prompt 2 of 2", "max_new_tokens", "at most 56 prompt tokens")
    _one_line(_run(capsys, "generate", llama, "hi", "--max-new-tokens", "300"), "leaves no room")
    assert time.monotonic() - started < 30


def test_empty_and_undecodable_prompts_are_refused(capsys, llama) -> None:
    _one_line(_run(capsys, "generate", llama, ""), "prompt: is empty")
    _one_line(_run(capsys, "generate", llama, "a man", ""), "prompt 2 of 2: is empty")
    _one_line(_run(capsys, "generate", llama, "caf\ud800"), "lone surrogate")
    _one_line(_run(capsys, "generate", llama, b"caf\xe9".decode("utf-8", "surrogateescape")), "lone surrogate")
    _one_line(_run(capsys, "generate", llama, "hi", "--stop", "\ud800"), "stop", "lone surrogate")


@pytest.mark.parametrize(("args", "needles"), [
    (["--system", "be brief"], ["--system", "needs --chat"]),
    (["--chat"], ["--chat", "no chat template"]),
    (["--seed", "3"], ["--seed", "sample only"]),
    (["--seed", "0"], ["--seed", "sample only"]),  # the default value, still given for nothing
    (["--top-p", "0.9"], ["--top-p", "sample only"]),
    (["--top-k", "4"], ["--top-k", "sample only"]),
    (["--temperature", "0.7"], ["--temperature", "sample only"]),
    (["--strategy", "sample", "--num-beams", "3"], ["--num-beams", "beam only"]),
    (["--strategy", "sample", "--temperature", "nan"], ["temperature", "finite"]),
    (["--strategy", "sample", "--temperature", "-1"], ["temperature"]),
    (["--strategy", "sample", "--top-p", "1.5"], ["top_p"]),
    (["--strategy", "sample", "--seed", "-1"], ["seed"]),
    (["--repetition-penalty", "inf"], ["repetition_penalty", "finite"]),
    (["--max-new-tokens", "0"], ["max_new_tokens"]),
    (["--max-new-tokens", "-3"], ["max_new_tokens"]),
])
def test_flags_that_would_be_ignored_or_are_out_of_range_are_refused(capsys, llama, args, needles) -> None:
    _one_line(_run(capsys, "generate", llama, "hi", *args), *needles)


def test_saved_model_refuses_spec_only_flags_and_generates(capsys, saved) -> None:
    _one_line(_run(capsys, "generate", saved["model"], "hi", "--system", "x"), "--system")
    _one_line(_run(capsys, "generate", saved["model"], "hi", "--chat"), "--chat", "task.chat")
    _one_line(_run(capsys, "generate", saved["model"], ""), "is empty")
    _one_line(_run(capsys, "generate", saved["model"], "a " * 300), "context")
    code, out, _ = _run(capsys, "generate", saved["model"], "a man", "--strategy", "sample", "--seed", "2")
    assert code == 0 and out.strip()


def test_require_signature_as_on_serve_and_evaluate(capsys, saved, llama) -> None:
    code, out, err = _run(capsys, "generate", saved["signed"], "a man", "--require-signature", saved["pub"],
                          "--json")
    assert code == 0, err
    _one_line(_run(capsys, "generate", saved["signed"], "a man", "--require-signature", saved["other"]),
              "not with the trusted key")
    _one_line(_run(capsys, "generate", saved["model"], "a man", "--require-signature", saved["pub"]))
    _one_line(_run(capsys, "generate", llama, "a man", "--require-signature", saved["pub"]),
              "--require-signature", "not a saved Lepton model")
    # The generative server honours it too: refused before it listens.
    _one_line(_run(capsys, "serve", saved["signed"], "--port", "0", "--require-signature", saved["other"]),
              "not with the trusted key")


def test_prompt_limits_shared_with_the_server() -> None:
    from lepton.tasks.prompt_limits import chars_problem, text_problem, tokens_problem

    assert text_problem("") == "is empty" and text_problem("", allow_empty=True) is None
    assert "lone surrogate" in (text_problem("a\udc80") or "")
    assert text_problem("naïve ☃ \U0001f600") is None
    assert tokens_problem(10, 6, 16) is None
    assert "at most 10 prompt tokens" in (tokens_problem(11, 6, 16) or "")
    assert "no tokens" in (tokens_problem(0, 1, 16) or "")
    assert tokens_problem(100, 5, None) is None and "limit of 64" in (tokens_problem(100, 5, None, cap=64) or "")
    assert chars_problem("x" * 320, 10) is None and chars_problem("x" * 321, 10) is not None
