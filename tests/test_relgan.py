"""RelGAN: step functions (who changes, who does not) and the trainer through the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from textgan.cli import main
from textgan.models import build_discriminator, build_generator
from textgan.sampling import EMABaseline, sample_sequence
from textgan.train import relgan
from textgan.train.relgan import RelGANConfig, d_step, d_steps, draw_fakes, g_step

REPO = Path(__file__).resolve().parents[1]
V, T, B = 20, 6, 8


def _models():
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=V, embed_dim=8, hidden_dim=8)
    D = build_discriminator("relgan_cnn", vocab_size=V, embed_dim=8, num_rep=4,
                            filter_sizes=(2, 3), num_filters=(6, 6))
    return G, D


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def _changed(before, m):
    return [k for k, v in m.named_parameters() if not torch.equal(before[k], v.detach())]


@pytest.mark.parametrize("estimator", ["gumbel_softmax", "gumbel_st", "score_function"])
@pytest.mark.parametrize("loss", ["rsgan", "standard", "hinge", "lsgan", "wgan_gp"])
def test_g_step_changes_g_only_and_d_step_changes_d_only(estimator, loss):
    G, D = _models()
    cfg = RelGANConfig(estimator=estimator, loss=loss, g_lr=1e-2, d_lr=1e-2)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2)
    real = torch.randint(0, V, (B, T))
    g0, d0 = _snapshot(G), _snapshot(D)
    out = g_step(G, D, opt_g, real, 0.5, cfg, baseline=EMABaseline())
    assert torch.isfinite(torch.tensor(out["g_loss"]))
    assert len(_changed(g0, G)) == len(g0), "every generator parameter must move"
    assert _changed(d0, D) == [] and all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters())  # unfrozen again
    g1 = _snapshot(G)
    opt_g.zero_grad(set_to_none=True)
    out = d_step(G, D, opt_d, real, 0.5, cfg)
    assert torch.isfinite(torch.tensor(out["d_loss"]))
    assert _changed(g1, G) == [] and all(p.grad is None for p in G.parameters())
    # relativistic / Wasserstein losses depend on D(real) - D(fake): a shift of every logit
    # (the final biases) cancels and gets exactly zero gradient; so does hinge while every
    # margin is active (at initialisation: -1 from the real term, +1 from the fake term)
    invariant = {"hidden.bias", "out.bias"} if loss in ("rsgan", "wgan_gp", "hinge") else set()
    assert set(_changed(d0, D)) == set(d0) - invariant


def test_score_function_gradient_comes_only_through_log_prob():
    """SF: D sees discrete ids, so no pathwise gradient; G still learns via log-probs."""
    G, D = _models()
    seen = []
    forward = D.forward
    D.forward = lambda x: (seen.append(x), forward(x))[1]
    cfg = RelGANConfig(estimator="score_function", baseline="loo")
    g_step(G, D, torch.optim.SGD(G.parameters(), lr=0.1), torch.randint(0, V, (B, T)), 1.0, cfg)
    assert all(x.dtype == torch.long for x in seen)


def test_fake_stats_on_a_hand_made_sample():
    """Means over counted tokens only: -log p of the sampled tokens, largest one-hot component."""
    from textgan.sampling import Sample

    one_hot = torch.zeros(2, 3, 4)
    one_hot[0, 0] = torch.tensor([0.5, 0.25, 0.125, 0.125])
    one_hot[0, 1] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    one_hot[0, 2] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # not counted
    one_hot[1, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    log_prob = torch.tensor([[-1.0, -2.0, -50.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    sample = Sample(torch.zeros(2, 3, dtype=torch.long), one_hot, log_prob, mask)
    out = relgan.fake_stats(sample, "gumbel_softmax")
    assert out == {"g_entropy": pytest.approx(3.5 / 3, abs=1e-7),
                   "fake_max": pytest.approx(1.75 / 3, abs=1e-7)}
    assert relgan.fake_stats(sample, "gumbel_st") == {"g_entropy": pytest.approx(3.5 / 3)}
    none = Sample(sample.tokens, one_hot, log_prob, torch.zeros_like(mask))
    assert relgan.fake_stats(none, "gumbel_softmax") == {"g_entropy": 0.0, "fake_max": 0.0}
    # two processes, one row each (2 and 1 counted tokens): the mean of their logged values
    # is the one-process value above, not the mean of the two rows' means
    rows = [Sample(*(x[i:i + 1] for x in (sample.tokens, one_hot, log_prob, mask)))
            for i in range(2)]
    counts = [r.mask.sum().reshape(1).double() for r in rows]

    def gather_of(rank):  # what accelerator.gather gives process `rank`
        return lambda t: torch.cat([t if j == rank else counts[j] for j in range(2)])

    parts = [relgan.fake_stats(r, "gumbel_softmax", gather_of(i)) for i, r in enumerate(rows)]
    assert (parts[0]["g_entropy"] + parts[1]["g_entropy"]) / 2 == pytest.approx(3.5 / 3,
                                                                               abs=1e-6)
    assert (parts[0]["fake_max"] + parts[1]["fake_max"]) / 2 == pytest.approx(1.75 / 3,
                                                                             abs=1e-6)
    unweighted = [relgan.fake_stats(r, "gumbel_softmax") for r in rows]
    assert (unweighted[0]["g_entropy"] + unweighted[1]["g_entropy"]) / 2 == pytest.approx(1.0)


def test_g_entropy_estimates_the_entropy_along_the_samples():
    """E[-log p(x_t) | prefix] = H(p_t): the logged mean of -log p over 4,096 sampled sequences
    agrees with the exact entropies of G's distributions at the same positions within 4 standard
    errors (fixed seed); uniform logits give log V exactly, and at tau 0.01 the relaxed
    one-hots are near-exact (fake_max > 0.99)."""
    G, D = _models()
    torch.manual_seed(3)
    with torch.no_grad():
        fake = relgan.sample_fake(G, 4096, T, 0.5, "gumbel_softmax", "hard", eos=3)
        x = torch.cat([torch.full((4096, 1), G.start_token), fake.tokens[:, :-1]], 1)
        state, ents = G.init_state(4096), []
        for t in range(T):
            logits, state = G.step(x[:, t], state)
            lp = logits.log_softmax(-1)
            ents.append(-(lp.exp() * lp).sum(-1))
    m = fake.mask
    exact = torch.stack(ents, 1)[m].double()
    nll = -fake.log_prob[m].double()
    se = (nll - exact).std() / m.sum().sqrt()
    est = relgan.fake_stats(fake, "gumbel_softmax")["g_entropy"]
    assert abs(est - float(exact.mean())) < 4 * float(se)
    assert float(se) < 0.002 * float(exact.mean())  # tight: tempered log-probs would fail
    with torch.no_grad():
        G.out.weight.zero_()
        G.out.bias.zero_()
        flat = relgan.sample_fake(G, 64, T, 0.01, "gumbel_softmax", "hard")
    out = relgan.fake_stats(flat, "gumbel_softmax")
    assert out["g_entropy"] == pytest.approx(math.log(V), rel=1e-6)
    assert out["fake_max"] > 0.99


@pytest.mark.parametrize("estimator, feed, eos", [("gumbel_softmax", "hard", None),
                                                  ("gumbel_st", "soft", 3),
                                                  ("score_function", "hard", 3)])
def test_draw_fakes_are_consecutive_row_slices_of_one_draw(estimator, feed, eos):
    """``count`` batches of fakes are one sampling loop over ``count B`` rows cut into batches
    (same seed, same tau / feed / eos / pad); score function: tokens only, the same draws."""
    from textgan import sampling as S

    G, _ = _models()
    torch.manual_seed(5)
    fakes = draw_fakes(G, 3, B, T, 0.5, estimator, feed, eos=eos, pad=0)
    method = "multinomial" if estimator == "score_function" else estimator
    torch.manual_seed(5)
    with torch.no_grad():
        # the score function samples G itself (tau = 1): the schedule's tau only relaxes
        whole = S.sample_sequence(G, 3 * B, T, method=method, tau=1.0 if method == "multinomial"
                                  else 0.5, feed=feed, eos=eos, pad=0)
    assert len(fakes) == 3
    for i, got in enumerate(fakes):
        ref = S.Sample(*(x[i * B:(i + 1) * B] for x in whole))
        assert torch.equal(got.tokens, ref.tokens) and torch.equal(got.mask, ref.mask)
        if estimator == "score_function":
            assert got.one_hot is None and got.log_prob is None
        else:
            assert torch.equal(got.one_hot, ref.one_hot) and not got.one_hot.requires_grad
    if eos is not None:  # some sequences ended: pad after eos
        assert (whole.tokens == eos).any() and not whole.mask.all()
    assert not torch.equal(fakes[0].tokens, fakes[1].tokens)  # independent batches


def test_draw_fakes_are_the_same_in_every_process_layout():
    """Row blocks (``train.rng_blocks=2``): one process holding both blocks and two processes
    holding one each draw the same global fakes, batch by batch."""
    from textgan.train.common import Blocks

    G, _ = _models()
    one = draw_fakes(G, 3, B, T, 0.5, "gumbel_softmax", "hard", blocks=Blocks((0, 1), seed=7))
    for r in (0, 1):
        mine = draw_fakes(G, 3, B // 2, T, 0.5, "gumbel_softmax", "hard",
                          blocks=Blocks((r,), seed=7))
        for a, b in zip(one, mine, strict=True):  # process r holds rows r::2
            assert torch.equal(a.tokens[r::2], b.tokens)
            assert torch.equal(a.one_hot[r::2], b.one_hot)


def test_fakes_per_draw_caps_the_one_hots_of_the_global_batch():
    assert relgan.fakes_per_draw(5, 64, 20, 5000, "gumbel_softmax") == 5  # RelGAN: 128 MB
    assert relgan.fakes_per_draw(5, 64, 51, 5300, "gumbel_st") == 3  # 3 x 69 MB < 256 MB
    assert relgan.fakes_per_draw(5, 64, 36, 50257, "gumbel_softmax") == 1  # GPT-2: 463 MB each
    assert relgan.fakes_per_draw(5, 64, 36, 50257, "score_function") == 5  # tokens only
    assert relgan.fakes_per_draw(2, 64, 20, 5000, "gumbel_softmax") == 2


def test_d_steps_draws_each_group_just_before_its_updates(monkeypatch):
    """With room for 2 batches of one-hots per draw, 3 D updates run as: draw 2, update, update,
    draw 1, update; the same updates as ``d_step`` on those fakes; a fake of another shape is
    refused."""
    G, D = _models()
    D2 = build_discriminator("relgan_cnn", vocab_size=V, embed_dim=8, num_rep=4,
                             filter_sizes=(2, 3), num_filters=(6, 6))
    D2.load_state_dict(D.state_dict())
    cfg = RelGANConfig(batch_size=B)
    monkeypatch.setattr(relgan, "_FAKE_DRAW_ELEMENTS", 2 * B * T * V)
    reals = [torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(k))
             for k in range(3)]
    calls = []
    draw, step = relgan.draw_fakes, relgan.d_step
    monkeypatch.setattr(relgan, "draw_fakes",
                        lambda G_, count, *a, **k: (calls.append(f"draw {count}"),
                                                    draw(G_, count, *a, **k))[1])
    monkeypatch.setattr(relgan, "d_step", lambda *a, **k: (calls.append("d"), step(*a, **k))[1])
    opt, opt2 = (torch.optim.Adam(m.parameters(), lr=1e-2) for m in (D, D2))
    torch.manual_seed(1)
    got = d_steps(G, D, opt, reals, 0.7, cfg)
    assert calls == ["draw 2", "d", "d", "draw 1", "d"]
    torch.manual_seed(1)
    want = []
    for group in (reals[:2], reals[2:]):
        fakes = draw(G, len(group), B, T, 0.7, cfg.estimator, "hard")
        want += [step(G, D2, opt2, r, 0.7, cfg, fake=f) for r, f in zip(group, fakes, strict=True)]
    assert got == want
    assert all(torch.equal(a, b) for a, b in zip(D.parameters(), D2.parameters(), strict=True))
    with pytest.raises(ValueError, match=r"fakes of shape \(8, 6\) for real batch of shape "
                                         r"\(8, 5\)"):
        step(G, D, opt, reals[0][:, :5], 0.7, cfg, fake=fakes[0])


def _records(out, phase="adversarial"):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["phase"] == phase]


ORACLE = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
          "data.num_test=64"]
# the recipe's RMC keys do not apply to the LSTM: the generator section is replaced whole
MODELS = ["generator={name: lstm, embed_dim: 8, hidden_dim: 8}", "discriminator.embed_dim=8",
          "discriminator.num_rep=4", "discriminator.filter_sizes=[2,3]",
          "discriminator.num_filters=[6,6]", "pretrain.steps=3", "pretrain.batch_size=16",
          "pretrain.checkpoint_every=3", "train.batch_size=16", "train.d_steps=2",
          "train.log_every=1", "eval.every=2", "eval.num_samples=32", "eval.batch_size=32"]


def _train(out, *extra):
    return main(["train", str(REPO / "recipes" / "relgan" / "oracle.yaml"), f"output_dir={out}",
                 *ORACLE, *MODELS, *extra])


def test_relgan_trains_through_cli_and_resumes_exactly(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(full, "train.adv_steps=4", "train.checkpoint_every=2") == 0
    recs = _records(full)
    losses = [r for r in recs if "g_loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert all(r["tau"] < 1.0 for r in losses[1:])  # beta grows along the exp schedule
    # collapse diagnostics of the G step's fakes (oracle: no eos, every token counts)
    assert all(0 < r["g_entropy"] < math.log(30) and 0 < r["fake_max"] < 1 for r in losses)
    evals = [r for r in recs if "nll_oracle" in r]
    assert [r["step"] for r in evals] == [2, 4]
    # eval records carry the temperature of the step they follow
    assert [r["tau"] for r in evals] == [r["tau"] for r in losses if r["step"] in (2, 4)]
    assert _records(full, "pretrain")
    ckpts = sorted(p.name for p in (full / "checkpoints").iterdir())
    assert ckpts == ["step_5", "step_7"]  # named after pretrain.steps + adversarial step
    # stop after 2 adversarial steps, then resume to 4: identical losses
    assert _train(part, "train.adv_steps=4", "train.checkpoint_every=2") == 0
    import shutil

    shutil.rmtree(part / "checkpoints" / "step_7")
    (part / "metrics.jsonl").unlink()
    assert _train(part, "train.adv_steps=4", "train.checkpoint_every=2", "resume=auto") == 0
    a = {r["step"]: (r["g_loss"], r["d_loss"]) for r in _records(full) if "g_loss" in r}
    b = {r["step"]: (r["g_loss"], r["d_loss"]) for r in _records(part) if "g_loss" in r}
    assert sorted(b) == [3, 4] and all(a[s] == b[s] for s in b)


def test_score_function_draws_the_tokens_the_relaxations_feed_forward():
    """tau shapes only the relaxed one-hots: at any tau the score function samples G itself
    (temperature 1), the very tokens Gumbel-Softmax / ST draw from the same seed; sampling at
    tau (the bug this pins) would draw from the sharper softmax(logits / tau)."""
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=30, embed_dim=8, hidden_dim=8)

    def tokens(estimator, tau, seed=1):
        torch.manual_seed(seed)
        with torch.no_grad():
            return relgan.sample_fake(G, 64, 6, tau, estimator, "hard").tokens

    for tau in (1.0, 0.1, 0.01):
        sf = tokens("score_function", tau)
        assert torch.equal(sf, tokens("gumbel_softmax", tau))
        assert torch.equal(sf, tokens("gumbel_st", tau))
    torch.manual_seed(1)
    with torch.no_grad():
        tempered = sample_sequence(G, 64, 6, method="multinomial", tau=0.01).tokens
    assert not torch.equal(tempered, tokens("score_function", 0.01))


def test_relgan_schedule_horizon_sets_the_logged_temperatures(tmp_path):
    """Step k trains at tau(k) = beta_max ** (-k / N): N = the run's 4 steps when
    ``sampler.schedule_steps`` is unset, or the fixed horizon: 8, or the recipe's 5000 (RelGAN's
    code: 5000 whatever the run's length)."""
    for extra, n in ((("sampler.schedule_steps=null",), 4), (("sampler.schedule_steps=8",), 8),
                     ((), 5000)):
        out = tmp_path / f"n{n}"
        assert _train(out, "train.adv_steps=4", "pretrain.steps=0", *extra) == 0
        taus = [r["tau"] for r in _records(out) if "g_loss" in r]
        assert taus == [round(1.0 / 100.0 ** (k / n), 6) for k in range(4)]  # logged to 6 places


@pytest.mark.parametrize("estimator", ["gumbel_st", "score_function"])
def test_relgan_estimators_run_through_cli(tmp_path, estimator):
    assert _train(tmp_path / estimator, "train.adv_steps=2", f"train.estimator={estimator}",
                  "sampler.feed=soft") == 0
    assert len([r for r in _records(tmp_path / estimator) if "g_loss" in r]) == 2


def test_shared_highway_through_cli_and_a_bad_value(tmp_path, capsys):
    assert _train(tmp_path / "shared", "train.adv_steps=2", "discriminator.highway=shared") == 0
    assert len([r for r in _records(tmp_path / "shared") if "g_loss" in r]) == 2
    assert _train(tmp_path / "bad", "train.adv_steps=2", "discriminator.highway=tied") == 2
    err = capsys.readouterr().err
    assert "highway must be 'separate' (official RelGAN) or 'shared'" in err and "'tied'" in err


def test_relgan_on_text(tmp_path, tiny_corpus_dir):
    out = tmp_path / "text"
    code = main(["train", str(REPO / "recipes" / "relgan" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", "data.max_len=12",
                 *MODELS, "train.adv_steps=2"])
    assert code == 0
    assert any("bleu2" in r and "nll_test" in r for r in _records(out))


def test_relgan_logs_unique_and_self_bleu_of_the_saved_samples(tmp_path, tiny_corpus_dir):
    """``eval.self_bleu`` orders and ``unique`` are those of the samples written to
    ``samples/`` (each sample against the other 31)."""
    from textgan import metrics

    out = tmp_path / "text"
    assert main(["train", str(REPO / "recipes" / "relgan" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", "data.max_len=12", *MODELS,
                 "train.adv_steps=2", "eval.self_bleu=[2,4]"]) == 0
    evals = [r for r in _records(out) if "nll_test" in r]
    assert [r["step"] for r in evals] == [2]
    lines = (out / "samples" / "adversarial_step2.txt").read_text(encoding="utf-8")
    sents = [line.split() for line in lines.split("\n")[:-1]]
    assert len(sents) == 32
    want = metrics.self_bleu_scores(sents, (2, 4))
    assert evals[0]["self_bleu2"] == pytest.approx(want[2], abs=1e-6)
    assert evals[0]["self_bleu4"] == pytest.approx(want[4], abs=1e-6)
    assert evals[0]["unique"] == pytest.approx(len(set(map(tuple, sents))) / 32, abs=1e-6)
    pre = [r for r in _records(out, "pretrain") if "nll_test" in r]
    assert pre and all("unique" in r and "self_bleu4" in r for r in pre)


def test_diversity_metrics_of_a_collapsed_sample():
    from textgan.train.common import diversity_metrics

    same = [["a", "man", "rides", "a", "horse"]] * 3
    assert diversity_metrics(same, [4]) == {"unique": pytest.approx(1 / 3), "self_bleu4": 1.0}
    mixed = same + [["two", "dogs", "play"]]
    out = diversity_metrics(mixed, [])
    assert out == {"unique": 0.5}
    train = {("two", "dogs", "play"), ("a", "man", "rides")}  # 1 of the 4 is a copy
    assert diversity_metrics(mixed, [], train) == {"unique": 0.5, "novelty": 0.75}


@pytest.mark.parametrize("value, message", [
    ("[0]", "`eval.self_bleu` must be a list of n-gram orders >= 1"),
    ("[2,true]", "`eval.self_bleu` must be a list of n-gram orders >= 1 (e.g. [2, 3, 4, 5]), "
                 "got [2, True]"),
    ("4", "`eval.self_bleu` must be of type list, got int 4"),
])
def test_bad_self_bleu_orders_are_refused(tmp_path, capsys, value, message):
    assert _train(tmp_path / "bad", "train.adv_steps=1", f"eval.self_bleu={value}") == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("native", [True, False])
def test_bench_relgan_quick_rows(monkeypatch, native):
    from textgan import bench
    from textgan.bench import relgan as rb

    monkeypatch.setattr(rb, "native_bf16", lambda: native)
    rows = rb.run(quick=True)
    iters = [r["what"] for r in rows if r["what"].startswith("iteration")]
    precisions = ("fp32", "bf16") if native else ("fp32",)  # emulated bf16: left out
    official, shared = "official D", "TextGAN-PyTorch's D: shared highway"
    assert iters == [f"iteration 1G+5D ({e}, {p}, {d})" for p in precisions
                     for e, d in (("gumbel_softmax", official), ("score_function", official),
                                  ("gumbel_softmax", shared))]
    assert all(r["seconds"] > 0 for r in rows)
    assert "native bf16: " in bench.machine()


FAKE_TEXTGAN_PYTORCH = {
    # the module surface textgan.bench.textgan_pytorch_relgan uses, at toy cost
    "config.py": "CUDA = True\npadding_idx = 0\nclip_norm = 5.0\n",
    "models/__init__.py": "",
    "utils/__init__.py": "",
    "models/RelGAN_G.py": (
        "import torch\n"
        "class RelGAN_G(torch.nn.Module):\n"
        "    def __init__(self, slots, heads, size, emb, hid, V, T, pad, gpu=False):\n"
        "        super().__init__()\n"
        "        self.V, self.T = V, T\n"
        "        self.logits = torch.nn.Parameter(torch.zeros(T, V))\n"
        "    def sample(self, n, bs, one_hot=False):\n"
        "        return torch.softmax(self.logits * self.temperature, -1).expand(n, -1, -1)\n"),
    "models/RelGAN_D.py": (
        "import torch\n"
        "class RelGAN_D(torch.nn.Module):\n"
        "    def __init__(self, emb, T, reps, V, pad, gpu=False):\n"
        "        super().__init__()\n"
        "        self.w = torch.nn.Linear(V, 1)\n"
        "    def forward(self, x):\n"
        "        return self.w(x).mean((1, 2))\n"),
    "utils/helpers.py": (
        "import torch.nn.functional as F\n"
        "def get_losses(r, f, kind):\n"
        "    return F.softplus(r - f).mean(), F.softplus(f - r).mean()\n"),
}


def test_bench_relgan_times_textgan_pytorch_in_the_same_run(tmp_path):
    from textgan.bench import markdown_table
    from textgan.bench import relgan as rb

    for name, text in FAKE_TEXTGAN_PYTORCH.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    g, d = rb.textgan_pytorch_times(tmp_path, quick=True)
    assert g > 0 and d > 0
    rows = [r for r in rb.run(quick=True, textgan_pytorch=tmp_path) if "profile" not in r["what"]]
    *rows, theirs, paired = rows
    assert theirs["what"].startswith("TextGAN-PyTorch iteration 1G+5D (fp32, mean of 2 runs")
    assert theirs["seconds"] == pytest.approx(theirs["g_step_s"] + 5 * theirs["d_step_s"])
    for r in [*rows, theirs]:
        assert r["speedup_vs_TextGAN-PyTorch_same_run"] == pytest.approx(
            theirs["seconds"] / r["seconds"])
    # the alternating pairs (their arithmetic: test_paired_row_takes_medians)
    assert paired["what"].startswith("paired: 2 alternating iterations")
    assert len(paired["each_pair_TextGAN-PyTorch_s/ours_s"].split(", ")) == 2
    assert paired["seconds"] > 0 and paired["speedup_vs_TextGAN-PyTorch_same_run"] > 0
    assert "speedup_vs_TextGAN-PyTorch_same_run" in markdown_table([*rows, theirs, paired])


def test_paired_row_takes_medians(monkeypatch):
    from textgan.bench import relgan as rb

    seen = {}

    def fake_pairs(checkout, ours, pairs, quick):
        seen.update(checkout=checkout, pairs=pairs, quick=quick)
        ours()  # our iteration runs on the given models
        return [(10.0, 2.0), (9.0, 3.0), (8.0, 4.0), (12.0, 6.0)]

    monkeypatch.setattr(rb, "paired_iterations", fake_pairs)
    model = rb._setup(50, 4, 6, 8, 2, 4, "shared")
    before = [p.detach().clone() for p in model[0].parameters()]
    row = rb._paired_row("DIR", model, 4, quick=True)
    assert seen == {"checkout": "DIR", "pairs": 4, "quick": True}
    assert any(not torch.equal(a, b) for a, b in zip(before, model[0].parameters(), strict=True))
    assert row["seconds"] == 3.5  # median of 2, 3, 4, 6
    assert row["speedup_vs_TextGAN-PyTorch_same_run"] == 2.5  # median of 5, 3, 2, 2
    assert row["each_pair_TextGAN-PyTorch_s/ours_s"] == ("10.00/2.00, 9.00/3.00, 8.00/4.00, "
                                                         "12.00/6.00")


def test_paired_iterations_alternate_and_report_a_dead_harness(tmp_path):
    from textgan.bench import relgan as rb

    for name, text in FAKE_TEXTGAN_PYTORCH.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    calls = []
    pairs = rb.paired_iterations(tmp_path, lambda: calls.append(1), 3, quick=True)
    assert len(pairs) == 3 and len(calls) == 3 and all(t > 0 and o >= 0 for t, o in pairs)
    # a harness that dies during the second pair (its G's 9th sample: 2 warm-up steps, then 6
    # per iteration), then one that dies at start: its stderr in the error, no hang
    g_file = tmp_path / "models" / "RelGAN_G.py"
    g_file.write_text(g_file.read_text().replace(
        "    def sample(self, n, bs, one_hot=False):\n",
        "    calls = 0\n"
        "    def sample(self, n, bs, one_hot=False):\n"
        "        RelGAN_G.calls += 1\n"
        "        if RelGAN_G.calls == 9:\n"
        "            raise RuntimeError('G broke')\n"))
    with pytest.raises(RuntimeError, match=r"(?s)stopped before 'TIME '.*G broke"):
        rb.paired_iterations(tmp_path, lambda: None, 3, quick=True)
    (tmp_path / "models" / "RelGAN_D.py").write_text("raise ImportError('no D here')\n")
    with pytest.raises(RuntimeError, match=r"(?s)stopped before 'READY'.*no D here"):
        rb.paired_iterations(tmp_path, lambda: None, 1, quick=True)


def test_bench_relgan_rejects_a_directory_that_is_not_textgan_pytorch(tmp_path):
    from textgan.bench import relgan as rb

    with pytest.raises(FileNotFoundError, match="'.*' is not a TextGAN-PyTorch checkout"):
        rb.textgan_pytorch_times(tmp_path)
    assert main(["bench", "bleu", "--quick", "--out", str(tmp_path / "b"),
                 "--textgan-pytorch", str(tmp_path)]) == 2
