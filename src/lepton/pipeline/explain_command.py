"""``lepton explain MODEL TEXT``: the prediction, and the text with each token shaded by how much
the prediction rests on it (green: for the predicted label, red: against it), through whatever
runtime the saved model ships with (``lepton.evaluation.attribution``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lepton.evaluation.attribution import ExplainError

SIGNATURE_HELP = ("refuse the model unless its manifest is signed by the holder of this Ed25519 public "
                  "key (lepton keygen / lepton sign)")
TOP_TOKENS = 5  # listed after the shaded text, strongest first


def add_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a Lepton model folder (OUT/model) of a sequence classifier")
    p.add_argument("text", help="the text to classify and explain")
    p.add_argument("--pair", help="the second text, for a model that classifies sentence pairs")
    p.add_argument("--method", choices=["occlusion", "ig"], default="occlusion",
                   help="occlusion: leave one token out, any runtime (default); ig: integrated gradients, "
                        "PyTorch models (pip install 'lepton[explain]')")
    p.add_argument("--steps", type=int, default=64, help="integrated gradients: interpolation steps (default 64)")
    p.add_argument("--json", action="store_true", help="print the prediction and every token's score as JSON")
    p.add_argument("--require-signature", metavar="PUBLIC_KEY", help=SIGNATURE_HELP)


def explain(model: str, text: str, *, pair: str | None = None, method: str = "occlusion", steps: int = 64,
            public_key: str | None = None) -> dict[str, Any]:
    """One text (or pair) explained by a saved model: what ``Predictor.explain`` returns for it."""
    import lepton

    if not text.strip():
        raise ExplainError("explain: the text is empty; give a text to classify")
    if not 2 <= steps <= 1024:
        raise ExplainError(f"--steps {steps}: give 2 to 1024 interpolation steps")
    predictor = lepton.load(model, public_key=public_key)
    task = predictor.task
    if task.pair and pair is None:
        raise ExplainError(f"{model}: classifies sentence pairs: give the second text with --pair")
    if pair is not None and not task.pair:
        raise ExplainError(f"{model}: classifies single texts: leave out --pair")
    item: Any = (text, pair) if task.pair else text
    return predictor.explain(item, method=method, steps=steps)[0]


def shade(score: float, scale: float) -> str:
    """A background colour for ``score``: green for, red against, stronger with |score| / scale."""
    level = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    fade = int(255 - 150 * level)
    return f"on rgb({fade},255,{fade})" if score >= 0 else f"on rgb(255,{fade},{fade})"


def shaded_text(text: str, tokens: list[dict[str, Any]], which: int, scale: float) -> Any:
    """``text`` as rich Text, each token's character span shaded by its score."""
    from rich.text import Text

    out = Text(text, style="black")
    for t in tokens:
        if t.get("text", 0) == which and t.get("start") is not None and t["end"] > t["start"]:
            out.stylize(shade(t["score"], scale), t["start"], t["end"])
    return out


def render(result: dict[str, Any], text: str, pair: str | None) -> None:
    from rich.console import Console

    console = Console(highlight=False)
    tokens = result["tokens"]
    scale = max((abs(t["score"]) for t in tokens), default=0.0)
    console.print(f"prediction: [bold]{result['label']}[/] ({result['score']:.3f}); "
                  f"attributions by {result['method']}")
    for which, part in enumerate([text] if pair is None else [text, pair]):
        console.print(shaded_text(part, tokens, which, scale))
    top = sorted(tokens, key=lambda t: -abs(t["score"]))[:TOP_TOKENS]
    console.print("strongest tokens: " + ", ".join(f"{t['token']} ({t['score']:+.3f})" for t in top))
    console.print(f"[dim]green: for {result['label']}; red: against it (the drop in its probability "
                  "without the token, or its integrated gradient)[/]")


def run(args: argparse.Namespace) -> int:
    result = explain(args.model, args.text, pair=args.pair, method=args.method, steps=args.steps,
                     public_key=args.require_signature)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        render(result, args.text, args.pair)
    return 0
