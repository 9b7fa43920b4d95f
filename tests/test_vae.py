"""Categorical text VAE: closed-form KL, masking, gradient paths of the three latent estimators
(pathwise, straight-through, score function; unbiasedness against exhaustive enumeration), the
trainer step, and the CLI end to end (metrics, text corpus BLEU, exact resume, prior sampling)."""

import itertools
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from textgan import sampling as S
from textgan.cli import main
from textgan.models.vae import (
    CategoricalTextVAE,
    encoder_gradient_variance,
    interpolate_latents,
    kl_uniform,
    vae_loss,
)
from textgan.train.vae import VAEConfig, load_vae_for_sampling, vae_step

REPO = Path(__file__).resolve().parents[1]
ORACLE = str(REPO / "recipes" / "vae" / "oracle.yaml")
COCO = str(REPO / "recipes" / "vae" / "coco.yaml")
TINY = ["data.vocab_size=30", "data.hidden_dim=8", "data.num_train=128", "data.num_test=64",
        "data.seq_len=6", "train.batch_size=16", "train.latent_vars=3", "train.latent_classes=4",
        "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8", "train.baseline_hidden=8",
        "generator.embed_dim=8", "generator.hidden_dim=8", "train.log_every=1",
        "eval.num_samples=16", "eval.batch_size=32", "train.eval_sentences=32"]
EVAL_KEYS = {"neg_elbo", "neg_elbo_token", "recon", "kl", "recon_argmax", "recon_acc",
             "recon_bleu"}


def tiny_vae(m=2, k=3, v=7, *, pad=None, condition="both", seed=0, scale=1.0, **kw):
    torch.manual_seed(seed)
    vae = CategoricalTextVAE(v, start_token=0, latent_vars=m, latent_classes=k, embed_dim=6,
                             hidden_dim=6, decoder="lstm",
                             decoder_kwargs={"embed_dim": 6, "hidden_dim": 8},
                             condition=condition, pad=pad, **kw)
    if scale != 1.0:  # make z matter more to the decoder
        with torch.no_grad():
            for lin in [*vae.init_maps, vae.input_map]:
                if lin is not None:
                    lin.weight.mul_(scale)
    return vae


def kl_grad(theta):
    """Analytic d KL(softmax(theta) || uniform) / d theta = q (log q - sum_k q log q)."""
    logq = F.log_softmax(theta.double(), -1)
    q = logq.exp()
    return q * (logq - (q * logq).sum(-1, keepdim=True))


# ------------------------------------------------------------------------------------------
# KL and reconstruction
# ------------------------------------------------------------------------------------------


def test_kl_closed_form_equals_brute_force_sum():
    gen = torch.Generator().manual_seed(0)
    for m, k in [(1, 2), (2, 3), (3, 4)]:
        logits = 2 * torch.randn(2, m, k, generator=gen, dtype=torch.float64)
        q = logits.softmax(-1)
        brute = torch.zeros(2, dtype=torch.float64)
        for z in itertools.product(range(k), repeat=m):
            qz = torch.stack([q[:, i, z[i]] for i in range(m)], 0).prod(0)  # joint q(z | x)
            brute += qz * (qz.log() - torch.log(torch.tensor(1.0 / k**m, dtype=torch.float64)))
        assert torch.allclose(kl_uniform(logits).double(), brute, atol=1e-5)
        theta = logits.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(kl_uniform(theta).sum(), theta)
        assert torch.allclose(g.double(), kl_grad(logits), atol=1e-5)
    assert float(kl_uniform(torch.zeros(3, 4, 5)).abs().max()) < 1e-6  # q uniform: KL 0


def test_recon_nll_masks_pad_and_encoder_ignores_padding():
    vae = tiny_vae(pad=0).eval()
    x = torch.tensor([[3, 4, 2, 0, 0], [5, 6, 1, 3, 2]])
    z = vae.sample_latent(vae.encode(x)[1], "argmax")[0]
    start = torch.zeros(2, 1, dtype=torch.long)
    logits = vae.decode(torch.cat([start, x[:, :-1]], 1), z)
    logp = F.log_softmax(logits.float(), -1).gather(-1, x[..., None])[..., 0]
    expected = -(logp * (x != 0)).sum(1)
    assert torch.allclose(vae.recon_nll(x, z), expected, atol=1e-5)
    assert not torch.allclose(expected, -logp.sum(1))  # the pad targets would have counted
    assert vae.lengths(x).tolist() == [3, 5]
    # more trailing padding changes neither the encoder's logits nor the reconstruction
    wider = torch.cat([x, torch.zeros(2, 3, dtype=torch.long)], 1)
    assert torch.allclose(vae.encode(wider)[1], vae.encode(x)[1], atol=1e-6)
    assert torch.allclose(vae.recon_nll(wider, z), vae.recon_nll(x, z), atol=1e-5)


@pytest.mark.parametrize("condition", ["init", "input", "both"])
def test_decode_matches_stepping_and_depends_on_z(condition):
    vae = tiny_vae(condition=condition).eval()
    x = torch.randint(1, 7, (3, 5))
    z = vae.prior_sample(3, torch.Generator().manual_seed(1))
    fast = vae.decode(x, z)
    state, steps = vae.decoder_state(z), []
    for t in range(5):
        lg, state = vae.decode_step(x[:, t], state)
        steps.append(lg)
    assert torch.allclose(fast, torch.stack(steps, 1), atol=1e-5)
    other = vae.prior_sample(3, torch.Generator().manual_seed(2))
    assert not torch.allclose(fast, vae.decode(x, other))
    # the decoder alone (no latent) is untouched by the conditioning hook
    assert torch.allclose(vae.decoder(x), vae.decoder(x))
    if condition != "init":  # input conditioning lives in the embedding lookup: ids only
        with pytest.raises(ValueError, match="token ids"):
            vae.decode_step(F.one_hot(x[:, 0], 7).float(), vae.decoder_state(z))


def test_hf_decoder_conditions_through_a_prefix():
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    vae = CategoricalTextVAE(9, start_token=1, latent_vars=2, latent_classes=3, embed_dim=4,
                             hidden_dim=4, decoder="hf", condition="both",
                             decoder_kwargs={"model_config": {"n_layer": 1, "n_head": 2,
                                                              "n_embd": 8, "n_positions": 16}})
    vae.eval()
    x = torch.randint(0, 9, (2, 4))
    z = vae.prior_sample(2, torch.Generator().manual_seed(0))
    fast = vae.decode(x, z)
    state, steps = vae.decoder_state(z), []
    for t in range(4):
        lg, state = vae.decode_step(x[:, t], state)
        steps.append(lg)
    assert torch.allclose(fast, torch.stack(steps, 1), atol=1e-4)
    assert torch.isfinite(vae.recon_nll(x, z)).all()


# ------------------------------------------------------------------------------------------
# Gradient paths of the three estimators
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gumbel_softmax", "gumbel_st", "score_function"])
def test_loss_is_finite_and_every_method_trains_the_encoder(method):
    vae = tiny_vae(learned_baseline=True)
    x = torch.randint(1, 7, (8, 5))
    ema = S.EMABaseline()
    ema(torch.full((8,), -9.0))  # warm
    terms = vae.elbo_terms(x, method, tau=0.7, rng=torch.Generator().manual_seed(0))
    loss, stats = vae_loss(terms, method, baseline="nvil", ema=ema)
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert stats["neg_elbo"] == pytest.approx(float((terms.recon + terms.kl).mean().detach()))
    loss.backward()
    enc = torch.cat([p.grad.flatten() for p in vae.encoder_parameters()])
    dec = torch.cat([p.grad.flatten() for p in vae.decoder.parameters()])
    assert enc.abs().sum() > 0 and dec.abs().sum() > 0
    if method == "score_function":
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in vae.baseline_net.parameters())


@pytest.mark.parametrize("method", ["gumbel_softmax", "gumbel_st"])
def test_relaxed_encoder_gradient_is_pathwise_through_the_sample(method):
    vae = tiny_vae(scale=3.0)
    x = torch.randint(1, 7, (4, 5))
    tau = 0.6
    theta = vae.encode(x)[1].detach().requires_grad_(True)
    terms = vae.elbo_terms(x, method, tau, torch.Generator().manual_seed(5), logits=theta)
    loss, _ = vae_loss(terms, method, kl_weight=0.5)
    (g_model,) = torch.autograd.grad(loss, theta)
    # by hand: the same Gumbel noise, dL/dy at the sample the decoder saw, softmax Jacobian
    g = S.gumbel_noise(theta.shape, torch.Generator().manual_seed(5))
    y = F.softmax((theta.detach() + g) / tau, -1)
    seen = F.one_hot(y.argmax(-1), 3).float() if method == "gumbel_st" else y
    seen = seen.clone().requires_grad_(True)
    (dy,) = torch.autograd.grad(vae.recon_nll(x, seen).mean(), seen)
    jvp = y * (dy - (dy * y).sum(-1, keepdim=True)) / tau
    expected = jvp.double() + 0.5 * kl_grad(theta.detach()) / x.shape[0]
    assert torch.allclose(g_model.double(), expected, atol=1e-5)
    assert jvp.abs().max() > 1e-3  # the pathwise part is not negligible


def test_score_function_encoder_gradient_only_via_log_q_and_kl():
    vae = tiny_vae(scale=3.0, learned_baseline=True)
    x = torch.randint(1, 7, (6, 5))
    theta = vae.encode(x)[1].detach().requires_grad_(True)
    ema = S.EMABaseline()
    ema(torch.full((6,), -8.0))
    terms = vae.elbo_terms(x, "score_function", rng=torch.Generator().manual_seed(3),
                           logits=theta)
    loss, _ = vae_loss(terms, "score_function", baseline="ema", ema=ema, kl_weight=1.0)
    (g_model,) = torch.autograd.grad(loss, theta)
    b = -8.0  # the EMA's value before this batch
    reward = -terms.recon.detach().double()
    onehot = F.one_hot(terms.z_tokens, 3).double()
    score = onehot - theta.detach().double().softmax(-1)
    expected = (-(reward - b)[:, None, None] * score + kl_grad(theta.detach())) / 6
    assert torch.allclose(g_model.double(), expected, atol=1e-5)
    # through the full model: the reconstruction and the baseline net never reach the encoder
    terms = vae.elbo_terms(x, "score_function", rng=torch.Generator().manual_seed(3))
    enc = vae.encoder_parameters()
    for part in (terms.recon.sum(), terms.baseline.sum()):
        grads = torch.autograd.grad(part, enc, allow_unused=True, retain_graph=True)
        assert all(g is None or g.abs().sum() == 0 for g in grads)
    grads = torch.autograd.grad(terms.log_q.sum() + terms.kl.sum(), enc, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_score_function_gradient_is_unbiased_against_enumeration():
    m, k, n = 2, 3, 40_000
    vae = tiny_vae(m, k, scale=4.0).eval()
    x = torch.tensor([[3, 5, 1, 6, 2]])
    theta = (1.5 * vae.encode(x)[1]).detach().requires_grad_(True)  # (1, M, K)
    # exact: d/dtheta [sum_z q(z|x) recon(x, z) + KL] over all K^M latents
    classes = torch.tensor(list(itertools.product(range(k), repeat=m)))
    with torch.no_grad():
        recon_all = vae.recon_nll(x.expand(len(classes), -1),
                                  F.one_hot(classes, k).float()).double()
    logq = F.log_softmax(theta.double(), -1)[0]
    log_joint = logq[torch.arange(m), classes].sum(-1)
    objective = (log_joint.exp() * recon_all).sum() + kl_uniform(theta.double()).sum()
    (exact,) = torch.autograd.grad(objective, theta)
    # score-function estimate with a warm EMA baseline, n independent draws in one batch
    ema = S.EMABaseline()
    ema(torch.tensor([float(recon_all.mean().neg())]))
    rng = torch.Generator().manual_seed(0)
    logits = theta.expand(n, m, k)
    terms = vae.elbo_terms(x.expand(n, -1), "score_function", rng=rng, logits=logits)
    loss, _ = vae_loss(terms, "score_function", baseline="ema", ema=ema)
    (estimate,) = torch.autograd.grad(loss, theta)
    # standard error from the per-draw gradients (recon_i - b) (onehot_i - q) + KL'
    b = float(recon_all.mean())
    per_draw = (terms.recon.detach().double() - b)[:, None, None] * (
        F.one_hot(terms.z_tokens, k).double() - logq.exp())
    se = per_draw.std(0) / n**0.5
    err = (estimate.double() - exact)[0]
    assert (err.abs() < 4 * se + 1e-6).all(), (err, se)
    assert exact.norm() > 20 * se.norm()  # the test has power: the gradient is well resolved
    # a pathwise-free but wrongly signed estimator would fail the same check
    wrong = estimate.double() - 2 * (estimate.double() - kl_grad(theta.detach()))
    assert not ((wrong - exact)[0].abs() < 4 * se + 1e-6).all()


# ------------------------------------------------------------------------------------------
# Trainer step, gradient variance, helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gumbel_softmax", "score_function"])
def test_vae_step_changes_encoder_and_decoder_params(method):
    cfg = VAEConfig(latent_method=method, baseline="nvil", latent_vars=2, latent_classes=3,
                    grad_accum=2, batch_size=8)
    vae = tiny_vae(learned_baseline=cfg.learned_baseline)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in vae.named_parameters()}
    stats = vae_step(vae, opt, torch.randint(1, 7, (8, 5)), cfg, tau=0.8, kl_weight=0.3,
                     ema=S.EMABaseline(), rng=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    changed = {n for n, p in vae.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("encoder.") for n in changed)
    assert any(n.startswith("to_logits.") for n in changed)
    assert any(n.startswith("decoder.") for n in changed)
    if method == "score_function":
        assert any(n.startswith("baseline_net.") for n in changed)


def test_encoder_gradient_variance_reports_each_method():
    vae = tiny_vae(scale=3.0)
    x = torch.randint(1, 7, (4, 5))
    before = [p.detach().clone() for p in vae.parameters()]
    out = encoder_gradient_variance(vae, x, ["gumbel_softmax", "gumbel_st", "score_function"],
                                    tau=0.5, n_draws=6, seed=1, warmup=2)
    assert set(out) == {"gumbel_softmax", "gumbel_st", "score_function"}
    for method, row in out.items():
        assert row["method"] == method and row["n_draws"] == 6
        assert row["trace_cov"] > 0 and row["mean_grad_norm"] > 0
    again = encoder_gradient_variance(vae, x, "gumbel_softmax", tau=0.5, n_draws=6, seed=1)
    assert again["trace_cov"] == pytest.approx(out["gumbel_softmax"]["trace_cov"])
    assert all(torch.equal(a, b) for a, b in zip(before, vae.parameters(), strict=True))
    assert all(p.grad is None for p in vae.parameters())


def test_interpolation_and_config_checks():
    za, zb = torch.tensor([0, 1, 2]), torch.tensor([2, 2, 0])
    assert interpolate_latents(za, zb).tolist() == [[0, 1, 2], [2, 1, 2], [2, 2, 2], [2, 2, 0]]
    with pytest.raises(ValueError, match="did you mean 'score_function'"):
        VAEConfig(latent_method="score_functon")
    with pytest.raises(ValueError, match="train.condition"):
        VAEConfig(condition="prefix")


def test_compare_estimators_vae_problems():
    from textgan.compare import make_problems

    problems = make_problems("vae")
    assert [p.name for p in problems] == ["vae_recon_k4", "vae_recon_k10"]
    for p in problems:
        exact = p.exact_grad()
        assert torch.isfinite(exact).all() and exact.norm() > 1e-3
        est = p.estimate("sf_rloo", 1.0, 10, torch.Generator().manual_seed(0), draws=100)
        assert est.shape == (100, exact.numel())
        se = float((est.var(0).sum() / 100).sqrt())
        assert float((est.mean(0) - exact).norm()) < 4 * se  # unbiased
        assert exact.norm() > 10 * se


# ------------------------------------------------------------------------------------------
# CLI end to end
# ------------------------------------------------------------------------------------------


def _train(recipe, out, *extra):
    return main(["train", recipe, f"output_dir={out}", *TINY, *extra])


def _records(out):
    return [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "full"
    code = _train(ORACLE, out, "train.steps=4", "train.checkpoint_every=2", "eval.every=2",
                  "train.latent_method=score_function", "train.baseline=nvil")
    return code, out


def test_cli_oracle_run_writes_eval_metrics_and_samples(oracle_run):
    code, out = oracle_run
    assert code == 0
    rows = _records(out)
    losses = [r for r in rows if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    evals = [r for r in rows if "neg_elbo_token" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert EVAL_KEYS | {"nll_oracle"} <= set(r)
        assert r["neg_elbo"] == pytest.approx(r["recon"] + r["kl"], abs=1e-3)
        assert r["kl"] >= 0 and 0 <= r["recon_bleu"] <= 100
    samples = out / "samples"
    assert len((samples / "vae_step4.txt").read_text().splitlines()) == 16
    interp = (samples / "vae_step4_interp.txt").read_text()
    assert interp.startswith("# pair 0") and "\n3\t" in interp  # M + 1 = 4 rows, 0..3
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]


def test_cli_resume_reproduces_the_uninterrupted_run(oracle_run, tmp_path):
    _, full = oracle_run
    part = tmp_path / "part"
    args = ["train.checkpoint_every=2", "eval.every=2", "train.latent_method=score_function",
            "train.baseline=nvil"]
    assert _train(ORACLE, part, "train.steps=2", *args) == 0
    assert _train(ORACLE, part, "train.steps=4", "resume=auto", *args) == 0
    a = {r["step"]: r for r in _records(full) if "loss" in r}
    b = {r["step"]: r for r in _records(part) if "loss" in r}
    for s in (3, 4):
        assert {k: v for k, v in a[s].items() if k != "time"} == \
            {k: v for k, v in b[s].items() if k != "time"}


def test_prior_sampling_from_a_checkpoint(oracle_run):
    _, out = oracle_run
    g = load_vae_for_sampling(out).manual_seed(3)
    first = S.sample_sequence(g, 5, 6, rng=torch.Generator().manual_seed(0)).tokens
    g.manual_seed(3)
    again = S.sample_sequence(g, 5, 6, rng=torch.Generator().manual_seed(0)).tokens
    assert first.shape == (5, 6) and torch.equal(first, again)
    g.manual_seed(4)
    other = S.sample_sequence(g, 5, 6, rng=torch.Generator().manual_seed(0)).tokens
    assert not torch.equal(first, other)  # the latents matter


def test_cli_text_corpus_reports_reconstruction_bleu(tmp_path, tiny_corpus_dir):
    out = tmp_path / "text"
    code = _train(COCO, out, f"data.path={tiny_corpus_dir}", "data.max_len=12",
                  "train.steps=3", "eval.every=3", "train.kl_warmup=2")
    assert code == 0
    rows = _records(out)
    evals = [r for r in rows if "recon_bleu" in r]
    assert evals and EVAL_KEYS | {"bleu2"} <= set(evals[-1])
    assert [r["kl_weight"] for r in rows if "loss" in r] == [0.0, 0.5, 1.0]
    lines = (out / "samples" / "vae_step3.txt").read_text().splitlines()
    assert len(lines) == 16 and "<pad>" not in " ".join(lines)
    # the recipe's eval.self_bleu: the prior samples' diversity, from the file's samples
    from textgan import metrics

    sents = [line.split() for line in lines]
    want = metrics.self_bleu_scores(sents, (2, 3, 4, 5))
    assert all(evals[-1][f"self_bleu{n}"] == pytest.approx(want[n], abs=1e-6) for n in want)
    assert evals[-1]["unique"] == pytest.approx(len(set(map(tuple, sents))) / 16, abs=1e-6)
    assert (out / "samples" / "vae_step3_recon.txt").exists()
