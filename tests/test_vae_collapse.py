"""The VAE's remedies against posterior collapse: free bits (per-variable KL floor) and word
dropout on the decoder inputs; exact values, gradients, statistics and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textgan.cli import main
from textgan.models.vae import CategoricalTextVAE, drop_words, free_bits_kl, kl_uniform, vae_loss
from textgan.train.vae import VAEConfig

REPO = Path(__file__).resolve().parents[1]
COCO = str(REPO / "recipes" / "vae" / "coco.yaml")
ORACLE = str(REPO / "recipes" / "vae" / "oracle.yaml")
TINY = ["train.batch_size=16", "train.latent_vars=3", "train.latent_classes=4",
        "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8", "train.baseline_hidden=8",
        "generator.embed_dim=8", "generator.hidden_dim=8", "train.log_every=1",
        "eval.num_samples=16", "eval.batch_size=32", "train.eval_sentences=32"]


def tiny_vae(v=9, m=3, k=4, unk=3, pad=0, seed=0):
    torch.manual_seed(seed)
    return CategoricalTextVAE(v, start_token=1, latent_vars=m, latent_classes=k, embed_dim=6,
                              hidden_dim=6, decoder="lstm",
                              decoder_kwargs={"embed_dim": 6, "hidden_dim": 8}, pad=pad,
                              unk=unk)


def test_free_bits_kl_is_the_per_variable_floor_and_blocks_its_gradient():
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 3, dtype=torch.float64) * torch.tensor([0.01, 0.3, 2.0, 5.0]
                                                                        ).view(1, 4, 1)
    logits.requires_grad_(True)
    per_var = kl_uniform(logits, per_variable=True)
    assert per_var.shape == (5, 4)
    torch.testing.assert_close(per_var.sum(-1), kl_uniform(logits))
    lam = 0.2
    got = free_bits_kl(logits, lam)
    want = torch.where(per_var > lam, per_var, torch.full_like(per_var, lam)).sum(-1)
    torch.testing.assert_close(got, want.float())
    assert torch.equal(free_bits_kl(logits, 0.0), kl_uniform(logits))
    # below the floor: no gradient; above it: the KL's own gradient (closed form)
    got.sum().backward()
    logq = F.log_softmax(logits.detach(), -1)
    q = logq.exp()
    analytic = q * (logq - (q * logq).sum(-1, keepdim=True))
    below = (per_var <= lam).detach()
    assert below.any() and (~below).any()
    assert torch.all(logits.grad[below] == 0)
    torch.testing.assert_close(logits.grad[~below], analytic[~below].to(logits.grad.dtype),
                               rtol=1e-5, atol=1e-6)


def test_vae_loss_with_free_bits_logs_the_true_kl_and_the_floored_one():
    vae = tiny_vae()
    x = torch.tensor([[4, 5, 6, 2, 0], [7, 8, 2, 0, 0]])
    terms = vae.elbo_terms(x, "gumbel_softmax", 1.0, torch.Generator().manual_seed(0))
    plain, s0 = vae_loss(terms, "gumbel_softmax")
    floored, s1 = vae_loss(terms, "gumbel_softmax", free_bits=0.5)
    assert s0["kl"] == s1["kl"] and s0["neg_elbo"] == s1["neg_elbo"]
    # at initialisation every variable is below 0.5 nats: the KL term is M * 0.5 exactly
    assert float(terms.kl.detach().max()) < 0.5
    assert float(s1["kl_loss"]) == pytest.approx(3 * 0.5)
    recon, kl = terms.recon.detach(), terms.kl.detach()
    assert float(floored.detach()) == pytest.approx(float(recon.mean()) + 1.5, rel=1e-6)
    assert float(plain.detach()) == pytest.approx(float((recon + kl).mean()), rel=1e-6)


def test_drop_words_rate_start_column_and_pads():
    x = torch.randint(4, 50, (400, 30))
    x[:, 0] = 1
    x[:300, 20:] = 0  # pads
    out = drop_words(x, 0.3, unk=3, pad=0, rng=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, 0], x[:, 0])
    assert torch.equal(out[x == 0], x[x == 0])
    changed = out != x
    assert torch.all(out[changed] == 3)
    n = int(((x != 0) & (torch.arange(30) > 0)).sum())
    k = int(changed.sum())
    # binomial(n, 0.3): within 4 standard deviations
    assert abs(k - 0.3 * n) < 4 * math.sqrt(n * 0.3 * 0.7), (k, n)
    assert torch.equal(drop_words(x, 0.0, unk=3, pad=0), x)
    again = drop_words(x, 0.3, unk=3, pad=0, rng=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_word_dropout_changes_only_the_decoder_inputs():
    vae = tiny_vae().eval()
    x = torch.tensor([[4, 5, 6, 2, 0], [7, 8, 2, 0, 0]])
    z = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2], [3, 0, 1]]), 4).float()
    clean = vae.recon_nll(x, z)
    assert torch.equal(vae.recon_nll(x, z, word_dropout=0.0), clean)
    # p -> 1: every input after the start token is <unk> (pads stay pads)
    inputs = torch.tensor([[1, 3, 3, 3, 3], [1, 3, 3, 3, 0]])
    logits = vae.decode(inputs, z)
    want = F.cross_entropy(logits.flatten(0, 1), x.flatten(), ignore_index=0,
                           reduction="none").view(2, 5).sum(1)
    got = vae.recon_nll(x, z, word_dropout=0.999999, rng=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, clean)
    no_unk = CategoricalTextVAE(9, start_token=1, latent_vars=3, latent_classes=4)
    with pytest.raises(ValueError, match="<unk>"):
        no_unk.recon_nll(x, z, word_dropout=0.5)


def test_config_checks_name_the_key():
    with pytest.raises(ValueError, match=r"`train.free_bits` must be in \[0, log"):
        VAEConfig(free_bits=2.4, latent_classes=10)
    with pytest.raises(ValueError, match="`train.free_bits`"):
        VAEConfig(free_bits=-0.1)
    with pytest.raises(ValueError, match=r"`train.word_dropout` must be in \[0, 1\), got 1.0"):
        VAEConfig(word_dropout=1.0)
    assert VAEConfig(free_bits=2.3, latent_classes=10).free_bits == 2.3


def _records(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_cli_text_run_with_both_remedies(tmp_path, tiny_corpus_dir):
    def run(name, *extra):
        out = tmp_path / name
        code = main(["train", COCO, f"output_dir={out}", f"data.path={tiny_corpus_dir}",
                     "data.max_len=12", "train.steps=3", "eval.every=3", "train.kl_warmup=0",
                     *TINY, *extra])
        assert code == 0
        return _records(out)

    base = run("base", "train.free_bits=0", "train.word_dropout=0")  # the recipe sets both
    both = run("both", "train.free_bits=0.5", "train.word_dropout=0.4")
    train_rows = [r for r in both if "loss" in r]
    # the floor is active from the first step: kl_loss >= M * free_bits > kl
    assert all(r["kl_loss"] >= 3 * 0.5 - 1e-6 for r in train_rows)
    assert all(r["kl_loss"] > r["kl"] for r in train_rows)
    # step 1 starts from the same weights and noise stream: the true KL agrees, the
    # reconstruction differs only through word dropout
    b1 = next(r for r in base if r.get("step") == 1 and "loss" in r)
    assert "kl_loss" not in b1  # no floor: the KL term is the KL itself
    assert b1["kl"] == pytest.approx(train_rows[0]["kl"], rel=1e-6)
    assert b1["recon"] != train_rows[0]["recon"]


def test_word_dropout_on_the_oracle_is_a_clear_error(tmp_path, capsys):
    code = main(["train", ORACLE, f"output_dir={tmp_path / 'o'}", "train.word_dropout=0.3",
                 "data.vocab_size=30", "data.hidden_dim=8", "data.num_train=64",
                 "data.num_test=32", "data.seq_len=6", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "`train.word_dropout` (0.3)" in err and "train.free_bits" in err
    assert not (tmp_path / "o").exists()


def test_word_dropout_needs_a_tokenizer_with_its_own_unk(tmp_path, tiny_corpus_dir, capsys):
    """A GPT-2-style tokenizer whose unk is its eos: dropping words to it would feed the
    end-of-sentence token, so word dropout is refused with the fix."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    text = (tiny_corpus_dir / "train.txt").read_text() + (tiny_corpus_dir / "test.txt").read_text()
    vocab = {w: i for i, w in enumerate(["[EOS]", *sorted(set(text.split()))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[EOS]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[EOS]",
                            eos_token="[EOS]").save_pretrained(str(tmp_path / "tok"))
    code = main(["train", COCO, f"output_dir={tmp_path / 'o'}", f"data.path={tiny_corpus_dir}",
                 f"data.tokenizer={tmp_path / 'tok'}", "data.max_len=12", "train.steps=1",
                 "train.word_dropout=0.3", *TINY])
    assert code == 2
    err = capsys.readouterr().err
    assert "`train.word_dropout` (0.3)" in err and "no <unk> of its own" in err
    assert "train.word_dropout=0" in err


def test_text_resume_with_both_remedies_reproduces_the_uninterrupted_run(tmp_path,
                                                                         tiny_corpus_dir):
    """Word dropout draws its masks from the checkpointed noise stream: 2 steps + resume to 4
    log exactly the records of 4 steps in one go."""
    def run(out, steps, *extra):
        assert main(["train", COCO, f"output_dir={out}", f"data.path={tiny_corpus_dir}",
                     "data.max_len=12", f"train.steps={steps}", "eval.every=2",
                     "train.checkpoint_every=2", "train.kl_warmup=0", "train.free_bits=0.5",
                     "train.word_dropout=0.4", *TINY, *extra]) == 0
        return {r["step"]: {k: v for k, v in r.items() if k != "time"}
                for r in _records(out) if "loss" in r}

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    part = run(tmp_path / "part", 4, "resume=auto")
    assert [full[s] for s in (3, 4)] == [part[s] for s in (3, 4)]
    assert full[3]["kl_loss"] > 0 and full[3] != full[4]
