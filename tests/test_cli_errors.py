"""Bad input through the public CLI: every user error exits 2 with ONE line that names the
argument, the value and the fix, prints no traceback and writes nothing (no output directory,
no checkpoint, an existing run left byte for byte as it was)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from textgan.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
TINY = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
        "data.num_test=64", "generator.embed_dim=8", "generator.hidden_dim=8",
        "train.batch_size=16", "train.log_every=1", "eval.every=2", "eval.num_samples=32",
        "eval.batch_size=32"]
TEXT = ["data.max_len=12"]


def no_training(monkeypatch) -> None:
    """Fail loudly if a run gets past its set-up (every trainer builds its models next): a
    bad input that is not rejected must not start a long run."""
    from textgan.train import common

    def refuse(*args, **kwargs):
        raise AssertionError("the bad input was not rejected: training started")

    monkeypatch.setattr(common, "build_generator", refuse)
    monkeypatch.setattr(common, "build_models", refuse)


@pytest.fixture
def refuse_training(monkeypatch):
    no_training(monkeypatch)


def _train(capsys, recipe: str, out: Path, *overrides) -> tuple[int, str]:
    """Exit code and the single ``textgan train...`` line of stderr (asserted to be one)."""
    code = main(["train", str(RECIPES / recipe), f"output_dir={out}", *overrides])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("textgan")]
    assert len(lines) == 1, err
    return code, lines[0]


def _error(capsys, recipe, out, *overrides) -> str:
    code, line = _train(capsys, recipe, out, *overrides)
    assert code == 2, line
    prefix = "textgan train: error: "
    assert line.startswith(prefix), line
    return line[len(prefix):]


# --------------------------------------------------------------------------------------------
# Recipe keys and values: rejected before anything runs, the output directory never created
# --------------------------------------------------------------------------------------------

CONFIG_ERRORS = [
    # unknown keys, with a did-you-mean suggestion
    ("mle/oracle.yaml", ["train.stpes=3"],
     "unknown recipe key 'train.stpes'; did you mean 'train.steps'?"),
    ("mle/oracle.yaml", ["outptu_dir=x"],
     "unknown recipe key 'outptu_dir'; did you mean 'output_dir'?"),
    ("relgan/oracle.yaml", ["trian.adv_steps=3"],
     "unknown recipe key 'trian'; did you mean 'train' or 'pretrain'?"),
    ("relgan/oracle.yaml", ["sampler.tua=0.5"],
     "unknown recipe key 'sampler.tua'; did you mean 'sampler.tau'?"),
    ("mle/oracle.yaml", ["accelerate.mixed_precison=bf16"],
     "unknown recipe key 'accelerate.mixed_precison' (not an accelerate.Accelerator argument); "
     "did you mean 'accelerate.mixed_precision'?"),
    ("mle/oracle.yaml", ["generator.hiden_dim=8"],
     "unknown key 'generator.hiden_dim' for LSTMGenerator; valid keys: ['vocab_size', "
     "'embed_dim', 'hidden_dim', 'num_layers', 'start_token', 'dropout', 'init_std'] "
     "(did you mean 'hidden_dim'?)"),
    # a misspelt key is reported as unknown even when its value would also be out of range
    ("mle/oracle.yaml", ["generator.hiden_dim=0"],
     "unknown key 'generator.hiden_dim' for LSTMGenerator; valid keys: ['vocab_size', "
     "'embed_dim', 'hidden_dim', 'num_layers', 'start_token', 'dropout', 'init_std'] "
     "(did you mean 'hidden_dim'?)"),
    # wrong types
    ("mle/oracle.yaml", ["train.steps=ten"], "`train.steps` must be of type int, got str 'ten'"),
    ("mle/oracle.yaml", ["seed=1.5"], "`seed` must be of type int, got float 1.5"),
    ("mle/oracle.yaml", ["generator.hidden_dim=big"],
     "`generator.hidden_dim` must be of type int, got str 'big'"),
    ("mle/oracle.yaml", ["generator.hidden_dim=0"], "`generator.hidden_dim` must be >= 1, got 0"),
    # YAML 1.1 reads an unquoted no/yes/on/off as a boolean: a string key says how to quote it
    ("relgan/oracle.yaml", ["sampler.feed=yes"],
     "`sampler.feed` must be of type str, got bool True; YAML reads unquoted "
     "yes/no/on/off/true/false as booleans: quote the value (sampler.feed='off', not "
     "sampler.feed=off)"),
    ("mle/oracle.yaml", ["accelerate.mixed_precision=bf17"],
     "`accelerate.mixed_precision` must be one of ['no', 'bf16', 'fp16', 'fp8'], got 'bf17'; "
     "e.g. accelerate.mixed_precision=bf16"),
    ("relgan/oracle.yaml", ["discriminator.num_filters=[3,0]"],
     "`discriminator.num_filters` must be >= 1, got [3, 0]"),
    ("mle/oracle.yaml", ["data=oracle"],
     "`data` must be a section (key: value mapping), got str 'oracle'; set single keys as "
     "data.KEY=VALUE"),
    ("mle/oracle.yaml", ["train.betas=[0.9]"],
     "`train.betas` must be two numbers in [0, 1) (Adam's), e.g. [0.9, 0.999], got [0.9]"),
    ("vae/oracle.yaml", ["sampler.method=score_function"],
     "`sampler.method` must be one of ['multinomial', 'gumbel_softmax', 'gumbel_st'], got "
     "'score_function'; the score-function estimator is chosen by train.estimator (RelGAN) or "
     "train.latent_method (VAE)"),
    # temperatures
    ("relgan/oracle.yaml", ["sampler.tau=0"], "`sampler.tau` must be > 0, got 0.0"),
    ("vae/oracle.yaml", ["sampler.tau=-1"], "`sampler.tau` must be > 0, got -1.0"),
    ("vae/oracle.yaml", ["sampler.tau_min=0"], "`sampler.tau_min` must be > 0, got 0.0"),
    ("vae/oracle.yaml", ["sampler.anneal_rate=-1e-4"],
     "`sampler.anneal_rate` must be >= 0, got -0.0001"),
    ("relgan/oracle.yaml", ["sampler.beta_max=0.5"],
     "`sampler.beta_max` must be >= 1 (inverse temperature), got 0.5"),
    ("relgan/oracle.yaml", ["sampler.schedule_steps=1"],
     "`sampler.schedule_steps` must be >= 2 (or unset: the run's length), got 1"),
    # a schedule horizon shorter than the run: refused before the MLE pre-training
    ("relgan/oracle.yaml", ["sampler.schedule_steps=100", "train.adv_steps=200"],
     "`sampler.schedule_steps` (100) must be >= `train.adv_steps` (200): beta would pass "
     "beta_max; raise it or leave it unset (the run's length)"),
    ("vae/oracle.yaml", ["sampler.schedule=exp", "sampler.schedule_steps=10", "train.steps=20"],
     "`sampler.schedule_steps` (10) must be >= `train.steps` (20): beta would pass beta_max; "
     "raise it or leave it unset (the run's length)"),
    ("relgan/oracle_seqgan.yaml", ["generator.variant=relgan"],
     "`generator.variant` must be one of ['paper', 'relgan_code'], got 'relgan' (did you mean "
     "'relgan_code'?)"),
    # which oracle: a built one or a parameter file, not both
    ("relgan/oracle.yaml", ["data.oracle=relgan"],
     "`data.oracle` must be one of ['random', 'relgan_code'], got 'relgan' (did you mean "
     "'relgan_code'?)"),
    ("relgan/oracle_seqgan.yaml", ["data.oracle=relgan_code"],
     "`data.params` ('../shared/data/oracle/seqgan_oracle_lstm.npz') and "
     "`data.oracle=relgan_code` both name an oracle; give one of them (`data.params=null` for "
     "the built one)"),
    # unknown generator / discriminator / loss / estimator names
    ("relgan/oracle.yaml", ["generator.name=lstmm"],
     "`generator.name`: unknown generator 'lstmm'; choose one of ['hf', 'lstm', 'rmc'] "
     "(did you mean 'lstm'?)"),
    ("relgan/oracle.yaml", ["discriminator.name=relgan_cn"],
     "`discriminator.name`: unknown discriminator 'relgan_cn'; choose one of ['relgan_cnn', "
     "'seqgan_cnn'] (did you mean 'relgan_cnn'?)"),
    ("relgan/oracle.yaml", ["train.loss=rsgann"],
     "`train.loss` must be one of ['standard', 'rsgan', 'hinge', 'lsgan', 'wgan_gp'], got "
     "'rsgann' (did you mean 'rsgan'?)"),
    ("relgan/oracle.yaml", ["train.estimator=gumbel_sofmax"],
     "`train.estimator` must be one of ['gumbel_softmax', 'gumbel_st', 'score_function'], got "
     "'gumbel_sofmax' (did you mean 'gumbel_softmax'?)"),
    ("vae/oracle.yaml", ["train.latent_method=reinforce"],
     "`train.latent_method` must be one of ['gumbel_softmax', 'gumbel_st', 'score_function'], "
     "got 'reinforce'"),
    ("mle/oracle.yaml", ["algorithm=seqgna"],
     "`algorithm` must be one of ['mle', 'relgan', 'seqgan', 'vae'], got 'seqgna' "
     "(did you mean 'seqgan'?)"),
    # values checked by a section shared by two keys: the message names the dotted key
    ("relgan/oracle.yaml", ["pretrain.batch_size=0"], "`pretrain.batch_size` must be >= 1, got 0"),
    ("mle/oracle.yaml", ["train.lr=0"], "`train.lr` must be > 0, got 0.0"),
    # eval.best: a metric that the recipe's evaluations record (checked before any training)
    ("relgan/oracle.yaml", ["eval.best=bleu4"],
     "`eval.best` names 'bleu4', which this recipe's evaluations do not record; choose one of "
     "['nll_test', 'nll_oracle', 'unique'] (Self-BLEU-n needs n in `eval.self_bleu`, BLEU-n "
     "needs text data)"),
    ("vae/oracle.yaml", ["eval.best=recon_blue"],
     "`eval.best` names 'recon_blue', which this recipe's evaluations do not record (did you "
     "mean 'recon_bleu'?); choose one of ['neg_elbo', 'neg_elbo_token', 'recon', 'kl', "
     "'recon_argmax', 'recon_acc', 'recon_bleu', 'nll_oracle', 'unique'] (Self-BLEU-n needs n "
     "in `eval.self_bleu`, BLEU-n needs text data)"),
    ("seqgan/coco.yaml", ["data.path=DATA", "eval.best=self_bleu3", "eval.self_bleu=[2]"],
     "`eval.best` names 'self_bleu3', which this recipe's evaluations do not record (did you "
     "mean 'self_bleu2'?); choose one of ['nll_test', 'bleu2', 'bleu3', 'bleu4', 'bleu5', "
     "'unique', 'novelty', 'self_bleu2'] (Self-BLEU-n needs n in `eval.self_bleu`, BLEU-n "
     "needs n in `eval.bleu`)"),
    ("mle/oracle.yaml", ["eval.best=nll_oracle:lowest"],
     "`eval.best` must be KEY, KEY:min or KEY:max (e.g. nll_oracle or bleu4:max), got "
     "'nll_oracle:lowest'"),
    # data sizes known before any data is drawn
    ("mle/oracle.yaml", ["data.vocab_size=1"], "`data.vocab_size` must be >= 2, got 1"),
    ("mle/oracle.yaml", ["data.num_train=16", "train.batch_size=64"],
     "`train.batch_size` (64) exceeds `data.num_train` (16); lower the batch size or raise "
     "data.num_train"),
]


@pytest.mark.parametrize("recipe, overrides, message", CONFIG_ERRORS,
                         ids=[" ".join(c[1]) for c in CONFIG_ERRORS])
def test_bad_recipe_value_is_one_clear_line_and_writes_nothing(tmp_path, capsys, refuse_training,
                                                                tiny_corpus_dir, recipe,
                                                                overrides, message):
    out = tmp_path / "run"
    overrides = [o.replace("=DATA", f"={tiny_corpus_dir}") for o in overrides]  # a text corpus
    assert _error(capsys, recipe, out, *overrides) == message
    assert not out.exists()


def test_missing_recipe_and_malformed_override(tmp_path, capsys, refuse_training):
    code = main(["train", str(tmp_path / "nope.yaml")])
    assert code == 2
    assert capsys.readouterr().err == (
        f"textgan train: error: recipe '{tmp_path / 'nope.yaml'}' does not exist; "
        f"`textgan ls` lists recipes\n")
    out = tmp_path / "run"
    assert _error(capsys, "mle/oracle.yaml", out, "train.steps") == \
        "override 'train.steps' is not of the form key=value (e.g. train.steps=100)"
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Data: rejected while the corpus is read, before the output directory is created
# --------------------------------------------------------------------------------------------


def test_missing_data_path(tmp_path, capsys, refuse_training):
    out, data = tmp_path / "run", tmp_path / "no_such_corpus"
    assert _error(capsys, "mle/coco.yaml", out, f"data.path={data}", *TEXT) == (
        f"`data.path` '{data}' does not exist; see data/README.md for how to obtain corpora")
    assert not out.exists()


def test_empty_corpus_file_and_blank_corpus_directory(tmp_path, capsys, refuse_training):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    out = tmp_path / "run"
    assert _error(capsys, "mle/coco.yaml", out, f"data.path={empty}", *TEXT) == (
        f"`data.path`: '{empty}' is empty (0 bytes); point data.path at a corpus with one "
        f"sentence per line")
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "train.txt").write_text("\n   \n\n", encoding="utf-8")
    (blank / "test.txt").write_text("a b\n", encoding="utf-8")
    assert _error(capsys, "relgan/coco.yaml", out, f"data.path={blank}", *TEXT) == (
        f"`data.path` '{blank}': the train split is empty (no non-blank lines); point "
        f"data.path at a corpus with sentences in it")
    one = tmp_path / "one.txt"
    one.write_text("a single sentence\n\n", encoding="utf-8")
    assert _error(capsys, "vae/coco.yaml", out, f"data.path={one}", *TEXT) == (
        f"`data.path` '{one}' has 1 non-blank sentence(s); a single-file corpus needs at "
        f"least 2 (split into train and test by data.test_ratio)")
    assert not out.exists()


def test_non_utf8_corpus(tmp_path, capsys, refuse_training):
    d = tmp_path / "latin1"
    d.mkdir()
    (d / "train.txt").write_text("a man rides\na dog sits\n", encoding="utf-8")
    (d / "test.txt").write_bytes("a caf\u00e9 near the park\n".encode("latin-1"))
    out = tmp_path / "run"
    assert _error(capsys, "seqgan/coco.yaml", out, f"data.path={d}", *TEXT) == (
        f"`data.path`: '{d / 'test.txt'}' is not valid UTF-8: byte 0xe9 at line 1; re-encode "
        f"the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    assert not out.exists()


def test_output_dir_that_is_a_file(tmp_path, capsys, refuse_training):
    f = tmp_path / "taken"
    f.write_text("not a directory")
    assert _error(capsys, "mle/oracle.yaml", f, *TINY) == (
        f"`output_dir` '{f}' is a file, not a directory; choose another output_dir")
    assert _error(capsys, "mle/oracle.yaml", f / "run", *TINY) == (
        f"`output_dir` '{f / 'run'}' cannot be created: '{f}' is a file; choose another "
        f"output_dir")
    assert f.read_text() == "not a directory"


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def test_resume_without_a_checkpoint(tmp_path, capsys, refuse_training):
    out = tmp_path / "fresh"
    assert _error(capsys, "relgan/oracle.yaml", out, "resume=auto") == (
        f"resume=auto found no complete checkpoint under '{out / 'checkpoints'}'; drop "
        f"`resume` to start from scratch")
    assert not out.exists()
    missing = tmp_path / "no_such_checkpoint"
    assert _error(capsys, "seqgan/oracle.yaml", out, f"resume={missing}") == (
        f"`resume` checkpoint '{missing}' does not exist; give a checkpoint directory "
        f"(<output_dir>/checkpoints/step_N), a run directory, or resume=auto")
    not_a_run = tmp_path / "some_dir"
    not_a_run.mkdir()
    assert _error(capsys, "vae/oracle.yaml", out, f"resume={not_a_run}") == (
        f"`resume` '{not_a_run}' is neither a checkpoint (no trainer_state.pt) nor a run with "
        f"checkpoints/step_N; give a checkpoint directory, or resume=auto")
    assert not out.exists() and list(not_a_run.iterdir()) == []


def _snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_with_another_vocabulary_or_algorithm_leaves_the_run_untouched(
        tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", str(RECIPES / "mle" / "oracle.yaml"), f"output_dir={out}", *TINY,
                 "train.steps=2"]) == 0
    before = _snapshot(out)
    ckpt = out / "checkpoints" / "step_2"
    no_training(monkeypatch)
    assert _error(capsys, "mle/oracle.yaml", out, *TINY, "train.steps=4", "resume=auto",
                  "data.vocab_size=31") == (
        f"vocabulary mismatch on resume: checkpoint '{ckpt}' has vocab_size 30, the corpus "
        f"has 31; resume with the checkpoint's `data` settings (its config.yaml), or drop "
        f"`resume`")
    assert _error(capsys, "mle/oracle.yaml", out, *TINY, "train.steps=4", f"resume={ckpt}",
                  "generator.hidden_dim=9") == (
        f"generator mismatch on resume: checkpoint '{ckpt}' has {{'name': 'lstm', "
        f"'embed_dim': 8, 'hidden_dim': 8, 'init_std': 0.1}}, the recipe has {{'name': 'lstm', "
        f"'embed_dim': 8, 'hidden_dim': 9, 'init_std': 0.1}}; resume with the checkpoint's "
        f"`generator` settings, or drop `resume`")
    other = tmp_path / "relgan"
    assert _error(capsys, "relgan/oracle.yaml", other, *TINY[:5], f"resume={ckpt}") == (
        f"`resume` checkpoint '{ckpt}' is from a run of `algorithm: mle`, the recipe has "
        f"`algorithm: relgan`; to start the generator from its weights use "
        f"generator.init_from={ckpt} instead of resume")
    assert not other.exists()
    assert _snapshot(out) == before  # config.yaml, meta.json, metrics, checkpoints unchanged


def test_resume_with_other_vae_sizes_is_a_clear_error_and_leaves_the_run_untouched(
        tmp_path, capsys):
    vae = [*TINY, "train.latent_classes=4", "train.encoder_embed_dim=8",
           "train.encoder_hidden_dim=8", "train.eval_sentences=32", "train.checkpoint_every=2"]
    out = tmp_path / "vae"
    assert main(["train", str(RECIPES / "vae" / "oracle.yaml"), f"output_dir={out}", *vae,
                 "train.latent_vars=3", "train.steps=2"]) == 0
    before = _snapshot(out)
    ckpt = out / "checkpoints" / "step_2"
    assert _error(capsys, "vae/oracle.yaml", out, *vae, "train.latent_vars=4", "train.steps=4",
                  "resume=auto") == (
        f"model shape mismatch on resume: checkpoint '{ckpt}' has to_logits.weight of shape "
        f"[12, 16], the recipe builds [16, 16]; resume with the checkpoint's settings (its "
        f"run's config.yaml) or start a new `output_dir`")
    assert _snapshot(out) == before


TINY_RELGAN = [*TINY, "generator={name: lstm, embed_dim: 8, hidden_dim: 8}",
               "discriminator.embed_dim=8", "discriminator.num_rep=4",
               "discriminator.filter_sizes=[2,3]", "discriminator.num_filters=[6,6]",
               "pretrain.steps=2", "pretrain.batch_size=16", "train.adv_steps=2"]
TINY_SEQGAN = [*TINY, "discriminator={name: seqgan_cnn, embed_dim: 8, filter_sizes: [2, 3], "
               "num_filters: [6, 6]}", "pretrain.steps=2", "pretrain.batch_size=16",
               "train.num_rollouts=2", "train.d_steps=1", "train.d_pretrain_steps=2",
               "train.adv_steps=2"]
TINY_VAE = [*TINY, "train.latent_classes=4", "train.encoder_embed_dim=8",
            "train.encoder_hidden_dim=8", "train.eval_sentences=32", "train.latent_vars=3"]


@pytest.mark.parametrize("recipe,overrides,message", [
    ("mle/oracle.yaml", [*TINY, "train.rng_blocks=3"],
     "`train.batch_size` 16 must be divisible by 3 row blocks; change `train.batch_size` or "
     "`train.rng_blocks`"),
    ("relgan/oracle.yaml", [*TINY_RELGAN, "pretrain.rng_blocks=3"],
     "`pretrain.batch_size` 16 must be divisible by 3 row blocks; change `pretrain.batch_size` "
     "or `pretrain.rng_blocks`"),
    ("vae/oracle.yaml", [*TINY_VAE, "train.grad_accum=2", "train.rng_blocks=3"],
     "`train.batch_size` 16 must be divisible by 3 row blocks x 2 micro-batches "
     "(`train.grad_accum`); change `train.batch_size` or `train.rng_blocks` or "
     "`train.grad_accum`"),
    ("seqgan/oracle.yaml", [*TINY_SEQGAN, "train.rng_blocks=3"],  # D pre-training's check
     "`train.batch_size` 16 must be divisible by 3 row blocks; change `train.batch_size` or "
     "`train.rng_blocks`"),
])
def test_a_batch_that_does_not_cut_into_row_blocks_writes_nothing(tmp_path, capsys, recipe,
                                                                   overrides, message):
    out = tmp_path / "run"
    assert _error(capsys, recipe, out, *overrides) == message
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# A run already in output_dir: refused without resume, deleted first with overwrite=true
# --------------------------------------------------------------------------------------------


def test_a_fresh_run_into_an_earlier_run_is_refused_and_overwrite_starts_over(
        tmp_path, capsys, monkeypatch):
    out, clean = tmp_path / "run", tmp_path / "clean"
    mle = ["mle/oracle.yaml", *TINY, "train.checkpoint_every=1"]
    assert main(["train", str(RECIPES / mle[0]), f"output_dir={out}", *mle[1:],
                 "train.steps=10", "train.keep_last=0", "seed=5", "eval.best=nll_oracle"]) == 0
    (out / "notes.txt").write_text("mine")
    (out / "eval").mkdir()  # what `textgan eval RUN --temperature-sweep` writes by default
    (out / "eval" / "sweep.csv").write_text("tau,bleu2\n")
    before = _snapshot(out)
    with monkeypatch.context() as m:
        no_training(m)
        assert _error(capsys, *mle[:1], out, *mle[1:], "train.steps=2") == (
            f"`output_dir` '{out}' already holds a run (metrics.jsonl, checkpoints/step_1, "
            f"checkpoints/step_2, checkpoints/step_3 and 8 more); continue it with resume=auto, "
            f"choose another output_dir, or set overwrite=true to delete that run's files and "
            f"start over")
        assert _error(capsys, *mle[:1], out, *mle[1:], "overwrite=true", "resume=auto") == (
            "`overwrite: true` starts the run in output_dir over and `resume` ('auto') "
            "continues one; set overwrite=false to resume, or drop `resume` to start over")
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(out / "checkpoints" / "step_10", elsewhere)
        assert _error(capsys, *mle[:1], out, *mle[1:], "train.steps=12",
                      f"resume={elsewhere}") == (
            f"`resume` checkpoint '{elsewhere}' is another directory's, and `output_dir` "
            f"'{out}' already holds a run: its records and checkpoints would mix; continue that "
            f"run with resume=auto, or resume into another output_dir")
    assert _snapshot(out) == before
    # overwrite: exactly the run a new directory gets; files that are not a run's stay
    for d, extra in ((out, ["overwrite=true"]), (clean, [])):
        assert main(["train", str(RECIPES / mle[0]), f"output_dir={d}", *mle[1:],
                     "train.steps=2", *extra]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "eval").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]
    samples = sorted(p.name for p in (clean / "samples").iterdir())
    assert samples == ["mle_step2.txt"]  # the old run's mle_step4..10 are gone
    assert _snapshot(out / "samples") == _snapshot(clean / "samples")
    drop_time = [{k: v for k, v in json.loads(line).items() if k != "time"}
                 for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert drop_time == [{k: v for k, v in json.loads(line).items() if k != "time"}
                         for line in (clean / "metrics.jsonl").read_text().splitlines()]
    for name in ("step_1/model.safetensors", "step_2/model.safetensors"):
        assert (out / "checkpoints" / name).read_bytes() == (
            clean / "checkpoints" / name).read_bytes()
    assert (out / "config.yaml").read_text() == (clean / "config.yaml").read_text().replace(
        "overwrite: false", "overwrite: true").replace(str(clean), str(out))


def test_overwrite_deletes_nothing_when_the_new_run_is_refused(tmp_path, capsys,
                                                               tiny_corpus_dir):
    out = tmp_path / "run"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "mle_step2.txt").write_text("a cat\n")
    (out / "metrics.jsonl").write_text('{"step": 2, "phase": "mle", "nll_train": 3.0}\n')
    before = _snapshot(out)
    n = len((tiny_corpus_dir / "train.txt").read_text().splitlines())
    assert _error(capsys, "mle/coco.yaml", out, f"data.path={tiny_corpus_dir}", *TEXT,
                  f"train.batch_size={n + 1}", "overwrite=true") == (
        f"`train.batch_size` {n + 1} exceeds the {n} training sequences; lower "
        f"train.batch_size")
    assert _error(capsys, "mle/oracle.yaml", out, *TINY, "overwrite=true",
                  f"generator.init_from={out / 'checkpoints' / 'step_2'}") == (
        f"`generator.init_from` '{out / 'checkpoints' / 'step_2'}' is inside output_dir "
        f"'{out}', whose files overwrite=true deletes; copy that checkpoint out of '{out}' "
        f"first, or choose another output_dir")
    assert _snapshot(out) == before


def test_a_run_with_metrics_but_no_checkpoint_can_only_be_overwritten(
        tmp_path, capsys, refuse_training):
    out = tmp_path / "killed"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "phase": "mle", "nll_train": 3.0}\n')
    assert _error(capsys, "mle/oracle.yaml", out, *TINY) == (
        f"`output_dir` '{out}' already holds a run (metrics.jsonl); choose another output_dir, "
        f"or set overwrite=true to delete that run's files and start over")
    assert _error(capsys, "mle/oracle.yaml", out, *TINY, "resume=auto") == (
        f"resume=auto found no complete checkpoint under '{out / 'checkpoints'}'; replace "
        f"`resume` by overwrite=true to start over (it deletes that run's files)")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]
    (out / "checkpoints" / "step_3").mkdir(parents=True)  # killed while saving: incomplete
    assert _error(capsys, "mle/oracle.yaml", out, *TINY) == (  # no complete one to resume
        f"`output_dir` '{out}' already holds a run (metrics.jsonl, checkpoints/step_3); choose "
        f"another output_dir, or set overwrite=true to delete that run's files and start over")
    assert main(["sample", str(out)]) == 2
    assert capsys.readouterr().err.endswith(
        f"textgan sample: error: '{out}' has no complete checkpoint (checkpoints/step_<N>); give "
        f"a run that has saved one, or one of its checkpoint directories\n")
    other = tmp_path / "other"
    assert _error(capsys, "mle/oracle.yaml", other, *TINY, f"resume={out}") == (
        f"`resume` run '{out}' has no complete checkpoint; give another run or checkpoint, or "
        f"drop `resume` to start from scratch")


# --------------------------------------------------------------------------------------------
# Other commands
# --------------------------------------------------------------------------------------------


def test_sample_rejects_bad_arguments(tmp_path, capsys, refuse_training):
    for argv, message in (
            (["--tau", "0"], "`--tau` must be > 0, got 0.0"),
            (["--n", "0"], "`--n` must be >= 1, got 0"),
            ([], f"run or checkpoint '{tmp_path / 'nope'}' does not exist")):
        assert main(["sample", str(tmp_path / "nope"), *argv]) == 2
        assert capsys.readouterr().err == f"textgan sample: error: {message}\n"


# --------------------------------------------------------------------------------------------
# A real process: exit status 2, no traceback, one line
# --------------------------------------------------------------------------------------------


def _cli(*argv) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "textgan", *argv], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)


def test_process_exits_2_without_traceback_on_an_unknown_key(tmp_path):
    out = tmp_path / "run"
    proc = _cli("train", str(RECIPES / "relgan" / "oracle.yaml"), f"output_dir={out}",
                "train.adv_step=10")
    assert proc.returncode == 2
    assert proc.stderr == ("textgan train: error: unknown recipe key 'train.adv_step'; did you "
                           "mean 'train.adv_steps' or 'train.d_steps' or 'train.g_steps'?\n")
    assert proc.stdout == "" and not out.exists()


def test_process_exits_2_without_traceback_on_a_non_utf8_corpus(tmp_path):
    bad = tmp_path / "corpus.txt"
    bad.write_bytes(b"a man rides a bike\na dog sits on the table\n\xff\xfe broken\n")
    out = tmp_path / "run"
    proc = _cli("train", str(RECIPES / "mle" / "coco.yaml"), f"output_dir={out}",
                f"data.path={bad}", *TEXT, "train.steps=1", "train.batch_size=2",
                "generator.embed_dim=4", "generator.hidden_dim=4", "eval.num_samples=4")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"textgan train: error: `data.path`: '{bad}' is not valid UTF-8: byte "
                      f"0xff at line 3; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t "
                      f"utf-8)"]
    assert not out.exists()
