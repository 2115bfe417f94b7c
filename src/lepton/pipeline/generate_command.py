"""``lepton generate MODEL PROMPT...``: text from a saved Lepton model or any generative model spec.

Everything that can be checked before the model loads is checked first (the prompts are text,
not empty; ``--system`` comes with ``--chat``; each flag applies to the decoding strategy), then
each prompt's length against the model's context (``lepton.tasks.prompt_limits``, as the
generative server does), so a bad call is one line at once, never a long wait or a traceback.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Command-line flags that are generation settings (argparse dest -> GenerationSettings field).
SETTING_FLAGS = ("strategy", "max_new_tokens", "num_beams", "temperature", "top_p", "top_k", "seed",
                 "repetition_penalty", "stop")
SIGNATURE_HELP = ("refuse the model unless its manifest is signed by the holder of this Ed25519 public "
                  "key (lepton keygen / lepton sign); a saved Lepton model only")


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a saved Lepton model (folder with lepton.json), builtin:smollm2-135m, "
                                 "a model folder or a hub id")
    p.add_argument("prompts", nargs="+", help="one or more prompts")
    p.add_argument("--strategy", choices=["greedy", "beam", "sample"])
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--num-beams", type=int, help="with --strategy beam")
    p.add_argument("--temperature", type=float, help="with --strategy sample")
    p.add_argument("--top-p", type=float, help="with --strategy sample")
    p.add_argument("--top-k", type=int, help="with --strategy sample")
    p.add_argument("--seed", type=int, help="with --strategy sample")
    p.add_argument("--repetition-penalty", type=float)
    p.add_argument("--stop", action="append", help="cut the output at this string (repeatable)")
    p.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template "
                                                       "(a model spec; a saved model uses its task's setting)")
    p.add_argument("--system", help="with --chat: the system message")
    p.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of one output per line")


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k, None) is not None}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_args(args: argparse.Namespace) -> None:
    """What is wrong with the command line itself, before anything loads."""
    from lepton.tasks.generation_settings import GenerationSettingsError
    from lepton.tasks.prompt_limits import check_text

    if not str(args.model).strip():
        raise GenerationSettingsError("model: an empty name; give a saved model, a model folder or a hub id")
    n = len(args.prompts)
    for i, prompt in enumerate(args.prompts):
        check_text(prompt, "prompt" if n == 1 else f"prompt {i + 1} of {n}")
    if args.system is not None:
        if not args.chat:
            raise GenerationSettingsError("--system: the system message goes into the chat template, so it "
                                          "needs --chat (add --chat, or leave --system out)")
        check_text(args.system, "--system")


def check_strategy(given: dict[str, Any], strategy: str) -> None:
    """A flag given on the command line that the decoding strategy would ignore is an error
    (also at its default value, which the settings alone cannot tell from not given)."""
    from lepton.tasks.generation_settings import ONLY_FOR, GenerationSettingsError

    for name, strategies in ONLY_FOR.items():
        if name in given and strategy not in strategies:
            raise GenerationSettingsError(
                f"{_flag(name)}: applies to --strategy {' or '.join(strategies)} only; the strategy here is "
                f"{strategy}" + ("" if "strategy" in given else f" (add --strategy {strategies[0]})"))


def _saved(args: argparse.Namespace, given: dict[str, Any]) -> list[str]:
    import lepton
    from lepton.tasks.generation_settings import GenerationSettings, GenerationSettingsError

    predictor = lepton.load(args.model, public_key=args.require_signature)
    options = predictor.task.options
    base = dict(options.get("generation") or {})
    check_strategy(given, str(given.get("strategy", base.get("strategy", "greedy"))))
    GenerationSettings.parse({**base, **given})  # a bad value: one line, before generating
    if args.chat and not options.get("chat"):
        raise GenerationSettingsError(f"--chat: {args.model} renders prompts as its task says (task.chat is "
                                      "off); --chat applies to a model spec, so leave it out")
    if args.system is not None:
        raise GenerationSettingsError(f"--system: {args.model} uses its task's system message "
                                      f"({options.get('system')!r}); --system applies to a model spec")
    return predictor.generate(args.prompts, **given)


def _spec(args: argparse.Namespace, given: dict[str, Any]) -> list[str]:
    from lepton.models.decoder import load_generative
    from lepton.tasks.generate import generate
    from lepton.tasks.generation_settings import GenerationSettings, GenerationSettingsError
    from lepton.tasks.prompt_encoding import render_prompt

    if args.require_signature is not None:
        raise GenerationSettingsError(f"--require-signature: {args.model} is not a saved Lepton model (no "
                                      "lepton.json), so there is no signed manifest to check")
    check_strategy(given, str(given.get("strategy", "greedy")))
    settings = GenerationSettings.parse(given)  # before the (slow) load: a bad value fails fast
    model, tokenizer = load_generative(args.model)
    if args.chat and not getattr(tokenizer, "chat_template", None):
        raise GenerationSettingsError(f"--chat: the tokenizer of {args.model} has no chat template; "
                                      "leave --chat out")
    prompts = [render_prompt(tokenizer, p, chat=args.chat, system=args.system) for p in args.prompts]
    return generate(model, tokenizer, prompts, settings)


def run(args: argparse.Namespace) -> int:
    import json

    from lepton.runtimes.saved import is_saved_model

    check_args(args)
    given = settings_of(args)
    outputs = _saved(args, given) if is_saved_model(Path(args.model)) else _spec(args, given)
    if args.json:
        print(json.dumps(outputs, ensure_ascii=False))
    else:
        for text in outputs:
            print(text)
    return 0
