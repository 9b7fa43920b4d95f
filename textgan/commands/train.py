"""``textgan train RECIPE [key=value ...]``: dispatch on the recipe's ``algorithm:``."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="path to a recipe YAML (see `textgan ls`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. train.steps=100 data.path=../shared/data/coco")


def run(args) -> int:
    from textgan.config import load_recipe
    from textgan.train import get_trainer
    from textgan.train.common import Interrupted, TrainingError

    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise ValueError(f"override '{bad[0]}' is not of the form key=value (e.g. train.steps=100)")
    cfg = load_recipe(args.recipe, args.overrides)
    try:
        result = get_trainer(cfg.algorithm)(cfg)
    except Interrupted as e:
        print(f"textgan train: {e}", file=sys.stderr)
        return 130
    except TrainingError as e:
        print(f"textgan train: error: {e}", file=sys.stderr)
        return 1
    print(f"done: {cfg.output_dir} (step {result.step}) "
          + " ".join(f"{k}={v:.4f}" for k, v in result.metrics.items()
                     if isinstance(v, float) and k != "time"))
    return 0
