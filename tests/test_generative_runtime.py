"""Decoder-only runtime and compression core: ONNX export with a KV cache, the ONNX Runtime
generation loop, weight-only quantization, layer drop, FFN pruning and the token-level KD loss.

All on a tiny random Llama (hidden 64, 2 layers, 4 heads, 2 KV heads) with a word-level tokenizer
built here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from lepton.models import decoder_structure as dc  # noqa: E402
from lepton.runtimes.ort_decoder_loop import (  # noqa: E402
    GenerationError,
    OrtDecoder,
    SamplingSettings,
    encode_left_padded,
    generate,
    generate_ids,
    merge_states,
)
from lepton.stages.export.onnx_decoder import ParityError, check_parity, export_decoder  # noqa: E402
from lepton.stages.quantize import weight_only as wq  # noqa: E402

PROMPTS = ["w1 w2 w3", "w5 w9 w10 w11 w12 w40 w50", "w7", "w100 w101 w102 w103"]


def make_tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>"] + [f"w{i}" for i in range(252)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def make_model(seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module, object]:
    folder = tmp_path_factory.mktemp("tiny-llama")
    model, tok = make_model(), make_tokenizer()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, model, tok


@pytest.fixture(scope="module")
def exported(tiny: tuple[Path, torch.nn.Module, object], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    info = export_decoder(tiny[0], out, backend="torch")
    assert info["backend"] == "torch" and info["size_bytes"] > 0
    return out


def torch_greedy(model: torch.nn.Module, tok: object, prompts: list[str], n: int) -> list[list[int]]:
    ids, mask = encode_left_padded(tok, prompts)
    with torch.no_grad():
        out = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), do_sample=False,
                             max_new_tokens=n, pad_token_id=0, eos_token_id=None)
    return out[:, ids.shape[1]:].tolist()


def test_export_graph_has_cache_io_and_parity(tiny, exported) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported / "model.onnx"))
    names = {i.name for i in session.get_inputs()}
    assert {"input_ids", "attention_mask", "position_ids", "past_key_values.1.value"} <= names
    assert {"logits", "present.0.key", "present.1.value"} <= {o.name for o in session.get_outputs()}
    assert (exported / "tokenizer.json").is_file() and (exported / "config.json").is_file()
    empty = np.zeros((1, 2, 0, 16), np.float32)
    feeds = {"input_ids": np.array([[5, 6, 7]]), "attention_mask": np.ones((1, 3), np.int64),
             "position_ids": np.array([[0, 1, 2]]), **{n: empty for n in names if n.startswith("past")}}
    logits, key = session.run(["logits", "present.0.key"], feeds)
    assert logits.shape == (1, 1, 256) and key.shape == (1, 2, 3, 16)  # last position only; cache of 3
    report = check_parity(tiny[1], tiny[2], exported, PROMPTS, max_new_tokens=10)
    assert report["identical"] == len(PROMPTS)
    assert report["max_abs_logit_diff"] < 1e-4


def test_export_with_every_position_and_a_bad_backend(tiny, tmp_path) -> None:
    from lepton.stages.export.onnx_decoder import ExportError

    info = export_decoder(tiny[0], tmp_path / "all", last_logits_only=False)
    ids, mask = encode_left_padded(tiny[2], PROMPTS[:2])
    decoder = OrtDecoder(tmp_path / "all")
    assert decoder.session.get_outputs()[0].shape[1] == "sequence" and info["last_logits_only"] is False
    assert decoder.prefill(ids, mask)[0].shape == (2, 256)
    assert check_parity(tiny[1], tiny[2], tmp_path / "all", PROMPTS, max_new_tokens=4)["identical"] == 4
    with pytest.raises(ExportError, match="backend"):
        export_decoder(tiny[0], tmp_path / "x", backend="tensorrt")
    with pytest.raises(ExportError, match="fp32"):
        export_decoder(tiny[0], tmp_path / "x", precision="int4")
    assert not (tmp_path / "x").exists()


def test_parity_check_fails_on_a_different_model(tiny, exported) -> None:
    other = make_model(seed=1)
    with pytest.raises(ParityError, match="differ from PyTorch"):
        check_parity(other, tiny[2], exported, PROMPTS[:2], max_new_tokens=6)


def test_ort_loop_matches_torch_generate_on_a_padded_batch(tiny, exported) -> None:
    prompts = [PROMPTS[0], PROMPTS[1]]  # 3 and 7 tokens: left padding
    decoder = OrtDecoder(exported)
    got = generate(decoder, tiny[2], prompts, SamplingSettings(max_new_tokens=12))
    want = torch_greedy(tiny[1], tiny[2], prompts, 12)
    assert [g.token_ids for g in got] == want
    assert all(g.finish_reason == "length" for g in got)
    assert got[0].text == tiny[2].decode(want[0], skip_special_tokens=True)


def test_rows_joining_and_leaving_a_running_batch_keep_their_tokens(tiny, exported) -> None:
    decoder = OrtDecoder(exported)
    alone = {p: generate(decoder, tiny[2], [p], SamplingSettings(max_new_tokens=8))[0].token_ids for p in PROMPTS[:3]}
    # Request A runs 3 steps alone; B (longer prompt) joins; A leaves; C joins.
    ids, mask = encode_left_padded(tiny[2], [PROMPTS[0]])
    logits, state = decoder.prefill(ids, mask)
    toks = {0: []}
    for _ in range(3):
        toks[0].append(int(logits[0].argmax()))
        logits = decoder.step(state, [toks[0][-1]])
    ids_b, mask_b = encode_left_padded(tiny[2], [PROMPTS[1]])
    logits_b, state_b = decoder.prefill(ids_b, mask_b)
    state = merge_states([state, state_b])
    logits = np.concatenate([logits, logits_b])
    toks[1] = []
    for _ in range(5):
        toks[0].append(int(logits[0].argmax()))
        toks[1].append(int(logits[1].argmax()))
        logits = decoder.step(state, [toks[0][-1], toks[1][-1]])
    state = state.select([1])  # A is done (8 tokens)
    logits = logits[1:]
    ids_c, mask_c = encode_left_padded(tiny[2], [PROMPTS[2]])
    logits_c, state_c = decoder.prefill(ids_c, mask_c)
    state = merge_states([state, state_c])
    logits = np.concatenate([logits, logits_c])
    toks[2] = []
    for _ in range(3):
        toks[1].append(int(logits[0].argmax()))
        toks[2].append(int(logits[1].argmax()))
        logits = decoder.step(state, [toks[1][-1], toks[2][-1]])
    assert toks[0] == alone[PROMPTS[0]]
    assert toks[1] == alone[PROMPTS[1]]
    assert toks[2] == alone[PROMPTS[2]][:3]


def test_sampling_seed_stop_strings_and_eos(tiny, exported) -> None:
    decoder = OrtDecoder(exported)
    settings = SamplingSettings(max_new_tokens=10, do_sample=True, temperature=1.5, top_k=50, top_p=0.9, seed=7)
    first = generate(decoder, tiny[2], PROMPTS[:2], settings)
    again = generate(decoder, tiny[2], PROMPTS[:2], settings)
    other = generate(decoder, tiny[2], PROMPTS[:2], SamplingSettings(**{**settings.__dict__, "seed": 8}))
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    greedy = generate(decoder, tiny[2], [PROMPTS[0]], SamplingSettings(max_new_tokens=10))[0]
    word = greedy.text.split()[3]  # stop at the 4th generated word
    stopped = generate(decoder, tiny[2], [PROMPTS[0]], SamplingSettings(max_new_tokens=10, stop=(word,)))[0]
    assert stopped.finish_reason == "stop" and stopped.text == greedy.text[:greedy.text.find(word)]
    assert len(stopped.token_ids) < 10
    eos = greedy.token_ids[2]  # pretend the 3rd token ends the sequence
    ended = generate(decoder, tiny[2], [PROMPTS[0]], SamplingSettings(max_new_tokens=10), eos_token_id=eos)[0]
    assert ended.finish_reason == "eos" and ended.token_ids == greedy.token_ids[:greedy.token_ids.index(eos)]


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", 0.0), ("top_p", 1.5), ("top_k", -1)])
def test_bad_sampling_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(GenerationError, match=field):
        SamplingSettings(**{field: value}).validate()


def _first_logits(folder: Path, tok: object) -> np.ndarray:
    ids, mask = encode_left_padded(tok, PROMPTS)
    return OrtDecoder(folder).prefill(ids, mask)[0]


@pytest.mark.parametrize("kind", ["int4", "int4-hqq", "int8-nbits", "int8-dynamic"])
def test_onnx_weight_quantization_runs_and_stays_close(tiny, exported, tmp_path, kind) -> None:
    dest = tmp_path / kind
    if kind == "int8-dynamic":
        info = wq.quantize_onnx_dynamic_int8(exported, dest)
        assert info["ops"]["MatMul"] == 0 or info["ops"]["MatMulInteger"] + info["ops"]["DynamicQuantizeMatMul"] > 0
    else:
        bits = 8 if "int8" in kind else 4
        info = wq.quantize_onnx_weights(exported, dest, bits=bits, block_size=32,
                                        algorithm="hqq" if "hqq" in kind else "default",
                                        embeddings=kind in ("int4", "int8-nbits"))
        assert info["embeddings"] is (kind == "int4")  # 4-bit tables only
        assert info["ops"]["MatMulNBits"] == 15  # 7 per layer x 2 + lm_head
        if kind == "int4":
            assert info["ops"]["GatherBlockQuantized"] == 1
    base = _first_logits(exported, tiny[2])
    quant = _first_logits(dest, tiny[2])
    rel = np.abs(quant - base).max() / np.abs(base).max()
    assert rel < (0.05 if "int8" in kind else 0.25), rel
    assert info["size_bytes"] < (exported / "model.onnx").stat().st_size
    out = generate(OrtDecoder(dest), tiny[2], PROMPTS[:2], SamplingSettings(max_new_tokens=4))
    assert all(len(g.token_ids) == 4 for g in out)


@pytest.mark.parametrize("bits,group,tol", [(8, None, 0.02), (4, 32, 0.15)])
def test_torch_weight_only_linear_is_close_to_float(bits: int, group: int | None, tol: float) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(5, 64)
    q = wq.WeightOnlyLinear.from_linear(linear, bits=bits, group_size=group)
    with torch.no_grad():
        ref = linear(x)
        err = float((q(x) - ref).abs().max() / ref.abs().max())
    assert err < tol, err
    assert q.qweight.numel() * q.qweight.element_size() == 64 * 48 * bits // 8


def test_torch_weight_only_model_saves_and_reloads(tiny, tmp_path) -> None:
    model, tok = make_model(), tiny[2]
    ids = torch.tensor(encode_left_padded(tok, [PROMPTS[1]])[0])
    with torch.no_grad():
        ref = model(ids).logits
    record = wq.quantize_linears(model, bits=4, group_size=32)
    assert record["bytes_after"] < record["bytes_before"] and "lm_head" not in record["layers"]
    with torch.no_grad():
        quant = model(ids).logits
    assert float((quant - ref).abs().max() / ref.abs().max()) < 0.25
    wq.save_weight_only(model, record, tmp_path / "q4", tok)
    again = wq.load_weight_only(tmp_path / "q4")
    with torch.no_grad():
        assert torch.equal(again(ids).logits, quant)
    with pytest.raises(wq.QuantizeError, match="bits"):
        wq.quantize_linears(make_model(), bits=3)
    # 128 does not divide the 64-wide inputs: groups of 64 there, 128 for down_proj (128 wide).
    groups = wq.quantize_linears(make_model(), bits=4, group_size=128)["layers"]
    assert groups["model.layers.0.self_attn.q_proj"]["group_size"] == 64
    assert groups["model.layers.0.mlp.down_proj"]["group_size"] == 128


def _greedy_with_and_without_cache(model: torch.nn.Module, tok: object) -> tuple[list[list[int]], list[list[int]]]:
    ids, mask = (torch.from_numpy(a) for a in encode_left_padded(tok, PROMPTS[:2]))
    kw = dict(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        return model.generate(**kw, use_cache=True).tolist(), model.generate(**kw, use_cache=False).tolist()


def test_drop_layers_keeps_cached_generation_and_exports(tiny, tmp_path) -> None:
    model = make_model()
    model.config.num_hidden_layers = 3  # a third layer to drop from the middle
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(model.config).eval()
    before = sum(p.numel() for p in model.parameters())
    ids, mask = (torch.from_numpy(a) for a in encode_left_padded(tiny[2], PROMPTS))
    scores = dc.layer_importance(model, ids, mask)
    assert len(scores) == 3 and all(np.isfinite(scores))
    info = dc.drop_decoder_layers(model, [1])
    assert info["kept"] == [0, 2] and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert sum(p.numel() for p in model.parameters()) < before
    cached, uncached = _greedy_with_and_without_cache(model, tiny[2])
    assert cached == uncached
    model.save_pretrained(tmp_path / "dropped")
    tiny[2].save_pretrained(tmp_path / "dropped")
    export_decoder(tmp_path / "dropped", tmp_path / "dropped-onnx")
    assert check_parity(model, tiny[2], tmp_path / "dropped-onnx", PROMPTS, max_new_tokens=6)["identical"] == 4
    with pytest.raises(dc.CompressError, match="out of range"):
        dc.drop_decoder_layers(model, [5])
    assert dc.least_important_layers([0.9, 0.1, 0.5, 0.2], 2) == [1, 3]


def test_prune_ffn_physically_and_generation_still_works(tiny, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    model = make_model()
    ids, mask = (torch.from_numpy(a) for a in encode_left_padded(tiny[2], PROMPTS))
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    same = dc.prune_ffn(make_model(), 128)  # keeping every neuron changes nothing
    assert same["params_after"] == same["params_before"]
    info = dc.prune_ffn(model, 0.5, scores=dc.ffn_importance(model, ids, mask))
    assert info["intermediate_after"] == 64 and info["params_after"] < info["params_before"]
    assert model.model.layers[0].mlp.down_proj.weight.shape == (64, 64)
    cached, uncached = _greedy_with_and_without_cache(model, tiny[2])
    assert cached == uncached
    with torch.no_grad():
        pruned = model(input_ids=ids, attention_mask=mask).logits
    assert not torch.equal(pruned, ref)
    model.save_pretrained(tmp_path / "pruned")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, attention_mask=mask).logits, pruned)
    with pytest.raises(dc.CompressError, match="keep"):
        dc.prune_ffn(model, 0)


def test_prune_ffn_keeping_all_neurons_keeps_logits(tiny) -> None:
    model, full = make_model(), make_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    dc.prune_ffn(model, 128)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, full(ids).logits, atol=1e-6)


def test_token_kd_loss() -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, 256)
    labels = torch.tensor([[-100, -100, 4, 5, 6], [-100, 7, 8, -100, -100]])
    assert float(dc.token_kd_loss(teacher.clone(), teacher, labels)) == pytest.approx(0.0, abs=1e-6)
    student = torch.randn(2, 5, 256, requires_grad=True)
    loss = dc.token_kd_loss(student, teacher, labels, temperature=2.0)
    assert loss.item() > 0
    loss.backward()
    # Positions whose next token is not a target get no gradient: (0,0), (0,4), (1,2), (1,3), (1,4).
    assert float(student.grad[0, 0].abs().sum()) == 0 and float(student.grad[1, 3].abs().sum()) == 0
    assert float(student.grad[0, 1].abs().sum()) > 0 and float(student.grad[1, 1].abs().sum()) > 0
    # Reference: the KL computed by hand on the three + two scored positions.
    rows = [(0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]
    s = torch.stack([student[i, j] for i, j in rows]) / 2
    t = torch.stack([teacher[i, j] for i, j in rows]) / 2
    want = (t.softmax(-1) * (t.log_softmax(-1) - s.log_softmax(-1))).sum(-1).mean() * 4
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(dc.CompressError, match="differ"):
        dc.token_kd_loss(student[:, :, :10], teacher)


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime_genai") is None, reason="onnxruntime-genai not installed")
def test_genai_builder_export_batch_one_parity(tiny, tmp_path) -> None:
    """ONNX Runtime GenAI's builder on the tiny model: batch-1 parity; padded batches are refused."""
    out = tmp_path / "genai"
    info = export_decoder(tiny[0], out, backend="genai")
    assert info["backend"] == "genai"
    assert check_parity(tiny[1], tiny[2], out, PROMPTS, max_new_tokens=8)["identical"] == 4  # one at a time
    with pytest.raises(GenerationError, match="position_ids"):
        generate(OrtDecoder(out), tiny[2], PROMPTS[:2])
    ids, mask = encode_left_padded(tiny[2], [PROMPTS[0]] * 2)  # equal lengths need no padding
    rows, _ = generate_ids(OrtDecoder(out), ids, mask, SamplingSettings(max_new_tokens=4))
    assert rows[0] == rows[1]


def test_server_engine_on_the_onnx_graph_matches_each_request_alone(tiny, exported) -> None:
    """The server's ORT engine: requests join and leave the shared batch, tokens as if alone."""
    from lepton.serve.generation.engine import GenerationEngine
    from lepton.serve.generation.ort_engine import OrtEngine

    decoder = OrtDecoder(exported)
    engine = OrtEngine(decoder, max_context=64)
    assert isinstance(engine, GenerationEngine)
    alone = {p: generate(decoder, tiny[2], [p], SamplingSettings(max_new_tokens=6))[0].token_ids for p in PROMPTS[:3]}
    prompt_ids = [encode_left_padded(tiny[2], [p])[0][0].tolist() for p in PROMPTS[:3]]
    (a,), logits = engine.prefill([prompt_ids[0]])
    got = {0: [int(logits[0].argmax())]}
    logits = engine.decode_step([a], [got[0][-1]])
    got[0].append(int(logits[0].argmax()))
    (b, c), first = engine.prefill(prompt_ids[1:])  # two join at once
    got[1], got[2] = [int(first[0].argmax())], [int(first[1].argmax())]
    running = [(0, a), (1, b), (2, c)]
    while running:
        logits = engine.decode_step([s for _, s in running], [got[i][-1] for i, _ in running])
        for row, (i, _) in enumerate(running):
            got[i].append(int(logits[row].argmax()))
        done = [(i, s) for i, s in running if len(got[i]) == 6]
        engine.release([s for _, s in done])
        running = [(i, s) for i, s in running if len(got[i]) < 6]
    assert [got[i] for i in range(3)] == [alone[p] for p in PROMPTS[:3]]


def test_completions_served_from_the_onnx_graph(tiny, exported) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from lepton.serve.generation.app import GenerateSettings, create_generate_app
    from lepton.serve.generation.ort_engine import OrtEngine

    decoder = OrtDecoder(exported)
    app = create_generate_app(None, tiny[2], GenerateSettings(), model_name="tiny-onnx",
                              engine=OrtEngine(decoder, max_context=64))
    want = generate(decoder, tiny[2], [PROMPTS[1]], SamplingSettings(max_new_tokens=5))[0]
    with TestClient(app) as client:
        got = client.post("/v1/completions", json={"model": "tiny-onnx", "prompt": PROMPTS[1], "max_tokens": 5,
                                                   "temperature": 0, "ignore_eos": True})
    assert got.status_code == 200, got.text
    assert got.json()["usage"]["completion_tokens"] == 5
    assert got.json()["choices"][0]["text"] == tiny[2].decode(want.token_ids, skip_special_tokens=True)
