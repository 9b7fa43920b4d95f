"""textgan.metrics: exact equality with nltk's sentence BLEU (method 1), Self-BLEU, sacreBLEU,
NLLs and diversity metrics."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch

from textgan import metrics as M

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")

TOL = 1e-12


def nltk_sentence(refs, hyp, n):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return nltk_bleu.sentence_bleu(
            refs, hyp, weights=(1 / n,) * n,
            smoothing_function=nltk_bleu.SmoothingFunction().method1,
        )


def nltk_mean_bleu(hyps, refs, n):
    return math.fsum(nltk_sentence(refs, h, n) for h in hyps) / len(hyps)


def nltk_self_scores(hyps, n):
    return [nltk_sentence(hyps[:i] + hyps[i + 1:], h, n) for i, h in enumerate(hyps)]


def random_corpus(rng, num, vocab, max_len=8, min_len=0, as_str=False):
    out = []
    for _ in range(num):
        s = [rng.randrange(vocab) for _ in range(rng.randint(min_len, max_len))]
        out.append([f"t{t}" for t in s] if as_str else s)
    return out


TEXT = """the cat sat on the mat
a cat is on the mat
there is a cat on the mat
the the the the the the the
a man riding a wave on top of a surfboard
a man is riding a surfboard on a wave
two dogs playing with a frisbee in the park
a dog runs across the grass with a frisbee
a plate of food with broccoli and rice
a kitchen with a stove and a sink
people walking down a busy city street
a bus parked on the side of the road
of the
it is a guide to action which ensures that the military always obeys the commands of the party
""".strip().splitlines()


# --------------------------------------------------------------------------------------------
# BLEU against a reference set
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(12))
def test_bleu_equals_nltk_on_random_short_corpora(seed):
    rng = random.Random(seed)
    vocab = rng.choice([2, 3, 4, 6, 10])
    refs = random_corpus(rng, rng.randint(1, 15), vocab, as_str=seed % 2 == 0)
    hyps = random_corpus(rng, rng.randint(1, 15), vocab, as_str=seed % 2 == 0)
    hyps += [[], hyps[0], hyps[0] * 2]  # empty, duplicated, repeated n-grams
    if seed % 3 == 0:
        refs.append([])  # an empty reference
    for n in range(1, 6):
        ours = M.bleu_sentence_scores(hyps, refs, (n,))[n]
        theirs = [nltk_sentence(refs, h, n) for h in hyps]
        assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= TOL
        assert abs(M.bleu(hyps, refs, n) - nltk_mean_bleu(hyps, refs, n)) <= TOL


def test_bleu_equals_nltk_on_text_and_bleu_scores_consistent():
    sents = [line.split() for line in TEXT]
    hyps, refs = sents[::2], sents[1::2]
    scores = M.bleu_scores(hyps, refs, ns=(2, 3, 4, 5))
    assert list(scores) == [2, 3, 4, 5]
    for n in (2, 3, 4, 5):
        assert abs(scores[n] - nltk_mean_bleu(hyps, refs, n)) <= TOL
        assert scores[n] == M.bleu(hyps, refs, n)
    # The classic nltk doc example, one hypothesis against three references.
    refs3 = [sents[-1][:7] + ["that"], sents[0], sents[1]]
    assert abs(M.bleu([sents[-1]], refs3) - nltk_sentence(refs3, sents[-1], 4)) <= TOL


def test_bleu_edge_cases():
    refs = [["a", "b", "c"], ["a", "b"]]
    # no unigram match -> exactly 0; empty hypothesis -> 0
    assert M.bleu([["z", "z"]], refs) == 0.0
    assert M.bleu([[]], refs) == 0.0
    # hypothesis shorter than max_n: higher orders are smoothed with epsilon / 1
    assert abs(M.bleu([["a"]], refs, 4) - nltk_sentence(refs, ["a"], 4)) <= TOL
    # brevity-penalty tie between lengths 2 and 4 for a length-3 hypothesis -> shorter (2)
    refs_tie = [["a", "b"], ["a", "b", "c", "d"]]
    hyp = ["a", "b", "c"]
    assert abs(M.bleu([hyp], refs_tie, 2) - nltk_sentence(refs_tie, hyp, 2)) <= TOL
    # identical sentence -> 1
    assert M.bleu([["a", "b", "c", "d"]], [["a", "b", "c", "d"]]) == pytest.approx(1.0)


def test_bleu_input_errors():
    with pytest.raises(ValueError, match="max_n"):
        M.bleu([["a"]], [["a"]], max_n=0)
    with pytest.raises(ValueError, match="references"):
        M.bleu([["a"]], [])
    with pytest.raises(ValueError, match="hypotheses"):
        M.bleu([], [["a"]])
    with pytest.raises(ValueError, match="string"):
        M.bleu(["a b c"], [["a"]])
    with pytest.raises(ValueError, match="ns"):
        M.bleu_scores([["a"]], [["a"]], ns=())


def test_bleu_references_object_reuse():
    rng = random.Random(7)
    refs = random_corpus(rng, 30, 5)
    ref_set = M.BleuReferences(refs, max_n=5)
    for _ in range(3):
        hyps = random_corpus(rng, 10, 5)
        assert ref_set.scores(hyps, (2, 5)) == M.bleu_scores(hyps, refs, (2, 5))
    with pytest.raises(ValueError, match="max_n=5"):
        ref_set.scores(hyps, (6,))


# --------------------------------------------------------------------------------------------
# Self-BLEU
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_self_bleu_equals_nltk_leave_one_out(seed):
    rng = random.Random(100 + seed)
    vocab = rng.choice([2, 3, 5, 8])
    hyps = random_corpus(rng, rng.randint(2, 14), vocab)
    if seed % 2:
        hyps += [list(hyps[0]), [], hyps[-1] * 3]  # duplicates, empty, repeats
    ns = (1, 2, 3, 4, 5)
    per = M.self_bleu_sentence_scores(hyps, ns)
    means = M.self_bleu_scores(hyps, ns)
    for n in ns:
        theirs = nltk_self_scores(hyps, n)
        assert max(abs(a - b) for a, b in zip(per[n], theirs, strict=True)) <= TOL
        assert abs(M.self_bleu(hyps, n) - math.fsum(theirs) / len(theirs)) <= TOL
        assert means[n] == M.self_bleu(hyps, n)


def test_self_bleu_on_text_and_unique_lengths():
    hyps = [line.split() for line in TEXT]
    for n in (2, 4):
        theirs = nltk_self_scores(hyps, n)
        assert abs(M.self_bleu(hyps, n) - math.fsum(theirs) / len(theirs)) <= TOL
    # every length distinct: the closest "other" length must skip one's own
    hyps = [["a"] * k for k in (1, 2, 4, 7)]
    theirs = nltk_self_scores(hyps, 2)
    assert M.self_bleu_sentence_scores(hyps, (2,))[2] == pytest.approx(theirs, abs=TOL)


def test_self_bleu_needs_two():
    with pytest.raises(ValueError, match="at least 2"):
        M.self_bleu([["a", "b"]])


# --------------------------------------------------------------------------------------------
# sacreBLEU
# --------------------------------------------------------------------------------------------


def test_sacrebleu_matches_library():
    from sacrebleu.metrics import BLEU

    hyps = TEXT[:4]
    refs1 = TEXT[4:8]
    refs2 = TEXT[8:12]
    res = M.corpus_bleu_sacrebleu(hyps, refs1)
    direct = BLEU()
    assert res.score == direct.corpus_score(hyps, [refs1]).score
    assert res.signature == str(direct.get_signature())
    score, sig = M.corpus_bleu_sacrebleu(hyps, [refs1, refs2])
    assert score == BLEU().corpus_score(hyps, [refs1, refs2]).score
    assert "nrefs:2" in sig
    with pytest.raises(ValueError, match="one per hypothesis"):
        M.corpus_bleu_sacrebleu(hyps, refs1[:2])


# --------------------------------------------------------------------------------------------
# Diversity, length, copying
# --------------------------------------------------------------------------------------------


def test_distinct_mean_length_novelty_by_hand():
    hyps = [["a", "b", "a", "b"], ["a", "b"], []]
    # unigrams: a b a b a b -> 2 distinct / 6; bigrams: ab ba ab ab -> 2 / 4
    assert M.distinct_n(hyps, 1) == pytest.approx(2 / 6)
    assert M.distinct_n(hyps, 2) == pytest.approx(2 / 4)
    assert M.distinct_n(hyps, 5) == 0.0
    assert M.mean_length(hyps) == pytest.approx(2.0)
    train = [["a", "b"], ["c"], []]
    assert M.fraction_in_train(hyps, train) == pytest.approx(2 / 3)
    assert M.novelty(hyps, train) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="n"):
        M.distinct_n(hyps, 0)


# --------------------------------------------------------------------------------------------
# Likelihoods
# --------------------------------------------------------------------------------------------


class TinyLM(torch.nn.Module):
    """Logits depend only on the previous token: an embedding used as a bigram table."""

    def __init__(self, vocab_size=6, start_token=0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))
        self.vocab_size, self.start_token = vocab_size, start_token

    def forward(self, inputs):
        return self.table[inputs]


def test_nll_test_by_hand_with_padding():
    G = TinyLM()
    tokens = torch.tensor([[1, 2, 3, 5, 5], [4, 4, 5, 5, 5], [2, 1, 1, 1, 3]])
    logp = torch.log_softmax(G.table.detach().double(), -1)
    total, count = 0.0, 0
    for row in tokens.tolist():
        prev = G.start_token
        for t in row:
            if t != 5:
                total -= float(logp[prev, t])
                count += 1
            prev = t
    assert M.nll_test(G, tokens, pad=5, batch_size=2) == pytest.approx(total / count, rel=1e-6)
    no_pad = M.nll_test(G, tokens)
    assert no_pad != pytest.approx(total / count)
    with pytest.raises(ValueError, match="padding"):
        M.nll_test(G, torch.full((2, 3), 5), pad=5)


def test_nll_oracle_is_mean_of_per_sequence_nll():
    class Oracle:
        def nll(self, tokens):
            return tokens.float().mean(1)

    tokens = torch.arange(21).reshape(7, 3)
    expected = tokens.float().mean(1).mean().item()
    assert M.nll_oracle(Oracle(), tokens, batch_size=3) == pytest.approx(expected)
    with pytest.raises(ValueError, match="tokens"):
        M.nll_oracle(Oracle(), torch.zeros(3, dtype=torch.long))


def test_bench_quick_is_exact():
    from textgan.bench.bleu import run

    rows = run(quick=True)
    assert [r["metric"] for r in rows] == ["BLEU-2..5", "Self-BLEU-4"]
    for r in rows:
        assert r["max_abs_diff"] <= TOL
        assert r["ours_s"] > 0 and r["nltk_s_est"] > 0
