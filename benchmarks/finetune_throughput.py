"""Fine-tuning throughput: Lepton's finetune stage vs a plain Hugging Face Trainer, side by side.

Same model (all-MiniLM-L6-v2 + a fresh 2-class head), same SST-2 rows, same batch size, same
optimizer settings, one epoch each, no evaluation or checkpointing inside the timed part. Runs
alternate (Lepton, Trainer, Trainer+group_by_length, Lepton, ...) so machine drift hits all alike;
the figure is the median items/s over rounds, with min-max.

    python benchmarks/finetune_throughput.py [--rows 1500] [--rounds 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lepton.data import Columns, DataSplitConfig, load_split
from lepton.evaluation.environment import describe, fingerprint
from lepton.models import load_tokenizer, resolve_model
from lepton.pipeline.recipe import TaskConfig
from lepton.runtimes.bundle import ModelBundle, RunContext
from lepton.stages.finetune import FinetuneConfig, finetune
from lepton.tasks import build_task, encode
from lepton.tasks.loading import load_for_task


def fresh_model(location: str, labels: list[str]) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_for_task(location, kind="sequence_classification", labels=labels)


def run_lepton(location, tokenizer, task, split, args) -> float:
    bundle = ModelBundle(model=fresh_model(location, task.labels), tokenizer=tokenizer, task=task)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(splits={"train": split}, seed=0, device="cpu", out_dir=Path(tmp),
                         work_dir=Path(tmp), progress=False)
        config = FinetuneConfig(epochs=1, lr=5e-5, batch_size=args.batch_size,
                                checkpoint_every=10**9, group_by_length=True)
        start = time.perf_counter()
        finetune(bundle, config, ctx)
        return len(split) / (time.perf_counter() - start)


def run_trainer(location, tokenizer, task, split, args, strategy: str) -> float:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    enc = encode(split, task, tokenizer)
    rows = [{"input_ids": ids, "token_type_ids": tt, "attention_mask": [1] * len(ids), "labels": y}
            for ids, tt, y in zip(enc.input_ids, enc.token_type_ids, enc.labels)]
    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, num_train_epochs=1, per_device_train_batch_size=args.batch_size,
            learning_rate=5e-5, weight_decay=0.01, warmup_steps=0.06, max_grad_norm=1.0,
            lr_scheduler_type="linear", eval_strategy="no", save_strategy="no", report_to="none",
            use_cpu=True, disable_tqdm=True, logging_strategy="no", seed=0,
            train_sampling_strategy=strategy,
        )
        trainer = Trainer(model=fresh_model(location, task.labels), args=targs, train_dataset=rows,
                          data_collator=DataCollatorWithPadding(tokenizer))
        start = time.perf_counter()
        trainer.train()
        return len(rows) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    location = resolve_model("builtin:minilm-l6")
    tokenizer = load_tokenizer(location)
    cfg = DataSplitConfig(path="builtin:sst2/train", limit=args.rows, seed=0)
    split = load_split(cfg, Columns(text="sentence", label="label"), name="train")
    task = build_task(TaskConfig(kind="sequence_classification", text="sentence", label="label"), split)
    tokens = sum(encode(split, task, tokenizer).lengths)

    contenders = {
        "lepton finetune (length-grouped)": lambda: run_lepton(location, tokenizer, task, split, args),
        "HF Trainer (default random batches)": lambda: run_trainer(location, tokenizer, task, split, args, "random"),
        "HF Trainer (group_by_length)": lambda: run_trainer(location, tokenizer, task, split, args, "group_by_length"),
    }
    # One untimed pass of each on a few rows: the first training step in a process pays for
    # one-off kernel and allocator set-up that would otherwise land on whoever runs first.
    small = load_split(DataSplitConfig(path=cfg.path, limit=64, seed=1), Columns(text="sentence", label="label"),
                       name="train")
    run_lepton(location, tokenizer, task, small, args)
    run_trainer(location, tokenizer, task, small, args, "random")
    results: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(args.rounds):
        for name, fn in contenders.items():
            results[name].append(fn())
            print(f"round {r + 1} {name}: {results[name][-1]:.1f} items/s", flush=True)

    env = fingerprint(0)
    print(f"\nMachine: {describe(env)}")
    print(f"Data: {args.rows} SST-2 train rows ({tokens / args.rows:.1f} tokens each on average), "
          f"batch {args.batch_size}, 1 epoch, {args.rounds} rounds interleaved\n")
    base = statistics.median(results["HF Trainer (default random batches)"])
    print(f"{'contender':40s} {'items/s median':>15s} {'min-max':>15s} {'vs Trainer':>11s}")
    for name, values in results.items():
        med = statistics.median(values)
        print(f"{name:40s} {med:15.1f} {min(values):7.1f}-{max(values):<7.1f} {med / base:10.2f}x")


if __name__ == "__main__":
    main()
