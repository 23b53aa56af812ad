"""``mechlab sae features SAE``: feature pages of an SAE's latents as one offline HTML page.

The ``sae`` command group adds this sub-command with ``add_parser(subparsers)``; the handler reads
the SAE directory, loads the model it was trained on (``--model``, default the SAE's
``model_name``), reads ``--tokens`` tokens of the offline corpus (or ``--text FILE``) in one pass and
writes the pages of the ``--top`` most often active latents (or of ``--latents``).
"""

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import mechlab
from mechlab.cli.common import Handler, load, model_options, non_negative_int, outputs, positive_int


def _corpus(args: argparse.Namespace, loaded: Any) -> tuple[Any, str]:
    """The corpus ``[n_seq, context]`` and its description: ``--text FILE`` cut into windows, or the
    offline corpus's ``--split`` (``mechlab.corpus_tokens``)."""
    if args.text is None:
        tokens = mechlab.corpus_tokens(
            loaded.model, args.tokens, context=args.context, split=args.split, seed=args.seed
        )
        return tokens, f"the offline corpus ({args.split} split)"
    path = Path(args.text)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise mechlab.InputError(f"Cannot read --text {path}: {error}. Pass a UTF-8 text file.") from error
    if loaded.tokenizer is None:
        raise mechlab.InputError(f"--text needs a model with a tokenizer; {args.model} has none.")
    ids = loaded.tokenizer.encode(text, add_special_tokens=False)[: args.tokens]
    n_seq = len(ids) // args.context
    if n_seq == 0:
        raise mechlab.InputError(
            f"--text {path} holds {len(ids)} tokens, fewer than one window of --context {args.context}. "
            "Pass a longer text or a smaller --context."
        )
    import torch

    windows = torch.tensor(ids[: n_seq * args.context]).reshape(n_seq, args.context)
    return windows, path.name


def cmd_features(args: argparse.Namespace, console: Console) -> int:
    checked = outputs(args, "html", "json")
    html_path, json_path = checked["--html"], checked.get("--json")
    sae = mechlab.load_sae(args.sae, device=args.device)
    args.model = args.model or sae.cfg.model_name
    if not args.model:
        raise mechlab.InputError(
            f"The SAE in {args.sae} does not name the model it was trained on (cfg.json has no model_name); "
            "pass --model SOURCE, e.g. --model smollm2."
        )
    args.source = args.model
    loaded = load(args, console)
    tokens, corpus = _corpus(args, loaded)
    with mechlab.RichProgress("Reading the corpus", transient=True, console=console) as bar:
        report = mechlab.feature_pages(
            loaded.model,
            sae,
            tokens,
            latents=args.latents,
            top=args.top,
            contexts=args.contexts,
            logits=args.logits,
            batch_size=args.batch_size,
            corpus=corpus,
            name=Path(args.sae).resolve().name,
            progress=bar,
        )
    path = report.save(html_path)
    if json_path is not None:
        mechlab.atomic_write(json_path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    tracked = report.frequency[report.frequency == report.frequency]  # NaN: not tracked
    console.print(
        f"Read {report.n_tokens:,} tokens of {escape(corpus)}: {int((tracked == 0).sum())} of the "
        f"{len(tracked)} latents tracked never fired."
    )
    for feature in report.features[:10]:
        promotes = ", ".join(repr(token) for token, _ in feature.promoted[:3])
        console.print(
            f"latent {feature.latent}: density {feature.density:.3%}, max {feature.max_value:.3g}"
            + (f", promotes {escape(promotes)}" if promotes else "")
        )
    console.print(f"Feature pages: [bold]{escape(str(path))}[/]")
    return 0


HANDLERS: dict[str, Handler] = {"sae features": cmd_features}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``features`` to the ``sae`` group's ``subparsers`` (``argparse``'s sub-parser action)."""
    help_text = (
        "Write feature pages for an SAE's latents: top-activating corpus contexts with per-token "
        "highlighting, activation histogram, and the tokens each latent's decoder direction promotes "
        "and suppresses, as one offline HTML page."
    )
    p = subparsers.add_parser("features", help=help_text, description=help_text)
    p.add_argument("sae", metavar="SAE", help="the SAE directory (cfg.json + sae_weights.safetensors)")
    p.add_argument("--model", metavar="SOURCE", help="the model it reads (default: the SAE's model_name)")
    model_options(p)
    p.add_argument("--top", type=positive_int, default=20, help="pages for the N most often active latents")
    p.add_argument("--latents", type=int, nargs="+", metavar="I", help="pages for these latents instead")
    p.add_argument("--contexts", type=positive_int, default=10, help="top-activating contexts per latent")
    p.add_argument(
        "--logits", type=non_negative_int, default=10, help="promoted/suppressed tokens per latent"
    )
    p.add_argument("--tokens", type=positive_int, default=65_536, help="corpus tokens read (default 65536)")
    p.add_argument("--context", type=positive_int, default=128, help="tokens per corpus window")
    p.add_argument("--split", default="train", choices=["train", "heldout"], help="offline corpus split")
    p.add_argument("--seed", type=int, default=0, help="which corpus windows are read")
    p.add_argument("--text", metavar="FILE", help="read this UTF-8 text file instead of the offline corpus")
    p.add_argument("--batch-size", type=positive_int, default=8, help="corpus windows per forward pass")
    p.add_argument("--html", default="features.html", help="the page to write (default features.html)")
    p.add_argument("--json", metavar="FILE", help="also write the pages' numbers as JSON")
    p.add_argument("--force", action="store_true", help="replace output files even if read-only")
    p.set_defaults(handler=cmd_features)
    return p
