"""What every trainer shares: the run (accelerator, corpus, output dir), deterministic batches,
checkpoints, metrics logging and periodic evaluation.

Determinism by construction: the batch and the random seed of optimizer step ``s`` are pure
functions of ``(recipe seed, phase, s)``, so resuming needs only the step, and a run with ``n``
processes sees the same global batch as a run with one (each rank takes rows ``rank::n``).

Several processes. Every random draw of a training step (generated fakes and their Gumbel noise,
dropout masks, SeqGAN rollouts, VAE latent noise) is made per *row block* (:class:`Blocks`): the
global batch is cut into ``K`` blocks (``train.rng_blocks``, default one per process), block
``j`` draws from a stream seeded by ``(seed, phase, step, j)``, and process ``r`` of ``n``
handles blocks ``r, r + n, ...``. Runs with the same ``K`` therefore draw the same global set of
samples whatever ``n`` (any ``n`` dividing ``K``) and, since gradients are averaged over
processes and every loss is a mean over the global batch, make the same updates up to float
reduction order. The default ``K = n`` costs nothing but makes the random streams depend on
``n``; ``rng_blocks: 8`` makes 1, 2, 4 and 8 processes give the same run, at the price of one
sampler / model call per block. Evaluation (:func:`evaluate_generator`) draws its samples in
chunks of ``eval.batch_size`` seeded by the chunk index, dealt round-robin to the processes, and
reduces the metrics over all of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Iterator, Sequence
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
    best: dict | None = None  # eval.best: key, value, phase, step, index of the best so far
    rewind: tuple | None = None  # (checkpoint, metrics bytes, index): applied at the first write
    train_set: set | None = None  # the training sentences as token tuples (text), for novelty

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device


# --------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------


def emulated_bf16(accelerator) -> bool:
    """True for bf16 autocast on a CPU whose bfloat16 matrix products are not native
    (:func:`textgan.bench.native_bf16`)."""
    from textgan.bench import native_bf16

    if accelerator.mixed_precision != "bf16" or accelerator.device.type != "cpu":
        return False
    return not native_bf16()


def make_run(cfg: RecipeConfig) -> Run:
    """Create the Accelerator and load the corpus (vocabulary from the checkpoint when resuming).

    Nothing is written yet: the trainer builds its models (which may still reject the recipe)
    and then calls :func:`start_outputs`, so a bad recipe leaves no half-made run directory.
    """
    from accelerate import Accelerator

    # first, so that the intra-op threads started by the first parallel operation inherit it
    torch.set_flush_denormal(cfg.flush_denormal)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    accelerator = Accelerator(**accelerator_kwargs(cfg))
    check_launch(accelerator)
    if accelerator.is_main_process:
        log.info("%d process(es) on %s, mixed precision: %s", accelerator.num_processes,
                 accelerator.device.type, accelerator.mixed_precision)
        if emulated_bf16(accelerator):
            log.warning("mixed_precision bf16 on a CPU without native bfloat16 (no avx512_bf16 "
                        "or AMX): matrix products are emulated, often 10-40x slower than "
                        "float32; set accelerate.mixed_precision=no on this machine")
    out_dir = Path(cfg.output_dir)
    resume_from = find_checkpoint(out_dir, cfg.resume) if cfg.resume else None
    if not cfg.resume and not cfg.overwrite:
        check_no_run(out_dir)  # every process, before main_process_first (a barrier) below
    elif resume_from is not None and not own_checkpoint(out_dir, resume_from) and existing_run(
            out_dir):
        raise ValueError(
            f"`resume` checkpoint '{resume_from}' is another directory's, and `output_dir` "
            f"'{out_dir}' already holds a run: its records and checkpoints would mix; continue "
            f"that run with resume=auto, or resume into another output_dir"
        )
    init_from = cfg.generator.get("init_from")
    if cfg.overwrite and init_from and out_dir.resolve() in Path(init_from).resolve().parents:
        raise ValueError(
            f"`generator.init_from` '{init_from}' is inside output_dir '{out_dir}', whose files "
            f"overwrite=true deletes; copy that checkpoint out of '{out_dir}' first, or choose "
            f"another output_dir"
        )
    vocab = None
    if resume_from is not None and (resume_from / "vocab.json").exists():
        vocab = Vocab.load(resume_from / "vocab.json")
    with accelerator.main_process_first():
        corpus = load_corpus(cfg.data, vocab=vocab)
    if resume_from is not None:
        check_compatible(resume_from, cfg, corpus)
    # Model initialisation is seeded by the recipe (same weights on every process).
    torch.manual_seed(cfg.seed)
    if accelerator.is_main_process and cfg.eval.tensorboard:
        try:
            from torch.utils import tensorboard  # noqa: F401
        except ImportError:
            raise ValueError(
                "`eval.tensorboard: true` needs the tensorboard package (pip install "
                "tensorboard); metrics.jsonl is always written"
            ) from None
    check_best_key(cfg, corpus)
    run = Run(cfg=cfg, accelerator=accelerator, corpus=corpus, out_dir=out_dir,
              resume_from=resume_from, tb_writer=None)
    _install_signal_handlers(run)
    return run


#: What :func:`evaluate_generator` records besides its sample metrics; a trainer with its own
#: evaluation names its keys in its module's ``EVAL_KEYS``.
GENERATOR_EVAL_KEYS = ("nll_test",)


def eval_keys(cfg: RecipeConfig, corpus: Corpus) -> list[str]:
    """The metrics every evaluation of this recipe records: the trainer's own, then
    NLL_oracle (oracle data) or BLEU-n, ``unique`` and Self-BLEU-n (:func:`sample_metrics`,
    :func:`diversity_metrics`)."""
    import importlib

    from textgan.config import TRAIN_CONFIGS

    module = importlib.import_module(TRAIN_CONFIGS[cfg.algorithm].split(":")[0])
    own = list(getattr(module, "EVAL_KEYS", GENERATOR_EVAL_KEYS))
    text = corpus.oracle is None
    sample = [f"bleu{n}" for n in dict.fromkeys(cfg.eval.bleu)] if text else ["nll_oracle"]
    return (own + sample + ["unique"] + (["novelty"] if text else [])
            + [f"self_bleu{n}" for n in dict.fromkeys(cfg.eval.self_bleu)])


def check_best_key(cfg: RecipeConfig, corpus: Corpus) -> None:
    """``eval.best`` must name a metric that this recipe's evaluations record."""
    from textgan.errors import did_you_mean
    from textgan.metrics import best_direction

    if cfg.eval.best is None:
        return
    key, _ = best_direction(cfg.eval.best, "eval.best")
    keys = eval_keys(cfg, corpus)
    if key not in keys:
        raise ValueError(
            f"`eval.best` names '{key}', which this recipe's evaluations do not record"
            f"{did_you_mean(key, keys)}; choose one of {keys} (Self-BLEU-n needs n in "
            f"`eval.self_bleu`, BLEU-n needs " + ("text data)" if corpus.oracle is not None
                                                  else "n in `eval.bleu`)"))


_WORLD_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_LAUNCH_HELP = (
    "on CPUs start the processes with torchrun: `accelerate launch --config_file "
    "recipes/accelerate/cpu.yaml -m textgan train RECIPE` or `ACCELERATE_USE_CPU=1 accelerate "
    "launch --multi_gpu --num_processes N -m textgan train RECIPE` (README, Multi-GPU)"
)


def _launched_processes() -> int:
    """The number of processes the launcher started (1 when not launched as a group)."""
    for name in _WORLD_ENV:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def accelerator_kwargs(cfg: RecipeConfig) -> dict:
    """``cfg.accelerate``, plus ``cpu=True`` when several processes were launched on a machine
    without an accelerator (accelerate would otherwise give each process a world of its own)."""
    kwargs = dict(cfg.accelerate)
    has_device = torch.accelerator.is_available() if hasattr(torch, "accelerator") else \
        torch.cuda.is_available()
    if _launched_processes() > 1 and "cpu" not in kwargs and not has_device:
        kwargs["cpu"] = True
    return kwargs


def check_launch(accelerator) -> None:
    """Refuse a launch whose processes would not train together.

    * launched as a group of ``N`` processes but accelerate set up another world size (e.g.
      ``accelerate.cpu=false`` forced on a machine without GPUs);
    * ``accelerate launch --cpu --num_processes N`` (or a ``MULTI_CPU`` config without an
      ``mpirun`` hostfile): accelerate's simple launcher then starts a *single* process and
      only sets ``MASTER_ADDR``; training would silently run on one process.
    """
    launched = _launched_processes()
    if launched > 1 and accelerator.num_processes != launched:
        raise ValueError(
            f"{launched} processes were launched but accelerate set up "
            f"{accelerator.num_processes}; {_LAUNCH_HELP}"
        )
    use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if accelerator.num_processes == 1 and launched == 1 and use_cpu and \
            "MASTER_ADDR" in os.environ and "LOCAL_RANK" not in os.environ:
        raise ValueError(
            "`accelerate launch --cpu --num_processes N` (or a MULTI_CPU accelerate config) "
            "starts ONE process unless mpirun is configured; " + _LAUNCH_HELP
        )


#: What a run writes in its output_dir (``eval``: ``textgan eval RUN``'s default output);
#: ``overwrite: true`` deletes these and nothing else (a symlink itself, not its target).
RUN_FILES = ("metrics.jsonl", "checkpoints", "samples", "tensorboard", "eval", "config.yaml",
             "meta.json", "vocab.json")


def existing_run(out_dir: Path) -> list[str]:
    """What shows that ``out_dir`` already holds a run: its ``metrics.jsonl`` and the entries of
    its ``checkpoints/`` (empty when there is neither)."""
    found = ["metrics.jsonl"] if (out_dir / "metrics.jsonl").is_file() else []
    if (out_dir / "checkpoints").is_dir():
        steps = [p.name for p in checkpoint_dirs(out_dir)]  # step_N by N, then the others
        others = sorted(p.name for p in (out_dir / "checkpoints").iterdir()
                        if p.name not in steps)
        found += [f"checkpoints/{n}" for n in steps + others]
    return found


def check_no_run(out_dir: Path) -> None:
    """A run started afresh (no ``resume``) must not mix its metrics and checkpoints with those
    of an earlier run in the same ``output_dir``: ``resume=auto`` would later take the old
    run's newer checkpoints and ``textgan report`` would read both runs as one."""
    found = existing_run(out_dir)
    if not found:
        return
    shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
    cont = "continue it with resume=auto, " if newest_checkpoint(out_dir) else ""
    raise ValueError(
        f"`output_dir` '{out_dir}' already holds a run ({shown}); {cont}choose another "
        f"output_dir, or set overwrite=true to delete that run's files and start over"
    )


def start_outputs(run: Run, *phases: tuple[str, object] | None) -> None:
    """Create the output directory, write ``config.yaml`` / ``meta.json`` (main process) and the
    optional TensorBoard writer; trainers call it once their models are built and a resumed
    checkpoint is loaded. ``phases``: ``(section, config)`` of each phase still to run (``None``
    skipped), whose batch must fit the training data and cut into row blocks
    (:func:`num_blocks`): checked first, so a refused start writes (and deletes) nothing. With
    ``overwrite: true`` the files of an earlier run (:data:`RUN_FILES`) are deleted first."""
    n = len(run.corpus.train)
    for section, part in filter(None, phases):
        if part.batch_size > n:
            raise ValueError(f"`{section}.batch_size` {part.batch_size} exceeds the {n} "
                             f"training sequences; lower {section}.batch_size")
        num_blocks(run, part.rng_blocks, part.batch_size, getattr(part, "grad_accum", 1),
                   section=section)
    if run.accelerator.is_main_process:
        if run.cfg.overwrite:
            if existing_run(run.out_dir):
                log.warning("overwrite=true: deleting the earlier run's files in %s",
                            run.out_dir)
            for name in RUN_FILES:
                path = run.out_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        run.out_dir.mkdir(parents=True, exist_ok=True)
        save_config(run.cfg, run.out_dir / "config.yaml")
        write_meta(run.out_dir, run.cfg, run.corpus)
        if run.cfg.eval.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            run.tb_writer = SummaryWriter(str(run.out_dir / "tensorboard"))
    run.accelerator.wait_for_everyone()


def _install_signal_handlers(run: Run) -> None:
    """SIGINT/SIGTERM set ``run.interrupted``: the loop finishes its step, saves a checkpoint
    and raises :class:`Interrupted`. A second signal aborts at once (``KeyboardInterrupt``);
    checkpoints are written atomically, so the newest complete one is still intact."""

    def handler(signum, frame):  # checked by the loops, which save and exit cleanly
        if run.interrupted:
            raise KeyboardInterrupt
        run.interrupted = True
        log.warning("%s: stopping after this step and saving a checkpoint (send it again to "
                    "abort without saving)", signal.Signals(signum).name)

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
        path = Path(init_from)
        if not path.exists():
            raise ValueError(f"`generator.init_from` '{init_from}' does not exist; give a run "
                             "directory or one of its checkpoints/step_<N> directories")
        ckpt = path
        if path.is_dir() and not (path / STATE_FILE).exists():
            ckpt = newest_checkpoint(path)
            if ckpt is None:
                raise ValueError(
                    f"`generator.init_from` '{init_from}' has no complete checkpoint; give a "
                    "run directory with checkpoints/step_<N> or one of those directories"
                )
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


def grad_sync(accelerator, pairs) -> Callable | None:
    """The ``sync`` hook of the GAN and VAE steps, called between backward and clipping.

    ``pairs``: ``(model, optimizer)`` of every model the steps update (unwrapped models, prepared
    optimizers). The hook averages the model's gradients over processes (:func:`sync_grads`)
    and, under fp16 loss scaling (``mixed_precision: fp16`` on GPUs), unscales them through the
    accelerator's ``GradScaler`` so that clipping sees the true gradients; the optimizer's
    ``step`` then skips the update when they overflowed. The average comes first, so an overflow
    on any process reaches every process and all skip the same steps. ``None`` when there is
    nothing to do (one process, no loss scaling).
    """
    scaler = getattr(accelerator, "scaler", None)
    scaling = scaler is not None and scaler.is_enabled()
    if accelerator.num_processes == 1 and not scaling:
        return None
    optimizers = {id(model): opt for model, opt in pairs}

    def hook(model) -> None:
        sync_grads(accelerator, model)
        if scaling:
            opt = optimizers[id(model)]
            scaler.unscale_(getattr(opt, "optimizer", opt))  # AcceleratedOptimizer wraps it

    return hook


def set_step_seed(run: Run, phase: str, step: int) -> None:
    torch.manual_seed(step_seed(run.cfg.seed, phase, step, run.accelerator.process_index))


# --------------------------------------------------------------------------------------------
# Row blocks and process reductions
# --------------------------------------------------------------------------------------------


class Blocks:
    """This process's row blocks of a global batch, each with a random stream of its own.

    A global batch of ``B`` rows is cut into ``K`` blocks, block ``j`` holding rows ``j::K``.
    Process ``r`` of ``n`` (``n`` divides ``K``) holds blocks ``ids = (r, r + n, ...)``, ``M =
    K / n`` of them, whose rows are exactly its rows ``r::n`` of the global batch: its ``m``-th
    block is ``local[m::M]`` (:meth:`split`), and :meth:`merge` interleaves per-block results
    back into local row order. The same holds for any contiguous run of local rows starting at a
    multiple of ``M`` (a micro-batch of gradient accumulation when ``B`` is divisible by ``K``
    times the number of micro-batches).

    :meth:`map` calls a function once per block with the global RNG (the CPU's and that of
    ``device_type``) seeded by ``(seed, call number, block id)``: the Gumbel noise, dropout
    masks or rollouts drawn for block ``j`` are then the same whichever process holds it, so the
    global set of samples does not depend on ``n``. With ``seed=None`` the RNG is left alone
    (unit tests, one block).
    """

    def __init__(self, ids: Sequence[int] = (0,), seed: int | None = None,
                 device_type: str = "cpu"):
        self.ids = tuple(ids)
        self.seed = seed
        self.device_type = device_type
        self.calls = 0  # map() calls so far: part of every block's seed

    def __len__(self) -> int:
        return len(self.ids)

    def split(self, x: Tensor) -> list[Tensor]:
        """The rows of each block: ``x[m::M]`` for ``m < M``."""
        M = len(self.ids)
        if x.shape[0] % M:
            raise ValueError(f"{x.shape[0]} rows cannot be cut into {M} equal row blocks")
        return [x] if M == 1 else [x[m::M] for m in range(M)]

    def merge(self, parts: list):
        """Inverse of :meth:`split` for tensors (batch first), ``None`` and (named) tuples."""
        first = parts[0]
        if len(parts) == 1 or first is None:
            return first
        if isinstance(first, Tensor):
            if first.dim() == 0:
                raise ValueError("scalars cannot be merged by rows; use map(..., merge=False)")
            return torch.stack(parts, 1).flatten(0, 1)
        if isinstance(first, tuple):
            fields = [self.merge([p[i] for p in parts]) for i in range(len(first))]
            return type(first)(*fields) if hasattr(first, "_fields") else type(first)(fields)
        raise TypeError(f"cannot merge per-block results of type {type(first).__name__}")

    def each(self, *xs: Tensor, rows: int | None = None) -> Iterator[tuple]:
        """The blocks' rows of ``xs`` (tuples of ``split`` parts), the global RNG seeded for
        each block just before it is yielded; with ``rows`` (and no ``xs``) the number of rows
        of each block, ``(rows // M,)``. The loop-body form of :meth:`map`."""
        call = self.calls
        self.calls += 1
        M = len(self.ids)
        if rows is not None:
            if rows % M:
                raise ValueError(f"{rows} rows cannot be cut into {M} equal row blocks")
            parts = [(rows // M,)] * M
        else:
            parts = list(zip(*[self.split(x) for x in xs], strict=True))
        for j, args in zip(self.ids, parts, strict=True):
            if self.seed is not None:
                _seed_global_rng(step_seed(self.seed, "block", call, j), self.device_type)
            yield args

    def map(self, fn: Callable, *xs: Tensor, rows: int | None = None, merge: bool = True):
        """``fn(*block_rows)`` for every block (``fn(rows // M)`` with ``rows`` instead of
        inputs: a sampler drawing that many local rows), each with its seeded stream; the
        results merged into local row order, or their list with ``merge=False``."""
        out = [fn(*args) for args in self.each(*xs, rows=rows)]
        return self.merge(out) if merge else out

    def wrap(self, module):
        """``module`` called block by block through :meth:`map`; other attributes pass through
        (``parameters``, ``train``, ``l2_loss``...). Returns ``module`` itself for one unseeded
        block."""
        if len(self.ids) == 1 and self.seed is None:
            return module
        return _Blockwise(module, self)


def _seed_global_rng(seed: int, device_type: str) -> None:
    """``torch.manual_seed`` restricted to the generators in use (it costs ~0.2 ms, mostly in
    looking at every device type; this ~2 us on CPU)."""
    torch.default_generator.manual_seed(seed)
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)  # this process's current device
    elif device_type != "cpu":
        torch.manual_seed(seed)


class _Blockwise:
    def __init__(self, module, blocks: Blocks):
        self.module, self.blocks = module, blocks

    def __call__(self, x: Tensor):
        return self.blocks.map(self.module, x)

    def __getattr__(self, name: str):
        return getattr(self.module, name)


def num_blocks(run: Run, rng_blocks: int | None, batch_size: int, micro_batches: int = 1,
               section: str = "train") -> int:
    """``K``: ``rng_blocks``, or one block per process when it is ``None``; checked against the
    number of processes and the global batch (errors name the keys of recipe ``section``)."""
    n = run.accelerator.num_processes
    K = n if rng_blocks is None else rng_blocks
    if K < 1 or K % n:
        raise ValueError(
            f"`{section}.rng_blocks` ({K}) must be a multiple of the number of processes ({n})"
        )
    if batch_size % (K * micro_batches):
        what = f"{K} row blocks" + (f" x {micro_batches} micro-batches (`{section}.grad_accum`)"
                                     if micro_batches > 1 else "")
        if rng_blocks is None:  # K = n: no other rng_blocks can help (it must be a multiple of n)
            what += f" (one per process: `{section}.rng_blocks` unset)"
        keys = ["batch_size"] + (["rng_blocks"] if rng_blocks is not None else []) + (
            ["grad_accum"] if micro_batches > 1 else [])
        raise ValueError(
            f"`{section}.batch_size` {batch_size} must be divisible by {what}; change "
            + " or ".join(f"`{section}.{k}`" for k in keys)
        )
    return K


def row_blocks(run: Run, rng_blocks: int | None, phase: str, step: int, batch_size: int,
               micro_batches: int = 1) -> Blocks:
    """This process's :class:`Blocks` of the global batch of ``step`` of ``phase``."""
    K = num_blocks(run, rng_blocks, batch_size, micro_batches)
    acc = run.accelerator
    return Blocks(range(acc.process_index, K, acc.num_processes),
                  seed=step_seed(run.cfg.seed, phase, step), device_type=acc.device.type)


def mean_over_processes(run: Run, values: dict) -> dict:
    """Means over processes of per-process scalars. Each process's value being a mean over its
    equal share of the global batch, this is the mean over the global batch."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return {k: float(v) for k, v in values.items()}
    t = torch.tensor([float(v) for v in values.values()], dtype=torch.float64, device=acc.device)
    return dict(zip(values, acc.reduce(t, "mean").tolist(), strict=True))


def sum_over_processes(run: Run, values: list[float]) -> list[float]:
    """Sums over processes (float64)."""
    acc = run.accelerator
    if acc.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=acc.device)
    return acc.reduce(t, "sum").tolist()


def gather_rows(run: Run):
    """A function concatenating a batch-first tensor of the same shape on every process (in
    process order), or ``None`` with one process."""
    acc = run.accelerator
    return acc.gather if acc.num_processes > 1 else None


def count_share(mask: Tensor, gather) -> Tensor:
    """``n * local count / global count`` of the true entries of ``mask``, ``gather`` being
    :func:`gather_rows`: the factor that turns a mean over this process's counted tokens into
    its share of the mean over all processes' counted tokens (gradients are averaged over the
    ``n`` processes); exactly 1 when every process counts as many."""
    local = mask.sum().reshape(1).double()
    counts = gather(local)
    return (local * counts.shape[0] / counts.sum().clamp_min(1.0)).float()[0]


def stop_requested(run: Run) -> bool:
    """Whether any process was interrupted (SIGINT/SIGTERM); every process then stops at the
    same step, so that none waits forever in a collective of the next one."""
    acc = run.accelerator
    if acc.num_processes > 1:
        flag = torch.tensor([float(run.interrupted)], device=acc.device)
        run.interrupted = bool(acc.reduce(flag, "sum").item() > 0)
    return run.interrupted


def eval_chunks(run: Run, total: int, size: int) -> list[tuple[int, int]]:
    """This process's chunks ``(index, rows)`` of ``total`` evaluation rows drawn in chunks of
    ``size``: chunk ``c`` belongs to process ``c % n``."""
    acc = run.accelerator
    chunks = [(c, min(size, total - start)) for c, start in enumerate(range(0, total, size))]
    return chunks[acc.process_index::acc.num_processes]


def gather_chunks(run: Run, chunks: dict[int, Tensor]) -> Tensor | None:
    """Every process's chunks ``{index: rows}`` concatenated in index order on every process
    (on the CPU); ``None`` when there are none."""
    items = [(c, t.cpu()) for c, t in chunks.items()]
    if run.accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        items = gather_object(items)
    items.sort(key=lambda item: item[0])
    return torch.cat([t for _, t in items]) if items else None


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
    """A checkpoint is usable when its state file loads, its model files exist and every file
    :func:`save_checkpoint` recorded still has its recorded size (a truncated or missing model,
    optimizer or RNG file makes it incomplete)."""
    try:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception:
        return False
    if not isinstance(state, dict) or "step" not in state or "phase" not in state:
        return False
    if not all((ckpt / f).is_file() for f in state.get("files", ["model.safetensors"])):
        return False
    for name, size in state.get("sizes", {}).items():
        path = Path(ckpt) / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return True


def own_checkpoint(out_dir: Path, ckpt: Path) -> bool:
    """Whether ``ckpt`` is one of ``out_dir``'s own checkpoints (``out_dir/checkpoints/*``)."""
    return ckpt.resolve().parent == (Path(out_dir) / "checkpoints").resolve()


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_N`` of a run directory (incomplete ones skipped
    with a warning), or None."""
    for ckpt in reversed(checkpoint_dirs(run_dir)):
        if is_complete(ckpt):
            return ckpt
        log.warning("skipping incomplete or corrupted checkpoint %s", ckpt)
    return None


def find_checkpoint(out_dir: Path, resume: str) -> Path:
    """``resume=auto``: the newest complete checkpoint under ``out_dir``; else a path (a
    checkpoint, or a run directory: its newest complete checkpoint)."""
    if resume != "auto":
        path = Path(resume)
        if path.is_dir() and not (path / STATE_FILE).exists() and checkpoint_dirs(path):
            ckpt = newest_checkpoint(path)
            if ckpt is None:
                raise FileNotFoundError(
                    f"`resume` run '{path}' has no complete checkpoint; give another run or "
                    f"checkpoint, or drop `resume` to start from scratch"
                )
            return ckpt
        if not path.is_dir():
            raise FileNotFoundError(
                f"`resume` checkpoint '{path}' does not exist; give a checkpoint directory "
                f"(<output_dir>/checkpoints/step_N), a run directory, or resume=auto"
            )
        if not (path / STATE_FILE).exists():
            raise FileNotFoundError(
                f"`resume` '{path}' is neither a checkpoint (no {STATE_FILE}) nor a run with "
                f"checkpoints/step_N; give a checkpoint directory, or resume=auto"
            )
        if not is_complete(path):
            raise ValueError(
                f"`resume` checkpoint '{path}' is incomplete or corrupted; give an earlier "
                f"checkpoint, or resume=auto (which skips incomplete ones)"
            )
        return path
    ckpt = newest_checkpoint(out_dir)
    if ckpt is not None:
        return ckpt
    fix = ("replace `resume` by overwrite=true to start over (it deletes that run's files)"
           if existing_run(Path(out_dir)) else "drop `resume` to start from scratch")
    raise FileNotFoundError(
        f"resume=auto found no complete checkpoint under '{Path(out_dir) / 'checkpoints'}'; {fix}"
    )


def check_compatible(ckpt: Path, cfg: RecipeConfig, corpus: Corpus) -> None:
    """Resuming another algorithm's run, or with another vocabulary or model shape, is an
    error, not a silent reload."""
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    meta = state.get("meta", {})
    try:
        run_meta = json.loads((Path(ckpt) / "meta.json").read_text())
    except (OSError, ValueError):
        run_meta = {}
    algorithm = run_meta.get("algorithm")
    if algorithm not in (None, cfg.algorithm):
        raise ValueError(
            f"`resume` checkpoint '{ckpt}' is from a run of `algorithm: {algorithm}`, the "
            f"recipe has `algorithm: {cfg.algorithm}`; to start the generator from its weights "
            f"use generator.init_from={ckpt} instead of resume"
        )
    if meta.get("vocab_size") not in (None, corpus.vocab_size):
        raise ValueError(
            f"vocabulary mismatch on resume: checkpoint '{ckpt}' has vocab_size "
            f"{meta['vocab_size']}, the corpus has {corpus.vocab_size}; resume with the "
            f"checkpoint's `data` settings (its config.yaml), or drop `resume`"
        )
    if "eos" in run_meta and (run_meta["eos"], run_meta.get("pad")) != (corpus.eos, corpus.pad):
        raise ValueError(
            f"text representation mismatch on resume: checkpoint '{ckpt}' has eos="
            f"{run_meta['eos']}, pad={run_meta.get('pad')}, the corpus has eos={corpus.eos}, "
            f"pad={corpus.pad} (`data.fixed_length` differs); resume with the checkpoint's "
            f"`data` settings (its config.yaml), or drop `resume`"
        )
    saved = meta.get("generator")
    if saved is not None:
        now = {k: v for k, v in cfg.generator.items() if k != "init_from"}
        if json.dumps(saved, sort_keys=True) != json.dumps(now, sort_keys=True):
            raise ValueError(
                f"generator mismatch on resume: checkpoint '{ckpt}' has {saved}, the recipe "
                f"has {now}; resume with the checkpoint's `generator` settings, or drop `resume`"
            )


BEST = "best"  # checkpoints/best: eval.best's checkpoint


def save_checkpoint(run: Run, step: int, phase: str, extra: dict | None = None,
                    keep_last: int = 2, offset: int = 0, name: str | None = None,
                    like: Path | None = None) -> Path | None:
    """``accelerator.save_state`` into a temporary directory, then an atomic rename to
    ``checkpoints/step_<offset + step>``; keeps the newest ``keep_last`` checkpoints.

    ``step`` is the step within ``phase``; ``offset`` (the steps of earlier phases) only names
    the directory, so that the checkpoints of several phases sort in order. ``name`` (e.g.
    ``best``, :func:`update_best`) writes ``checkpoints/<name>`` instead, replacing it, and prunes
    nothing; ``resume=auto`` never picks it, ``resume=<that path>`` does. ``like``: a checkpoint
    of this very state (same step and ``extra``) whose files are hard-linked instead of saved
    again."""
    acc = run.accelerator
    root = run.out_dir / "checkpoints"
    final = root / (name or f"{CKPT_PREFIX}{offset + step}")
    tmp = root / f".tmp_{final.name}"
    if acc.is_main_process:
        _settle_rewind(run)
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if like is not None:
        if acc.is_main_process:
            try:
                shutil.copytree(like, tmp, copy_function=os.link)
            except OSError:  # no hard links on this file system
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(like, tmp)
    else:
        acc.wait_for_everyone()
        acc.save_state(str(tmp), safe_serialization=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_state(run, tmp, step, phase, offset, extra)
    if acc.is_main_process:
        _replace_dir(tmp, final)
        for old in checkpoint_dirs(run.out_dir)[:-keep_last] if keep_last > 0 and not name else []:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _write_state(run: Run, tmp: Path, step: int, phase: str, offset: int,
                 extra: dict | None) -> None:
    """Config, meta and the trainer state next to the files of ``save_state`` (main process)."""
    files = sorted(p.name for p in tmp.iterdir() if p.name.endswith(".safetensors"))
    save_config(run.cfg, tmp / "config.yaml")
    write_meta(tmp, run.cfg, run.corpus)
    # every file but the state itself, with its size: checked by is_complete
    sizes = {p.relative_to(tmp).as_posix(): p.stat().st_size
             for p in sorted(tmp.rglob("*")) if p.is_file()}
    meta = {"vocab_size": run.corpus.vocab_size,
            "generator": {k: v for k, v in run.cfg.generator.items() if k != "init_from"}}
    log_file = run.out_dir / "metrics.jsonl"
    state = {"step": step, "phase": phase, "index": offset + step, "best": run.best,
             "extra": extra or {}, "files": files,
             "sizes": sizes, "meta": meta, "metrics": run.last_metrics,
             "metrics_bytes": log_file.stat().st_size if log_file.exists() else 0}
    torch.save(state, tmp / STATE_FILE)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is first renamed to ``.old_<name>``
    and removed only after, so that a kill in between leaves one of the two (see
    :func:`best_so_far`)."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = final.with_name(f".old_{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoints(run: Run, step: int, phase: str, extra: dict | None, *, periodic: bool,
                     best: bool, keep_last: int = 2, offset: int = 0) -> None:
    """A training loop's checkpoints after a step: ``checkpoints/best`` when the step's
    evaluation is the best so far (:func:`update_best`), then ``step_<offset + step>`` when
    ``periodic``, hard-linked to the best's files when both. The best goes first: a run killed
    between the two saves resumes from an earlier step and finds the best already written."""
    like = save_checkpoint(run, step, phase, extra, offset=offset, name=BEST) if best else None
    if periodic:
        save_checkpoint(run, step, phase, extra, keep_last, offset, like=like)



def update_best(run: Run, step: int, phase: str, metrics: dict, offset: int = 0) -> bool:
    """After an evaluation: ``True`` on every process when ``metrics`` is the best so far by
    ``eval.best`` (strictly better than every earlier evaluation of the run, all phases, compared
    as ``metrics.jsonl`` records them, so ``textgan report --best`` picks the same step); the
    trainer then saves ``checkpoints/best`` (:func:`save_checkpoints`).

    A resumed run compares with the record of ``checkpoints/best`` (:func:`best_so_far`); every
    checkpoint's state also notes the best so far when it was saved. A non-finite value is
    never the best. With several processes the main process's comparison decides."""
    spec = run.cfg.eval.best
    if spec is None:
        return False
    from textgan.metrics import best_direction

    key, how = best_direction(spec, "eval.best")
    value = _plain(metrics[key])
    prev = run.best
    if prev is not None and (prev.get("key"), prev.get("how")) != (key, how):
        if run.is_main:
            log.info("eval.best is now %s:%s (was %s:%s): the best so far starts again", key,
                     how, prev.get("key"), prev.get("how"))
        prev = None
    better = math.isfinite(value) and (
        prev is None or (value > prev["value"] if how == "max" else value < prev["value"]))
    if run.accelerator.num_processes > 1:  # tiny float differences must not split the decision
        better = sum_over_processes(run, [float(better and run.is_main)])[0] > 0
    if better:
        run.best = {"key": key, "how": how, "value": value, "phase": phase, "step": step,
                    "index": offset + step}
        if run.is_main:
            log.info("best %s so far: %s at %s step %d -> %s", key, value, phase, step,
                     run.out_dir / "checkpoints" / BEST)
    return better


def load_checkpoint(run: Run, ckpt: Path) -> dict:
    """Restore models and optimizers (weights_only loading) and return the trainer state.

    * The optimizers' hyper-parameters (``lr``, ``betas``, ``weight_decay``...) stay the
      recipe's: the checkpoint brings their moments and step counts only, so that a run resumed
      with a lower ``lr`` (e.g. after a non-finite loss) really uses it.
    * ``metrics.jsonl`` of this run is cut back to what it held when the checkpoint was saved:
      the records a killed run wrote after its last checkpoint (and a half-written last line)
      are dropped, and the resumed run writes them again, so the file is the uninterrupted
      run's.
    * The last logged metrics come back too (they are quoted by :func:`check_finite`).
    """
    acc = run.accelerator
    optimizers = list(getattr(acc, "_optimizers", []))
    recipe_groups = [[{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
                     for opt in optimizers]
    try:
        acc.load_state(str(ckpt))
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:  # is_complete passed, but a file's content is damaged
        first = (str(e).splitlines() or [""])[0]
        shape = re.search(r"size mismatch for ([\w.]+): copying a param with shape "
                          r"torch.Size\((\[[^]]*\])\) from checkpoint, the shape in current "
                          r"model is torch.Size\((\[[^]]*\])\)", str(e))
        if shape:  # the recipe builds other model sizes (e.g. VAE train.latent_vars)
            name, saved, now = shape.groups()
            raise ValueError(
                f"model shape mismatch on resume: checkpoint '{ckpt}' has {name} of shape "
                f"{saved}, the recipe builds {now}; resume with the checkpoint's settings (its "
                f"run's config.yaml) or start a new `output_dir`"
            ) from None
        raise TrainingError(
            f"checkpoint '{ckpt}' could not be loaded ({type(e).__name__}: {first}); move it "
            f"away to resume from the previous one, or drop `resume`"
        ) from None
    if not getattr(acc, "_schedulers", None):  # a scheduler would own the learning rate
        for opt, groups in zip(optimizers, recipe_groups, strict=True):
            for group, recipe in zip(opt.param_groups, groups, strict=False):
                changed = {k: (group.get(k), v) for k, v in recipe.items() if group.get(k) != v}
                if changed:
                    log.info("optimizer settings from the recipe, not the checkpoint: %s",
                             ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items()))
                group.update(recipe)
    run.last_metrics = dict(state.get("metrics") or {})
    run.best = best_so_far(run)
    if own_checkpoint(run.out_dir, Path(ckpt)):
        run.rewind = (Path(ckpt), state.get("metrics_bytes"), _index(Path(ckpt), state))
    log.info("resumed from %s (phase %s, step %d)", ckpt, state["phase"], state["step"])
    return state


def best_so_far(run: Run) -> dict | None:
    """The record of ``<output_dir>/checkpoints/best`` (key, value, phase, step, index), the
    best of every evaluation this output directory has made; ``None`` without one (a run
    resumed from another directory's checkpoint starts its own). A best whose replacement was
    cut short (:func:`_replace_dir`) is put back first."""
    root = run.out_dir / "checkpoints"
    best, old = root / BEST, root / f".old_{BEST}"
    if run.is_main and not is_complete(best) and is_complete(old):
        shutil.rmtree(best, ignore_errors=True)
        os.replace(old, best)
        log.warning("%s: put back the best checkpoint whose replacement was interrupted", best)
    run.accelerator.wait_for_everyone()
    if not is_complete(best):
        return None
    return torch.load(best / STATE_FILE, map_location="cpu", weights_only=True).get("best")


def _index(ckpt: Path, state: dict) -> int | None:
    """Where a checkpoint lies in its run: ``offset + step`` (older checkpoints: their name)."""
    if "index" in state:
        return state["index"]
    tail = ckpt.name[len(CKPT_PREFIX):]
    return int(tail) if ckpt.name.startswith(CKPT_PREFIX) and tail.isdigit() else None


def _settle_rewind(run: Run) -> None:
    """At the first write of a run resumed from one of its own checkpoints (main process):
    ``metrics.jsonl`` is cut back to that checkpoint (:func:`_cut_metrics`) and the step
    checkpoints written after it are removed: a rewound run (``resume=<an earlier
    checkpoint>``) is the run from that point on, and later checkpoints left behind would be
    taken by ``resume=auto`` and make ``keep_last`` prune the new ones. ``checkpoints/best``
    stays: it is the best of every evaluation the directory made. A resume refused or failing
    before its first write changes nothing."""
    if run.rewind is None:
        return
    ckpt, size, here = run.rewind
    run.rewind = None
    _cut_metrics(run, ckpt, size)
    for p in checkpoint_dirs(run.out_dir) if here is not None else []:
        if int(p.name[len(CKPT_PREFIX):]) > here:
            log.warning("resuming from %s rewinds the run: removing the later checkpoint %s",
                        ckpt.name, p)
            shutil.rmtree(p, ignore_errors=True)


def _cut_metrics(run: Run, ckpt: Path, size: int | None) -> None:
    """Truncate this run's ``metrics.jsonl`` to ``size`` bytes (its length at the checkpoint);
    a checkpoint of another directory, or a shorter file, is left alone."""
    log_file = run.out_dir / "metrics.jsonl"
    if size is None or not log_file.is_file() or log_file.stat().st_size <= size:
        return
    if not own_checkpoint(run.out_dir, ckpt):
        return
    with open(log_file, "r+b") as f:
        f.truncate(size)
    log.info("%s: dropped the records written after %s (they are written again)", log_file,
             ckpt.name)


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
    _settle_rewind(run)
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


def mean_records(window: list[dict]) -> dict:
    """Key-wise mean of the per-step stats logged as one ``metrics.jsonl`` record."""
    return {k: sum(w[k] for w in window) / len(window) for k in window[0]}


def last_update(updates: list[dict]) -> dict:
    """The metrics of the last of several updates in one step, except that a value that was
    non-finite in *any* of them is kept, so :func:`check_finite` sees a NaN from an earlier
    D update too (not one step late)."""
    out = dict(updates[-1])
    for metrics in updates[:-1]:
        out.update({k: v for k, v in metrics.items() if not math.isfinite(v)})
    return out


def check_finite(run: Run, step: int, phase: str, losses: dict) -> None:
    """Stop with a clear error on a NaN/inf loss (never silently continue).

    ``step`` is the loop's 0-based index of the step that produced ``losses``; the message
    numbers it from 1, as ``metrics.jsonl`` and the checkpoints do (the step count after it).
    Nothing is saved: the newest checkpoint holds the last finite state."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        last = {k: v for k, v in run.last_metrics.items() if k != "time"}
        ckpts = checkpoint_dirs(run.out_dir)
        where = f"the newest checkpoint is '{ckpts[-1]}'" if ckpts else "no checkpoint was saved"
        raise TrainingError(
            f"non-finite loss at {phase} step {step + 1}: {bad}; last finite metrics: {last}; "
            f"{where}. Lower the learning rate or enable gradient clipping (`grad_clip`)."
        )


@torch.no_grad()
def evaluate_generator(run: Run, G, step: int, phase: str, tau: float = 1.0) -> dict:
    """NLL_test, NLL_oracle (oracle data), BLEU-n (text), ``unique`` and Self-BLEU-n
    (``eval.self_bleu``, :func:`diversity_metrics`) and a few decoded samples.

    Split over processes, every process returning the same metrics (those of one process, up to
    float summation order): process ``r`` of ``n`` scores the test rows ``r::n``
    (:func:`test_nll`) and draws the sample chunks ``c % n == r`` of ``eval.batch_size``
    samples, chunk ``c`` from a generator seeded by ``(seed, phase, step, c)``
    (:func:`eval_chunks`); the sums are reduced over processes (:func:`sample_metrics`) and
    the samples gathered for ``samples/<phase>_step<step>.txt``. Every process must call it.
    """
    from textgan.sampling import sample_sequence

    cfg, corpus = run.cfg.eval, run.corpus
    G = run.accelerator.unwrap_model(G)
    was_training = G.training
    G.eval()
    out: dict = {"nll_test": test_nll(run, G, cfg.batch_size)}
    chunks = {}
    for c, rows in eval_chunks(run, cfg.num_samples, cfg.batch_size):
        rng = torch.Generator(device=run.device).manual_seed(
            step_seed(run.cfg.seed, f"eval/{phase}", step, c))
        chunks[c] = sample_sequence(G, rows, corpus.seq_len, method="multinomial", rng=rng,
                                    eos=corpus.eos, pad=corpus.pad).tokens
    out.update(sample_metrics(run, torch.cat(list(chunks.values())) if chunks else None,
                              cfg.num_samples))
    samples = gather_chunks(run, chunks)
    if samples is not None:  # every process has all the samples: the same figures everywhere
        out.update(diversity_metrics(corpus.decode(samples), cfg.self_bleu, train_set(run)))
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


def diversity_metrics(sentences: list[list[str]], self_bleu: list[int],
                      train: set | None = None) -> dict:
    """``unique``: the share of distinct sentences (1.0: no repeats; a generator collapsed onto
    ``k`` sentences gives ``k / len(sentences)``); ``novelty`` with ``train`` (the training
    sentences as tuples, :func:`train_set`): the share of sentences that are not a training
    sentence verbatim (a generator that memorises its corpus copies it); ``self_bleu{n}`` for
    the orders asked for, each sentence against all the others
    (:func:`textgan.metrics.self_bleu_scores`)."""
    from textgan import metrics

    out = {"unique": len(set(map(tuple, sentences))) / len(sentences)}
    if train is not None:
        out["novelty"] = sum(tuple(s) not in train for s in sentences) / len(sentences)
    if self_bleu:
        scores = metrics.self_bleu_scores(sentences, self_bleu)  # one entry per distinct order
        out.update({f"self_bleu{n}": v for n, v in scores.items()})
    return out


def train_set(run: Run) -> set | None:
    """The training sentences of a text corpus as token tuples (decoded as samples are), built
    once per run; ``None`` for the oracle, whose samples are scored by the oracle instead."""
    if run.corpus.oracle is not None:
        return None
    if run.train_set is None:
        run.train_set = set(map(tuple, run.corpus.decode(run.corpus.train)))
    return run.train_set


@torch.no_grad()
def test_nll(run: Run, G, batch_size: int) -> float:
    """NLL_test of ``G`` on the corpus' test split, process ``r`` scoring rows ``r::n``."""
    from textgan import metrics

    acc, corpus = run.accelerator, run.corpus
    rows = corpus.test[acc.process_index::acc.num_processes]
    total, count = (metrics.nll_sums(G, rows.to(run.device), pad=corpus.pad,
                                     batch_size=batch_size) if rows.shape[0] else (0.0, 0))
    total, count = sum_over_processes(run, [total, count])
    if count == 0:
        raise ValueError("every target token of the test split is padding; nothing to score")
    return total / count


@torch.no_grad()
def sample_metrics(run: Run, samples: Tensor | None, total: int) -> dict:
    """``nll_oracle`` (oracle corpus) or ``bleu{n}`` (text, ``eval.bleu`` orders against the
    test split or its first ``eval.num_refs`` sentences) of the ``total`` evaluation samples of
    all processes, given this process's ``samples`` (``None`` when it has none): per-sample
    scores are summed here and the sums reduced over processes."""
    from textgan import metrics

    corpus, cfg = run.corpus, run.cfg.eval
    if corpus.oracle is not None:
        s = 0.0
        if samples is not None:
            s = metrics.nll_oracle(corpus.oracle, samples.to(run.device)) * samples.shape[0]
        return {"nll_oracle": sum_over_processes(run, [s])[0] / total}
    ns = tuple(dict.fromkeys(cfg.bleu))
    sums = [0.0] * len(ns)
    if samples is not None:
        refs = corpus.decode(corpus.test if cfg.num_refs is None else corpus.test[:cfg.num_refs])
        per = metrics.bleu_sentence_scores(corpus.decode(samples.cpu()), refs, ns)
        sums = [math.fsum(per[n]) for n in ns]
    sums = sum_over_processes(run, sums)
    return {f"bleu{n}": s / total for n, s in zip(ns, sums, strict=True)}


def progress(run: Run, total: int, initial: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not run.is_main,
                dynamic_ncols=True, leave=True)


def load_for_eval(path):
    """A trained run or checkpoint, ready to sample and score (see :mod:`textgan.runs`)."""
    from textgan.runs import load_for_eval as load

    return load(path)
