"""Categorical text VAE (Jang, Gu, Poole, ICLR 2017, Table 1 on sentences), on accelerate.

The model is :class:`textgan.models.vae.CategoricalTextVAE`: a bidirectional LSTM/GRU encoder,
``M x K`` categorical latents and the recipe's ``generator:`` as the decoder. The loop is the
MLE trainer's: the global batch of step ``s`` is :func:`textgan.train.common.global_batch`, the
latent noise (and any dropout) of step ``s`` is drawn row block by row block from streams seeded
by ``(seed, "vae", s, block)`` (:class:`textgan.train.common.Blocks`, ``train.rng_blocks``), so a
resumed run repeats the uninterrupted one exactly and, with the same ``rng_blocks``, ``n``
processes repeat one process (the EMA baseline is updated with the rewards of all processes;
every loss and statistic is a mean over the global batch, except ``advantage_std``, each
process's standard deviation averaged over processes). Checkpoints hold the model, the
optimizer and the EMA baseline. Evaluation is split over processes like
:func:`textgan.train.common.evaluate_generator`.

Settings (``train:`` section, :class:`VAEConfig`):
    * ``latent_method``: how gradients cross the latent sample: ``gumbel_softmax``,
      ``gumbel_st`` or ``score_function``. This is a separate key from ``sampler.method``, which
      is about drawing *token sequences* (``multinomial | gumbel_softmax | gumbel_st``) and has
      no score-function choice; here sequences are never sampled during training (the decoder
      is teacher-forced) and ``sampler:`` supplies only the temperature schedule (``schedule``,
      ``tau``, ``anneal_rate``, ``tau_min``; Jang's ``anneal`` is
      ``tau = max(tau_min, exp(-anneal_rate * step))``) and ``sampler.tau`` for prior samples.
    * the model's sizes and conditioning (``latent_vars``, ``latent_classes``, ``encoder``,
      ``encoder_embed_dim``, ``encoder_hidden_dim``, ``condition``); the decoder's are in
      ``generator:`` (``generator.init_from`` starts it from an MLE run). ``pretrain:`` is not
      used.
    * ``kl_warmup``: the KL weight grows linearly from 0 to 1 over that many steps (0: always 1).
    * against posterior collapse: ``free_bits`` (nats per latent variable whose KL is not
      penalised, per sentence: :func:`textgan.models.vae.free_bits_kl`) and ``word_dropout``
      (probability of replacing each teacher-forced decoder input by ``<unk>``, Bowman et al.
      2016; text corpora only). Both act on training only: evaluation reports the true ELBO
      without word dropout.

Evaluation every ``eval.every`` steps (and at the end), on the first ``train.eval_sentences``
test sentences (all by default):
    * ``neg_elbo`` / ``neg_elbo_token``: the negative ELBO with ``z`` drawn exactly from
      ``q(z|x)`` (one draw per sentence), in nats per sentence and per counted token; ``recon``
      (at that ``z``), ``kl`` (exact, closed form) and ``recon_argmax`` (at the posterior mode);
    * ``recon_bleu`` (sacreBLEU corpus BLEU, 0..100) and ``recon_acc`` (token accuracy) of the
      greedy reconstructions (argmax ``z``, argmax decoding) against the inputs;
    * prior samples (``z`` uniform, multinomial decoding at ``sampler.tau``), scored like the
      MLE trainer's (``nll_oracle`` on the oracle, ``bleu{n}`` on text, ``unique`` and
      ``self_bleu{n}`` for ``eval.self_bleu``) and written to
      ``samples/vae_step<N>.txt``; latent interpolations between pairs of test sentences
      (variables switched one at a time from A's argmax ``z`` to B's, greedy decoding) to
      ``samples/vae_step<N>_interp.txt``.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from textgan import sampling as S
from textgan.errors import choice_error
from textgan.models import vae as V
from textgan.train import common as C

log = logging.getLogger("textgan")
PHASE = "vae"
#: What :func:`evaluate_vae` records besides the sample metrics (checked by ``eval.best``).
EVAL_KEYS = ("neg_elbo", "neg_elbo_token", "recon", "kl", "recon_argmax", "recon_acc",
             "recon_bleu")


@dataclass
class VAEConfig:
    """The ``train:`` section of ``algorithm: vae``."""

    steps: int = 10000  # optimizer steps
    batch_size: int = 100  # global batch (Jang et al.: 100)
    lr: float = 1e-3  # Adam learning rate
    betas: list | None = None  # Adam betas; None = (0.9, 0.999)
    grad_clip: float = 5.0  # max global gradient norm (0 disables)
    grad_accum: int = 1  # micro-batches per optimizer step
    latent_method: str = "gumbel_softmax"  # gumbel_softmax | gumbel_st | score_function
    baseline: str = "nvil"  # score_function: ema | learned | nvil | none
    baseline_beta: float = 0.9  # EMA baseline decay
    baseline_hidden: int = 64  # learned / nvil baseline MLP width
    kl_warmup: int = 0  # steps of linear KL warm-up from 0 to 1 (0 = none)
    free_bits: float = 0.0  # nats per latent variable not penalised (0 = plain KL)
    word_dropout: float = 0.0  # probability of replacing a decoder input word by <unk>
    latent_vars: int = 20  # M categorical latent variables (Jang et al.: 20)
    latent_classes: int = 10  # K classes each (Jang et al.: 10)
    encoder: str = "lstm"  # lstm | gru (bidirectional)
    encoder_embed_dim: int = 64
    encoder_hidden_dim: int = 128  # per direction
    condition: str = "both"  # decoder conditioning on z: init | input | both
    eval_sentences: int | None = None  # test sentences for ELBO / reconstruction (None = all)
    interpolations: int = 2  # interpolated test-sentence pairs written at each evaluation
    rng_blocks: int | None = None  # row blocks with their own random streams (None: processes)
    checkpoint_every: int = 1000
    keep_last: int = 2
    log_every: int = 50

    def __post_init__(self):
        if self.latent_method not in V.LATENT_METHODS:
            raise ValueError(choice_error("train.latent_method", self.latent_method,
                                        V.LATENT_METHODS))
        if self.baseline not in V.BASELINES:
            raise ValueError(choice_error("train.baseline", self.baseline, V.BASELINES))
        if self.encoder not in V.ENCODERS:
            raise ValueError(choice_error("train.encoder", self.encoder, V.ENCODERS))
        if self.condition not in V.CONDITIONS:
            raise ValueError(choice_error("train.condition", self.condition, V.CONDITIONS))
        for name in ("batch_size", "log_every", "checkpoint_every", "latent_vars",
                     "encoder_embed_dim", "encoder_hidden_dim", "baseline_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"`train.{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("steps", "kl_warmup", "interpolations"):
            if getattr(self, name) < 0:
                raise ValueError(f"`train.{name}` must be >= 0, got {getattr(self, name)}")
        if self.latent_classes < 2:
            raise ValueError(f"`train.latent_classes` must be >= 2, got {self.latent_classes}")
        if self.grad_accum < 1 or self.batch_size % self.grad_accum:
            raise ValueError(
                f"`train.grad_accum` ({self.grad_accum}) must be >= 1 and divide "
                f"`train.batch_size` ({self.batch_size})"
            )
        if not self.lr > 0:
            raise ValueError(f"`train.lr` must be > 0, got {self.lr}")
        if not 0.0 <= self.baseline_beta < 1.0:
            raise ValueError(f"`train.baseline_beta` must be in [0, 1), got {self.baseline_beta}")
        if self.eval_sentences is not None and self.eval_sentences < 2:
            raise ValueError(f"`train.eval_sentences` must be >= 2, got {self.eval_sentences}")
        if not 0.0 <= self.free_bits < math.log(self.latent_classes):
            raise ValueError(
                f"`train.free_bits` must be in [0, log(latent_classes) = "
                f"{math.log(self.latent_classes):.3f}) nats per variable, got {self.free_bits}"
            )
        if not 0.0 <= self.word_dropout < 1.0:
            raise ValueError(f"`train.word_dropout` must be in [0, 1), got {self.word_dropout}")
        if self.rng_blocks is not None and self.rng_blocks < 1:
            raise ValueError(f"`train.rng_blocks` must be >= 1, got {self.rng_blocks}")

    @property
    def learned_baseline(self) -> bool:
        return self.latent_method == "score_function" and self.baseline in ("learned", "nvil")


class VAEResult(NamedTuple):
    step: int
    metrics: dict
    checkpoint: str | None


def kl_weight_at(step: int, warmup: int) -> float:
    """Linear KL warm-up: ``min(1, step / warmup)`` (1 when ``warmup == 0``)."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


# --------------------------------------------------------------------------------------------
# Model construction and loading
# --------------------------------------------------------------------------------------------


def build_vae(cfg, vocab_size: int, start_token: int, pad: int | None,
              decoder=None, unk: int | None = None) -> V.CategoricalTextVAE:
    """The recipe's VAE; ``decoder`` (e.g. from :func:`textgan.train.common.build_generator`,
    which honours ``generator.init_from``) replaces building it from ``generator:``; ``unk``
    is the token word dropout substitutes."""
    tc = cfg.train
    kwargs = dict(latent_vars=tc.latent_vars, latent_classes=tc.latent_classes,
                  embed_dim=tc.encoder_embed_dim, hidden_dim=tc.encoder_hidden_dim,
                  encoder=tc.encoder, condition=tc.condition, pad=pad,
                  learned_baseline=tc.learned_baseline, baseline_hidden=tc.baseline_hidden,
                  unk=unk)
    if decoder is None:
        spec = dict(cfg.generator)
        name = spec.pop("name", "lstm")
        spec.pop("init_from", None)
        return V.CategoricalTextVAE(vocab_size, start_token, decoder=name, decoder_kwargs=spec,
                                    **kwargs)
    return V.CategoricalTextVAE(vocab_size, start_token, decoder=decoder, **kwargs)


def load_vae(ckpt: str | Path) -> V.CategoricalTextVAE:
    """The trained VAE of a checkpoint (or of a run's newest checkpoint), in eval mode."""
    import yaml

    from textgan.config import build_config
    from textgan.runs import resolve_checkpoint

    ckpt = resolve_checkpoint(ckpt)
    cfg = build_config(yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8")))
    if cfg.algorithm != "vae":
        raise ValueError(f"'{ckpt}' is a {cfg.algorithm} run, not a VAE")
    meta = json.loads((ckpt / "meta.json").read_text())
    vae = build_vae(cfg, meta["vocab_size"], meta["start_token"], meta["pad"])
    C.load_model_weights(vae, ckpt, index=0)
    return vae.eval()


def load_vae_for_sampling(ckpt: str | Path, seed: int = 0) -> V.PriorDecoder:
    """A VAE checkpoint as an unconditional generator (``start_token``, ``vocab_size``,
    ``init_state``, ``step``) whose every ``init_state(B)`` draws ``B`` latents from the
    uniform prior: ``textgan sample`` then writes prior samples. ``.manual_seed(s)`` restarts
    the latent stream; ``.vae`` is the model."""
    return V.PriorDecoder(load_vae(ckpt), seed=seed).eval()


@torch.no_grad()
def nll_bound(vae: V.CategoricalTextVAE, tokens: Tensor, *, batch_size: int = 256,
              seed: int = 0) -> float:
    """The negative ELBO per counted token (nats), an upper bound on the NLL per token, with
    one exact latent draw per sentence (seeded): the VAE's stand-in for ``NLL_test``."""
    device = next(vae.parameters()).device
    rng = torch.Generator(device=device).manual_seed(seed)
    total, count = 0.0, 0
    for chunk in tokens.split(batch_size):
        t = vae.elbo_terms(chunk.to(device), "score_function", rng=rng)
        total += float((t.recon + t.kl).double().sum())
        count += int(t.n_tokens.sum())
    return total / max(count, 1)


# --------------------------------------------------------------------------------------------
# One optimizer step (no Run needed: unit-testable)
# --------------------------------------------------------------------------------------------


def vae_step(vae: V.CategoricalTextVAE, opt, batch: Tensor, cfg: VAEConfig, *, tau: float,
             kl_weight: float = 1.0, ema: S.EMABaseline | None = None,
             rng: torch.Generator | None = None, world: int = 1, n_global: int | None = None,
             backward=None, sync=None, reduce=None, gather=None, autocast=None,
             blocks: C.Blocks | None = None) -> dict:
    """One optimizer step on ``batch (B, T)`` (this process's rows of the global batch).

    The loss is the mean over the *global* batch of the per-sentence loss
    (:func:`textgan.models.vae.vae_loss`): each micro-batch's mean is weighted by its share of
    ``n_global`` rows, times ``world`` because ``sync`` averages gradients over processes.

    Args:
        cfg: the trainer config (``latent_method``, ``baseline``, ``grad_accum``, ``grad_clip``).
        ema: the EMA baseline (score_function with ``ema`` / ``nvil``).
        rng: generator of the latent noise (without ``blocks``).
        world, n_global: process count and global batch size (default: one process).
        backward, sync, reduce, gather, autocast: the accelerator's ``backward``, a gradient
            all-reduce for the model, a sum over processes, a gather over processes and an
            autocast context factory (all optional).
        blocks: this process's row blocks (:class:`textgan.train.common.Blocks`): the encoder,
            latent draw and decoder run block by block on the global RNG seeded per block.

    Returns:
        Means over the global batch: ``loss`` (the surrogate), ``neg_elbo``, ``recon``, ``kl``
        (nats per sentence) and, for score_function, ``reward``, ``advantage_std`` and
        ``baseline_mse``.
    """
    n_global = n_global or batch.shape[0] * world
    vae.train()
    totals: dict[str, Tensor] = {}
    for mb in batch.chunk(cfg.grad_accum):
        with autocast() if autocast is not None else nullcontext():
            if blocks is None:
                terms = vae.elbo_terms(mb, cfg.latent_method, tau, rng,
                                       word_dropout=cfg.word_dropout)
            else:
                terms = blocks.map(lambda x: vae.elbo_terms(x, cfg.latent_method, tau,
                                                            word_dropout=cfg.word_dropout), mb)
            loss, stats = V.vae_loss(terms, cfg.latent_method, kl_weight=kl_weight,
                                     baseline=cfg.baseline, ema=ema, gather=gather,
                                     free_bits=cfg.free_bits)
        weight = mb.shape[0] / n_global
        (backward or Tensor.backward)(loss * (weight * world))
        for k, v in {"loss": loss.detach(), **stats}.items():
            totals[k] = totals.get(k, 0.0) + v.float() * weight
    if sync is not None:
        sync(vae)
    if cfg.grad_clip > 0:  # the baseline net apart: its early MSE must not clip the VAE's step
        named = list(vae.named_parameters())
        torch.nn.utils.clip_grad_norm_([p for n, p in named if not n.startswith("baseline_net.")],
                                       cfg.grad_clip)
        if vae.baseline_net is not None:
            torch.nn.utils.clip_grad_norm_(vae.baseline_net.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    names = list(totals)
    flat = torch.stack([totals[k] for k in names])
    if reduce is not None:
        flat = reduce(flat)
    return {k: float(v) for k, v in zip(names, flat.tolist(), strict=True)}


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_vae(run: C.Run, vae: V.CategoricalTextVAE, step: int) -> dict:
    """The negative ELBO, reconstruction BLEU, prior samples and interpolations (see the module
    docstring); files under ``<output_dir>/samples/`` on the main process.

    Split over processes: test sentences and prior samples are taken in chunks of
    ``eval.batch_size``, chunk ``c`` on process ``c % n`` with its latent noise seeded by
    ``(seed, step, c)``; sums are reduced and reconstructions and samples gathered, so every
    process returns the metrics of one process. Every process must call it."""
    from textgan import metrics

    cfg, tc, ec, corpus = run.cfg, run.cfg.train, run.cfg.eval, run.corpus
    device = run.device
    was_training = vae.training
    vae.eval()
    test = corpus.test if tc.eval_sentences is None else corpus.test[: tc.eval_sentences]
    # neg_elbo, recon, kl, recon_argmax, counted tokens, correct greedy tokens, scored tokens
    sums = torch.zeros(7, dtype=torch.float64)
    recon_chunks = {}
    for c, rows in C.eval_chunks(run, test.shape[0], ec.batch_size):
        chunk = test[c * ec.batch_size: c * ec.batch_size + rows].to(device)
        rng = torch.Generator(device=device).manual_seed(
            C.step_seed(cfg.seed, "eval/vae", step, c))
        t = vae.elbo_terms(chunk, "score_function", rng=rng)
        mode = vae.elbo_terms(chunk, "argmax")
        rec = vae.greedy_decode(mode.z, chunk.shape[1], corpus.eos, corpus.pad)
        keep = chunk != corpus.pad if corpus.pad is not None else torch.ones_like(chunk).bool()
        sums += torch.stack([(t.recon + t.kl).sum(), t.recon.sum(), t.kl.sum(),
                             mode.recon.sum(), t.n_tokens.sum(), ((rec == chunk) & keep).sum(),
                             keep.sum()]).double().cpu()
        recon_chunks[c] = rec
    total = C.sum_over_processes(run, sums.tolist())
    n = test.shape[0]
    out = {"neg_elbo": total[0] / n, "neg_elbo_token": total[0] / total[4],
           "recon": total[1] / n, "kl": total[2] / n, "recon_argmax": total[3] / n,
           "recon_acc": total[5] / max(total[6], 1.0)}
    recon = C.gather_chunks(run, recon_chunks)
    hyps, refs = corpus.lines(recon), corpus.lines(test)
    out["recon_bleu"] = metrics.corpus_bleu_sacrebleu(hyps, refs).score

    # prior samples
    chunks = {}
    for c, rows in C.eval_chunks(run, ec.num_samples, ec.batch_size):
        rng = torch.Generator(device=device).manual_seed(
            C.step_seed(cfg.seed, "eval/vae_prior", step, c))
        z = vae.prior_sample(rows, rng)
        chunks[c] = S.sample_sequence(vae.conditioned(z), rows, corpus.seq_len,
                                      method="multinomial", tau=cfg.sampler.tau, rng=rng,
                                      eos=corpus.eos, pad=corpus.pad).tokens
    out.update(C.sample_metrics(run, torch.cat(list(chunks.values())) if chunks else None,
                                ec.num_samples))
    samples = C.gather_chunks(run, chunks)
    if samples is not None:
        out.update(C.diversity_metrics(corpus.decode(samples), ec.self_bleu, C.train_set(run)))

    if run.is_main:
        # interpolations between test sentences (A = 2i, B = 2i + 1): deterministic, cheap
        interp = []
        for i in range(min(tc.interpolations, test.shape[0] // 2)):
            pair = test[2 * i: 2 * i + 2].to(device)
            za, zb = vae.encode(pair)[1].argmax(-1)
            classes = V.interpolate_latents(za, zb)
            z = torch.nn.functional.one_hot(classes, vae.latent_classes).float()
            dec = corpus.lines(vae.greedy_decode(z, corpus.seq_len, corpus.eos,
                                                 corpus.pad).cpu())
            src = corpus.lines(pair.cpu())
            interp += [f"# pair {i}", f"A\t{src[0]}", f"B\t{src[1]}"]
            interp += [f"{j}\t{line}" for j, line in enumerate(dec)] + [""]
        sample_dir = run.out_dir / "samples"
        sample_dir.mkdir(exist_ok=True)
        lines = corpus.lines(samples)
        (sample_dir / f"{PHASE}_step{step}.txt").write_text("\n".join(lines) + "\n",
                                                           encoding="utf-8")
        (sample_dir / f"{PHASE}_step{step}_interp.txt").write_text("\n".join(interp) + "\n",
                                                                  encoding="utf-8")
        pairs = [f"{r}\t{h}" for r, h in zip(refs[:100], hyps[:100], strict=True)]
        (sample_dir / f"{PHASE}_step{step}_recon.txt").write_text("\n".join(pairs) + "\n",
                                                                 encoding="utf-8")
        for line in lines[: ec.print_samples]:
            log.info("prior sample: %s", line)
    vae.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def train(cfg) -> VAEResult:
    """``textgan train`` entry point for ``algorithm: vae``."""
    from textgan.train.mle import MLEConfig

    cfg.sampler.tau_schedule(cfg.train.steps, "train.steps")  # fails before any output
    run = C.make_run(cfg)
    acc, corpus, tc = run.accelerator, run.corpus, cfg.train
    if cfg.pretrain is not None and cfg.pretrain != MLEConfig():
        log.warning("the `pretrain:` section is not used by algorithm vae; start the decoder "
                    "from an MLE run with generator.init_from instead")
    v = corpus.vocab
    unk = v.unk if v is not None else None
    if tc.word_dropout > 0 and unk is None:
        raise ValueError(f"`train.word_dropout` ({tc.word_dropout}) replaces words by <unk>, "
                         f"and the {cfg.data.name} data has no such token; set "
                         f"train.word_dropout=0 (or use train.free_bits against collapse)")
    if tc.word_dropout > 0 and unk in (v.pad, v.bos, v.eos):
        raise ValueError(f"`train.word_dropout` ({tc.word_dropout}) replaces words by <unk>, but "
                         f"this tokenizer has no <unk> of its own (its unk id {unk} is the "
                         f"pad/bos/eos token); set train.word_dropout=0 or use a tokenizer "
                         f"with an unk token")
    decoder = C.build_generator(cfg, corpus)
    vae = build_vae(cfg, corpus.vocab_size, corpus.start_token, corpus.pad, decoder=decoder,
                    unk=unk)
    ema = S.EMABaseline(tc.baseline_beta).to(acc.device)
    betas = tuple(tc.betas) if tc.betas else (0.9, 0.999)
    opt = torch.optim.Adam(vae.parameters(), lr=tc.lr, betas=betas)
    vae, opt = acc.prepare(vae, opt)
    start, window = 0, None
    if run.resume_from is not None:
        state = C.load_checkpoint(run, run.resume_from)
        start, window = state["step"], state["extra"].get("window")
        if "ema" in state["extra"]:
            ema.load_state_dict(state["extra"]["ema"])
    C.start_outputs(run, ("train", tc))  # after the resume checks: refused, writes nothing
    step = run_vae(run, vae, opt, ema, start, window=window)
    ckpts = C.checkpoint_dirs(run.out_dir)
    acc.end_training()
    return VAEResult(step, dict(run.last_metrics), str(ckpts[-1]) if ckpts else None)


def run_vae(run: C.Run, vae, opt, ema: S.EMABaseline, start: int,
            window: list | None = None) -> int:
    """The VAE loop from ``start`` to ``train.steps``; evaluates, logs and checkpoints.
    ``window``: the per-step stats since the last log record, from the resumed checkpoint."""
    cfg, tc, corpus, acc = run.cfg, run.cfg.train, run.corpus, run.accelerator
    tau_of = cfg.sampler.tau_schedule(tc.steps, "train.steps")
    model = acc.unwrap_model(vae)  # called unwrapped; gradients averaged by sync_grads
    multi = acc.num_processes > 1
    kw = dict(world=acc.num_processes, n_global=tc.batch_size, backward=acc.backward,
              sync=C.grad_sync(acc, [(model, opt)]),
              reduce=(lambda t: acc.reduce(t, "sum")) if multi else None,
              gather=acc.gather if multi else None, autocast=acc.autocast)
    bar = C.progress(run, tc.steps, start, PHASE)
    step, window = start, list(window or [])
    while step < tc.steps:
        C.set_step_seed(run, PHASE, step)
        blocks = C.row_blocks(run, tc.rng_blocks, PHASE, step, tc.batch_size, tc.grad_accum)
        tau, beta = tau_of(step), kl_weight_at(step, tc.kl_warmup)
        batch = C.local_batch(run, corpus.train, step, tc.batch_size)
        stats = vae_step(model, opt, batch, tc, tau=tau, kl_weight=beta, ema=ema, blocks=blocks,
                         **kw)
        C.check_finite(run, step, PHASE, stats)
        window.append(stats)
        step += 1
        bar.update(1)
        bar.set_postfix(elbo=f"{stats['neg_elbo']:.2f}", tau=f"{tau:.3g}")
        if step % tc.log_every == 0 or step == tc.steps:
            C.log_metrics(run, step, PHASE, {**C.mean_records(window), "tau": tau,
                                             "kl_weight": beta})
            window = []
        best = False
        if step % cfg.eval.every == 0 or step == tc.steps:
            metrics = evaluate_vae(run, model, step)
            C.log_metrics(run, step, PHASE, metrics)
            bar.write(f"[{PHASE} {step}] tau={tau:.4g} "
                      + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
            best = C.update_best(run, step, PHASE, metrics)
        stop = C.stop_requested(run)
        C.save_checkpoints(run, step, PHASE,
                           {"step": step, "ema": ema.state_dict(), "window": window},
                           periodic=step % tc.checkpoint_every == 0 or step == tc.steps or stop,
                           best=best, keep_last=tc.keep_last)
        if stop:
            bar.close()
            raise C.Interrupted(run.out_dir, PHASE, step)
    bar.close()
    return step
