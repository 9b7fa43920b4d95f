"""SeqGAN: rollout rewards and the REINFORCE gradient against exact enumeration, the step
functions (who changes, who does not) and the trainer through the CLI with exact resume."""

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from textgan.cli import main
from textgan.models.lstm import LSTMGenerator
from textgan.oracle import OracleLSTM
from textgan.sampling import EMABaseline
from textgan.train import seqgan
from textgan.train.seqgan import (
    SeqGANConfig,
    d_step,
    g_step,
    make_rollout_policy,
    rollout_rewards,
    update_rollout,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy machine every parallel
    region waits for a time slice: one thread keeps these tests fast and their timing stable."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class TableD(nn.Module):
    """A fixed discriminator on ``V**T`` sequences: one arbitrary logit per sequence."""

    def __init__(self, V: int, T: int, seed: int = 0, scale: float = 2.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.V, self.T = V, T
        self.table = nn.Parameter(scale * torch.randn(V**T, generator=g))

    def index(self, ids):
        powers = self.V ** torch.arange(self.T - 1, -1, -1)
        return (ids.long() * powers).sum(-1)

    def forward(self, ids):
        return self.table[self.index(ids)]


def _all_sequences(V, T):
    return torch.tensor(list(itertools.product(range(V), repeat=T)))


def _log_probs(G, seqs):
    """``log p(y)`` of every sequence ``(n,)`` under G's teacher-forced pass (differentiable)."""
    inputs = torch.cat([seqs.new_full((seqs.shape[0], 1), G.start_token), seqs[:, :-1]], 1)
    logp = torch.log_softmax(G(inputs).float(), -1)
    return logp.gather(-1, seqs[..., None]).squeeze(-1).sum(1)


def _exact_q(G, D, V, T):
    """Exact ``Q`` of every prefix of every sequence, ``(V**T, T)``, by enumeration."""
    seqs = _all_sequences(V, T)
    with torch.no_grad():
        p = _log_probs(G, seqs).exp()
        r = torch.sigmoid(D(seqs))
    q, var = torch.empty(len(seqs), T), torch.empty(len(seqs), T)
    for i, y in enumerate(seqs):
        for P in range(1, T + 1):
            same = (seqs[:, :P] == y[:P]).all(1)
            w = p[same] / p[same].sum()
            q[i, P - 1] = (w * r[same]).sum()
            var[i, P - 1] = (w * r[same] ** 2).sum() - q[i, P - 1] ** 2
    return seqs, q, var.clamp_min(0)


def _lstm(V, seed=0, std=0.8):
    torch.manual_seed(seed)
    return LSTMGenerator(V, embed_dim=4, hidden_dim=4, start_token=0, init_std=std)


@pytest.mark.parametrize("kind", ["lstm", "oracle"])  # own repeat_state vs generic fallback
def test_rollout_rewards_equal_exact_expected_d_score(kind):
    V, T, N = 3, 3, 3000
    G = _lstm(V) if kind == "lstm" else OracleLSTM.random(seed=1, vocab_size=V, hidden_dim=4,
                                                          seq_len=T)
    D = TableD(V, T)
    seqs, q, var = _exact_q(G, D, V, T)
    torch.manual_seed(0)
    r = rollout_rewards(G, D, seqs, N, chunk=5000)
    assert r.shape == (V**T, T)
    torch.testing.assert_close(r[:, -1], q[:, -1])  # the full sequence: no rollout
    se = (var[:, :-1] / N).sqrt()
    z = (r[:, :-1] - q[:, :-1]).abs() / se.clamp_min(1e-9)
    assert z.max() < 4.5, f"max |z| = {z.max():.2f}"
    assert (r[:, :-1] - q[:, :-1]).abs().max() < 0.03
    # a wrong estimator (rollouts from a different policy) is detected by the same test
    torch.manual_seed(0)
    wrong = rollout_rewards(_lstm(V, seed=5, std=2.0), D, seqs, N, chunk=5000)
    assert ((wrong[:, :-1] - q[:, :-1]).abs() / se.clamp_min(1e-9)).max() > 6


def test_rollouts_after_eos_are_padding():
    V, T, eos, pad = 5, 5, 4, 0
    G, D = _lstm(V), TableD(V, T, seed=2, scale=3.0)
    tokens = torch.tensor([[1, 4, 0, 0, 0], [2, 3, 1, 4, 0], [1, 2, 3, 3, 1]])
    torch.manual_seed(0)
    r = rollout_rewards(G, D, tokens, 16, eos=eos, pad=pad)
    full = torch.sigmoid(D(tokens))
    # once the prefix holds eos, every completion is the padded sequence itself
    torch.testing.assert_close(r[0, 1:], full[0].expand(4))
    torch.testing.assert_close(r[1, 3:], full[1].expand(2))
    assert not torch.allclose(r[2, :-1], full[2].expand(4))


class _Recorder:
    """An optimizer stand-in that records the gradient instead of stepping."""

    def __init__(self, params):
        self.params = list(params)
        self.grads = []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads.append(torch.cat([p.grad.reshape(-1) for p in self.params]).clone())


def _reinforce_z(G, D, cfg, batches, reward_fn=None):
    V, T = D.V, D.T
    seqs = _all_sequences(V, T)
    G.zero_grad()
    exact = torch.autograd.grad((_log_probs(G, seqs).exp() * torch.sigmoid(D(seqs))).sum(),
                                list(G.parameters()))
    # the surrogate averages over the B * T tokens: its gradient estimates -grad(E[D]) / T
    target = -torch.cat([g.reshape(-1) for g in exact]) / T
    rec = _Recorder(G.parameters())
    ema = EMABaseline(0.9)
    torch.manual_seed(0)
    for _ in range(batches):
        g_step(G, G, D, rec, cfg.batch_size, T, cfg, ema=ema, reward_fn=reward_fn)
    g = torch.stack(rec.grads).double()
    se = g.std(0) / batches**0.5
    return ((g.mean(0) - target.double()).abs() / (se + 1e-7)), target


@pytest.mark.parametrize("baseline", ["none", "ema", "loo"])
def test_reinforce_gradient_matches_exact_gradient(baseline):
    V, T = 3, 3
    G, D = _lstm(V, seed=3), TableD(V, T, seed=4)
    D.requires_grad_(False)
    cfg = SeqGANConfig(batch_size=128, num_rollouts=4, baseline=baseline, grad_clip=0.0)
    z, target = _reinforce_z(G, D, cfg, batches=40)
    assert target.abs().max() > 1e-3
    assert z.max() < 4.5, f"max |z| = {z.max():.2f}"


def test_a_wrong_estimator_fails_the_gradient_check():
    """Rewards shifted by one position (Q of the prefix *before* the token) have zero
    expected gradient: the same check must reject them."""
    V, T = 3, 3
    G, D = _lstm(V, seed=3), TableD(V, T, seed=4)
    D.requires_grad_(False)

    def shifted(*args, **kwargs):
        r = rollout_rewards(*args, **kwargs)
        return torch.cat([torch.full_like(r[:, :1], 0.5), r[:, :-1]], 1)

    cfg = SeqGANConfig(batch_size=128, num_rollouts=4, grad_clip=0.0)
    z, _ = _reinforce_z(G, D, cfg, batches=40, reward_fn=shifted)
    assert z.max() > 6, f"max |z| = {z.max():.2f}"


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------

V, T, B = 20, 6, 8
D_KW = dict(embed_dim=8, filter_sizes=[2, 3], num_filters=[6, 6])


def _models():
    from textgan.models import build_discriminator, build_generator

    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=V, embed_dim=8, hidden_dim=8)
    D = build_discriminator("seqgan_cnn", vocab_size=V, **D_KW)
    return G, D


def _snapshot(m):
    return {k: v.detach().clone() for k, v in m.named_parameters()}


def _changed(before, m):
    return [k for k, v in m.named_parameters() if not torch.equal(before[k], v.detach())]


@pytest.mark.parametrize("baseline", ["none", "ema", "loo"])
def test_g_step_changes_g_only_and_d_step_changes_d_only(baseline):
    G, D = _models()
    G_roll = make_rollout_policy(G)
    cfg = SeqGANConfig(batch_size=B, num_rollouts=2, baseline=baseline)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-2)
    g0, d0, r0 = _snapshot(G), _snapshot(D), _snapshot(G_roll)
    out = g_step(G, G_roll, D, opt_g, B, T, cfg, ema=EMABaseline())
    assert all(torch.isfinite(torch.tensor(v)) for v in out.values())
    assert 0 < out["reward"] < 1
    assert len(_changed(g0, G)) == len(g0), "every generator parameter must move"
    assert _changed(d0, D) == [] and all(p.grad is None for p in D.parameters())
    assert all(p.requires_grad for p in D.parameters())  # unfrozen again
    assert _changed(r0, G_roll) == []  # the rollout policy moves only in update_rollout
    g1 = _snapshot(G)
    out = d_step(G, D, opt_d, torch.randint(0, V, (B, T)), cfg)
    assert torch.isfinite(torch.tensor(out["d_loss"])) and 0 <= out["d_acc"] <= 1
    assert _changed(g1, G) == [] and all(p.grad is None for p in G.parameters())
    assert len(_changed(d0, D)) == len(d0)


def test_update_rollout_is_a_delayed_copy():
    G, _ = _models()
    G_roll = make_rollout_policy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    before = _snapshot(G_roll)
    update_rollout(G_roll, G, 0.8)
    for k, p in G.named_parameters():
        torch.testing.assert_close(dict(G_roll.named_parameters())[k],
                                   0.8 * before[k] + 0.2 * p.detach())
    update_rollout(G_roll, G, 0.0)
    assert _changed(_snapshot(G), G_roll) == []


@pytest.mark.parametrize("bad, message", [
    ({"baseline": "loo2"}, r"did you mean 'loo'"),
    ({"num_rollouts": 0}, r"num_rollouts"),
    ({"rollout_update_rate": 1.5}, r"rollout_update_rate"),
    ({"baseline": "loo", "batch_size": 1}, r"batch_size"),
])
def test_config_checks(bad, message):
    with pytest.raises(ValueError, match=message):
        SeqGANConfig(**bad)


# --------------------------------------------------------------------------------------------
# Trainer through the CLI
# --------------------------------------------------------------------------------------------


def _records(out, phase="adversarial"):
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["phase"] == phase]


ORACLE = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
          "data.num_test=64"]
SMALL = ["generator.embed_dim=8", "generator.hidden_dim=8",
         "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
         "num_filters: [6, 6]}",
         "pretrain.steps=2", "pretrain.batch_size=16", "pretrain.checkpoint_every=2",
         "train.batch_size=16", "train.num_rollouts=2", "train.d_steps=2",
         "train.d_pretrain_steps=2", "train.log_every=1", "train.checkpoint_every=2",
         "train.keep_last=10", "eval.every=2", "eval.num_samples=32", "eval.batch_size=32"]


def _train(out, *extra, recipe="oracle.yaml"):
    return main(["train", str(REPO / "recipes" / "seqgan" / recipe), f"output_dir={out}",
                 *ORACLE, *SMALL, *extra])


def _losses(out):
    return {r["step"]: (r["g_loss"], r["d_loss"]) for r in _records(out) if "g_loss" in r}


def test_seqgan_trains_through_cli_and_resumes_exactly(tmp_path):
    full = tmp_path / "full"
    assert _train(full, "train.adv_steps=4", "train.baseline=ema") == 0
    recs = _records(full)
    assert [r["step"] for r in recs if "g_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "nll_oracle" in r] == [2, 4]
    assert _records(full, "pretrain") and _records(full, "d_pretrain")
    ckpts = sorted(p.name for p in (full / "checkpoints").iterdir())
    # pretrain 2, then d_pretrain 2 (offset 2), then adversarial 2 and 4 (offset 4)
    assert ckpts == ["step_2", "step_4", "step_6", "step_8"]
    state = torch.load(full / "checkpoints" / "step_8" / "trainer_state.pt", weights_only=True)
    assert state["phase"] == "adversarial" and state["step"] == 4
    assert set(state["extra"]) == {"baseline", "rollout", "window"}
    assert (full / "samples" / "adversarial_step4.txt").is_file()
    # resume mid-adversarial (step_6) and from the end of D pre-training (step_4)
    for keep in ("step_6", "step_4"):
        part = tmp_path / f"from_{keep}"
        shutil.copytree(full, part)
        for p in (part / "checkpoints").iterdir():
            if int(p.name[5:]) > int(keep[5:]):
                shutil.rmtree(p)
        (part / "metrics.jsonl").unlink()
        assert _train(part, "train.adv_steps=4", "train.baseline=ema", "resume=auto") == 0
        a, b = _losses(full), _losses(part)
        assert sorted(b) == ([3, 4] if keep == "step_6" else [1, 2, 3, 4])
        assert all(a[s] == b[s] for s in b), (a, b)


def test_seqgan_on_text(tmp_path, tiny_corpus_dir):
    out = tmp_path / "text"
    code = main(["train", str(REPO / "recipes" / "seqgan" / "coco.yaml"), f"output_dir={out}",
                 f"data.path={tiny_corpus_dir}", "data.max_len=12", *SMALL,
                 "train.adv_steps=2", "train.baseline=loo"])
    assert code == 0
    assert any("bleu2" in r and "nll_test" in r for r in _records(out))


@pytest.mark.parametrize("native", [True, False])
def test_bench_quick(monkeypatch, native):
    from textgan.bench import seqgan as bench

    monkeypatch.setattr(bench, "native_bf16", lambda: native)
    rows = bench.run(quick=True)
    bf16 = ["batched, bf16 autocast"] if native else []  # emulated bf16: row left out
    assert [r["implementation"] for r in rows] == ["batched", *bf16, "per-rollout loop"]
    assert all(r.keys() == rows[0].keys() for r in rows)
    assert rows[0]["same_in_mc_error"]


def test_rollout_rewards_rejects_bad_input():
    G, D = _lstm(3), TableD(3, 3)
    with pytest.raises(ValueError, match="num_rollouts"):
        rollout_rewards(G, D, torch.zeros(2, 3, dtype=torch.long), 0)
    assert seqgan.repeat_state(G, G.init_state(2), 3)[0].shape == (1, 6, 4)
