"""Evaluation metrics for generated text: exact fast BLEU / Self-BLEU, sacreBLEU, NLLs, diversity.

BLEU here follows the protocol of Texygen (Zhu et al., 2018) used by SeqGAN, LeakGAN and RelGAN:
every generated sentence is scored with sentence-level BLEU (Papineni et al., 2002) against the
*whole* reference set, with uniform weights over orders ``1..n`` and smoothing "method 1" of
Chen & Cherry (2014) (``epsilon = 0.1`` added to the numerator of zero precisions), and the
sentence scores are averaged. The numbers are identical (to rounding of the last bit, in practice
bit for bit) to the loop

    mean(nltk.translate.bleu_score.sentence_bleu(references, hyp, weights=(1/n,) * n,
                                                 smoothing_function=SmoothingFunction().method1)
         for hyp in hypotheses)

but the cost is linear in the corpus size instead of ``|hypotheses| x |references|``: the clipped
count of an n-gram only needs its *maximum* count over the references, which is computed once for
the reference set, and the closest reference length is a binary search in the sorted lengths.
Self-BLEU (each hypothesis against all the *other* hypotheses) keeps, for every n-gram, its two
largest per-sentence counts and how many sentences attain the largest, so "the maximum over all
sentences but mine" is O(1) as well.

References:
    Papineni, Roukos, Ward and Zhu (2002). BLEU: a method for automatic evaluation of machine
    translation. ACL.
    Chen and Cherry (2014). A systematic comparison of smoothing techniques for sentence-level
    BLEU. WMT.
    Zhu, Lu, Zheng, Guo, Zhang, Wang and Yu (2018). Texygen: a benchmarking platform for text
    generation models. SIGIR.
    Post (2018). A call for clarity in reporting BLEU scores. WMT (sacreBLEU).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, NamedTuple

__all__ = [
    "BleuReferences",
    "SacreBleuResult",
    "bleu",
    "bleu_scores",
    "bleu_sentence_scores",
    "best_direction",
    "corpus_bleu_sacrebleu",
    "distinct_n",
    "fraction_in_train",
    "mean_length",
    "nll_oracle",
    "nll_sums",
    "nll_test",
    "novelty",
    "self_bleu",
    "self_bleu_scores",
    "self_bleu_sentence_scores",
]

Tokens = Sequence[Hashable]

#: Metric keys (prefixes) that grow with quality; every other metric (NLLs, Self-BLEU, losses)
#: is better lower.
HIGHER_IS_BETTER = ("bleu", "sacrebleu", "recon_bleu", "recon_acc", "unique", "novelty")


def best_direction(spec: str, option: str = "--best") -> tuple[str, str]:
    """``(key, "min" | "max")`` of a "best" specification ``KEY``, ``KEY:min`` or ``KEY:max``:
    a bare ``KEY`` is maximised for keys starting with one of :data:`HIGHER_IS_BETTER` and
    minimised otherwise. ``option`` names the setting in the error.

    Raises:
        ValueError: a malformed specification.
    """
    key, colon, how = str(spec).partition(":")
    if how not in ("", "min", "max") or not key or (colon and not how):
        raise ValueError(f"`{option}` must be KEY, KEY:min or KEY:max (e.g. nll_oracle or "
                         f"bleu4:max), got '{spec}'")
    return key, how or ("max" if key.startswith(HIGHER_IS_BETTER) else "min")

#: Chen & Cherry's method 1: this many counts are added to a zero n-gram match count.
SMOOTHING_EPSILON = 0.1


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _check_order(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1, got {value!r}")
    return value


def _check_orders(ns: Iterable[int]) -> tuple[int, ...]:
    ns = tuple(ns)
    if not ns:
        raise ValueError("`ns` must name at least one n-gram order, got an empty sequence")
    for n in ns:
        _check_order(n, "ns")
    return tuple(dict.fromkeys(ns))  # de-duplicated, order kept


def _as_sentences(sentences: Any, name: str, allow_empty: bool = False) -> list[Tokens]:
    """Validate a list of token lists; strings are rejected (they would be split into chars)."""
    if isinstance(sentences, (str, bytes)):
        raise ValueError(f"`{name}` must be a list of token lists, got a string")
    try:
        out = list(sentences)
    except TypeError:
        raise ValueError(
            f"`{name}` must be a list of token lists, got {type(sentences).__name__}"
        ) from None
    if not out and not allow_empty:
        raise ValueError(f"`{name}` is empty; at least one sentence is needed")
    for i, s in enumerate(out):
        if isinstance(s, (str, bytes)):
            raise ValueError(
                f"`{name}[{i}]` is a string ({s[:30]!r}); pass token lists, e.g. `line.split()`"
            )
        if not isinstance(s, (list, tuple)):
            try:
                out[i] = list(s)
            except TypeError:
                raise ValueError(
                    f"`{name}[{i}]` must be a list of tokens, got {type(s).__name__}"
                ) from None
    return out


# --------------------------------------------------------------------------------------------
# n-gram helpers
# --------------------------------------------------------------------------------------------


def _ngrams(tokens: Tokens, n: int) -> Iterable[tuple]:
    """The n-grams of ``tokens`` as tuples (empty when ``len(tokens) < n``)."""
    return zip(*[tokens[i:] for i in range(n)], strict=False)


def _ngram_counts(tokens: Tokens, n: int) -> Counter:
    return Counter(_ngrams(tokens, n)) if len(tokens) >= n else Counter()


def _closest_length(lengths: list[int], hyp_len: int) -> int:
    """The value in sorted, de-duplicated ``lengths`` closest to ``hyp_len``; ties -> shorter."""
    i = bisect_left(lengths, hyp_len)
    if i < len(lengths) and lengths[i] == hyp_len:
        return hyp_len
    if i == 0:
        return lengths[0]
    if i == len(lengths):
        return lengths[-1]
    lo, hi = lengths[i - 1], lengths[i]
    return lo if hyp_len - lo <= hi - hyp_len else hi


def _sentence_bleu(nums: list[int], dens: list[int], n: int, hyp_len: int, ref_len: int) -> float:
    """Smoothed (method 1) sentence BLEU-n from per-order clipped match counts and totals.

    The floating-point operations are those of the reference definition, in the same order:
    precisions ``num / den`` (``epsilon / den`` for zero matches), the exactly rounded sum of
    ``w * log(p)``, its exponential, times the brevity penalty.
    """
    if nums[0] == 0:  # no unigram matches: BLEU is 0 whatever the smoothing
        return 0.0
    w = 1 / n
    s = math.exp(math.fsum(
        w * math.log((nums[k] if nums[k] else SMOOTHING_EPSILON) / dens[k]) for k in range(n)
    ))
    if hyp_len > ref_len:
        return s
    return math.exp(1 - ref_len / hyp_len) * s


def _precision_counts(hyp: Tokens, max_n: int, max_count) -> tuple[list[int], list[int]]:
    """Clipped match counts and n-gram totals (at least 1) of ``hyp`` for orders ``1..max_n``.

    ``max_count(k, gram, count)`` gives the clipping count of ``gram`` (order ``k + 1``) that
    occurs ``count`` times in ``hyp``.
    """
    L = len(hyp)
    nums, dens = [], []
    matched = True
    for k in range(max_n):
        n = k + 1
        dens.append(max(1, L - n + 1))
        if not matched or L < n:
            # No match at order n implies none at higher orders (every matched n+1-gram has a
            # matched prefix), so the counting can stop.
            nums.append(0)
            continue
        num = 0
        for gram, c in Counter(_ngrams(hyp, n)).items():
            m = max_count(k, gram, c)
            num += c if c < m else m
        nums.append(num)
        matched = num > 0
    return nums, dens


# --------------------------------------------------------------------------------------------
# BLEU against a reference set
# --------------------------------------------------------------------------------------------


class BleuReferences:
    """A reference set prepared once for scoring any number of hypotheses with BLEU.

    Holds, for every n-gram order up to ``max_n``, the maximum count of each n-gram over the
    references, and the sorted distinct reference lengths. Building it is linear in the total
    reference length; scoring a hypothesis is linear in its length.

    Args:
        references: the reference sentences, a list of token lists (str or int tokens).
        max_n: the highest n-gram order that will be asked for.

    Raises:
        ValueError: if ``references`` is empty or ``max_n < 1``.
    """

    def __init__(self, references: Sequence[Tokens], max_n: int = 4):
        self.max_n = _check_order(max_n, "max_n")
        refs = _as_sentences(references, "references")
        self.num_references = len(refs)
        self.lengths = sorted({len(r) for r in refs})
        self.max_counts: list[dict[tuple, int]] = []
        for n in range(1, self.max_n + 1):
            table: dict[tuple, int] = {}
            get = table.get
            for ref in refs:
                if len(ref) < n:
                    continue
                grams = list(_ngrams(ref, n))
                uniq = dict.fromkeys(grams, 1)
                if len(uniq) < len(grams):  # repeated n-grams in this reference
                    for g, c in Counter(grams).items():
                        if c > get(g, 0):
                            table[g] = c
                else:
                    for g in uniq:
                        if g not in table:
                            table[g] = 1
            self.max_counts.append(table)

    def _max_count(self, k: int, gram: tuple, count: int) -> int:
        return self.max_counts[k].get(gram, 0)

    def sentence_scores(self, hypotheses: Sequence[Tokens],
                        ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, list[float]]:
        """Sentence-level smoothed BLEU-n of every hypothesis, for every order ``n`` in ``ns``.

        Raises:
            ValueError: if an order in ``ns`` exceeds ``max_n``, or ``hypotheses`` is malformed.
        """
        ns = _check_orders(ns)
        top = max(ns)
        if top > self.max_n:
            raise ValueError(f"order {top} requested but these references were prepared with "
                             f"max_n={self.max_n}")
        hyps = _as_sentences(hypotheses, "hypotheses", allow_empty=True)
        out: dict[int, list[float]] = {n: [] for n in ns}
        closest: dict[int, int] = {}
        for hyp in hyps:
            L = len(hyp)
            ref_len = closest.get(L)
            if ref_len is None:
                ref_len = closest[L] = _closest_length(self.lengths, L)
            nums, dens = _precision_counts(hyp, top, self._max_count)
            for n in ns:
                out[n].append(_sentence_bleu(nums, dens, n, L, ref_len))
        return out

    def scores(self, hypotheses: Sequence[Tokens],
               ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, float]:
        """Mean sentence BLEU-n over ``hypotheses`` for every ``n`` in ``ns``."""
        per = self.sentence_scores(hypotheses, ns)
        if not next(iter(per.values())):
            raise ValueError("`hypotheses` is empty; at least one sentence is needed")
        return {n: _mean(v) for n, v in per.items()}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def bleu(hypotheses: Sequence[Tokens], references: Sequence[Tokens], max_n: int = 4) -> float:
    """Mean smoothed sentence BLEU-``max_n`` of the hypotheses against a shared reference set.

    Exactly the Texygen / RelGAN protocol: the mean over hypotheses of nltk's
    ``sentence_bleu(references, hyp, weights=(1/max_n,)*max_n,
    smoothing_function=SmoothingFunction().method1)``, i.e. BLEU of Papineni et al. (2002) with
    modified (clipped) n-gram precisions, the closest-reference-length brevity penalty (ties go
    to the shorter reference), ``0.1`` added to zero match counts (Chen & Cherry 2014, method 1)
    and a score of 0 when no unigram matches. Runs in time linear in the corpus sizes.

    Args:
        hypotheses: generated sentences, a list of token lists (str or int tokens).
        references: the reference set (e.g. the test split), a list of token lists.
        max_n: the highest n-gram order (BLEU-4 by default).

    Returns:
        The mean sentence BLEU, in ``[0, 1]``.

    Raises:
        ValueError: if ``max_n < 1``, or ``hypotheses`` or ``references`` is empty or not a
            list of token lists.
    """
    _check_order(max_n, "max_n")
    hyps = _as_sentences(hypotheses, "hypotheses")
    return BleuReferences(references, max_n).scores(hyps, (max_n,))[max_n]


def bleu_scores(hypotheses: Sequence[Tokens], references: Sequence[Tokens],
                ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, float]:
    """:func:`bleu` for several orders at once, sharing all the counting.

    Args:
        hypotheses: generated sentences, a list of token lists.
        references: the reference set, a list of token lists.
        ns: the orders ``n`` of the BLEU-n to compute.

    Returns:
        ``{n: mean sentence BLEU-n}`` in the order of ``ns``; each value equals
        ``bleu(hypotheses, references, n)``.

    Raises:
        ValueError: on an empty ``ns``, an order < 1, or empty / malformed inputs.
    """
    ns = _check_orders(ns)
    hyps = _as_sentences(hypotheses, "hypotheses")
    return BleuReferences(references, max(ns)).scores(hyps, ns)


def bleu_sentence_scores(hypotheses: Sequence[Tokens], references: Sequence[Tokens],
                         ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, list[float]]:
    """The per-hypothesis scores behind :func:`bleu_scores`: ``{n: [BLEU-n of each hyp]}``."""
    ns = _check_orders(ns)
    return BleuReferences(references, max(ns)).sentence_scores(hypotheses, ns)


# --------------------------------------------------------------------------------------------
# Self-BLEU
# --------------------------------------------------------------------------------------------


class _LeaveOneOut:
    """Per-order n-gram statistics of a corpus for "maximum count over all sentences but one".

    For every n-gram: the largest count in any sentence, how many sentences attain it, and the
    largest count strictly below it (0 if none). The maximum over all sentences except one in
    which the n-gram occurs ``c`` times is the second value only when ``c`` is the largest and no
    other sentence attains it.
    """

    def __init__(self, sentences: list[Tokens], max_n: int):
        self.top: list[dict[tuple, int]] = []
        self.n_top: list[dict[tuple, int]] = []
        self.second: list[dict[tuple, int]] = []
        for n in range(1, max_n + 1):
            top: dict[tuple, int] = {}
            n_top: dict[tuple, int] = {}
            second: dict[tuple, int] = {}
            for s in sentences:
                if len(s) < n:
                    continue
                for g, c in Counter(_ngrams(s, n)).items():
                    t = top.get(g)
                    if t is None:
                        top[g] = c
                        n_top[g] = 1
                    elif c == t:
                        n_top[g] += 1
                    elif c > t:
                        second[g] = t
                        top[g] = c
                        n_top[g] = 1
                    elif c > second.get(g, 0):
                        second[g] = c
            self.top.append(top)
            self.n_top.append(n_top)
            self.second.append(second)
        lengths = Counter(len(s) for s in sentences)
        self.length_counts = lengths
        self.lengths = sorted(lengths)

    def max_count_excluding(self, k: int, gram: tuple, count: int) -> int:
        """Max count of ``gram`` over the other sentences, for one where it occurs ``count``x."""
        t = self.top[k][gram]
        if count == t and self.n_top[k][gram] == 1:
            return self.second[k].get(gram, 0)
        return t

    def closest_length_excluding(self, hyp_len: int) -> int:
        """Closest length among the other sentences (ties -> shorter)."""
        if self.length_counts[hyp_len] > 1:
            return hyp_len
        i = bisect_left(self.lengths, hyp_len)  # self.lengths[i] == hyp_len
        lo = self.lengths[i - 1] if i > 0 else None
        hi = self.lengths[i + 1] if i + 1 < len(self.lengths) else None
        if hi is None:
            return lo
        if lo is None:
            return hi
        return lo if hyp_len - lo <= hi - hyp_len else hi


def self_bleu_sentence_scores(hypotheses: Sequence[Tokens],
                              ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, list[float]]:
    """Per-hypothesis Self-BLEU-n: each hypothesis against all the others, for each n in ``ns``.

    Raises:
        ValueError: with fewer than two hypotheses, or on an invalid order.
    """
    ns = _check_orders(ns)
    hyps = _as_sentences(hypotheses, "hypotheses")
    if len(hyps) < 2:
        raise ValueError("Self-BLEU needs at least 2 hypotheses (each is scored against the "
                         f"others), got {len(hyps)}")
    top = max(ns)
    stats = _LeaveOneOut(hyps, top)
    out: dict[int, list[float]] = {n: [] for n in ns}
    for hyp in hyps:
        L = len(hyp)
        ref_len = stats.closest_length_excluding(L)
        nums, dens = _precision_counts(hyp, top, stats.max_count_excluding)
        for n in ns:
            out[n].append(_sentence_bleu(nums, dens, n, L, ref_len))
    return out


def self_bleu_scores(hypotheses: Sequence[Tokens],
                     ns: Iterable[int] = (2, 3, 4, 5)) -> dict[int, float]:
    """:func:`self_bleu` for several orders at once: ``{n: Self-BLEU-n}``."""
    return {n: _mean(v) for n, v in self_bleu_sentence_scores(hypotheses, ns).items()}


def self_bleu(hypotheses: Sequence[Tokens], max_n: int = 4) -> float:
    """Self-BLEU-``max_n`` (Zhu et al. 2018): mean BLEU of each hypothesis against the others.

    A diversity measure (lower = more diverse). Each sentence is scored exactly like
    :func:`bleu` with all the *other* generated sentences as the reference set (the leave-one-out
    reading of Texygen's fast Self-BLEU), in time linear in the corpus size.

    Args:
        hypotheses: generated sentences, a list of at least two token lists.
        max_n: the highest n-gram order.

    Returns:
        The mean sentence Self-BLEU, in ``[0, 1]``.

    Raises:
        ValueError: if ``max_n < 1`` or there are fewer than two hypotheses.
    """
    _check_order(max_n, "max_n")
    return self_bleu_scores(hypotheses, (max_n,))[max_n]


# --------------------------------------------------------------------------------------------
# sacreBLEU
# --------------------------------------------------------------------------------------------


class SacreBleuResult(NamedTuple):
    """Corpus BLEU from sacreBLEU (0..100) and its reproducibility signature."""

    score: float
    signature: str


def corpus_bleu_sacrebleu(hypotheses: Sequence[str],
                          references: Sequence[str] | Sequence[Sequence[str]]
                          ) -> SacreBleuResult:
    """Standard corpus-level BLEU (Post 2018) of detokenized strings via ``sacrebleu``.

    Unlike :func:`bleu`, this is the machine-translation corpus BLEU with parallel references.

    Args:
        hypotheses: one string per hypothesis.
        references: either one string per hypothesis (a single reference stream), or a list of
            reference streams, each with one string per hypothesis.

    Returns:
        ``SacreBleuResult(score, signature)`` with ``score`` in ``[0, 100]``.

    Raises:
        ValueError: on empty inputs or streams whose length differs from ``hypotheses``.
    """
    from sacrebleu.metrics import BLEU

    hyps = list(hypotheses)
    if not hyps:
        raise ValueError("`hypotheses` is empty; at least one sentence is needed")
    if not all(isinstance(h, str) for h in hyps):
        raise ValueError("`hypotheses` must be a list of strings for sacreBLEU")
    refs = list(references)
    if not refs:
        raise ValueError("`references` is empty; at least one reference is needed")
    streams = [refs] if all(isinstance(r, str) for r in refs) else [list(s) for s in refs]
    for i, s in enumerate(streams):
        if not all(isinstance(r, str) for r in s):
            raise ValueError("`references` must be a list of strings or a list of lists of "
                             "strings (reference streams)")
        if len(s) != len(hyps):
            raise ValueError(f"reference stream {i} has {len(s)} sentences but there are "
                             f"{len(hyps)} hypotheses; sacreBLEU needs one per hypothesis")
    metric = BLEU()
    result = metric.corpus_score(hyps, streams)
    return SacreBleuResult(float(result.score), str(metric.get_signature()))


# --------------------------------------------------------------------------------------------
# Likelihood metrics
# --------------------------------------------------------------------------------------------


def _check_tokens(tokens, name: str = "tokens"):
    import torch

    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"`{name}` must be a non-empty (n, T) tensor of token ids, got shape "
                         f"{tuple(tokens.shape)}")
    return tokens.long()


def nll_oracle(oracle, tokens, batch_size: int = 1000) -> float:
    """NLL_oracle (Yu et al. 2017): mean per-token NLL (nats) of samples under the oracle.

    Args:
        oracle: an object with ``.nll(LongTensor (n, T)) -> Tensor (n,)`` giving the mean
            per-token NLL of each sequence (e.g. :class:`textgan.oracle.OracleLSTM`).
        tokens: generated sequences, ``LongTensor (n, T)``.
        batch_size: sequences per call to ``oracle.nll``.

    Returns:
        The mean over sequences of their per-token NLL.
    """
    import torch

    tokens = _check_tokens(tokens)
    _check_order(batch_size, "batch_size")
    total = 0.0
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            total += float(oracle.nll(chunk).double().sum())
    return total / tokens.shape[0]


def nll_test(generator, tokens, *, pad: int | None = None, batch_size: int = 256) -> float:
    """NLL_gen / NLL_test: the model's per-token NLL (nats) on held-out sequences.

    Teacher forcing: the inputs are ``[start_token] + tokens[:, :-1]`` and the model must return
    logits ``(B, T, V)``. Targets equal to ``pad`` are not counted; the result is the mean over
    all counted tokens (not over sequences).

    Args:
        generator: a callable with attributes ``start_token`` and ``vocab_size``.
        tokens: held-out sequences, ``LongTensor (n, T)``, or a
            :class:`~textgan.data.Corpus`, whose test split and ``pad`` are then used.
        pad: the padding id to ignore, or None to count every position.
        batch_size: sequences per forward pass.

    Returns:
        Mean NLL per counted token, in nats.

    Raises:
        ValueError: on a malformed ``tokens`` tensor, logits of the wrong shape, or when every
            target is padding.
    """
    import torch
    import torch.nn.functional as F

    if hasattr(tokens, "test") and hasattr(tokens, "pad"):  # a Corpus: nll_test(G, corpus)
        tokens, pad = tokens.test, tokens.pad if pad is None else pad
    tokens = _check_tokens(tokens)
    _check_order(batch_size, "batch_size")
    device = tokens.device
    params = getattr(generator, "parameters", None)
    if callable(params):
        first = next(iter(params()), None)
        if first is not None:
            device = first.device
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    with torch.no_grad():
        for chunk in tokens.split(batch_size):
            chunk = chunk.to(device)
            start = chunk.new_full((chunk.shape[0], 1), int(generator.start_token))
            logits = generator(torch.cat([start, chunk[:, :-1]], 1))
            if isinstance(logits, tuple):
                logits = logits[0]
            if logits.shape[:2] != chunk.shape:
                raise ValueError(f"the generator returned logits of shape "
                                 f"{tuple(logits.shape)} for inputs {tuple(chunk.shape)}; "
                                 "expected (B, T, V)")
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                  chunk.reshape(-1), reduction="none")
            if pad is not None:
                keep = chunk.reshape(-1) != pad
                nll = nll[keep]
                count += int(keep.sum())
            else:
                count += nll.numel()
            total += nll.double().sum()
    if count == 0:
        raise ValueError("every target token is padding; nothing to score")
    return float(total) / count


def nll_sums(generator, tokens, *, pad: int | None = None, batch_size: int = 256
             ) -> tuple[float, int]:
    """The summed NLL (nats) of the counted tokens of ``tokens`` and their number: the parts of
    :func:`nll_test` (``total / count``), for sums over shards of a test set (several
    processes). Unlike :func:`nll_test` an all-padding shard is not an error (``(0.0, 0)``)."""
    tokens = _check_tokens(tokens)
    count = tokens.numel() if pad is None else int((tokens != pad).sum())
    if count == 0:
        return 0.0, 0
    return nll_test(generator, tokens, pad=pad, batch_size=batch_size) * count, count


# --------------------------------------------------------------------------------------------
# Diversity and copying
# --------------------------------------------------------------------------------------------


def distinct_n(hypotheses: Sequence[Tokens], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams / total n-grams over the whole corpus.

    Returns 0.0 when no hypothesis has ``n`` tokens.
    """
    _check_order(n, "n")
    hyps = _as_sentences(hypotheses, "hypotheses")
    seen: set[tuple] = set()
    total = 0
    for h in hyps:
        if len(h) >= n:
            total += len(h) - n + 1
            seen.update(_ngrams(h, n))
    return len(seen) / total if total else 0.0


def mean_length(hypotheses: Sequence[Tokens]) -> float:
    """Mean number of tokens per hypothesis."""
    hyps = _as_sentences(hypotheses, "hypotheses")
    return sum(len(h) for h in hyps) / len(hyps)


def fraction_in_train(hypotheses: Sequence[Tokens], train: Sequence[Tokens]) -> float:
    """Fraction of hypotheses that occur verbatim (same token sequence) in the training set."""
    hyps = _as_sentences(hypotheses, "hypotheses")
    train_set = {tuple(s) for s in _as_sentences(train, "train")}
    return sum(tuple(h) in train_set for h in hyps) / len(hyps)


def novelty(hypotheses: Sequence[Tokens], train: Sequence[Tokens]) -> float:
    """Fraction of hypotheses that do *not* occur verbatim in the training set.

    ``novelty = 1 - fraction_in_train``; a low value flags a generator that copies its data.
    """
    return 1.0 - fraction_in_train(hypotheses, train)
