"""Split one text file (one sentence per line) into ``train.txt`` and ``test.txt``.

    python data/prepare_text.py corpus.txt data/mycorpus --test-ratio 0.1 [--lowercase]
    textgan train recipes/relgan/coco.yaml data.path=data/mycorpus
"""

import argparse
import random
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("out_dir")
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lowercase", action="store_true")
    a = p.parse_args()
    lines = [ln.strip() for ln in Path(a.src).read_text(encoding="utf-8").splitlines()]
    lines = [ln.lower() if a.lowercase else ln for ln in lines if ln]
    random.Random(a.seed).shuffle(lines)
    n_test = max(1, round(len(lines) * a.test_ratio))
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test.txt").write_text("\n".join(lines[:n_test]) + "\n", encoding="utf-8")
    (out / "train.txt").write_text("\n".join(lines[n_test:]) + "\n", encoding="utf-8")
    print(f"{len(lines) - n_test} train / {n_test} test sentences in {out}")


if __name__ == "__main__":
    main()
