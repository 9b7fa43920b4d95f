"""``textgan sample RUN_OR_CHECKPOINT --n N [--tau T] [--seed S] [--out FILE]``.

Writes decoded text, one sequence per line (token ids for the oracle), reproducibly for a seed.
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("run", help="run directory (newest checkpoint) or checkpoint directory")
    parser.add_argument("--n", type=int, default=10, help="number of sequences")
    parser.add_argument("--tau", type=float, default=1.0, help="sampling temperature (> 0)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output file (default: stdout)")


def run(args) -> int:
    from textgan.runs import load_for_eval

    if args.n < 1:
        raise ValueError(f"`--n` must be >= 1, got {args.n}")
    if not args.tau > 0:
        raise ValueError(f"`--tau` must be > 0, got {args.tau}")
    handle = load_for_eval(args.run)
    lines = [" ".join(words) for words in handle.sample(args.n, args.tau, args.seed)]
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"wrote {len(lines)} samples to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
