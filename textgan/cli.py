"""Command line: ``textgan {ls,train,sample,eval,report,bench,compare-estimators} ...``.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches. User errors (``ValueError``,
``FileNotFoundError``, ``KeyError`` from config) print one line and exit 2, without a traceback;
Ctrl-C outside a training loop prints one line and exits 130.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "ls": ("textgan.commands.ls", "list recipes with a one-line description"),
    "train": ("textgan.commands.train", "train a recipe: textgan train RECIPE [key=value ...]"),
    "sample": ("textgan.commands.sample", "sample text from a run or checkpoint"),
    "eval": ("textgan.evaluate", "BLEU / Self-BLEU / NLL metrics on files or a run"),
    "report": ("textgan.commands.report", "a run's metrics.jsonl as a table, a row per evaluation"),
    "bench": ("textgan.commands.bench", "benchmarks written as markdown tables"),
    "compare-estimators": ("textgan.compare", "score-function vs relaxed gradient estimators"),
}


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textgan",
        description="Train and evaluate generative models of text with gradients through sampling.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        # Import only the chosen command's module (keeps `textgan ls` fast).
        if name in argv[:1] or not argv or argv[0] in ("-h", "--help"):
            try:
                importlib.import_module(module).add_arguments(p)
            except ModuleNotFoundError as e:
                if e.name and e.name.startswith("textgan"):
                    p.set_defaults(_missing=module)
                    continue
                raise
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if getattr(args, "_missing", None):
        print(f"textgan: error: command '{args.command}' is not available in this build",
              file=sys.stderr)
        return 2
    module = importlib.import_module(args._module)
    try:
        code = module.run(args)
    except KeyboardInterrupt:  # Ctrl-C outside a training loop (loops save, then exit 130)
        print(f"textgan {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError, UnicodeDecodeError,
            KeyError, TypeError) as e:
        if isinstance(e, (KeyError, TypeError)) and not getattr(e, "user_error", False):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"textgan {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
