"""Mixed precision: bf16 autocast on CPU trains every algorithm without NaNs, the models really
run in bf16, and the sampler core (samples, one-hots, log-probabilities, rollout rewards) stays
float32. fp16 needs a GPU; its loss-scaling hook is checked here with a CPU GradScaler."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from textgan import sampling as S
from textgan.cli import main
from textgan.models import build_discriminator, build_generator
from textgan.train import common as C
from textgan.train.seqgan import rollout_rewards

REPO = Path(__file__).resolve().parents[1]
BF16 = torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait for time slices
    yield
    torch.set_num_threads(n)


def _lstm():
    torch.manual_seed(0)
    return build_generator("lstm", vocab_size=13, embed_dim=8, hidden_dim=8)


@pytest.mark.parametrize("method", S.METHODS)
def test_sampler_is_float32_under_bf16_autocast(method):
    G = _lstm()
    with BF16:
        logits, _ = G.step(torch.zeros(4, dtype=torch.long), G.init_state(4))
        assert logits.dtype == torch.bfloat16  # the model itself runs in bf16
        out = S.sample_sequence(G, 4, 7, method=method, tau=0.5, eos=3, pad=0)
        assert out.tokens.dtype == torch.long
        assert out.one_hot.dtype == torch.float32 and out.log_prob.dtype == torch.float32
        assert torch.isfinite(out.log_prob).all() and (out.log_prob <= 0).all()
        relaxed = S.gumbel_softmax(logits, 0.1)
        assert relaxed.one_hot.dtype == torch.float32
        assert torch.allclose(relaxed.one_hot.sum(-1), torch.ones(4))
        lp = S.categorical_log_prob(logits, S.gumbel_max(logits))
        assert lp.dtype == torch.float32
        loss = S.score_function_loss(out.log_prob, torch.rand(4), mask=out.mask)
        assert loss.dtype == torch.float32
    if method != "multinomial":  # relaxed samples carry float32 gradients back into G
        out.one_hot.sum().backward()
        assert all(p.grad is not None and p.grad.dtype == torch.float32
                   for p in G.parameters() if p.requires_grad)


def test_rollout_rewards_are_float32_probabilities_under_bf16_autocast():
    G = _lstm()
    D = build_discriminator("seqgan_cnn", vocab_size=13, embed_dim=8, filter_sizes=[2, 3],
                            num_filters=[4, 4])
    tokens = torch.randint(1, 13, (3, 5))
    with BF16:
        rewards = rollout_rewards(G, D, tokens, 2)
    assert rewards.dtype == torch.float32 and rewards.shape == (3, 5)
    assert ((rewards > 0) & (rewards < 1)).all()


def test_grad_sync_unscales_fp16_loss_scaling_before_clipping():
    """The hook the GAN/VAE steps call between backward and clipping divides the gradients by
    the GradScaler's scale (once), so clipping and the optimizer see the true gradients."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(5, 3)
    model(x).pow(2).sum().backward()
    true = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    acc = SimpleNamespace(num_processes=1, scaler=scaler)
    scaler.scale(model(x).pow(2).sum()).backward()
    assert torch.allclose(model.weight.grad, 1024 * true[0])
    hook = C.grad_sync(acc, [(model, opt)])
    hook(model)
    for p, g in zip(model.parameters(), true, strict=True):
        assert torch.allclose(p.grad, g, rtol=1e-6)
    before = model.weight.detach().clone()
    scaler.step(opt)  # already unscaled: not divided again
    scaler.update()
    assert torch.allclose(model.weight, before - 0.1 * true[0], rtol=1e-6)
    # no loss scaling and one process: nothing to do
    assert C.grad_sync(SimpleNamespace(num_processes=1, scaler=None), [(model, opt)]) is None


# --------------------------------------------------------------------------------------------
# Every trainer under accelerate's bf16 (CLI override accelerate.mixed_precision=bf16)
# --------------------------------------------------------------------------------------------

ORACLE = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=64",
          "data.num_test=32", "eval.every=100", "eval.num_samples=16", "eval.batch_size=16",
          "accelerate.mixed_precision=bf16"]
GAN = ["pretrain.steps=1", "pretrain.batch_size=8", "train.batch_size=8", "train.adv_steps=2",
       "train.d_steps=1", "train.log_every=1", "train.checkpoint_every=1", "train.keep_last=5"]
RUNS = {
    "mle": ("mle/oracle.yaml", ["generator.embed_dim=8", "generator.hidden_dim=8",
                                "train.batch_size=8", "train.steps=2", "train.log_every=1",
                                "train.checkpoint_every=1", "train.keep_last=5"]),
    "relgan": ("relgan/oracle.yaml", [
        *GAN, "generator={name: lstm, embed_dim: 8, hidden_dim: 8}",
        "discriminator.embed_dim=8", "discriminator.num_rep=4",
        "discriminator.filter_sizes=[2,3]", "discriminator.num_filters=[6,6]"]),
    "seqgan": ("seqgan/oracle.yaml", [
        *GAN, "generator.embed_dim=8", "generator.hidden_dim=8",
        "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
        "num_filters: [6, 6]}", "train.num_rollouts=2", "train.d_pretrain_steps=1"]),
    "vae": ("vae/oracle.yaml", [
        "train.batch_size=8", "train.latent_vars=3", "train.latent_classes=4",
        "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8", "train.baseline_hidden=8",
        "generator.embed_dim=8", "generator.hidden_dim=8", "train.log_every=1",
        "train.eval_sentences=16", "train.steps=2", "train.checkpoint_every=1",
        "train.keep_last=5", "train.latent_method=score_function", "train.baseline=nvil"]),
}


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: an earlier Accelerator() of the test session
    would refuse bf16, and a bf16 state would leak into later tests. Reset before and after
    (as accelerate's own test cases do)."""
    from accelerate.state import AcceleratorState, GradientState

    def reset():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()

    reset()
    yield
    reset()


@pytest.mark.parametrize("algorithm", sorted(RUNS))
def test_trainer_under_bf16(tmp_path, monkeypatch, fresh_accelerate_state, algorithm):
    seen = {"bf16": 0, "samples": []}

    def count_bf16(module, args, output):
        if isinstance(output, torch.Tensor) and output.dtype == torch.bfloat16:
            seen["bf16"] += 1

    sample_sequence = S.sample_sequence

    def spy(*args, **kwargs):
        out = sample_sequence(*args, **kwargs)
        seen["samples"].append((torch.is_autocast_enabled("cpu"), out))
        return out

    monkeypatch.setattr(S, "sample_sequence", spy)
    handle = torch.nn.modules.module.register_module_forward_hook(count_bf16)
    try:
        recipe, extra = RUNS[algorithm]
        out = tmp_path / algorithm
        assert main(["train", str(REPO / "recipes" / recipe), f"output_dir={out}", *ORACLE,
                     *extra]) == 0
    finally:
        handle.remove()
    assert seen["bf16"] > 0, "autocast was not active: no module returned bf16"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    values = [v for r in rows for k, v in r.items() if isinstance(v, float) and k != "time"]
    assert values and all(math.isfinite(v) for v in values)
    assert any("nll_oracle" in r for r in rows)
    # the sampler's outputs are float32, also when called under autocast (GAN training)
    under = [s for on, s in seen["samples"] if on]
    if algorithm in ("relgan", "seqgan"):
        assert under
    for _, s in seen["samples"]:
        for t in (s.one_hot, s.log_prob):
            assert t is None or t.dtype == torch.float32
    # the last two checkpoints (one optimizer step apart) hold different weights of every model
    # the last phase trains: bf16 steps update the float32 parameters
    ckpts = C.checkpoint_dirs(out)[-2:]
    files = sorted(p.name for p in ckpts[-1].iterdir() if p.name.endswith(".safetensors"))
    models = [f for f in files if f.startswith("model")]
    assert len(models) == (2 if algorithm in ("relgan", "seqgan") else 1)
    for name in models:
        a, b = load_file(str(ckpts[0] / name)), load_file(str(ckpts[1] / name))
        assert all(t.dtype == torch.float32 for t in b.values())
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{name} did not change"


@pytest.mark.parametrize("native,amx,precision,device,want", [
    (False, False, "bf16", "cpu", True),
    (True, False, "bf16", "cpu", False),
    (False, True, "bf16", "cpu", False),
    (False, False, "no", "cpu", False),
    (False, False, "bf16", "cuda", False),
])
def test_emulated_bf16_is_detected(monkeypatch, native, amx, precision, device, want):
    monkeypatch.setattr("platform.machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    acc = SimpleNamespace(mixed_precision=precision, device=torch.device(device))
    assert C.emulated_bf16(acc) is want


def test_bf16_flags_are_only_read_on_x86(monkeypatch):
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    acc = SimpleNamespace(mixed_precision="bf16", device=torch.device("cpu"))
    assert C.emulated_bf16(acc) is False


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_run_rnn_is_float32_under_cpu_autocast(cell):
    from textgan.models.common import run_rnn

    torch.manual_seed(0)
    rnn = (torch.nn.LSTM if cell == "lstm" else torch.nn.GRU)(6, 5, batch_first=True,
                                                               bidirectional=True)
    x = torch.randn(3, 4, 6)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([4, 2, 3]),
                                                     batch_first=True, enforce_sorted=False)
    for inp in (x, packed):
        want_out, want_h = rnn(inp)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = run_rnn(rnn, inp)
        out = out.data if isinstance(out, torch.nn.utils.rnn.PackedSequence) else out
        want_out = want_out.data if isinstance(want_out, torch.nn.utils.rnn.PackedSequence) \
            else want_out
        assert out.dtype == torch.float32
        assert torch.equal(out, want_out)
        h, want_h = (h[0], want_h[0]) if cell == "lstm" else (h, want_h)
        assert torch.equal(h, want_h)


def test_vae_encoder_under_bf16_on_a_cpu_without_native_bf16():
    """CI's CPU (AVX2 only) rejected a bf16 nn.LSTM; oneDNN is capped to AVX2 here to match."""
    code = ("import torch\n"
            "from textgan.models.vae import CategoricalTextVAE\n"
            "torch.manual_seed(0)\n"
            "vae = CategoricalTextVAE(vocab_size=12, latent_vars=3, latent_classes=4,"
            " embed_dim=8, hidden_dim=8, pad=0)\n"
            "x = torch.randint(1, 12, (4, 5))\n"
            "with torch.autocast('cpu', dtype=torch.bfloat16):\n"
            "    summary, logits = vae.encode(x)\n"
            "print(summary.dtype, tuple(logits.shape))\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["torch.float32", "(4,", "3,", "4)"]
