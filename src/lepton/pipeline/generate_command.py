"""``lepton generate MODEL PROMPT...``: text from a saved Lepton model or any generative model spec."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Command-line flags that are generation settings (argparse dest -> GenerationSettings field).
SETTING_FLAGS = ("strategy", "max_new_tokens", "num_beams", "temperature", "top_p", "top_k", "seed",
                 "repetition_penalty", "stop")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a saved Lepton model (folder with lepton.json), builtin:smollm2-135m, "
                                 "a model folder or a hub id")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--strategy", choices=["greedy", "beam", "sample"])
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-beams", type=int)
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--stop", action="append", help="cut the output at this string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template "
                                                       "(a model spec; a saved model uses its task's setting)")
    p.add_argument("--system", help="with --chat: the system message")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of one output per line")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    import json

    from lepton.runtimes.saved import is_saved_model

    given = settings_of(args)
    if is_saved_model(Path(args.model)):
        import lepton

        outputs = lepton.load(args.model).generate(args.prompts, **given)
    else:
        from lepton.models.decoder import load_generative
        from lepton.tasks.generate import generate
        from lepton.tasks.generation_settings import GenerationSettings
        from lepton.tasks.prompt_encoding import render_prompt

        settings = GenerationSettings.parse(given)  # before the (slow) load: a bad value fails fast
        model, tokenizer = load_generative(args.model)
        prompts = [render_prompt(tokenizer, p, chat=args.chat, system=args.system) for p in args.prompts]
        outputs = generate(model, tokenizer, prompts, settings)
    if args.json:
        print(json.dumps(outputs, ensure_ascii=False))
    else:
        for text in outputs:
            print(text)
    return 0
