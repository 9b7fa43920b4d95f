"""Several processes train exactly like one process with the same global batch.

The end-to-end tests are slow (each starts `accelerate launch` with two CPU processes, gloo):
run them with `pytest -m slow tests/test_distributed.py`. The processes are started by
accelerate's torchrun launcher (the `MULTI_GPU` type of recipes/accelerate/cpu.yaml, on the
CPU); `accelerate launch --cpu --num_processes 2` starts ONE process, which textgan refuses.
Both runs of a comparison set `rng_blocks=2`: the random draws (fakes, dropout masks,
rollouts, latent noise) are then made per row block, whatever the number of processes.
The row-block and launch checks at the top are fast and run by default.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from textgan import sampling as S
from textgan.models import build_discriminator, build_generator
from textgan.train import common as C

REPO = Path(__file__).resolve().parents[1]
ORACLE = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
          "data.num_test=64"]
MLE = ["generator.embed_dim=8", "generator.hidden_dim=8", "train.batch_size=16",
       "train.log_every=1", "eval.every=5", "eval.num_samples=32", "eval.batch_size=32",
       "train.steps=5"]
# the recipe's RMC keys do not apply to the LSTM: the generator section is replaced whole
RELGAN = ["generator={name: lstm, embed_dim: 8, hidden_dim: 8}", "discriminator.embed_dim=8",
          "discriminator.num_rep=4", "discriminator.filter_sizes=[2,3]",
          "discriminator.num_filters=[6,6]", "pretrain.steps=2", "pretrain.batch_size=16",
          "pretrain.rng_blocks=2", "train.batch_size=16", "train.d_steps=2",
          "train.adv_steps=4", "train.rng_blocks=2", "train.log_every=1", "eval.every=2",
          "eval.num_samples=40", "eval.batch_size=16"]  # 3 evaluation chunks: 2 + 1
SEQGAN = ["generator.embed_dim=8", "generator.hidden_dim=8",
          "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
          "num_filters: [6, 6]}", "pretrain.steps=2", "pretrain.batch_size=16",
          "train.batch_size=16", "train.num_rollouts=2", "train.d_steps=2",
          "train.d_pretrain_steps=2", "train.adv_steps=3", "train.rng_blocks=2",
          "train.log_every=1", "eval.every=2", "eval.num_samples=32",
          "eval.batch_size=32"]  # one evaluation chunk: the second process draws none
VAE = ["train.batch_size=16", "train.latent_vars=3", "train.latent_classes=4",
       "train.encoder_embed_dim=8", "train.encoder_hidden_dim=8", "train.baseline_hidden=8",
       "generator.embed_dim=8", "generator.hidden_dim=8", "train.log_every=1",
       "eval.num_samples=24", "eval.batch_size=16", "train.eval_sentences=40", "train.steps=4",
       "eval.every=2", "train.rng_blocks=2"]


# --------------------------------------------------------------------------------------------
# Row blocks and launch checks (fast)
# --------------------------------------------------------------------------------------------


def test_blocks_split_and_merge_are_inverse_and_match_rank_rows():
    x = torch.arange(12).view(6, 2)
    blocks = C.Blocks(ids=(1, 3), seed=None)  # process 1 of 2, K = 4 blocks
    parts = blocks.split(x)
    assert [p[:, 0].tolist() for p in parts] == [[0, 4, 8], [2, 6, 10]]
    assert torch.equal(blocks.merge(parts), x)
    # the rows of global block j are rows j::K; process r holds rows r::n of the global batch
    glob = torch.arange(48).view(24, 2)
    local = glob[1::2]
    for j, part in zip(blocks.ids, blocks.split(local), strict=True):
        assert torch.equal(part, glob[j::4])
    with pytest.raises(ValueError, match="equal row blocks"):
        blocks.split(x[:5])


def _fakes_and_scores(blocks: C.Blocks, G, D, rows: int):
    fake = blocks.map(lambda n: S.sample_sequence(G, n, 5, method="gumbel_softmax", tau=0.5),
                      rows=rows)
    return fake, blocks.wrap(D)(fake.one_hot)


def test_one_process_with_k_blocks_draws_what_k_processes_draw():
    """Fakes (Gumbel noise) and D's dropout masks per block: one process holding blocks 0 and 1
    computes exactly what processes 0 and 1 of 2 compute on their halves."""
    torch.manual_seed(0)
    G = build_generator("lstm", vocab_size=11, embed_dim=6, hidden_dim=6)
    D = build_discriminator("relgan_cnn", vocab_size=11, embed_dim=8, num_rep=2,
                            filter_sizes=(2, 3), num_filters=(4, 4), dropout=0.5)
    seed = C.step_seed(0, "adversarial", 3)
    one_fake, one_d = _fakes_and_scores(C.Blocks((0, 1), seed), G, D, 8)
    for rank in (0, 1):
        torch.manual_seed(100 + rank)  # each process's own global RNG state does not matter
        fake, d = _fakes_and_scores(C.Blocks((rank,), seed), G, D, 4)
        assert torch.equal(fake.tokens, one_fake.tokens[rank::2])
        assert torch.allclose(fake.one_hot, one_fake.one_hot[rank::2], rtol=0, atol=1e-6)
        assert torch.allclose(d, one_d[rank::2], rtol=0, atol=1e-5)
    # the blocks' streams are distinct (block 1 is not block 0 again) and dropout is active
    assert not torch.equal(one_fake.tokens[0::2], one_fake.tokens[1::2])
    D.eval()
    assert not torch.allclose(D(one_fake.one_hot), one_d, atol=1e-3)


class _Acc(SimpleNamespace):
    pass


def test_row_blocks_validate_the_setting():
    run = SimpleNamespace(accelerator=_Acc(num_processes=2, process_index=1,
                                           device=torch.device("cpu")),
                          cfg=SimpleNamespace(seed=0))
    assert C.row_blocks(run, None, "mle", 0, 16).ids == (1,)
    assert C.row_blocks(run, 8, "mle", 0, 16).ids == (1, 3, 5, 7)
    with pytest.raises(ValueError) as e:
        C.num_blocks(run, 3, 16)
    assert str(e.value) == (
        "`train.rng_blocks` (3) must be a multiple of the number of processes (2)")
    with pytest.raises(ValueError) as e:
        C.num_blocks(run, 4, 16, micro_batches=3, section="pretrain")
    assert str(e.value) == (
        "`pretrain.batch_size` 16 must be divisible by 4 row blocks x 3 micro-batches "
        "(`pretrain.grad_accum`); change `pretrain.batch_size` or `pretrain.rng_blocks` or "
        "`pretrain.grad_accum`")
    with pytest.raises(ValueError) as e:  # unset: K = the processes, and no rng_blocks can help
        C.num_blocks(run, None, 15)
    assert str(e.value) == (
        "`train.batch_size` 15 must be divisible by 2 row blocks (one per process: "
        "`train.rng_blocks` unset); change `train.batch_size`")


def test_launch_checks(monkeypatch):
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE",
                 "LOCAL_RANK", "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)
    cfg = SimpleNamespace(accelerate={"mixed_precision": "bf16"})
    assert C.accelerator_kwargs(cfg) == {"mixed_precision": "bf16"}
    one = _Acc(num_processes=1)
    C.check_launch(one)
    # `accelerate launch --cpu --num_processes 2`: one process, MASTER_ADDR set, no world size
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    with pytest.raises(ValueError, match="starts ONE process"):
        C.check_launch(one)
    # torchrun started 2 processes: without a GPU they go to the CPU, and must form one world
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    if not torch.cuda.is_available():
        assert C.accelerator_kwargs(cfg) == {"mixed_precision": "bf16", "cpu": True}
    with pytest.raises(ValueError, match="2 processes were launched but accelerate set up 1"):
        C.check_launch(one)
    C.check_launch(_Acc(num_processes=2))


# --------------------------------------------------------------------------------------------
# Two processes against one (slow)
# --------------------------------------------------------------------------------------------


def _train(out: Path, processes: int, recipe: str, *overrides: str,
           config: str | None = None) -> subprocess.CompletedProcess:
    args = ["train", str(REPO / "recipes" / recipe), f"output_dir={out}", *overrides]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}  # CPU processes even where GPUs exist
    if processes == 1:
        cmd = [sys.executable, "-m", "textgan", *args]
    else:
        launch = (["--config_file", str(REPO / "recipes" / "accelerate" / config)] if config
                  else ["--multi_gpu", "--num_processes", str(processes)])
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch,
               "--main_process_port", "0", "-m", "textgan", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{processes} process(es) on cpu" in proc.stderr  # really that many processes
    return proc


def _records(out: Path) -> list[dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time"} for r in rows]


def _assert_same_run(one: Path, two: Path, skip: tuple = ()) -> list[dict]:
    """Same records, floats equal to rel 1e-5 (abs 1.5e-6: metrics.jsonl rounds to 6 places),
    and the same evaluation samples (the files are token for token identical)."""
    a, b = _records(one), _records(two)
    assert [(r["phase"], r["step"], sorted(r)) for r in a] == \
        [(r["phase"], r["step"], sorted(r)) for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k, v in ra.items():
            if isinstance(v, float) and k not in skip:
                assert math.isfinite(v)
                assert rb[k] == pytest.approx(v, rel=1e-5, abs=1.5e-6), (ra["phase"],
                                                                          ra["step"], k)
    files = sorted(p.name for p in (one / "samples").iterdir())
    assert files and files == sorted(p.name for p in (two / "samples").iterdir())
    for name in files:
        assert (one / "samples" / name).read_text() == (two / "samples" / name).read_text(), \
            name
    return a


@pytest.mark.slow
def test_mle_two_processes_match_one(tmp_path):
    """MLE through recipes/accelerate/cpu.yaml (the LSTM has no dropout: any rng_blocks)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, 1, "mle/oracle.yaml", *ORACLE, *MLE)
    _train(two, 2, "mle/oracle.yaml", *ORACLE, *MLE, config="cpu.yaml")
    recs = _assert_same_run(one, two)
    assert len([r for r in recs if "nll_train" in r]) == 5
    assert [r["step"] for r in recs if "nll_oracle" in r] == [5]


@pytest.mark.slow
def test_relgan_two_processes_match_one(tmp_path):
    """Gumbel-Softmax, RSGAN: fakes and D's dropout masks split over the processes.

    ``d_real`` and ``d_fake`` are compared through their difference: RSGAN's losses depend on
    ``D(real) - D(fake)`` only, so the gradient of D's output biases (a common shift) is exactly
    0 up to rounding, and Adam, which divides by the gradient's running RMS, turns that rounding
    noise (~1e-10, different for different summation orders) into steps of ~lr/10 in the shift.
    With ``train.loss=standard`` they match like everything else (next test)."""
    one, two = tmp_path / "one", tmp_path / "two"
    _train(one, 1, "relgan/oracle.yaml", *ORACLE, *RELGAN, "eval.best=nll_oracle")
    _train(two, 2, "relgan/oracle.yaml", *ORACLE, *RELGAN, "eval.best=nll_oracle")
    recs = _assert_same_run(one, two, skip=("d_real", "d_fake"))
    # the same best evaluation, kept once (the main process writes it)
    best = [torch.load(out / "checkpoints" / C.BEST / C.STATE_FILE, weights_only=True)["best"]
            for out in (one, two)]
    assert {k: v for k, v in best[0].items() if k != "value"} == \
        {k: v for k, v in best[1].items() if k != "value"}
    assert best[1]["value"] == pytest.approx(best[0]["value"], rel=1e-5, abs=1.5e-6)
    b = {r["step"]: r for r in _records(two) if r["phase"] == "adversarial" and "d_real" in r}
    for r in recs:
        if r["phase"] == "adversarial" and "d_real" in r:
            other = b[r["step"]]
            assert other["d_real"] - other["d_fake"] == pytest.approx(
                r["d_real"] - r["d_fake"], rel=1e-5, abs=3e-6)
    assert [r["step"] for r in recs if "g_loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "nll_oracle" in r and r["phase"] == "adversarial"] \
        == [2, 4]


@pytest.mark.slow
def test_relgan_score_function_on_text_two_processes_match_one(tmp_path, tiny_corpus_dir):
    """Score function with the leave-one-out baseline over the global batch, sequences ending at
    eos (unequal token counts per process), BLEU over the samples of both processes."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [f"data.path={tiny_corpus_dir}", "data.max_len=12", *RELGAN,
             "train.estimator=score_function",
             "train.baseline=loo", "train.loss=standard"]
    _train(one, 1, "relgan/coco.yaml", *extra)
    _train(two, 2, "relgan/coco.yaml", *extra)
    recs = _assert_same_run(one, two)
    assert any("bleu2" in r and r["phase"] == "adversarial" for r in recs)


@pytest.mark.slow
def test_seqgan_two_processes_match_one(tmp_path):
    """Samples and rollouts split over the processes; EMA baseline of the global rewards."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [*ORACLE, *SEQGAN, "pretrain.rng_blocks=2", "train.baseline=ema"]
    _train(one, 1, "seqgan/oracle.yaml", *extra)
    _train(two, 2, "seqgan/oracle.yaml", *extra)
    recs = _assert_same_run(one, two)
    assert [r["step"] for r in recs if "q_mean" in r] == [1, 2, 3]
    assert [r["step"] for r in recs if "d_acc" in r and r["phase"] == "d_pretrain"] == [1, 2]


@pytest.mark.slow
def test_vae_two_processes_match_one(tmp_path):
    """Score-function latents with NVIL (learned + EMA baseline over the global batch).

    ``advantage_std`` is a diagnostic, the standard deviation within each process's rows,
    averaged over processes: not the standard deviation over the global batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    extra = [*ORACLE, *VAE, "train.latent_method=score_function", "train.baseline=nvil"]
    _train(one, 1, "vae/oracle.yaml", *extra)
    _train(two, 2, "vae/oracle.yaml", *extra)
    recs = _assert_same_run(one, two, skip=("advantage_std",))
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in recs if "neg_elbo_token" in r] == [2, 4]


@pytest.mark.slow
def test_cpu_flag_launch_is_refused(tmp_path):
    """`accelerate launch --cpu --num_processes 2` runs a single process: refused, not trained."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
         "-m", "textgan", "train", str(REPO / "recipes" / "mle" / "oracle.yaml"),
         f"output_dir={out}", *ORACLE, *MLE], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "starts ONE process" in proc.stderr and "cpu.yaml" in proc.stderr
    assert not out.exists()
