"""Generators (LSTM, relational memory, transformers causal LM): the sampler's protocol.

Every generator must give the same logits teacher-forced (``forward``) as stepped (``step``),
for token ids and for (relaxed) one-hots, pass gradients into relaxed one-hots, repeat states
row-wise for rollouts, and work with ``sampling.sample_sequence``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from textgan import sampling as S
from textgan.models import build_generator
from textgan.models.common import embed_tokens
from textgan.models.hf import HFGenerator
from textgan.models.lstm import LSTMGenerator
from textgan.models.relational_memory import RMCGenerator

V, B, T, START = 50, 3, 7, 1
TINY_GPT2 = dict(n_layer=2, n_head=2, n_embd=32, n_positions=64,
                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
NAMES = ("lstm", "rmc", "hf")


def make(name: str):
    if name == "lstm":
        G = LSTMGenerator(V, embed_dim=8, hidden_dim=16, num_layers=2, start_token=START)
    elif name == "rmc":
        G = RMCGenerator(V, embed_dim=8, mem_slots=2, num_heads=2, head_size=8,
                         start_token=START)
    else:
        G = HFGenerator(V, start_token=START, model_config=TINY_GPT2)
    return G.eval()


def teacher_inputs(tokens):
    start = tokens.new_full((tokens.shape[0], 1), START)
    return torch.cat([start, tokens[:, :-1]], 1)


def step_loop(G, inputs, state=None):
    """Logits ``(B, T, V)`` from stepping through ``inputs`` (ids or one-hots) from a state."""
    state = G.init_state(inputs.shape[0]) if state is None else state
    out = []
    for t in range(inputs.shape[1]):
        logits, state = G.step(inputs[:, t], state)
        out.append(logits)
    return torch.stack(out, 1), state


def relaxed(shape, tau=0.5):
    return F.softmax(torch.randn(*shape, V) / tau, -1)


@pytest.fixture(params=NAMES)
def G(request):
    return make(request.param)


def close(a, b):
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# -- forward == step ------------------------------------------------------------------------


def test_shapes_and_protocol(G):
    assert G.vocab_size == V and G.start_token == START
    ids = torch.randint(0, V, (B, T))
    assert G(ids).shape == (B, T, V) and G(ids).dtype == torch.float32
    logits, _ = G.step(ids[:, 0], G.init_state(B))
    assert logits.shape == (B, V)


def test_forward_matches_step_ids(G):
    ids = torch.randint(0, V, (B, T))
    stepped, _ = step_loop(G, ids)
    assert close(G(ids), stepped)


def test_forward_one_hot_equals_ids(G):
    ids = torch.randint(0, V, (B, T))
    assert close(G(F.one_hot(ids, V).float()), G(ids))
    logits_ids, _ = G.step(ids[:, 0], G.init_state(B))
    logits_oh, _ = G.step(F.one_hot(ids[:, 0], V).float(), G.init_state(B))
    assert close(logits_oh, logits_ids)


def test_relaxed_forward_matches_step(G):
    x = relaxed((B, T))
    stepped, _ = step_loop(G, x)
    full = G(x)
    assert close(full, stepped)
    assert not close(full, G(x.argmax(-1)))  # the relaxation is really used


def test_gradients_reach_relaxed_inputs_and_parameters(G):
    G.train()
    x = relaxed((B, T)).requires_grad_(True)
    w = torch.randn(B, T, V)
    (G(x) * w).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_step_gradient_reaches_one_hot(G):
    x = relaxed((B,)).requires_grad_(True)
    state = G.init_state(B)
    _, state = G.step(torch.full((B,), START), state)
    logits, _ = G.step(x, state)
    logits.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0


# -- states ---------------------------------------------------------------------------------


def test_repeat_state_matches_repeated_batch(G):
    n = 3
    ids = torch.randint(0, V, (B, T))
    _, state = step_loop(G, ids[:, :4])
    before, _ = G.step(ids[:, 4], state)
    rep = G.repeat_state(state, n)
    got, _ = G.step(ids[:, 4].repeat_interleave(n), rep)
    want, _ = step_loop(G, ids[:, :5].repeat_interleave(n, 0))
    assert close(got, want[:, -1])
    assert not close(got[0], got[n])  # rows differ: it is interleaved, not tiled
    after, _ = G.step(ids[:, 4], state)  # the original state is unchanged
    assert torch.equal(before, after)


def test_state_can_be_continued_twice(G):
    ids = torch.randint(0, V, (B, T))
    _, state = step_loop(G, ids[:, :3])
    a, _ = step_loop(G, ids[:, 3:], state)
    b, _ = step_loop(G, ids[:, 3:], state)
    assert torch.equal(a, b)
    full = G(ids)
    assert close(a, full[:, 3:])


def test_forward_states_consistent(G):
    ids = torch.randint(0, V, (B, T))
    logits, states = G.forward_states(ids)
    assert len(states) == T
    assert close(logits, G(ids))
    for t in range(T - 1):
        nxt, _ = G.step(ids[:, t + 1], states[t])
        assert close(nxt, logits[:, t + 1]), t
    # a rollout from a prefix state of the teacher-forced pass, repeated
    rep = G.repeat_state(states[2], 2)
    cont, _ = step_loop(G, ids[:, 3:].repeat_interleave(2, 0), rep)
    assert close(cont, logits[:, 3:].repeat_interleave(2, 0))


def test_forward_states_relaxed_gradients(G):
    x = relaxed((B, T)).requires_grad_(True)
    logits, states = G.forward_states(x)
    nxt, _ = G.step(torch.zeros(B, dtype=torch.long), states[1])
    (logits.sum() + nxt.pow(2).sum()).backward()
    assert x.grad[:, :2].abs().sum() > 0


def _graph_nodes(t):
    """Names of the autograd nodes that produced ``t``, with their counts."""
    seen, stack, counts = set(), [t.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        counts[type(node).__name__] = counts.get(type(node).__name__, 0) + 1
        stack += [f for f, _ in node.next_functions]
    return counts


@pytest.mark.parametrize("name", ["lstm", "rmc", "rmc_code"])
def test_teacher_forcing_unbinds_positions_once(name):
    """The per-position inputs of the unrolled loop are ``unbind`` views: one UnbindBackward per
    precomputed (B, T, F) tensor, no per-position SelectBackward (``x[:, t]``), whose backward
    fills and adds a full-size gradient at every position (O(T^2) memory traffic)."""
    if name == "rmc_code":
        G = RMCGenerator(V, embed_dim=8, mem_slots=2, num_heads=2, head_size=8,
                         start_token=START, variant="relgan_code")
    else:
        G = make(name)
    logits, _ = G.forward_states(torch.randint(0, V, (B, T)))
    nodes = _graph_nodes(logits.sum())
    assert "SelectBackward0" not in nodes
    # lstm: one xw per layer; rmc: (x_qkv, x_gates); relgan_code also the input row
    assert nodes.get("UnbindBackward0") == {"lstm": 2, "rmc": 2, "rmc_code": 3}[name]


# -- sampling -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", S.METHODS)
def test_sample_sequence_log_probs_match_forward(G, method):
    rng = torch.Generator().manual_seed(0)
    s = S.sample_sequence(G, B, T, method=method, rng=rng)
    assert s.tokens.shape == (B, T) and s.one_hot.shape == (B, T, V)
    lp = S.categorical_log_prob(G(teacher_inputs(s.tokens)), s.tokens)
    assert torch.allclose(s.log_prob, lp, atol=1e-5)


@pytest.mark.parametrize("method", S.METHODS)
def test_sample_sequence_prefix_and_state(G, method):
    P = 3
    prefix = torch.randint(0, V, (B, P))
    a = S.sample_sequence(G, B, T, method=method, prefix=prefix,
                          rng=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens[:, :P], prefix)
    assert not a.mask[:, :P].any() and a.mask[:, P:].all()
    # the state after [start] + prefix[:, :-1], from the teacher-forced pass
    _, states = G.forward_states(teacher_inputs(prefix))
    b = S.sample_sequence(G, B, T, method=method, prefix=prefix, state=states[P - 1],
                          rng=torch.Generator().manual_seed(1))
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.log_prob, b.log_prob, atol=1e-5)
    # SeqGAN rollouts: n continuations of each prefix from one repeated state
    n = 2
    c = S.sample_sequence(G, B * n, T, method=method, prefix=prefix.repeat_interleave(n, 0),
                          state=G.repeat_state(states[P - 1], n),
                          rng=torch.Generator().manual_seed(2))
    d = S.sample_sequence(G, B * n, T, method=method, prefix=prefix.repeat_interleave(n, 0),
                          rng=torch.Generator().manual_seed(2))
    assert torch.equal(c.tokens, d.tokens)


@pytest.mark.parametrize("method", ["gumbel_softmax", "gumbel_st"])
def test_sample_sequence_soft_feed_is_pathwise(G, method):
    G.train()
    s = S.sample_sequence(G, B, T, method=method, tau=0.7, feed="soft",
                          rng=torch.Generator().manual_seed(3))
    # the last one-hot depends on earlier ones only through the soft inputs and the parameters
    (s.one_hot[:, -1] * torch.randn(B, V)).sum().backward()
    grads = [p.grad for p in G.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    assert s.log_prob.shape == (B, T)


def test_cpu_bf16_autocast(G):
    G.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = S.sample_sequence(G, B, T, method="gumbel_st", feed="soft",
                              rng=torch.Generator().manual_seed(4))
        logits = G(s.one_hot)
        _, states = G.forward_states(s.tokens)
        nxt, _ = G.step(s.tokens[:, -1], states[-2])
    assert logits.shape == (B, T, V) and nxt.shape == (B, V)
    assert torch.allclose(nxt.float(), logits[:, -1].float(), atol=0.1)
    logits.float().sum().backward()
    assert all(p.grad is not None for p in G.parameters())


def test_seeded_determinism():
    for name in NAMES:
        torch.manual_seed(123)
        g1 = make(name)
        torch.manual_seed(123)
        g2 = make(name)
        for (k, p1), p2 in zip(g1.state_dict().items(), g2.state_dict().values(), strict=True):
            assert torch.equal(p1, p2), (name, k)
        s1 = S.sample_sequence(g1, 4, T, rng=torch.Generator().manual_seed(7))
        s2 = S.sample_sequence(g2, 4, T, rng=torch.Generator().manual_seed(7))
        s3 = S.sample_sequence(g2, 4, T, rng=torch.Generator().manual_seed(8))
        assert torch.equal(s1.tokens, s2.tokens), name
        assert not torch.equal(s1.tokens, s3.tokens), name


# -- registry -------------------------------------------------------------------------------


def test_registry_builds_and_rejects_typos():
    G = build_generator("lstm", vocab_size=V, embed_dim=4, hidden_dim=4, start_token=2)
    assert isinstance(G, LSTMGenerator) and G.start_token == 2
    assert isinstance(build_generator("rmc", vocab_size=V, head_size=4), RMCGenerator)
    assert isinstance(build_generator("hf", vocab_size=V, model_config=TINY_GPT2), HFGenerator)
    with pytest.raises(ValueError, match="rmc"):
        build_generator("rcm", vocab_size=V)
    with pytest.raises(ValueError, match="hidden_dim"):
        build_generator("lstm", vocab_size=V, hiden_dim=4)


# -- model specifics ------------------------------------------------------------------------


def test_embed_tokens():
    emb = torch.nn.Embedding(V, 4)
    ids = torch.randint(0, V, (B, T))
    assert torch.equal(embed_tokens(emb, F.one_hot(ids, V).float()), emb(ids))
    x = relaxed((B,)).requires_grad_(True)
    embed_tokens(emb, x).sum().backward()
    assert torch.allclose(x.grad, emb.weight.sum(1).expand(B, V))
    with pytest.raises(ValueError, match="vocab_size"):
        embed_tokens(emb, torch.zeros(B, V + 1))


def test_lstm_sizes_and_init_std():
    G = LSTMGenerator(V, init_std=0.1)
    assert (G.embed_dim, G.hidden_dim) == (32, 32)
    h, c = G.init_state(5)
    assert h.shape == c.shape == (1, 5, 32)
    flat = torch.cat([p.flatten() for p in G.parameters()])
    assert abs(flat.std().item() - 0.1) < 0.01 and abs(flat.mean().item()) < 0.01
    with pytest.raises(ValueError, match="start_token"):
        LSTMGenerator(V, start_token=V)


def test_rmc_initial_memory():
    G = RMCGenerator(V, mem_slots=3, num_heads=2, head_size=4)
    m = G.init_state(2)
    assert m.shape == (2, 3, 8)
    assert torch.equal(m[1], torch.cat([torch.eye(3), torch.zeros(3, 5)], 1))
    G = RMCGenerator(V, mem_slots=5, num_heads=1, head_size=3)  # d < N: truncated identity
    assert torch.equal(G.init_state(1)[0], torch.eye(5)[:, :3])
    G = RMCGenerator(V)  # RelGAN's sizes
    assert G.mem_size == 512 and G.init_state(1).shape == (1, 1, 512)


def _rmc_reference_step(G, x_t, M):
    """The docstring's equations, literally: per-head loops, queries from all N + 1 rows of
    ``[M; x~]`` with the input row's update dropped afterwards."""
    N, d, H, S_ = G.mem_slots, G.mem_size, G.num_heads, G.head_size
    e = G.embedding.weight[x_t]
    xt = e @ G.input_proj.weight.T + G.input_proj.bias  # (B, d)
    mx = torch.cat([M, xt[:, None]], 1)  # (B, N+1, d)
    qkv = F.layer_norm(mx @ G.qkv.weight.T + G.qkv.bias, (3 * d,), G.qkv_norm.weight,
                       G.qkv_norm.bias)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    heads = []
    for h in range(H):
        sl = slice(h * S_, (h + 1) * S_)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(S_), -1)
        heads.append(w @ v[..., sl])
    A = torch.cat(heads, -1)[:, :N]
    ln = lambda z, m: F.layer_norm(z, (d,), m.weight, m.bias)  # noqa: E731
    M1 = ln(M + A, G.norm1)
    mlp = torch.relu(M1 @ G.mlp[0].weight.T + G.mlp[0].bias) @ G.mlp[2].weight.T + G.mlp[2].bias
    Mt = ln(M1 + mlp, G.norm2)
    Wi, Wf = G.gate_input.weight[:d], G.gate_input.weight[d:]
    bi, bf = G.gate_input.bias[:d], G.gate_input.bias[d:]
    Ui, Uf = G.gate_memory.weight[:d], G.gate_memory.weight[d:]
    i = (xt @ Wi.T + bi)[:, None] + torch.tanh(M) @ Ui.T
    f = (xt @ Wf.T + bf)[:, None] + torch.tanh(M) @ Uf.T
    M_new = torch.sigmoid(i) * torch.tanh(Mt) + torch.sigmoid(f + 1.0) * M
    return M_new.flatten(1) @ G.out.weight.T + G.out.bias, M_new


def test_rmc_matches_paper_equations():
    G = make("rmc")
    ids = torch.randint(0, V, (B, 4))
    state = G.init_state(B)
    ref_state = state
    for t in range(4):
        logits, state = G.step(ids[:, t], state)
        ref_logits, ref_state = _rmc_reference_step(G, ids[:, t], ref_state)
        assert close(logits, ref_logits) and close(state, ref_state), t
    assert state.shape == (B, 2, 16)


def test_hf_pretrained_path(tmp_path):
    G = make("hf")
    G.model.save_pretrained(tmp_path / "tiny")
    H = HFGenerator(pretrained_path=str(tmp_path / "tiny"), start_token=START).eval()
    assert H.vocab_size == V
    ids = torch.randint(0, V, (B, T))
    assert close(H(ids), G(ids))
    with pytest.raises(ValueError, match="vocab_size"):
        HFGenerator(vocab_size=V + 1, pretrained_path=str(tmp_path / "tiny"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HFGenerator(pretrained_path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="vocab_size"):
        HFGenerator(model_config=TINY_GPT2)


def test_hf_too_long_raises():
    G = HFGenerator(V, model_config={**TINY_GPT2, "n_positions": 4})
    with pytest.raises(ValueError, match="n_positions"):
        G(torch.zeros(1, 5, dtype=torch.long))
    _, state = step_loop(G, torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="n_positions"):
        G.step(torch.zeros(1, dtype=torch.long), state)


def _rmc_code_reference_step(G, x_t, M):
    """RelGAN's TensorFlow RMC written out (``utils/models/relational_memory.py``): layer norms
    with statistics over the N + 1 rows and the features together (``begin_norm_axis=1``),
    queries from all rows, logits scaled by ``qkv_size ** -0.5``, no qkv / gate bias."""
    N, d, H, S_ = G.mem_slots, G.mem_size, G.num_heads, G.head_size

    def tf_layer_norm(z, m):  # z (B, R, F): moments over axes 1 and 2, eps 1e-12
        mean = z.mean(dim=(1, 2), keepdim=True)
        var = ((z - mean) ** 2).mean(dim=(1, 2), keepdim=True)
        return (z - mean) / torch.sqrt(var + 1e-12) * m.weight + m.bias

    xt = G.embedding.weight[x_t] @ G.input_proj.weight.T + G.input_proj.bias  # (B, d)
    mx = torch.cat([M, xt[:, None]], 1)  # (B, N+1, d)
    qkv = tf_layer_norm(mx @ G.qkv.weight.T, G.qkv_norm)
    q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
    heads = []
    for h in range(H):
        sl = slice(h * S_, (h + 1) * S_)
        w = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * (3 * S_) ** -0.5, -1)
        heads.append(w @ v[..., sl])
    M1 = tf_layer_norm(mx + torch.cat(heads, -1), G.norm1)
    mlp = torch.relu(M1 @ G.mlp[0].weight.T + G.mlp[0].bias) @ G.mlp[2].weight.T + G.mlp[2].bias
    Mt = tf_layer_norm(M1 + mlp, G.norm2)[:, :N]
    g = (xt @ G.gate_input.weight.T)[:, None] + torch.tanh(M) @ G.gate_memory.weight.T
    i, f = g[..., :d], g[..., d:]
    M_new = torch.sigmoid(i) * torch.tanh(Mt) + torch.sigmoid(f + 1.0) * M
    return M_new.flatten(1) @ G.out.weight.T + G.out.bias, M_new


def test_rmc_relgan_code_variant_matches_the_official_computation():
    torch.manual_seed(0)
    G = RMCGenerator(V, embed_dim=8, mem_slots=2, num_heads=2, head_size=8, start_token=START,
                     variant="relgan_code").double().eval()
    assert G.qkv.bias is None and G.gate_input.bias is None
    with torch.no_grad():  # non-trivial layer-norm parameters and biases
        for m in (G.qkv_norm, G.norm1, G.norm2):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
        for lin in (G.input_proj, G.mlp[0], G.mlp[2], G.out):
            lin.bias.normal_(0, 0.1)
    ids = torch.randint(0, V, (B, 5))
    state = ref_state = G.init_state(B)
    for t in range(5):
        logits, state = G.step(ids[:, t], state)
        ref_logits, ref_state = _rmc_code_reference_step(G, ids[:, t], ref_state)
        assert torch.allclose(logits, ref_logits, atol=1e-10, rtol=0)
        assert torch.allclose(state, ref_state, atol=1e-10, rtol=0)
    # teacher forcing gives the stepped logits; the variant differs from the paper's equations
    assert torch.allclose(G(teacher_inputs(ids)), step_loop(G, teacher_inputs(ids))[0],
                          atol=1e-10, rtol=0)
    paper = RMCGenerator(V, embed_dim=8, mem_slots=2, num_heads=2, head_size=8,
                         start_token=START).double().eval()
    shared = {k: v for k, v in G.state_dict().items() if k in paper.state_dict()}
    paper.load_state_dict(shared, strict=False)
    with torch.no_grad():
        paper.qkv.bias.zero_()
        paper.gate_input.bias.zero_()
    assert not torch.allclose(paper.step(ids[:, 0], paper.init_state(B))[0],
                              G.step(ids[:, 0], G.init_state(B))[0], atol=1e-3)


def test_rmc_relgan_code_initialisation_and_errors():
    torch.manual_seed(0)
    G = RMCGenerator(5000, variant="relgan_code")  # RelGAN's sizes
    ratio = 0.8796  # std of N(0, 1) truncated at +-2
    for lin in (G.input_proj, G.qkv, G.mlp[0], G.gate_input, G.gate_memory, G.out):
        std = lin.weight.std().item() * lin.in_features**0.5
        assert abs(std - ratio) < 0.02, lin
        assert lin.weight.abs().max().item() <= 2 / lin.in_features**0.5
        assert lin.bias is None or not lin.bias.any()
    assert abs(G.embedding.weight.std().item() * 5000**0.5 - ratio) < 0.02
    assert G.norm1.eps == 1e-12 and RMCGenerator(50).norm1.eps == 1e-5
    with pytest.raises(ValueError, match=r"`variant` must be one of \['paper', 'relgan_code'\], "
                                         r"got 'tf'$"):
        RMCGenerator(50, variant="tf")
    with pytest.raises(ValueError, match="qkv_layer_norm=False"):
        RMCGenerator(50, variant="relgan_code", qkv_layer_norm=False)
