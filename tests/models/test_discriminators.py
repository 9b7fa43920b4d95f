"""RelGAN and SeqGAN CNN discriminators: ids vs one-hots, shapes, the paper's conv2d formulation,
gradients into relaxed one-hots, dropout, length and divisibility errors, the SeqGAN L2 term."""

import logging

import pytest
import torch
import torch.nn.functional as F

from textgan.models import build_discriminator
from textgan.models.discriminators import RelGANDiscriminator, SeqGANDiscriminator

V, B = 30, 4


def _small_relgan(**kw):
    args = dict(vocab_size=V, embed_dim=8, num_rep=4, filter_sizes=(2, 3), num_filters=(5, 6),
                hidden_dim=7)
    args.update(kw)
    return RelGANDiscriminator(**args)


def _small_seqgan(**kw):
    args = dict(vocab_size=V, embed_dim=8, filter_sizes=(1, 2, 4), num_filters=(3, 5, 4))
    args.update(kw)
    return SeqGANDiscriminator(**args)


def _ids(T, vocab=V, seed=0):
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _relaxed(T, vocab=V, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(B, T, vocab, generator=g) * 3, dim=-1)


# ------------------------------------------------------------------------------------------
# ids == one-hots, shapes


@pytest.mark.parametrize("make, T, shape", [
    (_small_relgan, 6, (B, 4)),
    (lambda: RelGANDiscriminator(V), 7, (B, 64)),  # paper defaults
    (_small_seqgan, 6, (B,)),
    (lambda: SeqGANDiscriminator(V), 20, (B,)),  # paper defaults
])
def test_ids_equal_one_hots_and_shapes(make, T, shape):
    D = make().eval()
    ids = _ids(T)
    out_ids = D(ids)
    out_oh = D(F.one_hot(ids, V).float())
    assert out_ids.shape == shape and out_oh.shape == shape
    assert torch.allclose(out_ids, out_oh, atol=1e-6, rtol=0)
    assert torch.isfinite(out_ids).all()


def test_registry_builds_both():
    D = build_discriminator("relgan_cnn", vocab_size=V, embed_dim=8, num_rep=4,
                            filter_sizes=(2, 3), num_filters=(6, 6))
    assert isinstance(D, RelGANDiscriminator) and D(_ids(5)).shape == (B, 4)
    D = build_discriminator("seqgan_cnn", vocab_size=V, embed_dim=8, filter_sizes=(2, 3),
                            num_filters=(4, 4), l2_reg=0.1)
    assert isinstance(D, SeqGANDiscriminator) and D(_ids(5)).shape == (B,)


# ------------------------------------------------------------------------------------------
# the fast path equals the papers' conv2d -> relu -> max-pool formulation


def _reference_relgan_features(D, ids):
    """The official graph: Conv2d over the (T, embed_dim) image, stride d, ReLU, max over time."""
    emb = F.embedding(ids, D.embedding.weight).unsqueeze(1)  # (B, 1, T, E)
    pooled = []
    for conv in D.convs:
        h = torch.relu(F.conv2d(emb, conv.weight, conv.bias, stride=(1, D.rep_dim)))
        pooled.append(h.amax(dim=2))  # (B, n_f, num_rep)
    return torch.cat(pooled, dim=1).transpose(1, 2)  # (B, num_rep, sum n_f)


def test_relgan_features_match_conv2d_reference():
    D = _small_relgan(embed_dim=12, num_rep=3, filter_sizes=(2, 3, 5), num_filters=(4, 5, 3))
    with torch.no_grad():  # non-trivial biases so their placement after the pool is checked
        for conv in D.convs:
            conv.bias.normal_()
    ids = _ids(7)
    got = D.features(ids)
    assert got.shape == (B, 3, 12)
    assert torch.allclose(got, _reference_relgan_features(D, ids), atol=1e-6)


def test_seqgan_features_match_conv2d_reference():
    D = _small_seqgan()
    ids = _ids(6)
    emb = F.embedding(ids, D.embedding.weight).unsqueeze(1)
    ref = torch.cat([torch.relu(F.conv2d(emb, c.weight, c.bias)).amax(dim=(2, 3))
                     for c in D.convs], dim=1)
    assert torch.allclose(D.features(ids), ref, atol=1e-5)


def test_relgan_representations_share_the_cnn():
    """Representation r only sees embedding columns [r*d, (r+1)*d): permuting the blocks of the
    embedding permutes the per-representation logits the same way."""
    D = _small_relgan().eval()
    ids = _ids(6)
    before = D(ids)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        W = D.embedding.weight.view(V, 4, 2)
        D.embedding.weight.copy_(W[:, perm].reshape(V, 8))
    assert torch.allclose(D(ids), before[:, perm], atol=1e-6)


# ------------------------------------------------------------------------------------------
# gradients, dropout


@pytest.mark.parametrize("make", [_small_relgan, _small_seqgan])
def test_gradients_reach_relaxed_one_hots_and_parameters(make):
    D = make()
    x = _relaxed(6).requires_grad_(True)
    D(x).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in D.parameters())


def test_double_backward_through_relgan():
    """WGAN-GP differentiates a gradient w.r.t. the input: second order must work."""
    D = _small_relgan()
    x = _relaxed(6).requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in D.parameters())


@pytest.mark.parametrize("make", [_small_relgan, _small_seqgan])
def test_dropout_active_only_in_train_mode(make):
    D = make(dropout=0.5)
    x = _ids(6)
    D.train()
    assert not torch.equal(D(x), D(x))
    D.eval()
    assert torch.equal(D(x), D(x))
    D = make(dropout=0.0).train()
    assert torch.equal(D(x), D(x))


# ------------------------------------------------------------------------------------------
# errors


def test_relgan_embed_dim_must_divide():
    with pytest.raises(ValueError, match=r"embed_dim=10 must be divisible by num_rep=4"):
        RelGANDiscriminator(V, embed_dim=10, num_rep=4)


def test_relgan_short_and_long_sequences():
    D = RelGANDiscriminator(V, embed_dim=8, num_rep=4, num_filters=(4,) * 4, max_len=8)
    with pytest.raises(ValueError, match=r"T=3 .*largest filter size 5"):
        D(_ids(3))
    with pytest.raises(ValueError, match=r"T=9 exceeds max_len=8"):
        D(_ids(9))
    assert D(_ids(5)).shape == (B, 4) and D(_ids(8)).shape == (B, 4)
    with pytest.raises(ValueError, match="max_len=3"):
        RelGANDiscriminator(V, embed_dim=8, num_rep=4, max_len=3)


def test_seqgan_short_sequences_raise_or_drop_filters(caplog):
    kw = dict(embed_dim=8, filter_sizes=(1, 2, 15, 20), num_filters=(3, 4, 5, 6))
    with pytest.raises(ValueError, match=r"T=10 .*widest filter size 20.*allow_short"):
        SeqGANDiscriminator(V, **kw)(_ids(10))
    D = SeqGANDiscriminator(V, allow_short=True, **kw).eval()
    with caplog.at_level(logging.WARNING, logger="textgan.models.discriminators"):
        feats = D.features(_ids(10))
        D.features(_ids(10))
    assert sum("T=10" in r.getMessage() for r in caplog.records) == 1  # logged once per T
    assert feats.shape == (B, 18)
    assert torch.all(feats[:, 7:] == 0)  # filters 15 and 20 dropped
    assert feats[:, :7].abs().sum() > 0
    assert D(_ids(10)).shape == (B,)
    assert D.features(_ids(20))[:, 7:].abs().sum() > 0  # all filters used when T >= 20


def test_bad_inputs():
    D = _small_relgan()
    with pytest.raises(ValueError, match="vocab_size=30"):
        D(torch.rand(B, 6, V + 1))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        D(F.one_hot(_ids(6), V))  # long one-hots: convert with .float()
    with pytest.raises(ValueError, match="same length"):
        RelGANDiscriminator(V, filter_sizes=(2, 3), num_filters=(3,))
    with pytest.raises(ValueError, match="dropout"):
        SeqGANDiscriminator(V, dropout=1.0)


# ------------------------------------------------------------------------------------------
# SeqGAN L2 term


def test_seqgan_l2_loss_is_tf_l2_loss_of_output_layer():
    D = _small_seqgan(l2_reg=0.2)
    n = D.out.in_features  # 12
    with torch.no_grad():
        D.out.weight.fill_(0.5)
        D.out.bias.fill_(-3.0)
    expected = 0.2 * (n * 0.25 + 9.0) / 2
    assert D.l2_loss().item() == pytest.approx(expected, rel=1e-6)
    D.l2_loss().backward()
    assert torch.allclose(D.out.weight.grad, torch.full_like(D.out.weight, 0.2 * 0.5))


# ------------------------------------------------------------------------------------------
# The fused conv + max-over-time (saves only the argmax) and the fast dropout


@pytest.mark.parametrize("B_, T, R, d, n, f", [
    (3, 7, 4, 1, 5, 3),  # narrow windows (K = f d <= T'): gather branch, RelGAN's case
    (3, 7, 4, 2, 5, 2),
    (2, 6, 1, 4, 3, 5),  # wide windows (K > T'): dense branch, SeqGAN's case
])
@pytest.mark.parametrize("backward_rows", ["all", "one"])  # gather branch: rows per chunk
def test_conv_max_pool_matches_eager_and_passes_gradcheck(B_, T, R, d, n, f, backward_rows,
                                                          monkeypatch):
    from textgan.models import discriminators as Dm
    from textgan.models.discriminators import _ConvMaxPool, _windows

    if backward_rows == "one":
        monkeypatch.setattr(Dm, "_BACKWARD_CHUNK_ELEMENTS", 1)
    torch.manual_seed(0)
    emb = torch.randn(B_, T, R, d, dtype=torch.double, requires_grad=True)
    w = torch.randn(n, 1, f, d, dtype=torch.double, requires_grad=True)
    fused = _ConvMaxPool.apply(emb, w, f)
    eager = torch.matmul(_windows(emb, f), w.reshape(n, -1).t()).max(dim=1).values
    if R == 1:  # conv1d, whose sums round differently from matmul's on some CPUs (oneDNN)
        assert torch.allclose(fused, eager, rtol=0, atol=1e-12)
    else:  # the same products as the eager version, chunked by batch rows
        assert torch.equal(fused, eager)
    g = torch.randn_like(fused)
    got = torch.autograd.grad(fused, (emb, w), g)
    want = torch.autograd.grad(eager, (emb, w), g)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(got, want, strict=True))
    fn = lambda a, b: _ConvMaxPool.apply(a, b, f)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (emb, w))
    assert torch.autograd.gradgradcheck(fn, (emb, w))


@pytest.mark.parametrize("R", [5, 8])  # index by division / by a shift (R a power of two)
def test_max_over_time_equals_max_with_ties_and_nan(R):
    """The channels-last max-pool gives ``max(dim=1)``'s values and first-maximum indices, also
    for tied scores (repeated tokens give equal windows) and NaN."""
    from textgan.models.discriminators import _max_over_time

    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (4, 6, R, 7), generator=g).float()  # many ties
    scores[0, 2, 1, 3] = float("nan")
    values, index = _max_over_time(scores)
    ref = scores.max(dim=1)
    assert torch.equal(values.nan_to_num(-1.0), ref.values.nan_to_num(-1.0))
    assert torch.equal(index, ref.indices)
    assert index[0, 1, 3] == 2 and values[0, 1, 3].isnan()
    assert values.shape == (4, R, 7) and index.dtype == torch.long


def test_conv_max_pool_chunks_give_the_same_result(monkeypatch):
    from textgan.models import discriminators as Dm

    D = _small_relgan().eval()
    x = _relaxed(9)
    full = D(x)
    monkeypatch.setattr(Dm, "_CHUNK_ELEMENTS", 1)  # one batch row per chunk
    assert torch.equal(D(x), full)


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_conv_max_pool_chunks_rows_on_the_cpu_only(device, monkeypatch):
    """Chunks of batch rows are a CPU cache optimisation; elsewhere every chunk costs kernel
    launches, so forward and backward take all rows at once there (operators counted; the meta
    device stands in for a GPU)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from textgan.models import discriminators as Dm

    monkeypatch.setattr(Dm, "_CHUNK_ELEMENTS", 1)  # one batch row per chunk on the CPU
    monkeypatch.setattr(Dm, "_BACKWARD_CHUNK_ELEMENTS", 1)
    B, T, R, d, n, f = 4, 7, 4, 1, 5, 3
    emb = torch.randn(B, T, R, d, device=device, requires_grad=True)
    w = torch.randn(n, 1, f, d, device=device, requires_grad=True)
    calls = []

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with Count():
        out = Dm._ConvMaxPool.apply(emb, w, f)
        grads = torch.autograd.grad(out.sum(), (emb, w))
    chunks = B if device == "cpu" else 1
    assert calls.count("max_pool2d_with_indices") == chunks  # one max over time per chunk
    assert calls.count("gather") == chunks * f * d  # backward: one per chunk and window element
    assert calls.count("scatter_add_") == chunks * f * d
    assert out.shape == (B, R, n) and [g.shape for g in grads] == [emb.shape, w.shape]
    assert Dm._rows_per_chunk(10, 100, 64, torch.device("cpu")) == 10
    assert Dm._rows_per_chunk(10, 100, 64, torch.device("cuda")) == 64  # no GPU needed


@pytest.mark.parametrize("p", [0.25, 0.5, 0.3])  # byte masks (256 p integer) and a float mask
def test_fast_dropout_keeps_the_expected_fraction_and_scale(p):
    from textgan.models.discriminators import Dropout

    torch.manual_seed(0)
    drop = Dropout(p).train()
    n = 400_000
    y = drop(torch.ones(n))
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs((y > 0).double().mean().item() - (1 - p)) < 4 * sigma
    # each of the 8 bytes of a 64-bit draw is uniform (a sign-free draw would bias the top byte)
    lanes = (y > 0).double().view(-1, 8).mean(0)
    assert torch.all((lanes - (1 - p)).abs() < 4 * sigma * 8**0.5), lanes
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(1 / (1 - p))))
    assert torch.equal(drop.eval()(y), y)
    x = torch.randn(3, 5, 7, requires_grad=True)
    out = drop.train()(x)
    out.sum().backward()
    assert torch.equal(x.grad, (out != 0).float() / (1 - p))  # gradient passes the same mask
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        Dropout(1.0)


def test_shared_highway_is_textgan_pytorchs_forward():
    """``highway="shared"``: TextGAN-PyTorch's RelGAN_D head, written out as in its code."""
    D = _small_relgan(highway="shared").eval()
    sep = _small_relgan().eval()
    F_ = sum(D.num_filters)
    hw = D.highway
    assert hw.gate is None and hw.lin.bias is not None and sep.highway.lin.bias is None
    n_params = sum(p.numel() for p in D.parameters())
    assert sum(p.numel() for p in sep.parameters()) - n_params == F_ * F_ - F_  # one matrix less
    with torch.no_grad():
        hw.lin.bias.normal_()
    ids = _ids(7)
    pred = D.features(ids)
    a = pred @ hw.lin.weight.t() + hw.lin.bias
    ref = torch.sigmoid(a) * F.relu(a) + (1.0 - torch.sigmoid(a)) * pred
    ref = D.out(D.hidden(ref)).squeeze(-1)
    assert torch.allclose(D(ids), ref, atol=1e-6)
    assert torch.allclose(D(F.one_hot(ids, V).float()), ref, atol=1e-6)
    with pytest.raises(ValueError, match="highway must be 'separate'.*got 'both'"):
        _small_relgan(highway="both")


def test_relgan_head_is_the_two_linear_layers_with_their_gradients():
    """``forward`` applies hidden and out as one composed vector (both are linear in the official
    code): the same logits and the same gradient for every parameter and the input as
    ``out(hidden(dropout(highway(features))))``, dropout mask included (same seed)."""
    D = _small_relgan(dropout=0.5).double().train()
    with torch.no_grad():
        for p in (D.hidden.bias, D.out.bias):
            p.normal_()
    x = _relaxed(7).double().requires_grad_(True)

    def grads(logits):
        g = torch.Generator().manual_seed(1)
        w = torch.randn(logits.shape, generator=g, dtype=logits.dtype)
        return torch.autograd.grad((logits * w).sum(), (x, *D.parameters()))

    torch.manual_seed(3)
    got = D(x)
    got_grads = grads(got)
    torch.manual_seed(3)
    want = D.out(D.hidden(D.dropout(D.highway(D.features(x))))).squeeze(-1)
    want_grads = grads(want)
    assert got.shape == (B, 4)
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    for (name, _), a, b in zip(D.named_parameters(), got_grads[1:], want_grads[1:], strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-10), name
    assert torch.allclose(got_grads[0], want_grads[0], atol=1e-12, rtol=1e-10)
    assert D.hidden.weight.grad is None  # autograd.grad only: nothing accumulated
    names = [n for n, _ in D.named_parameters()]
    assert got_grads[1 + names.index("hidden.weight")].abs().sum() > 0
