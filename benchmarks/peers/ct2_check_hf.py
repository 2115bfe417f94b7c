"""Compare the hypotheses of ct2_translate.py with transformers' generate on the same sentences.

Runs in Lepton's environment (plain `python`, not the CTranslate2 venv):

    python ct2_check_hf.py MODEL_FOLDER CT2_JSON [--n 50]

Uses the beam size and length limit recorded in CT2_JSON. transformers forces `</s>` at the length limit
(`forced_eos_token_id`) while CTranslate2 does not, so that option is off here: both sides may then emit
up to max_decoding_length tokens.
"""

from __future__ import annotations

import argparse
import gzip
import json

import torch
from transformers import AutoTokenizer, MarianMTModel


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model")
    p.add_argument("ct2_json")
    p.add_argument("--n", type=int, default=50, help="first N sentences")
    p.add_argument("--show", type=int, default=5, help="differences to print")
    args = p.parse_args(argv)

    ct2 = json.loads(open(args.ct2_json, encoding="utf-8").read())
    opener = gzip.open if ct2["sources"].endswith(".gz") else open
    with opener(ct2["sources"], "rt", encoding="utf-8") as f:
        sources = [line.rstrip("\r\n") for line in f][: min(args.n, len(ct2["hypotheses"]))]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = MarianMTModel.from_pretrained(args.model).eval()
    max_len = ct2["max_decoding_length"]
    hf, at_limit = [], 0
    with torch.inference_mode():
        for s in sources:  # one sentence at a time: no padding effects
            out = model.generate(
                **tok([s], return_tensors="pt"),
                num_beams=ct2["beam_size"],
                do_sample=False,
                max_new_tokens=max_len,
                forced_eos_token_id=None,
            )
            at_limit += int(out.shape[1] - 1 >= max_len and out[0, -1].item() != model.config.eos_token_id)
            hf.append(tok.decode(out[0], skip_special_tokens=True))
    same = [a == b for a, b in zip(hf, ct2["hypotheses"])]
    print(
        f"{sum(same)}/{len(same)} identical ({100 * sum(same) / len(same):.1f}%), "
        f"beam {ct2['beam_size']}, {ct2['quantization']}; transformers hit the length limit {at_limit} times"
    )
    for i in [i for i, ok in enumerate(same) if not ok][: args.show]:
        print(f"[{i}] src: {sources[i]}\n  hf:  {hf[i]}\n  ct2: {ct2['hypotheses'][i]}")


if __name__ == "__main__":
    main()
