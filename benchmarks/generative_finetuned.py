"""Issue 15, part 1 of the side-by-side benchmark: the fine-tuned SmolLM2 that every runtime variant
is built from, and the "compressed" student. Reuses benchmarks/generative.py's prompt, data and
fine-tuning code (full fine-tuning, loss on the German tokens, keep-best on val loss).

    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src \\
        python benchmarks/generative_finetuned.py finetune --train-pairs 300
    taskset -c 1 env OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/generative_finetuned.py compress ...

Folders go to $LEPTON_CACHE/generative-bench/ (never into git); a JSON record of each step goes to
benchmarks/results/generative_finetuned_{finetune,compress}.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import generative as gb  # noqa: E402  (benchmarks/generative.py: prompt, pairs, finetune)
from lepton.models.decoder import load_generative  # noqa: E402

CACHE = Path(os.environ.get("LEPTON_CACHE", Path.home() / ".cache" / "lepton")) / "generative-bench"
TEMPLATE = gb.PROMPTS["plain"]  # chosen on val in benchmarks/results/generative.md
log = logging.getLogger("finetuned")


def save_folder(model, tok, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    tmp.rename(folder)


def cmd_finetune(args) -> None:
    t0 = time.perf_counter()
    base = load_generative(gb.MODEL)
    train = gb.pairs("train", TEMPLATE, args.train_pairs, seed=0)
    dev = gb.pairs("val", TEMPLATE, args.val, seed=1)
    work = Path(tempfile.mkdtemp(prefix="lepton-ft15-"))
    ns = argparse.Namespace(lr_full=args.lr, lr_lora=5e-4, epochs=args.epochs, batch_size=args.batch_size)
    model, summary = gb.finetune((copy.deepcopy(base[0]), base[1]), train, dev, "full", ns, work)
    model.eval()
    folder = Path(args.out)
    save_folder(model, base[1], folder)
    record = {"folder": str(folder), "model": gb.MODEL, "train_pairs": len(train), "val_pairs": len(dev),
              "template": TEMPLATE, "system": gb.SYSTEM, "training": summary,
              "wall_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
              "pinning": os.environ.get("BENCH_PINNING", "")}
    (HERE / "results" / "generative_finetuned_finetune.json").write_text(json.dumps(record, indent=1, default=str))
    log.info("saved %s (%s)", folder, record["wall_s"])


def cmd_compress(args) -> None:
    """Drop the least influential decoder layers of the fine-tuned model (block influence measured on
    training pairs), then recover with one pass over the same pairs: CE on the German tokens plus
    token-level KD from the fine-tuned fp32 teacher."""
    import random

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lepton.models import decoder_structure as dc
    from lepton.tasks.prompt_encoding import collate, encode_causal, pad_id_of
    from lepton.tasks.scoring import token_nll_sums

    t0 = time.perf_counter()
    src = Path(args.model)
    tok = AutoTokenizer.from_pretrained(src)
    teacher = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    train = gb.pairs("train", TEMPLATE, args.train_pairs, seed=0)
    dev = gb.pairs("val", TEMPLATE, args.val, seed=1)
    enc = encode_causal(tok, gb.chat(tok, train.prompts), train.targets, chat=True, max_prompt_tokens=128,
                        max_target_tokens=64)
    dev_enc = encode_causal(tok, gb.chat(tok, dev.prompts), dev.targets, chat=True, max_prompt_tokens=128,
                            max_target_tokens=64)
    pad = pad_id_of(tok)

    def dev_loss(model) -> float:
        nll, count = token_nll_sums(model, dev_enc, pad, batch_size=16)
        return sum(nll) / max(sum(count), 1)

    batch = collate(enc.input_ids[:args.importance_examples], enc.labels[:args.importance_examples], pad, seq2seq=False)
    scores = dc.layer_importance(student, batch["input_ids"], batch["attention_mask"])
    n_layers = len(scores)
    drop = dc.least_important_layers(scores, args.drop, protect=(0, n_layers - 1))
    params_before = sum(p.numel() for p in student.parameters())
    info = dc.drop_decoder_layers(student, drop)
    prune = None
    if args.ffn_keep < 1.0:
        fb = collate(enc.input_ids[:args.importance_examples], enc.labels[:args.importance_examples], pad,
                     seq2seq=False)
        prune = dc.prune_ffn(student, args.ffn_keep, dc.ffn_importance(student, fb["input_ids"], fb["attention_mask"]))
    params_after = sum(p.numel() for p in student.parameters())
    teacher_dev, before_dev = dev_loss(teacher), dev_loss(student)
    log.info("dropped %s; dev loss teacher %.3f, student before recovery %.3f", drop, teacher_dev, before_dev)
    # Recovery: length-grouped shuffled batches, AdamW, linear decay; loss = a*CE + (1-a)*KD(T).
    student.train()
    opt = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=0.0)
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]
    rng = random.Random(0)
    steps = args.epochs * len(batches)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    t_rec = time.perf_counter()
    history = []
    step = 0
    for _epoch in range(args.epochs):
        rng.shuffle(batches)
        for rows in batches:
            b = collate([enc.input_ids[i] for i in rows], [enc.labels[i] for i in rows], pad, seq2seq=False)
            with torch.no_grad():
                t_logits = teacher(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            out = student(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            kd = dc.token_kd_loss(out.logits, t_logits, b["labels"], temperature=args.temperature)
            loss = args.alpha * out.loss + (1 - args.alpha) * kd
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            history.append({"step": step, "ce": round(float(out.loss), 4), "kd": round(float(kd), 4)})
            log.info("recovery %d/%d ce %.3f kd %.3f", step, steps, float(out.loss), float(kd))
    recovery_s = time.perf_counter() - t_rec
    student.eval()
    after_dev = dev_loss(student)
    folder = Path(args.out)
    save_folder(student, tok, folder)
    record = {"folder": str(folder), "teacher": str(src), "layer_scores": scores, "dropped_layers": drop,
              "drop": info, "ffn_prune": prune, "params_before": params_before, "params_after": params_after,
              "recovery": {"pairs": len(enc), "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                           "alpha_ce": args.alpha, "kd_temperature": args.temperature, "steps": steps,
                           "seconds": round(recovery_s, 1), "history": history},
              "dev_loss": {"teacher": teacher_dev, "student_before_recovery": before_dev,
                           "student_after_recovery": after_dev, "val_pairs": len(dev_enc)},
              "wall_s": round(time.perf_counter() - t0, 1), "pinning": os.environ.get("BENCH_PINNING", "")}
    (HERE / "results" / "generative_finetuned_compress.json").write_text(json.dumps(record, indent=1, default=str))
    log.info("saved %s: dev loss %.3f -> %.3f (teacher %.3f), recovery %.0f s", folder, before_dev, after_dev,
             teacher_dev, recovery_s)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("finetune")
    f.add_argument("--train-pairs", type=int, default=300)
    f.add_argument("--val", type=int, default=50)
    f.add_argument("--epochs", type=int, default=1)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--lr", type=float, default=3e-5)
    f.add_argument("--out", default=str(CACHE / "smollm2-135m-multi30k-full-300"))
    c = sub.add_parser("compress")
    c.add_argument("--model", default=str(CACHE / "smollm2-135m-multi30k-full-300"))
    c.add_argument("--drop", type=int, default=6, help="decoder layers to drop (first and last protected)")
    c.add_argument("--ffn-keep", type=float, default=1.0, help="share of FFN neurons kept (1.0: no pruning)")
    c.add_argument("--train-pairs", type=int, default=300)
    c.add_argument("--val", type=int, default=50)
    c.add_argument("--importance-examples", type=int, default=64)
    c.add_argument("--epochs", type=int, default=1)
    c.add_argument("--batch-size", type=int, default=16)
    c.add_argument("--lr", type=float, default=1e-4)
    c.add_argument("--alpha", type=float, default=0.5, help="weight of the CE loss; 1 - alpha on KD")
    c.add_argument("--temperature", type=float, default=2.0)
    c.add_argument("--out", default=str(CACHE / "smollm2-135m-multi30k-full-300-drop6"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    {"finetune": cmd_finetune, "compress": cmd_compress}[args.cmd](args)


if __name__ == "__main__":
    main()
