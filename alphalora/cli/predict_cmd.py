"""``python -m alphalora predict RUN_ID --text …``: a finished run's adapter answers new text."""

from __future__ import annotations

import argparse
import json

from alphalora.cli.terminal import clean


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    p = sub.add_parser(
        "predict",
        help="load a finished run's adapter on its base model and answer new text",
        description="Put each --text into the run's task template and answer it with the "
        "fine-tuned model: the most likely label of a classification task (every label's "
        "log-likelihood shown), else a greedy generation.",
    )
    p.add_argument("run_id", metavar="RUN_ID", help="a completed run (see `runs list`)")
    p.add_argument(
        "--text", action="append", required=True, metavar="TEXT", help="text to answer (repeat)"
    )
    p.add_argument("--raw", action="store_true", help="use each text as the prompt, untemplated")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="longest generated answer (tasks without labels)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Load the run once, answer every text, print the answers."""
    import torch

    from alphalora.errors import AlphaLoRAError
    from alphalora.finetune.predict import load_run, predict

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise AlphaLoRAError("--device cuda was asked for but no CUDA GPU is visible.")
    if args.max_new_tokens < 1:
        raise AlphaLoRAError(f"--max-new-tokens must be ≥ 1; got {args.max_new_tokens}.")
    loaded = load_run(args.run_id, device=device)
    answers = predict(loaded, args.text, raw=args.raw, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps([a.to_dict() for a in answers], ensure_ascii=True))
        return 0
    for item in answers:
        print(f"text:   {clean(item.text)}")
        line = f"answer: {clean(item.answer) if item.answer is not None else '(nothing)'}"
        if item.scores:
            scores = ", ".join(f"{clean(k)} {v:.3f}" for k, v in item.scores.items())
            line += f"  (log-likelihoods: {scores})"
        print(line)
    return 0
