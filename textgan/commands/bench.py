"""``textgan bench {mle,relgan,seqgan,bleu,all} [--quick] [--out DIR]``: markdown tables."""

from __future__ import annotations

import importlib
import shlex
import sys
import time
from pathlib import Path


def add_arguments(parser) -> None:
    from textgan.bench import BENCHES

    parser.add_argument("name", choices=[*BENCHES, "all"], help="which benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--out", default="bench_results", help="directory for <name>.md")
    parser.add_argument("--textgan-pytorch", metavar="DIR", default=None,
                        help="relgan: a TextGAN-PyTorch checkout to time in the same run "
                             "(the speed-up is then measured, not the issue's 31 s)")


def run(args) -> int:
    from textgan.bench import BENCHES, machine, markdown_table

    if args.textgan_pytorch and args.name not in ("relgan", "all"):
        print(f"--textgan-pytorch is only used by bench relgan, not {args.name}", file=sys.stderr)
        return 2
    names = list(BENCHES) if args.name == "all" else [args.name]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "textgan " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for name in names:
        try:
            module = importlib.import_module(BENCHES[name])
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("textgan"):
                print(f"bench {name}: not available in this build ({e.name})", file=sys.stderr)
                continue
            raise
        start = time.perf_counter()
        extra = {"textgan_pytorch": args.textgan_pytorch} if name == "relgan" else {}
        rows = module.run(quick=args.quick, **extra)
        wall = time.perf_counter() - start
        text = (f"## textgan bench {name}\n\nCommand: `{command}`  \n"
                f"Date: {time.strftime('%Y-%m-%d %H:%M')}, wall time {wall:.1f} s  \n"
                f"Machine: {machine()}\n\n"
                + markdown_table(rows))
        print(text)
        (out / f"{name}.md").write_text(text, encoding="utf-8")
    return 0
