"""Word counts of a corpus under each ``data.word_split``, and (when nltk is installed) how many
lines ``punctuation`` splits exactly as nltk's word tokenizer does (sentences split at . ! ?
followed by a space, as punkt does for captions). The figures in data/README.md come from:

    python data/check_word_split.py ../shared/data/coco
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from textgan.words import WORD_SPLITS, split_words


def main(corpus: str) -> None:
    train = Path(corpus, "train.txt").read_text(encoding="utf-8").splitlines()
    test = Path(corpus, "test.txt").read_text(encoding="utf-8").splitlines()
    for how in WORD_SPLITS:
        words = {w for line in train for w in split_words(line, how)}
        longest = max(len(split_words(line, how)) for line in train + test)
        print(f"{how}: {len(words)} training word types, longest sentence {longest} words")
    try:
        from nltk.tokenize import NLTKWordTokenizer
    except ImportError:
        print("nltk not installed: agreement not measured")
        return
    tok = NLTKWordTokenizer()

    def nltk_words(line: str) -> list[str]:
        return [w for s in re.split(r"(?<=[.!?])\s+", line) for w in tok.tokenize(s)]

    lines = [line.lower() for line in train + test]
    same = sum(nltk_words(line) == split_words(line, "punctuation") for line in lines)
    print(f"punctuation == nltk on {same} of {len(lines)} lines ({100 * same / len(lines):.2f} %)")


if __name__ == "__main__":
    main(sys.argv[1])
