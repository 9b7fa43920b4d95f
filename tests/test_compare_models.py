"""``textgan compare-estimators --problem checkpoint``: estimator statistics at a trained state.

Tiny RelGAN, SeqGAN and VAE runs are trained through the CLI (oracle with V = 4, T = 5, so the
4^5 = 1024 sequences can be enumerated; VAE with 4^3 = 64 latent configurations): the reference
gradient is then exact and the estimators' bias, variance and bookkeeping can be checked.
"""

import argparse
import json
from pathlib import Path

import pytest
import torch

from textgan import compare
from textgan import compare_models as CM
from textgan.cli import main

REPO = Path(__file__).resolve().parents[1]
ORACLE = ["data.vocab_size=4", "data.hidden_dim=8", "data.seq_len=5", "data.num_train=64",
          "data.num_test=32"]
GAN = ["pretrain.steps=2", "pretrain.batch_size=16", "pretrain.checkpoint_every=2",
       "train.batch_size=16", "train.d_steps=1", "train.adv_steps=1", "train.log_every=1",
       "eval.every=100", "eval.num_samples=16", "eval.batch_size=16"]
RECIPES = {
    "relgan": ["relgan/oracle.yaml", *ORACLE, *GAN,
               "generator={name: lstm, embed_dim: 8, hidden_dim: 8}", "discriminator.embed_dim=8",
               "discriminator.num_rep=4", "discriminator.filter_sizes=[2,3]",
               "discriminator.num_filters=[6,6]"],
    "seqgan": ["seqgan/oracle.yaml", *ORACLE, *GAN, "generator.embed_dim=8",
               "generator.hidden_dim=8", "train.num_rollouts=2", "train.d_pretrain_steps=2",
               "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
               "num_filters: [6, 6]}"],
    "vae": ["vae/oracle.yaml", *ORACLE, "train.batch_size=16", "train.latent_vars=3",
            "train.latent_classes=4", "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8",
            "generator.embed_dim=8", "generator.hidden_dim=8", "train.steps=2",
            "train.log_every=1", "eval.every=100", "eval.num_samples=16", "eval.batch_size=16",
            "train.eval_sentences=16", "train.interpolations=0"],
    "mle": ["mle/oracle.yaml", *ORACLE, "generator.embed_dim=8", "generator.hidden_dim=8",
            "train.steps=1", "train.batch_size=16", "eval.every=100", "eval.num_samples=16"],
}


# Tiny tensors: extra threads only add contention (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: extra threads only contend
    try:
        for name, (recipe, *overrides) in RECIPES.items():
            out[name] = root / name
            assert main(["train", str(REPO / "recipes" / recipe), f"output_dir={out[name]}",
                         *overrides]) == 0
    finally:
        torch.set_num_threads(previous)
    return out


def _problem(path, params="auto", batch=8):
    args = argparse.Namespace(checkpoint=str(path), params=params, batch=batch)
    return CM.estimator_problems(args)[0]


def _stats(problem, estimator, n, draws, seed=0, tau=1.0, ref=None):
    rng = torch.Generator().manual_seed(seed)
    m = CM.measure(problem, estimator, tau, n, draws, rng, k=3)
    return CM.row_stats(m, ref or CM.reference(problem))


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------

OUTPUTS = ("results.json", "results.md", "variance_vs_tau.png", "snr_vs_tau.png",
           "variance_vs_samples.png")


@pytest.mark.parametrize("algorithm", ["relgan", "seqgan", "vae"])
def test_cli_writes_results(runs, tmp_path, algorithm):
    out = tmp_path / "out"
    code = main(["compare-estimators", "--problem", "checkpoint", str(runs[algorithm]),
                 "--estimators", "sf,sf_rloo,gs,st_gs,st,gumbel_rao,rebar", "--taus", "0.5,1",
                 "--samples", "1,4", "--draws", "30", "--gr-k", "3", "--batch", "4",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert (out / "snr_vs_tau.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "results.json").read_text())
    rows = data["rows"]
    assert len(rows) == 7 * 2 * 2  # estimators x taus x samples
    (name,) = data["reference"]
    assert name.startswith(f"{algorithm}_step_")
    assert data["reference"][name]["kind"] == "exact" and data["reference"][name]["se"] == 0
    assert data["problems"][name]["num_params"] > 0
    assert data["meta"]["command"].startswith(
        f"textgan compare-estimators --problem checkpoint {runs[algorithm]}")
    for r in rows:
        na = r["estimator"] == "rebar" or (r["estimator"] == "sf_rloo" and r["samples"] == 1)
        if na:
            assert r["variance"] is None and r["note"]
            continue
        assert r["variance"] > 0 and r["mean_norm"] > 0 and r["ms_per_estimate"] > 0
        assert -1 <= r["cosine_ref"] <= 1 and r["bias_z"] >= 0
    sf = [r for r in rows if r["estimator"] == "sf" and r["samples"] == 4]
    assert sf[0]["variance"] == sf[1]["variance"] and sf[0]["note"] == "tau-independent"
    md = (out / "results.md").read_text()
    assert "| problem | estimator | tau | samples | variance | mean_norm | snr |" in md
    assert "exact (enumerated)" in md and "single-categorical" in md
    assert f"| {name} | rebar | 1 | 4 | n/a |" in md


# --------------------------------------------------------------------------------------------
# Correctness at a fixed state (exact gradients by enumeration)
# --------------------------------------------------------------------------------------------

CASES = [("relgan", "output"), ("seqgan", "all"), ("vae", "all")]


@pytest.mark.parametrize("algorithm,params", CASES)
def test_score_function_is_unbiased_and_relaxations_are_not(runs, algorithm, params):
    """``bias_z = ||mean - exact|| / sqrt(variance / D)``: its square averages 1 for an
    unbiased estimator. Over draw seeds 0-5 (300 draws, n = 4) sf_rloo gave 0.43-1.47 and
    plain straight-through (biased) 13.6-143, so 2.5 and 5 separate them with room."""
    problem = _problem(runs[algorithm], params)
    ref = CM.reference(problem)
    assert ref["kind"] == "exact"
    rloo = _stats(problem, "sf_rloo", 4, 300, ref=ref)
    assert rloo["bias_z"] < 2.5, rloo
    assert rloo["cosine_ref"] > 0.5, rloo
    st = _stats(problem, "st", 4, 300, ref=ref)
    assert st["bias_z"] > 5.0, st


@pytest.mark.parametrize("algorithm,params", CASES)
def test_sampled_reference_agrees_with_the_exact_gradient(runs, algorithm, params):
    problem = _problem(runs[algorithm], params)
    exact = CM.reference(problem)
    sampled = CM.reference(problem, ref_samples=3000, kind="sampled")
    assert sampled["kind"].startswith("sf_rloo estimate (30 x 100") and sampled["se"] > 0
    err = float((sampled["grad"] - exact["grad"]).norm())
    # unbiased: E err^2 = se^2; over reference seeds 0-5, err / se was 0.47-2.04
    assert err < 3.0 * sampled["se"], (err, sampled["se"])


@pytest.mark.parametrize("algorithm,params", CASES)
def test_variance_falls_as_one_over_samples(runs, algorithm, params):
    """The n samples of an ``sf`` estimate are independent: Var(n) = Var(1) / n exactly in
    expectation. Over draw seeds 0-5 (300 draws) the ratio was 7.07-8.61; the margin is 1.4x
    either way (5.7-11.2)."""
    problem = _problem(runs[algorithm], params)
    ref = CM.reference(problem)
    v1 = _stats(problem, "sf", 1, 300, ref=ref)["variance"]
    v8 = _stats(problem, "sf", 8, 300, ref=ref)["variance"]
    assert 8 / 1.4 < v1 / v8 < 8 * 1.4, v1 / v8


@pytest.mark.parametrize("algorithm,params", CASES)
def test_gumbel_softmax_has_lower_variance_than_score_function(runs, algorithm, params):
    """Same state, same n = 4, tau = 1: over draw seeds 0-5 the ratio sf / gs was 5.6e3-9.4e5
    (no baseline) and sf_rloo / gs 19-49; the asserted margins are 100 and 5."""
    problem = _problem(runs[algorithm], params)
    ref = CM.reference(problem)
    gs = _stats(problem, "gs", 4, 200, ref=ref)["variance"]
    sf = _stats(problem, "sf", 4, 200, ref=ref)["variance"]
    rloo = _stats(problem, "sf_rloo", 4, 200, ref=ref)["variance"]
    assert gs * 100 < sf, (gs, sf)
    assert gs * 5 < rloo, (gs, rloo)


@pytest.mark.parametrize("params", ["output", "all"])
@pytest.mark.parametrize("estimator", ["sf_rloo", "gs", "gumbel_rao"])
def test_per_draw_gradients_are_each_draws_own(runs, params, estimator):
    """Draw d's gradient equals the gradient of the same call with every other draw's rewards
    zeroed (and so no gradient from them); their sum is the call's whole gradient."""
    problem = _problem(runs["relgan"], params)
    fn = problem.registry[estimator]
    kw = {"k": 3} if estimator == "gumbel_rao" else {}
    draws, n = 3, 2
    G, _ = problem.draw_grads(fn, draws, n, 0.7, torch.Generator().manual_seed(5), kw)
    for d in range(draws):
        keep = torch.zeros(draws * n)
        keep[d * n:(d + 1) * n] = 1.0

        def masked(y, keep=keep):
            return problem.reward(y) * keep

        s = fn(problem.policy, masked, problem.max_len, n_samples=n, tau=0.7,
               rng=torch.Generator().manual_seed(5), groups=draws, **kw)
        problem.policy.clear()
        grads = torch.autograd.grad(s, problem.params, allow_unused=True)
        direct = CM._flat(grads, problem.params).double()
        assert torch.allclose(G[d], direct, atol=1e-6, rtol=1e-4), d


@pytest.mark.parametrize("params", ["all", "output", "logits"])
def test_vae_per_draw_gradients_sum_to_the_encoders_gradient(runs, params):
    """Sum over draws of the mapped per-draw gradients == autograd through the encoder of the
    same estimator call (plus the closed-form KL term of every draw)."""
    problem = _problem(runs["vae"], params, batch=3)
    fn = problem.registry["gs"]
    draws, n, B = 2, 2, problem.B
    G, _ = problem.draw_grads(fn, draws, n, 0.7, torch.Generator().manual_seed(3), {})
    _, logits = problem.vae.encode(problem.x)
    leaf = logits if params != "logits" else logits.detach().requires_grad_(True)
    rows = leaf.unsqueeze(0).expand(draws, *leaf.shape).reshape(draws * B, problem.M, problem.K)
    s = fn(CM._LatentPolicy(rows.repeat_interleave(n, 0)), problem._recon_reward(draws * B, n, 0),
           problem.M, n_samples=n, tau=0.7, rng=torch.Generator().manual_seed(3),
           groups=draws * B)
    total = s / B - draws * CM._kl(leaf).mean()
    target = [leaf] if params == "logits" else problem.params
    direct = CM._flat(torch.autograd.grad(total, target), target).double()
    assert torch.allclose(G.sum(0), direct, atol=1e-5, rtol=1e-4)


def test_policy_pads_after_eos_as_the_trainers_sampler(runs):
    """With an end token the policy gives what ``sample_sequence(eos=, pad=)`` gives the
    trainers (same noise): pad after the first eos, log-probability 0 there."""
    from textgan.sampling import sample_sequence

    problem = _problem(runs["relgan"])
    G, eos, pad = problem.G, 3, 0
    ref = sample_sequence(G, 64, 5, rng=torch.Generator().manual_seed(1), eos=eos, pad=pad)
    policy = CM._Policy(G, eos, pad)
    got = sample_sequence(policy, 64, 5, rng=torch.Generator().manual_seed(1))
    assert torch.equal(got.tokens, ref.tokens)
    assert ((ref.tokens == eos).any(1) & (ref.tokens[:, -1] == pad)).any()  # the case occurs
    assert torch.allclose(got.log_prob, ref.log_prob, atol=1e-5)
    relaxed = sample_sequence(policy, 64, 5, method="gumbel_softmax", tau=0.5,
                              rng=torch.Generator().manual_seed(1))
    after = ~ref.mask  # positions after the first eos: an exact pad one-hot, no gradient
    assert torch.equal(relaxed.one_hot[after], torch.nn.functional.one_hot(
        torch.full((int(after.sum()),), pad), 4).float())


@pytest.mark.parametrize("loss", ["standard", "rsgan", "hinge", "lsgan", "wgan_gp"])
def test_relgan_reward_is_minus_the_per_sample_generator_loss(runs, loss):
    from textgan.runs import load_for_eval
    from textgan.train.relgan import per_sample_g_loss

    D = load_for_eval(runs["relgan"]).load_discriminator()
    y = torch.nn.functional.one_hot(torch.randint(0, 4, (6, 5)), 4).float()
    d_real = torch.randn(1, D.num_rep)
    reward = CM.relgan_reward(D, loss, d_real)(y)
    expected = per_sample_g_loss(loss, d_real.expand(6, -1), D(y))
    assert torch.allclose(-reward, expected, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def _args(argv):
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    return parser.parse_args(argv)


def test_errors_name_the_argument_and_the_fix(runs, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"")
    for path in (empty, bogus):
        args = _args(["--problem", "checkpoint", str(path), "--no-progress", "--out",
                      str(tmp_path / "o")])
        with pytest.raises(ValueError, match=rf"--checkpoint {path}: not a run directory .*"
                                             r"pass the output_dir of a relgan, seqgan or vae"):
            compare.run(args)
    args = _args(["--problem", "checkpoint", "--checkpoint", str(runs["mle"]), "--no-progress",
                  "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"a 'mle' run is not supported .*generator.init_from"):
        compare.run(args)
    code = main(["compare-estimators", "--problem", "checkpoint", str(runs["mle"]),
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such file or directory; pass the output_dir"):
        compare.run(_args(["--problem", "checkpoint", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="--params logits does not apply to a GAN"):
        compare.run(_args(["--problem", "checkpoint", str(runs["seqgan"]), "--params",
                           "logits", "--no-progress", "--out", str(tmp_path / "o")]))
    for flag, value in (("--batch", "0"), ("--ref-samples", "50")):
        with pytest.raises(ValueError, match=f"{flag} must be >= "):
            compare.run(_args(["--problem", "checkpoint", str(runs["vae"]), flag, value,
                               "--out", str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="--params is only used with --problem checkpoint"):
        compare.run(_args(["--problem", "toy", "--params", "all", "--out", str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="give one: --problem checkpoint PATH"):
        compare.run(_args(["--problem", "checkpoint", str(runs["vae"]), "--checkpoint",
                           str(runs["seqgan"]), "--out", str(tmp_path / "o")]))
    with pytest.raises(ValueError, match="--problem takes one name"):
        compare.run(_args(["--problem", "toy", "sequence", "--out", str(tmp_path / "o")]))
    assert not (tmp_path / "o").exists()
