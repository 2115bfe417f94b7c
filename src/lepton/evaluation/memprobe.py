"""Peak memory of one variant, measured in a fresh process so other variants and earlier
training in the parent process do not count.

    python -m lepton.evaluation.memprobe MODEL_FOLDER --loader MODULE:FUNCTION --batch 32 --length 128
prints JSON: {"loaded_rss_mb": ..., "peak_rss_mb": ...}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path


def vm_status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    # The saved-model loader (lepton.runtimes.saved: the parent passes its registered one).
    parser.add_argument("--loader", required=True)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    module, function = args.loader.split(":")
    load_bundle = getattr(importlib.import_module(module), function)
    bundle = load_bundle(args.folder, verify=False)
    loaded = vm_status_mb("VmRSS")
    from lepton.runtimes import for_bundle

    runtime = for_bundle(bundle)
    ids = torch.full((args.batch, args.length), 1000, dtype=torch.long)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "token_type_ids" in getattr(bundle.tokenizer, "model_input_names", []):
        batch["token_type_ids"] = torch.zeros_like(ids)
    for _ in range(args.repeats):
        runtime.logits(batch)
    print(json.dumps({"loaded_rss_mb": loaded, "peak_rss_mb": vm_status_mb("VmHWM")}))


def probe(folder: Path, *, batch: int, length: int, timeout: float = 300) -> tuple[float | None, str]:
    """(peak RSS in MB, how it was measured) for the saved model in ``folder``."""
    from lepton.runtimes.saved import store

    cmd = [sys.executable, "-m", "lepton.evaluation.memprobe", str(folder), "--loader", store().loader,
           "--batch", str(batch), "--length", str(length)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, json.JSONDecodeError, IndexError, OSError):
        return None, "memory probe failed"
    return result.get("peak_rss_mb"), (f"peak RSS of a fresh process that loads the model and runs "
                                       f"batch {batch} x {length} tokens (loaded: "
                                       f"{result.get('loaded_rss_mb') or 0:.0f} MB)")


if __name__ == "__main__":
    main()
