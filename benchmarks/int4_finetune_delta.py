"""Why 4-bit weights lose a small fine-tune: the fine-tune's change per weight against the int4
step, and what two round-to-nearest schemes do to the fine-tuned model's greedy outputs.

    taskset -c 1 env OMP_NUM_THREADS=1 python benchmarks/int4_finetune_delta.py \
        --base ~/.cache/lepton/models/<sha> --tuned ~/.cache/lepton/generative-bench/smollm2-135m-multi30k-full-300

Weights are rounded in PyTorch (simulated, groups of 32 along the input dimension, as
MatMulNBits and GGUF Q4_1 group them): "integer zero point" is onnxruntime's default RTN (the
scale spans the group's range with 0 kept inside, the zero point rounded to an integer);
"float zero point" is Q4_1's scheme (min and step of the group), which puts a weight that came
from a Q4_1 file back on its original grid. Measured on 64 Multi30k val prompts (chat template,
greedy, 24 new tokens): first-token agreement with the unquantized fine-tuned model and sequences
identical to its. Writes benchmarks/results/int4_finetune_delta.md.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LEPTON_DATA", ROOT.parent / "shared" / "data"))
SYSTEM = "You translate English into German. Reply with the German translation only."


def rounded(w: torch.Tensor, float_zero_point: bool, group: int = 32) -> torch.Tensor:
    g = w.detach().float().reshape(-1, group)
    lo, hi = g.min(1, keepdim=True).values, g.max(1, keepdim=True).values
    if not float_zero_point:
        lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    step = (hi - lo) / 15
    step[step == 0] = 1
    zero = -lo / step if float_zero_point else torch.round(-lo / step).clamp(0, 15)
    q = torch.clamp(torch.round(g / step + zero), 0, 15)
    return ((q - zero) * step).reshape(w.shape).to(w.dtype)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--tuned", required=True)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from lepton.evaluation.environment import describe, fingerprint
    from lepton.models.decoder import load_generative

    base, tuned = (load_file(str(Path(args.base) / "model.safetensors")),
                   load_file(str(Path(args.tuned) / "model.safetensors")))
    change = step = 0.0
    n = 0
    for k, w in base.items():
        if w.dim() == 2 and "embed" not in k:
            g = w.float().reshape(-1, 32)
            step += ((g.max(1).values - g.min(1).values) / 15).mean().item()
            change += (tuned[k].float() - w.float()).abs().mean().item()
            n += 1
    model, tok = load_generative(args.tuned)
    lines = (gzip.open(DATA / "multi30k" / "val.en.gz", "rt", encoding="utf-8").read()
             .splitlines()[100:100 + args.prompts])
    prompts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                        {"role": "user", "content": f"Translate English to German: {s}"}],
                                       tokenize=False, add_generation_prompt=True) for s in lines]
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    def run(m: torch.nn.Module) -> tuple[list[list[int]], torch.Tensor]:
        with torch.no_grad():
            out = m.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
            return out[:, batch["input_ids"].shape[1]:].tolist(), m(**batch).logits[:, -1].argmax(-1)

    ref, ref_first = run(model)
    rows = []
    for label, fz in (("integer zero point (onnxruntime RTN)", False), ("float zero point (Q4_1's scheme)", True)):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for name, mod in m.named_modules():  # the decoder's Linears; embeddings and output stay float
                if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                    mod.weight.copy_(rounded(mod.weight, fz))
        seqs, first = run(m)
        rows.append((label, (first == ref_first).float().mean().item(), sum(a == b for a, b in zip(seqs, ref))))
    text = ["# Why int4 loses the fine-tune", "", f"Machine: {describe(fingerprint())}; 1 thread.", "",
            f"Base: `{args.base}`; fine-tuned: `{args.tuned}`.", "",
            f"- Mean change per weight from the fine-tune (decoder Linears): **{change / n:.2e}**",
            f"- Mean int4 step (groups of 32): **{step / n:.2e}**; "
            f"the change is **{change / step * 100:.2f}%** of a step",
            "", f"Decoder Linears rounded to 4 bits (embeddings and output in float), {len(prompts)} Multi30k val "
                "prompts, greedy, 24 new tokens, against the unrounded fine-tuned model:", "",
            "| rounding | first token same | sequences identical |", "|---|---|---|"]
    text += [f"| {label} | {share:.1%} | {same} / {len(prompts)} |" for label, share, same in rows]
    out = ROOT / "benchmarks" / "results" / "int4_finetune_delta.md"
    out.write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
