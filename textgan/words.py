"""How lines of text become words: ``data.word_split`` and ``textgan eval --word-split``.

RelGAN's and Texygen's code tokenise captions with ``nltk.word_tokenize``, which splits
punctuation off words ("a wheel." -> ``a wheel .``); their vocabularies and BLEU scores count
those marks as words. ``punctuation`` does the same without nltk (:func:`split_words`).
"""

from __future__ import annotations

import re

from textgan.errors import choice_error

WORD_SPLITS = ("whitespace", "punctuation")  # `data.word_split`

_PUNCTUATION_WORDS = re.compile(r"""
      \w+(?=n't\b) | n't\b                   # "don't" -> do n't
    | '(?:s|re|ve|ll|d|m)\b                   # clitics: 's 're 've 'll 'd 'm
    | \w+(?:(?:[-./:]|(?<=\d),(?=\d))\w+)*   # words; inner - . / : and 1,000 stay
    | \.{2,}                                  # .. and ...
    | \S                                      # any other mark on its own
""", re.X | re.I)


def split_words(line: str, how: str = "whitespace") -> list[str]:
    """The words of ``line``: ``how="whitespace"``: ``line.split()``; ``"punctuation"``:
    punctuation marks are also split off, as ``nltk.word_tokenize`` (RelGAN's and Texygen's
    preprocessing) does for captions: ``"a man's bike, parked."`` -> ``a man 's bike , parked .``.

    ``punctuation`` keeps hyphens, dots, slashes and colons inside a word (``close-up``, ``t.v``,
    ``3/4``, ``10:30``) and commas between digits, splits ``n't`` and the clitics ``'s 're 've 'll
    'd 'm`` off, keeps ``..`` / ``...`` whole and makes every other mark a word. On RelGAN's COCO
    captions (lower-cased) it gives nltk's tokens on 99.9 % of the 20,000 lines (most of the rest:
    quotes, which nltk writes as two backticks / two apostrophes) and 4,650 training word types,
    against the 4,681 words of RelGAN's vocabulary (whitespace words: 6,094); measured by
    ``python data/check_word_split.py ../shared/data/coco``.
    """
    if how == "whitespace":
        return line.split()
    if how == "punctuation":
        return _PUNCTUATION_WORDS.findall(line)
    raise ValueError(choice_error("data.word_split", how, WORD_SPLITS))
