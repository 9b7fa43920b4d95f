"""``textgan train RECIPE [key=value ...]``: dispatch on the recipe's ``algorithm:``.

Exit codes: 0 done, 1 a run that cannot continue (non-finite loss), 2 a user error (bad recipe
key or value, missing data, nothing to resume), 130 interrupted by SIGINT/SIGTERM after saving a
checkpoint (continue with ``resume=auto``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML (see `textgan ls`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.steps=100 data.path=../shared/data/coco")


def check_output_dir(path: str) -> None:
    """``output_dir`` must be a directory (or not exist yet) before anything is written."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if p == out and not p.is_dir():
                raise ValueError(
                    f"`output_dir` '{out}' is a file, not a directory; choose another output_dir"
                )
            if not p.is_dir():
                raise ValueError(
                    f"`output_dir` '{out}' cannot be created: '{p}' is a file; choose another "
                    f"output_dir"
                )
            return


def close_progress_bars() -> None:
    """Close the progress bars a failed loop left open, so that the error message that follows
    starts a line of its own (not glued to the end of the last bar)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def run(args) -> int:
    from textgan.config import load_recipe
    from textgan.train import get_trainer
    from textgan.train.common import Interrupted, TrainingError

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"override '{bad[0]}' is not of the form key=value (e.g. train.steps=100)")
    cfg = load_recipe(args.recipe, args.overrides)
    check_output_dir(cfg.output_dir)
    # the trainers install SIGINT/SIGTERM handlers; give the caller its own back afterwards
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            result = get_trainer(cfg.algorithm)(cfg)
        finally:  # before any message: the bars of a failed loop are still open
            close_progress_bars()
            for s, handler in saved.items():
                try:
                    signal.signal(s, handler if handler is not None else signal.SIG_DFL)
                except ValueError:  # not the main thread: the trainer installed none either
                    pass
    except Interrupted as e:
        print(f"textgan train: {e}", file=sys.stderr)
        return 130
    except TrainingError as e:
        print(f"textgan train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:  # once, not once per launched process
        print(f"done: {cfg.output_dir} (step {result.step}) "
              + " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                         if isinstance(v, float) and k != "time"))
    return 0
