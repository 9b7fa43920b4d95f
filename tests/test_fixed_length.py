"""``data.fixed_length``: text as RelGAN's and Texygen's code represent it (words filled up with
<pad> to max_len, no <eos>, the filler an ordinary token), through the corpus, MLE, sampling,
decoding and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from textgan.cli import main
from textgan.data import DataConfig, load_corpus
from textgan.models import build_generator
from textgan.sampling import sample_sequence
from textgan.train.mle import nll_sum


@pytest.fixture
def captions(tmp_path):
    d = tmp_path / "captions"
    d.mkdir()
    (d / "train.txt").write_text("a dog on the grass\na man and his dog\na dog\n" * 4,
                                 encoding="utf-8")
    (d / "test.txt").write_text("a dog on a bed\n", encoding="utf-8")
    return d


def test_corpus_fills_with_pad_and_has_no_eos(captions):
    eos = load_corpus(DataConfig(path=str(captions)))
    fixed = load_corpus(DataConfig(path=str(captions), fixed_length=True))
    v = fixed.vocab
    assert v == eos.vocab and (fixed.eos, fixed.pad) == (None, None)
    assert (eos.eos, eos.pad) == (v.eos, v.pad)
    assert eos.train.shape == (12, 6) and fixed.train.shape == (12, 5)  # longest: 5 words
    row = fixed.train[2].tolist()  # "a dog"
    assert row == [v.stoi["a"], v.stoi["dog"], v.pad, v.pad, v.pad]
    assert not (fixed.train == v.eos).any()
    assert eos.train[2].tolist() == row[:2] + [v.eos] + [v.pad] * 3
    # decoding drops the filler wherever G puts it (RelGAN's code_to_text does the same)
    assert fixed.decode(fixed.train[:3]) == [s.split() for s in
                                             ("a dog on the grass", "a man and his dog", "a dog")]
    odd = torch.tensor([[v.stoi["a"], v.pad, v.stoi["dog"], v.pad, v.pad]])
    assert fixed.decode(odd) == [["a", "dog"]]


def test_mle_counts_every_position_including_the_filler(captions):
    fixed = load_corpus(DataConfig(path=str(captions), fixed_length=True))
    eos = load_corpus(DataConfig(path=str(captions)))
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=fixed.vocab_size, embed_dim=8, hidden_dim=8)
    total, count = nll_sum(G, fixed.train, fixed.start_token, fixed.pad)
    assert int(count) == fixed.train.numel() == 60
    logp = torch.log_softmax(G(torch.cat([torch.full((12, 1), fixed.start_token),
                                          fixed.train[:, :-1]], 1)), -1)
    want = -logp.gather(-1, fixed.train[..., None]).sum()
    assert torch.allclose(total, want, rtol=1e-6)
    _, count_eos = nll_sum(G, eos.train, eos.start_token, eos.pad)
    assert int(count_eos) == int((eos.train != eos.pad).sum()) == 12 + 4 * (5 + 5 + 2)


def test_sampler_leaves_the_filler_to_g(captions):
    """With the corpus' eos/pad (None) the sampler forces nothing: <pad> and what follows are G's
    own draws, with their relaxed one-hots (gradient) and log-probabilities."""
    fixed = load_corpus(DataConfig(path=str(captions), fixed_length=True))
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=fixed.vocab_size, embed_dim=8, hidden_dim=8)
    with torch.no_grad():
        G.out.bias[fixed.vocab.pad] += 3.0  # make <pad> frequent
    torch.manual_seed(1)
    s = sample_sequence(G, 64, fixed.seq_len, method="gumbel_softmax", tau=0.5,
                        eos=fixed.eos, pad=fixed.pad)
    tokens = s.tokens
    after_pad = torch.zeros_like(tokens, dtype=torch.bool)
    after_pad[:, 1:] = (tokens[:, :-1] == fixed.vocab.pad).cummax(1).values
    assert (tokens[after_pad] != fixed.vocab.pad).any()  # words after a filler: not forced
    assert bool((s.mask == 1).all()) and s.one_hot.requires_grad
    assert torch.equal(s.one_hot.argmax(-1), tokens)


def test_relgan_trains_on_fixed_length_text_and_refuses_the_other_form_on_resume(captions,
                                                                                tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "recipes/relgan/coco.yaml", f"data.path={captions}", f"output_dir={out}",
            "data.max_len=null", "data.fixed_length=true",
            "generator={name: lstm, embed_dim: 8, hidden_dim: 8}", "discriminator.embed_dim=8",
            "discriminator.num_rep=4", "discriminator.filter_sizes=[2,3]",
            "discriminator.num_filters=[6,6]", "pretrain.steps=2", "pretrain.batch_size=4",
            "pretrain.checkpoint_every=2", "train.batch_size=4", "train.d_steps=1",
            "train.adv_steps=2", "train.checkpoint_every=2", "eval.every=2",
            "eval.num_samples=8", "eval.batch_size=8", "eval.bleu=[2]"]
    assert main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["eos"], meta["pad"], meta["seq_len"]) == (None, None, 5)
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("bleu2" in r and "nll_test" in r for r in recs if r["phase"] == "adversarial")
    capsys.readouterr()
    assert main([*argv, "train.adv_steps=4", "resume=auto", "data.fixed_length=false"]) == 2
    assert "text representation mismatch on resume" in capsys.readouterr().err
