"""RelGAN: step functions (who changes, who does not) and the trainer through the CLI."""

import json
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
    theirs = rows[-1]
    assert theirs["what"].startswith("TextGAN-PyTorch iteration 1G+5D (fp32, mean of 2 runs")
    assert theirs["seconds"] == pytest.approx(theirs["g_step_s"] + 5 * theirs["d_step_s"])
    for r in rows:
        assert r["speedup_vs_TextGAN-PyTorch_same_run"] == pytest.approx(
            theirs["seconds"] / r["seconds"])
    assert "speedup_vs_TextGAN-PyTorch_same_run" in markdown_table(rows)


def test_bench_relgan_rejects_a_directory_that_is_not_textgan_pytorch(tmp_path):
    from textgan.bench import relgan as rb

    with pytest.raises(FileNotFoundError, match="'.*' is not a TextGAN-PyTorch checkout"):
        rb.textgan_pytorch_times(tmp_path)
    assert main(["bench", "bleu", "--quick", "--out", str(tmp_path / "b"),
                 "--textgan-pytorch", str(tmp_path)]) == 2
