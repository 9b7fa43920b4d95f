"""``textgan bench bleu``: exact fast BLEU / Self-BLEU against nltk's reference loop.

A COCO-like synthetic corpus (seeded; Zipfian vocabulary of 5,000 word types, sentence lengths
8..30) is scored with :func:`textgan.metrics.bleu_scores` (BLEU-2..5, Texygen protocol) and
:func:`textgan.metrics.self_bleu_scores`. nltk's ``sentence_bleu`` (smoothing method 1) is run on
a few hypotheses only, its time scaled linearly to the full hypothesis count (its cost is
proportional to it), and our per-hypothesis scores are compared with nltk's on that subsample.
"""

from __future__ import annotations

import time

import numpy as np

from textgan import metrics

VOCAB = 5000
ZIPF_S = 1.1
MIN_LEN, MAX_LEN = 8, 30
NS = (2, 3, 4, 5)
SELF_N = 4


def synthetic_corpus(num: int, seed: int) -> list[list[str]]:
    """``num`` sentences of Zipf-distributed words ``w0..w4999``, lengths uniform in 8..30."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, VOCAB + 1) ** ZIPF_S
    p /= p.sum()
    words = np.array([f"w{i}" for i in range(VOCAB)])
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, size=num)
    ids = rng.choice(VOCAB, size=int(lengths.sum()), p=p)
    out, pos = [], 0
    for L in lengths:
        out.append(words[ids[pos:pos + L]].tolist())
        pos += L
    return out


def _nltk():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    return sentence_bleu, SmoothingFunction().method1


def run(quick: bool = False) -> list[dict]:
    """Time ours vs nltk (subsample, linearly scaled) and check exact equality.

    Returns:
        One row for BLEU-2..5 against the reference set and one for Self-BLEU-4.
    """
    n_hyp, n_ref, n_sub = (100, 1000, 3) if quick else (1000, 10000, 5)
    hyps = synthetic_corpus(n_hyp, seed=1)
    refs = synthetic_corpus(n_ref, seed=2)
    sentence_bleu, method1 = _nltk()
    sub = list(range(0, n_hyp, n_hyp // n_sub))[:n_sub]
    rows = []

    # -- BLEU-2..5 against the references ------------------------------------------------------
    t0 = time.perf_counter()
    ours_mean = metrics.bleu_scores(hyps, refs, NS)
    ours_s = time.perf_counter() - t0
    ours = metrics.bleu_sentence_scores(hyps, refs, NS)
    t0 = time.perf_counter()
    theirs = {n: [sentence_bleu(refs, hyps[i], weights=(1 / n,) * n, smoothing_function=method1)
                  for i in sub] for n in NS}
    nltk_s = (time.perf_counter() - t0) * n_hyp / len(sub)
    diff = max(abs(ours[n][i] - t) for n in NS for i, t in zip(sub, theirs[n], strict=True))
    rows.append({"metric": "BLEU-2..5", "hyps": n_hyp, "refs": n_ref, "ours_s": ours_s,
                 "nltk_s_est": nltk_s, "speedup": nltk_s / ours_s, "max_abs_diff": diff,
                 "value": ours_mean[4]})

    # -- Self-BLEU-4 ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    self_mean = metrics.self_bleu_scores(hyps, (SELF_N,))
    ours_s = time.perf_counter() - t0
    ours_self = metrics.self_bleu_sentence_scores(hyps, (SELF_N,))[SELF_N]
    w = (1 / SELF_N,) * SELF_N
    t0 = time.perf_counter()
    theirs_self = [sentence_bleu(hyps[:i] + hyps[i + 1:], hyps[i], weights=w,
                                 smoothing_function=method1) for i in sub]
    nltk_s = (time.perf_counter() - t0) * n_hyp / len(sub)
    diff = max(abs(ours_self[i] - t) for i, t in zip(sub, theirs_self, strict=True))
    rows.append({"metric": f"Self-BLEU-{SELF_N}", "hyps": n_hyp, "refs": n_hyp - 1,
                 "ours_s": ours_s, "nltk_s_est": nltk_s, "speedup": nltk_s / ours_s,
                 "max_abs_diff": diff, "value": self_mean[SELF_N]})
    return rows


if __name__ == "__main__":  # pragma: no cover
    from textgan.bench import markdown_table

    print(markdown_table(run()))
