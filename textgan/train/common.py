"""What every trainer shares: the run (accelerator, corpus, output dir), deterministic batches,
checkpoints, metrics logging and periodic evaluation.

Determinism by construction: the batch and the random seed of optimizer step ``s`` are pure
functions of ``(recipe seed, phase, s)``, so resuming needs only the step, and a run with ``n``
processes sees the same global batch as a run with one (each rank takes rows ``rank::n``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from textgan.config import RecipeConfig, save_config
from textgan.data import Corpus, Vocab, atomic_write_text, load_corpus

log = logging.getLogger("textgan")

CKPT_PREFIX = "step_"
STATE_FILE = "trainer_state.pt"


class TrainingError(RuntimeError):
    """A run that cannot continue (non-finite loss, bad checkpoint); printed without traceback."""


class Interrupted(TrainingError):
    """SIGINT/SIGTERM arrived; the loop saved a checkpoint first."""

    def __init__(self, out_dir: Path, phase: str, step: int):
        super().__init__(
            f"interrupted at {phase} step {step}; checkpoint saved under "
            f"{Path(out_dir) / 'checkpoints'}; continue with resume=auto"
        )


@dataclass
class Run:
    """Everything a trainer needs besides its models: built once by :func:`make_run`."""

    cfg: RecipeConfig
    accelerator: object
    corpus: Corpus
    out_dir: Path
    resume_from: Path | None = None
    tb_writer: object | None = None
    interrupted: bool = False
    last_metrics: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def make_run(cfg: RecipeConfig) -> Run:
    """Create the Accelerator, load the corpus (vocabulary from the checkpoint when resuming),
    prepare the output directory and write the resolved config."""
    from accelerate import Accelerator

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    accelerator = Accelerator(**cfg.accelerate)
    out_dir = Path(cfg.output_dir)
    resume_from = find_checkpoint(out_dir, cfg.resume) if cfg.resume else None
    vocab = None
    if resume_from is not None and (resume_from / "vocab.json").exists():
        vocab = Vocab.load(resume_from / "vocab.json")
    with accelerator.main_process_first():
        corpus = load_corpus(cfg.data, vocab=vocab)
    if resume_from is not None:
        check_compatible(resume_from, cfg, corpus)
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
        write_meta(out_dir, cfg, corpus)
    # Model initialisation is seeded by the recipe (same weights on every process).
    torch.manual_seed(cfg.seed)
    tb = None
    if accelerator.is_main_process and cfg.eval.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError(
                "`eval.tensorboard: true` needs the tensorboard package (pip install "
                "tensorboard); metrics.jsonl is always written"
            ) from None
        tb = SummaryWriter(str(out_dir / "tensorboard"))
    run = Run(cfg=cfg, accelerator=accelerator, corpus=corpus, out_dir=out_dir,
              resume_from=resume_from, tb_writer=tb)
    _install_signal_handlers(run)
    return run


def _install_signal_handlers(run: Run) -> None:
    def handler(signum, frame):  # checked by the loops, which save and exit cleanly
        run.interrupted = True

    try:
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread (e.g. a test runner thread)
        pass


def write_meta(out_dir: Path, cfg: RecipeConfig, corpus: Corpus) -> None:
    meta = {"algorithm": cfg.algorithm, "vocab_size": corpus.vocab_size,
            "start_token": corpus.start_token, "eos": corpus.eos, "pad": corpus.pad,
            "seq_len": corpus.seq_len, "data": cfg.data.name}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=1))
    if corpus.vocab is not None:
        corpus.vocab.save(out_dir / "vocab.json")


def generator_kwargs(cfg: RecipeConfig, corpus: Corpus) -> tuple[str, dict]:
    spec = dict(cfg.generator)
    name = spec.pop("name", "lstm")
    spec.pop("init_from", None)
    return name, {**spec, "vocab_size": corpus.vocab_size, "start_token": corpus.start_token}


def build_generator(cfg: RecipeConfig, corpus: Corpus):
    """The recipe's generator; ``generator.init_from`` loads weights from a checkpoint/run."""
    from textgan.models import build_generator as build

    name, kwargs = generator_kwargs(cfg, corpus)
    G = build(name, **kwargs)
    init_from = cfg.generator.get("init_from")
    if init_from:
        ckpt = find_checkpoint(Path(init_from), "auto") if Path(init_from).is_dir() and \
            not (Path(init_from) / STATE_FILE).exists() else Path(init_from)
        load_model_weights(G, ckpt, index=0)
        log.info("generator initialised from %s", ckpt)
    return G


def build_models(cfg: RecipeConfig, corpus: Corpus, default_discriminator: str):
    """The recipe's generator and discriminator (a GAN's two models)."""
    from textgan.models import build_discriminator

    G = build_generator(cfg, corpus)
    spec = dict(cfg.discriminator or {"name": default_discriminator})
    D = build_discriminator(spec.pop("name", default_discriminator),
                            vocab_size=corpus.vocab_size, **spec)
    return G, D


def load_model_weights(model, ckpt: Path, index: int = 0) -> None:
    """Load the ``index``-th model saved by ``accelerator.save_state`` (safetensors)."""
    from safetensors.torch import load_model

    name = "model.safetensors" if index == 0 else f"model_{index}.safetensors"
    path = Path(ckpt) / name
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint '{ckpt}' has no {name}")
    try:  # load_model (not load_state_dict) restores tied weights such as GPT-2's lm_head
        load_model(model, str(path), strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"weights in '{path}' do not fit the model (different shape or vocabulary): "
            f"{str(e).splitlines()[0]}"
        ) from None


# --------------------------------------------------------------------------------------------
# Deterministic batches and seeds
# --------------------------------------------------------------------------------------------


def step_seed(seed: int, phase: str, step: int, rank: int = 0) -> int:
    """A seed that depends only on (recipe seed, phase, step, rank)."""
    phase_id = sum(ord(c) * 31**i for i, c in enumerate(phase)) % 10007
    return (seed * 1_000_003 + phase_id * 7_919 + step * 104_729 + rank * 15_485_863) % 2**62


def global_batch(data: Tensor, step: int, batch_size: int, seed: int) -> Tensor:
    """Rows of the global batch of ``step``: epoch-wise seeded permutations, no replacement.

    A pure function of its arguments, so resuming at ``step`` continues the same data order.
    """
    n = data.shape[0]
    if batch_size > n:
        raise ValueError(f"`batch_size` {batch_size} exceeds the {n} training sequences")
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_777 + epoch))
    return data[perm[i * batch_size:(i + 1) * batch_size]]


def local_batch(run: Run, data: Tensor, step: int, batch_size: int) -> Tensor:
    """This process's share (rows ``rank::world``) of the global batch, on its device."""
    acc = run.accelerator
    if batch_size % acc.num_processes:
        raise ValueError(
            f"`batch_size` {batch_size} must be divisible by the number of processes "
            f"{acc.num_processes}"
        )
    rows = global_batch(data, step, batch_size, run.cfg.seed)
    return rows[acc.process_index::acc.num_processes].to(acc.device)


def teacher_forcing(batch: Tensor, start_token: int) -> Tensor:
    """Inputs ``[start] + batch[:, :-1]`` for targets ``batch``."""
    start = batch.new_full((batch.shape[0], 1), start_token)
    return torch.cat([start, batch[:, :-1]], 1)


def sync_grads(accelerator, model) -> None:
    """Average gradients over processes (models are called unwrapped in GAN steps)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if accelerator.num_processes == 1 or not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, "mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def set_step_seed(run: Run, phase: str, step: int) -> None:
    torch.manual_seed(step_seed(run.cfg.seed, phase, step, run.accelerator.process_index))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def checkpoint_dirs(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CKPT_PREFIX)
            and p.name[len(CKPT_PREFIX):].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[len(CKPT_PREFIX):]))


def is_complete(ckpt: Path) -> bool:
    """A checkpoint is usable when its state file loads and its model files exist."""
    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return all((ckpt / f).is_file() for f in state.get("files", ["model.safetensors"]))


def find_checkpoint(out_dir: Path, resume: str) -> Path:
    """``resume=auto``: the newest complete checkpoint under ``out_dir``; else a path."""
    if resume != "auto":
        path = Path(resume)
        if path.is_dir() and not (path / STATE_FILE).exists() and checkpoint_dirs(path):
            return find_checkpoint(path, "auto")
        if not path.is_dir():
            raise FileNotFoundError(f"`resume` checkpoint '{path}' does not exist")
        if not is_complete(path):
            raise ValueError(f"`resume` checkpoint '{path}' is incomplete or corrupted")
        return path
    for ckpt in reversed(checkpoint_dirs(out_dir)):
        if is_complete(ckpt):
            return ckpt
        log.warning("skipping incomplete or corrupted checkpoint %s", ckpt)
    raise FileNotFoundError(
        f"resume=auto found no complete checkpoint under '{Path(out_dir) / 'checkpoints'}'; "
        f"drop `resume` to start from scratch"
    )


def check_compatible(ckpt: Path, cfg: RecipeConfig, corpus: Corpus) -> None:
    """Resuming with another vocabulary or model shape is an error, not a silent reload."""
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    meta = state.get("meta", {})
    if meta.get("vocab_size") not in (None, corpus.vocab_size):
        raise ValueError(
            f"vocabulary mismatch on resume: checkpoint '{ckpt}' has vocab_size "
            f"{meta['vocab_size']}, the corpus has {corpus.vocab_size}"
        )
    saved = meta.get("generator")
    if saved is not None:
        now = {k: v for k, v in cfg.generator.items() if k != "init_from"}
        if json.dumps(saved, sort_keys=True) != json.dumps(now, sort_keys=True):
            raise ValueError(
                f"generator mismatch on resume: checkpoint '{ckpt}' has {saved}, the recipe "
                f"has {now}"
            )


def save_checkpoint(run: Run, step: int, phase: str, extra: dict | None = None,
                    keep_last: int = 2, offset: int = 0) -> Path | None:
    """``accelerator.save_state`` into a temporary directory, then an atomic rename to
    ``checkpoints/step_<offset + step>``; keeps the newest ``keep_last`` checkpoints.

    ``step`` is the step within ``phase``; ``offset`` (the steps of earlier phases) only names
    the directory, so that the checkpoints of several phases sort in order."""
    acc = run.accelerator
    root = run.out_dir / "checkpoints"
    final = root / f"{CKPT_PREFIX}{offset + step}"
    tmp = root / f".tmp_{CKPT_PREFIX}{offset + step}"
    if acc.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    acc.save_state(str(tmp), safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        files = sorted(p.name for p in tmp.iterdir() if p.name.endswith(".safetensors"))
        meta = {"vocab_size": run.corpus.vocab_size,
                "generator": {k: v for k, v in run.cfg.generator.items() if k != "init_from"}}
        state = {"step": step, "phase": phase, "extra": extra or {}, "files": files,
                 "meta": meta, "metrics": run.last_metrics}
        torch.save(state, tmp / STATE_FILE)
        save_config(run.cfg, tmp / "config.yaml")
        write_meta(tmp, run.cfg, run.corpus)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run.out_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def load_checkpoint(run: Run, ckpt: Path) -> dict:
    """Restore models and optimizers (weights_only loading) and return the trainer state."""
    run.accelerator.load_state(str(ckpt))
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    log.info("resumed from %s (phase %s, step %d)", ckpt, state["phase"], state["step"])
    return state


# --------------------------------------------------------------------------------------------
# Logging and evaluation
# --------------------------------------------------------------------------------------------


def log_metrics(run: Run, step: int, phase: str, metrics: dict) -> None:
    """Append one JSON object to ``metrics.jsonl`` (main process) and to TensorBoard."""
    record = {"step": step, "phase": phase, **{k: _plain(v) for k, v in metrics.items()},
              "time": round(time.time(), 3)}
    run.last_metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
    if not run.is_main:
        return
    with open(run.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    if run.tb_writer is not None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k not in ("step", "time"):
                run.tb_writer.add_scalar(f"{phase}/{k}", v, step)


def _plain(v):
    if isinstance(v, Tensor):
        v = v.item()
    if isinstance(v, float):
        return round(v, 6)
    return v


def check_finite(run: Run, step: int, phase: str, losses: dict) -> None:
    """Stop with a clear error on a NaN/inf loss (never silently continue)."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        raise TrainingError(
            f"non-finite loss at {phase} step {step}: {bad}; last finite metrics: "
            f"{run.last_metrics}. Lower the learning rate or enable gradient clipping."
        )


@torch.no_grad()
def evaluate_generator(run: Run, G, step: int, phase: str, tau: float = 1.0) -> dict:
    """NLL_test, NLL_oracle (oracle data), BLEU-n (text) and a few decoded samples."""
    from textgan import metrics
    from textgan.sampling import sample_sequence

    cfg, corpus = run.cfg.eval, run.corpus
    G = run.accelerator.unwrap_model(G)
    was_training = G.training
    G.eval()
    out: dict = {}
    out["nll_test"] = metrics.nll_test(G, corpus.test.to(run.device), pad=corpus.pad,
                                       batch_size=cfg.batch_size)
    rng = torch.Generator(device=run.device).manual_seed(run.cfg.seed + 17 * step)
    chunks = []
    for start in range(0, cfg.num_samples, cfg.batch_size):
        B = min(cfg.batch_size, cfg.num_samples - start)
        chunks.append(sample_sequence(G, B, corpus.seq_len, method="multinomial", rng=rng,
                                      eos=corpus.eos, pad=corpus.pad).tokens)
    samples = torch.cat(chunks).cpu()
    if corpus.oracle is not None:
        out["nll_oracle"] = metrics.nll_oracle(corpus.oracle, samples.to(run.device))
    else:
        refs = corpus.decode(corpus.test if cfg.num_refs is None else corpus.test[:cfg.num_refs])
        scores = metrics.bleu_scores(corpus.decode(samples), refs, ns=tuple(cfg.bleu))
        out.update({f"bleu{n}": v for n, v in scores.items()})
    if run.is_main:
        sample_dir = run.out_dir / "samples"
        sample_dir.mkdir(exist_ok=True)
        lines = corpus.lines(samples)
        (sample_dir / f"{phase}_step{step}.txt").write_text("\n".join(lines) + "\n",
                                                            encoding="utf-8")
        for line in lines[: cfg.print_samples]:
            log.info("sample: %s", line)
    G.train(was_training)
    return out


def progress(run: Run, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not run.is_main,
                dynamic_ncols=True, leave=True)


def load_for_eval(path):
    """A trained run or checkpoint, ready to sample and score (see :mod:`textgan.runs`)."""
    from textgan.runs import load_for_eval as load

    return load(path)
