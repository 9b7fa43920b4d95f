"""The compiled CPU kernels of the discriminators (textgan/models/cpu_kernels.c) against the
PyTorch path: RelGAN's convolution + max-over-time and the highway/dropout/output head; values,
argmax, gradients, double backward, threads, workspaces, and the fallbacks when the kernels are
switched off or cannot be built."""

import logging

import pytest
import torch

from textgan.models import cpu_kernels as ck
from textgan.models import discriminators as Dm
from textgan.models.discriminators import RelGANDiscriminator

needs_kernels = pytest.mark.skipif(not ck.available(), reason="no C compiler for the kernels")


def _pytorch_path(emb, weights, bias):
    """``relu(max_t conv + bias)`` and the first-maximum indices, in PyTorch ops."""
    values, index = [], []
    for w in weights:
        f = w.shape[2]
        scores = torch.matmul(Dm._windows(emb, f), w.reshape(w.shape[0], -1).t())
        best = scores.max(dim=1)
        values.append(best.values)
        index.append(best.indices)
    return torch.relu(torch.cat(values, -1) + bias), torch.cat(index, -1)


def _inputs(B, T, R, d, sizes, dtype=torch.double, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, T, R, d, generator=g, dtype=dtype, requires_grad=True)
    ws = [torch.randn(n, 1, f, d, generator=g, dtype=dtype, requires_grad=True)
          for f, n in sizes]
    bias = torch.randn(sum(n for _, n in sizes), generator=g, dtype=dtype) * 4 - 3
    return emb, ws, bias.requires_grad_()


@needs_kernels
@pytest.mark.parametrize("B, T, R, d, sizes", [
    (3, 9, 4, 1, [(2, 5), (3, 17), (5, 16)]),  # RelGAN's d = 1; column counts around 16
    (2, 7, 3, 2, [(2, 33), (3, 1)]),  # d = 2: windows over two dims per step
    (5, 5, 2, 1, [(5, 20)]),  # T = f: one window
    (1, 12, 1, 3, [(4, 7)]),  # one row, one representation, K = 12 (the generic loop)
])
@pytest.mark.parametrize("dtype", [torch.double, torch.float])
def test_kernel_forward_and_backward_match_the_pytorch_path(B, T, R, d, sizes, dtype):
    emb, ws, bias = _inputs(B, T, R, d, sizes, dtype)
    values, index = ck.conv_max_pool(emb, ws, bias)
    want_values, want_index = _pytorch_path(emb, ws, bias)
    tol = 1e-12 if dtype == torch.double else 1e-5
    assert index.dtype == torch.int16 and values.shape == (B, R, sum(n for _, n in sizes))
    assert torch.equal(index.long(), want_index)  # random scores: no ties
    assert torch.allclose(values, want_values, rtol=0, atol=tol)
    assert 0.1 < (values == 0).double().mean() < 0.9  # the ReLU cuts some, not all
    g = torch.randn_like(values)
    grad_emb, grad_ws, grad_bias = ck.conv_max_pool_backward(emb, ws, index, values, g, True,
                                                             True)
    want = torch.autograd.grad(want_values, [emb, bias, *ws], g)
    assert torch.allclose(grad_emb, want[0], rtol=0, atol=tol * 10)
    assert torch.allclose(grad_bias, want[1], rtol=0, atol=tol * 10)
    for got, ref in zip(grad_ws, want[2:], strict=True):
        assert got.shape == ref.shape and torch.allclose(got, ref, rtol=0, atol=tol * 10)
    only_emb = ck.conv_max_pool_backward(emb, ws, index, values, g, True, False)
    assert torch.equal(only_emb[0], grad_emb) and only_emb[1] is None
    assert torch.equal(only_emb[2], grad_bias)
    assert ck.conv_max_pool_backward(emb, ws, index, values, g, False, True)[0] is None


@needs_kernels
def test_kernel_ties_take_the_first_maximum_and_nan_the_last():
    """Repeated values tie (the first time step wins, as in ``max``); a NaN score propagates
    with the index of the last NaN (``max_pool2d``'s rule, which the PyTorch path uses)."""
    emb = torch.tensor([1.0, 2.0, 2.0, 1.0, 2.0, 0.0]).reshape(1, 6, 1, 1)
    w = torch.tensor([1.0, 0.0, -1.0]).reshape(3, 1, 1, 1)  # f = 1: scores are x, 0, -x
    bias = torch.tensor([0.0, 0.0, 0.5])  # the third filter: relu(max(-x) + 0.5) = 0.5
    values, index = ck.conv_max_pool(emb, [w], bias)
    assert values.flatten().tolist() == [2.0, 0.0, 0.5] and index.flatten().tolist() == [1, 0, 5]
    emb[0, 2, 0, 0] = emb[0, 4, 0, 0] = float("nan")
    values, index = ck.conv_max_pool(emb, [w], bias)
    assert values[0, 0, 0].isnan() and index[0, 0, 0] == 4  # ReLU lets NaN through


@needs_kernels
def test_discriminator_with_kernels_matches_without_and_passes_gradcheck(monkeypatch):
    torch.manual_seed(0)
    D = RelGANDiscriminator(12, embed_dim=8, num_rep=8, filter_sizes=(2, 3), num_filters=(5, 18),
                            hidden_dim=7).double().eval()
    x = torch.softmax(torch.randn(2, 5, 12, dtype=torch.double) * 3, -1).requires_grad_()
    fast = D(x)
    grads = torch.autograd.grad(fast.sum(), [x, *D.parameters()])
    calls = []
    monkeypatch.setattr(Dm._KernelConvMaxPool, "apply", lambda *a: calls.append(1))
    monkeypatch.setattr(ck, "supports", lambda emb, weights: False)
    monkeypatch.setattr(ck, "supports_head", lambda x, weight: False)
    slow = D(x)
    assert not calls  # the PyTorch path
    want = torch.autograd.grad(slow.sum(), [x, *D.parameters()])
    assert torch.allclose(fast, slow, rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(grads, want, strict=True))
    monkeypatch.undo()
    assert torch.autograd.gradcheck(D, (x,))
    assert torch.autograd.gradgradcheck(D, (x,))  # double backward: the PyTorch ops


@needs_kernels
def test_gradient_penalty_through_the_kernels_equals_the_pytorch_path(monkeypatch):
    from textgan.losses import gradient_penalty

    torch.manual_seed(1)
    D = RelGANDiscriminator(20, embed_dim=4, num_rep=4, filter_sizes=(2, 3), num_filters=(6, 6),
                            hidden_dim=5).double().eval()
    real = torch.nn.functional.one_hot(torch.randint(0, 20, (4, 7)), 20).double()
    fake = torch.softmax(torch.randn(4, 7, 20, dtype=torch.double), -1)

    def penalty_grads():
        gp = gradient_penalty(D, real, fake, rng=torch.Generator().manual_seed(0))
        grads = torch.autograd.grad(gp, list(D.parameters()), allow_unused=True)
        return gp, [g for g in grads if g is not None]  # the output bias is unused

    gp, grads = penalty_grads()
    monkeypatch.setattr(ck, "supports", lambda emb, weights: False)
    monkeypatch.setattr(ck, "supports_head", lambda x, weight: False)
    gp_ref, grads_ref = penalty_grads()
    assert torch.allclose(gp, gp_ref, rtol=0, atol=1e-12) and len(grads) == len(grads_ref) > 5
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12)
               for a, b in zip(grads, grads_ref, strict=True))
    assert max(g.abs().max() for g in grads) > 0


@needs_kernels
def test_kernel_results_do_not_depend_on_the_thread_count():
    """Rows are split over threads: values, indices and the input gradient are bitwise the same
    for 1 and 3 threads; the weight gradient's partial sums are added in another grouping."""
    emb, ws, bias = _inputs(7, 10, 4, 1, [(2, 20), (4, 9)], torch.float)
    threads = torch.get_num_threads()
    out = {}
    try:
        for t in (1, 3):
            torch.set_num_threads(t)
            values, index = ck.conv_max_pool(emb, ws, bias)
            grads = ck.conv_max_pool_backward(emb, ws, index, values, torch.ones_like(values),
                                              True, True)
            out[t] = values, index, grads[0], *grads[1], grads[2]
    finally:
        torch.set_num_threads(threads)
    one, three = out[1], out[3]
    assert all(torch.equal(a, b) for a, b in zip(one[:3], three[:3], strict=True))
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-5)
               for a, b in zip(one[3:], three[3:], strict=True))


def _head_inputs(N, F, shared, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, F, generator=g, dtype=dtype).relu().requires_grad_()
    weight = (torch.randn(F * (1 if shared else 2), F, generator=g, dtype=dtype) / F ** 0.5)
    bias = torch.randn(weight.shape[0], generator=g, dtype=dtype) if shared else None
    v = torch.randn(F, generator=g, dtype=dtype)
    keep = torch.randint(0, 256, (N, F), generator=g, dtype=torch.uint8)
    return [x, weight.requires_grad_(), bias if bias is None else bias.requires_grad_(),
            v.requires_grad_()], keep


@needs_kernels
@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("dtype", [torch.double, torch.float])
@pytest.mark.parametrize("dropout", [True, False])
def test_head_kernel_matches_the_pytorch_ops(shared, dtype, dropout):
    """Highway (shared or separate), dropout and the output vector: values and all gradients
    against :func:`Dm._head_eager`; F = 37 runs two full vector blocks and a padded one."""
    inputs, keep = _head_inputs(11, 37, shared, dtype)
    keep, threshold, scale = (keep, 64, 4 / 3) if dropout else (None, 0, 1.0)
    args = (keep, threshold, scale, shared)
    got = Dm._KernelHead.apply(*inputs, *args)
    want = Dm._head_eager(*inputs, *args)
    tol = 1e-12 if dtype == torch.double else 2e-5
    assert torch.allclose(got, want, rtol=0, atol=tol)
    g = torch.randn_like(got)
    used = [t for t in inputs if t is not None]
    grads = torch.autograd.grad(got, used, g)
    # another backward reuses the kernel's workspaces: the gradients above are not among them
    other, _ = _head_inputs(11, 37, shared, dtype, seed=3)
    Dm._KernelHead.apply(*other, *args).sum().backward()
    for a, b in zip(grads, torch.autograd.grad(want, used, g), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=tol * 10)
    if dropout and dtype == torch.double:  # the mask drops about a quarter of the columns
        assert 0.15 < (keep < threshold).double().mean() < 0.35
        small, keep = _head_inputs(3, 18, shared, dtype, seed=1)  # one block and a padded one
        fn = lambda *t: Dm._KernelHead.apply(*t, keep, threshold, scale, shared)  # noqa: E731
        assert torch.autograd.gradcheck(fn, tuple(small))
        assert torch.autograd.gradgradcheck(fn, tuple(small))


@needs_kernels
def test_head_kernel_propagates_nan_and_saturates_the_sigmoid():
    """NaN in the highway's input or product comes out as NaN (as in PyTorch); large
    pre-activations give sigmoid 0 / 1 without overflow."""
    x = torch.tensor([[1.0, 2.0], [float("nan"), 1.0], [0.5, -0.5]])
    v = torch.tensor([1.0, 1.0])
    H = torch.tensor([[200.0, -200.0], [1.0, 1.0], [float("nan"), 0.0]])
    out = ck.head(H, x, None, 0, 1.0, v, True)
    # row 0: sigmoid(200) = 1 -> relu(200) = 200; sigmoid(-200) = 0 -> x = 2
    assert out[0].item() == pytest.approx(202.0) and out[1:].isnan().all()
    ref = torch.addcmul(x, torch.sigmoid(H), torch.relu(H) - x) @ v
    assert ref[1:].isnan().all() and ref[0].item() == pytest.approx(202.0)


@needs_kernels
@pytest.mark.parametrize("kind", ["relgan", "seqgan"])
def test_discriminators_train_the_same_with_and_without_the_head_kernel(kind, monkeypatch):
    """Training mode: the kernel path draws the dropout mask from the same random stream as the
    modules, so outputs and gradients agree (float64) and both leave the generator in the same
    state."""
    from textgan.models.discriminators import SeqGANDiscriminator

    torch.manual_seed(0)
    D = (RelGANDiscriminator(30, embed_dim=8, num_rep=4, filter_sizes=(2, 3),
                             num_filters=(5, 18), hidden_dim=7, highway="shared")
         if kind == "relgan" else
         SeqGANDiscriminator(30, embed_dim=8, filter_sizes=(1, 2), num_filters=(9, 10)))
    D = D.double().train()
    x = torch.softmax(torch.randn(3, 6, 30, dtype=torch.double) * 3, -1)

    def run():
        torch.manual_seed(5)
        out = D(x)
        return out, torch.autograd.grad(out.pow(2).sum(), list(D.parameters())), torch.rand(1)

    fast = run()
    monkeypatch.setattr(ck, "supports_head", lambda x, weight: False)
    slow = run()
    assert torch.allclose(fast[0], slow[0], rtol=0, atol=1e-12)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-11)
               for a, b in zip(fast[1], slow[1], strict=True))
    assert torch.equal(fast[2], slow[2])  # the same number of random draws


@needs_kernels
def test_head_kernel_under_autocast_stays_on_the_pytorch_path():
    D = RelGANDiscriminator(30, embed_dim=8, num_rep=4, filter_sizes=(2, 3), num_filters=(5, 6),
                            hidden_dim=7).eval()
    x = torch.randint(0, 30, (2, 6))
    flat = D.features(x).reshape(-1, 11)
    assert ck.supports_head(flat, D.highway.lin.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not ck.supports_head(flat, D.highway.lin.weight)
        assert D(x).shape == (2, 4)


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """The kernel module as if nothing had been built in this process, with its own cache."""
    monkeypatch.setattr(ck, "_lib", None)
    monkeypatch.setattr(ck, "_failed", False)
    monkeypatch.setenv("TEXTGAN_CACHE", str(tmp_path))
    return tmp_path


def test_kernels_can_be_switched_off(fresh_kernels, monkeypatch):
    monkeypatch.setenv("TEXTGAN_CPU_KERNELS", "0")
    emb, ws, _ = _inputs(2, 6, 2, 1, [(2, 3)])
    assert not ck.available() and not ck.supports(emb, ws)
    assert not list(fresh_kernels.iterdir())  # nothing compiled


def test_a_failed_build_warns_once_and_the_discriminator_uses_pytorch(fresh_kernels, monkeypatch,
                                                                       caplog):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails
    caplog.set_level(logging.WARNING, logger="textgan.models.cpu_kernels")
    torch.manual_seed(0)
    D = RelGANDiscriminator(30, embed_dim=4, num_rep=4, filter_sizes=(2, 3), num_filters=(5, 6),
                            hidden_dim=7).eval()
    x = torch.randint(0, 30, (2, 6))
    out = D(x)
    D(x)
    warnings = [r for r in caplog.records if "kernels unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "false" in warnings[0].getMessage()
    emb = D.embedding(x).view(2, 6, 4, 1)
    want = torch.relu(torch.cat([Dm._conv_max_pool(emb, c.weight, c.bias) for c in D.convs], -1))
    assert torch.equal(D.features(x), want) and out.shape == (2, 4)


@needs_kernels
def test_the_build_is_cached_and_reused(fresh_kernels, monkeypatch):
    run, compiles = ck.subprocess.run, []

    def recording_run(cmd, **kw):
        compiles.extend([cmd] if "-shared" in cmd else [])
        return run(cmd, **kw)

    monkeypatch.setattr(ck.subprocess, "run", recording_run)
    assert ck.available() and len(compiles) == 1
    built = list((fresh_kernels / "kernels").iterdir())
    assert [p.name[:12] for p in built] == ["cpu_kernels-"]  # the temporary file renamed away
    monkeypatch.setattr(ck, "_lib", None)  # a new process, the same cache
    assert ck.available() and len(compiles) == 1  # loaded, not compiled again
    assert list((fresh_kernels / "kernels").iterdir()) == built


def _child_pool_and_result(parent_pool_id, emb, ws, bias):
    torch.set_num_threads(2)
    pool = ck._executor()[1]
    return id(pool) != parent_pool_id, ck.conv_max_pool(emb, ws, bias)[0]


@needs_kernels
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="no fork on this platform")
def test_a_forked_child_starts_its_own_thread_pool():
    """The parent's pool threads do not survive fork, and submitting to the inherited pool can
    wait forever (seen in a plain script); the child starts a pool of its own."""
    import multiprocessing as mp

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        emb, ws, bias = (t.detach() if isinstance(t, torch.Tensor) else [w.detach() for w in t]
                         for t in _inputs(4, 8, 2, 1, [(2, 5)], torch.float))
        want = ck.conv_max_pool(emb, ws, bias)[0]
        parent = ck._executor()[1]
        assert parent is not None
        with mp.get_context("fork").Pool(1) as pool:
            new_pool, got = pool.apply_async(_child_pool_and_result,
                                             (id(parent), emb, ws, bias)).get(timeout=60)
    finally:
        torch.set_num_threads(threads)
    assert new_pool and torch.equal(got, want)


@needs_kernels
def test_nan_gradients_pass_the_relus_as_in_pytorch(monkeypatch):
    """ReLU's gradient is blocked where the output is <= 0 and passes through NaN outputs in
    PyTorch; the kernels do the same (a NaN in training is not hidden)."""
    torch.manual_seed(0)
    D = RelGANDiscriminator(12, embed_dim=4, num_rep=4, filter_sizes=(2,), num_filters=(6,),
                            hidden_dim=5, highway="shared").double().eval()
    with torch.no_grad():
        D.embedding.weight[3, 1] = float("nan")
    x = torch.tensor([[1, 3, 2, 5, 3], [0, 1, 2, 4, 4]])

    def grads():
        return torch.autograd.grad(D(x).sum(), list(D.parameters()))

    fast = grads()
    monkeypatch.setattr(ck, "supports", lambda emb, weights: False)
    monkeypatch.setattr(ck, "supports_head", lambda x, weight: False)
    slow = grads()
    assert sum(int(g.isnan().sum()) for g in slow) > 0
    for a, b in zip(fast, slow, strict=True):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a.nan_to_num(0.0), b.nan_to_num(0.0), rtol=0, atol=1e-12)


def test_convs_without_bias_and_empty_batches_use_a_working_path():
    D = RelGANDiscriminator(12, embed_dim=4, num_rep=4, filter_sizes=(2, 3), num_filters=(5, 6),
                            hidden_dim=5).eval()
    x = torch.randint(0, 12, (2, 6))
    for c in D.convs:
        c.register_parameter("bias", None)
    emb = D.embedding(x).view(2, 6, 4, 1)
    want = torch.relu(torch.cat([Dm._conv_max_pool(emb, c.weight, None) for c in D.convs], -1))
    assert torch.equal(D.features(x), want)


@needs_kernels
def test_kernel_wrappers_take_empty_batches_and_refuse_unsupported_windows():
    emb, ws, bias = _inputs(0, 8, 2, 1, [(2, 5)])
    values, index = ck.conv_max_pool(emb, ws, bias)
    assert values.shape == (0, 2, 5)
    grad_emb, grad_ws, grad_bias = ck.conv_max_pool_backward(emb, ws, index, values, values,
                                                             True, True)
    assert grad_emb.shape == emb.shape and float(grad_ws[0].abs().sum()) == 0.0
    H, x, v = torch.zeros(0, 4), torch.zeros(0, 4), torch.ones(4)
    assert ck.head(H, x, None, 0, 1.0, v, True).shape == (0,)
    assert ck.head_backward(H, x, None, 0, 1.0, v, torch.zeros(0), True)[2].shape == (4,)
    wide, _, _ = _inputs(2, 20, 1, 4, [(5, 3)])  # f d = 20 window elements: not supported
    wide_w = [torch.randn(3, 1, 5, 4, dtype=torch.double)]
    assert not ck.supports(wide, wide_w)
    with pytest.raises(ValueError, match="f \\* d <= 16"):
        ck.conv_max_pool(wide, wide_w, torch.zeros(3, dtype=torch.double))


@needs_kernels
def test_threads_with_different_thread_counts_share_the_kernels_safely():
    """torch's thread count can differ between Python threads; each count has its own pool,
    and no pool is shut down under another thread (which raised 'cannot schedule new futures
    after shutdown')."""
    import threading

    emb, ws, bias = _inputs(6, 10, 4, 1, [(2, 20), (3, 9)], torch.float)
    want = ck.conv_max_pool(emb, ws, bias)[0]
    errors, done = [], []

    def work(threads):
        torch.set_num_threads(threads)
        try:
            for _ in range(40):
                assert torch.equal(ck.conv_max_pool(emb, ws, bias)[0], want)
            done.append(threads)
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(repr(err))

    saved = torch.get_num_threads()
    try:
        workers = [threading.Thread(target=work, args=(t,)) for t in (2, 3)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
    finally:
        torch.set_num_threads(saved)
    assert not errors and sorted(done) == [2, 3]


def test_an_unwritable_cache_compiles_into_a_private_folder(fresh_kernels, monkeypatch, tmp_path):
    """No shared fallback folder is read: with the cache unwritable, the library is built in a
    new private temporary folder (mode 0700) and a planted file elsewhere is never loaded."""
    import os
    import stat

    if not ck.shutil.which("cc") and not ck.shutil.which("gcc"):
        pytest.skip("no C compiler")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TEXTGAN_CACHE", str(blocked))  # mkdir under a file fails
    private = tmp_path / "private"
    private.mkdir()
    monkeypatch.setattr(ck.tempfile, "tempdir", str(private))
    assert ck.available()
    folders = list(private.glob("textgan-kernels-*"))
    assert len(folders) == 1 and stat.S_IMODE(os.stat(folders[0]).st_mode) == 0o700
    assert [p.suffix for p in folders[0].iterdir()] == [".so"]
