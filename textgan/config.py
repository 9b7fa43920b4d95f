"""Recipes: YAML files mapped onto typed dataclasses, with strict keys and dotted overrides.

    cfg = load_recipe("recipes/relgan/oracle.yaml", overrides=["train.adv_steps=100"])

A recipe has top-level keys ``algorithm``, ``seed``, ``output_dir``, ``resume``, ``overwrite``,
``description``, ``flush_denormal`` and the sections ``data`` (:class:`~textgan.data.DataConfig`),
``generator`` and ``discriminator`` (flat model kwargs plus ``name``/``init_from``, checked
against the model's signature), ``sampler`` (:class:`SamplerConfig`), ``eval``
(:class:`EvalConfig`), ``pretrain`` (the MLE trainer's config) and ``train`` (the algorithm's
own config dataclass, from ``TRAIN_CONFIGS``). An unknown key or a value of the wrong type
raises ``ValueError`` naming the key and suggesting close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from textgan.data import DataConfig
from textgan.errors import choice_error

# algorithm -> "module:ConfigClass" for the `train:` section
TRAIN_CONFIGS = {
    "mle": "textgan.train.mle:MLEConfig",
    "relgan": "textgan.train.relgan:RelGANConfig",
    "seqgan": "textgan.train.seqgan:SeqGANConfig",
    "vae": "textgan.train.vae:VAEConfig",
}


@dataclass
class SamplerConfig:
    """The ``sampler:`` section: how the generator's samples are drawn and relaxed."""

    method: str = "gumbel_softmax"  # multinomial | gumbel_softmax | gumbel_st
    schedule: str = "exp"  # temperature schedule (sampling.SCHEDULES)
    beta_max: float = 100.0  # final inverse temperature for RelGAN schedules
    # N of the beta schedule (beta reaches beta_max at step N); None: the run's own length
    # (train.adv_steps / train.steps), as RelGAN's paper states it. RelGAN's official code
    # fixes N = 5000 for every run, so its 3,000-iteration oracle runs end at beta_max ** 0.6
    # and its 2,000-iteration COCO runs at beta_max ** 0.4; the RelGAN recipes set 5000.
    schedule_steps: int | None = None
    tau: float = 1.0  # fixed temperature where no schedule applies (sampling, eval)
    anneal_rate: float = 1e-4  # `anneal` schedule: tau = max(tau_min, exp(-rate * step))
    tau_min: float = 0.5
    feed: str = "hard"  # next-step input for relaxed methods: hard | soft

    def __post_init__(self):
        from textgan import sampling

        if self.method not in sampling.METHODS:
            hint = ("; the score-function estimator is chosen by train.estimator (RelGAN) or "
                    "train.latent_method (VAE)" if self.method == "score_function" else "")
            raise ValueError(choice_error("sampler.method", self.method, sampling.METHODS) + hint)
        if self.schedule not in sampling.SCHEDULES:
            raise ValueError(choice_error("sampler.schedule", self.schedule, sampling.SCHEDULES))
        if self.feed not in ("hard", "soft"):
            raise ValueError(choice_error("sampler.feed", self.feed, ("hard", "soft")))
        if not self.tau > 0:
            raise ValueError(f"`sampler.tau` must be > 0, got {self.tau}")
        if not self.beta_max >= 1:
            raise ValueError(
                f"`sampler.beta_max` must be >= 1 (inverse temperature), got {self.beta_max}"
            )
        if not self.tau_min > 0:
            raise ValueError(f"`sampler.tau_min` must be > 0, got {self.tau_min}")
        if self.schedule_steps is not None and self.schedule_steps < 2:
            raise ValueError(f"`sampler.schedule_steps` must be >= 2 (or unset: the run's "
                             f"length), got {self.schedule_steps}")
        if not self.anneal_rate >= 0:
            raise ValueError(f"`sampler.anneal_rate` must be >= 0, got {self.anneal_rate}")

    def tau_schedule(self, run_steps: int, steps_key: str = "train.adv_steps"):
        """``tau(step)`` for a run of ``run_steps`` steps (``steps_key`` names that setting in
        errors): ``schedule`` over ``N = schedule_steps``, or over the run when it is unset.

        Raises:
            ValueError: ``schedule_steps`` shorter than the run for a schedule that grows beta
                (past step N the formulas overshoot ``beta_max``; RelGAN's code asserts it).
        """
        from textgan import sampling

        n = run_steps if self.schedule_steps is None else self.schedule_steps
        if n < run_steps and self.schedule not in ("no", "anneal"):
            raise ValueError(
                f"`sampler.schedule_steps` ({n}) must be >= `{steps_key}` ({run_steps}): "
                f"beta would pass beta_max; raise it or leave it unset (the run's length)")
        return sampling.temperature_schedule(self.schedule, beta_max=self.beta_max,
                                             total_steps=max(n, 2), rate=self.anneal_rate,
                                             tau_min=self.tau_min)


@dataclass
class EvalConfig:
    """The ``eval:`` section: periodic evaluation during training."""

    every: int = 500  # evaluate every N optimizer steps (and at the end)
    num_samples: int = 1000  # samples drawn for BLEU / NLL_oracle
    num_refs: int | None = None  # references for BLEU (None = whole test set)
    bleu: list = field(default_factory=lambda: [2, 3, 4, 5])  # BLEU orders on text
    # Self-BLEU orders of the samples against each other (diversity; [] = none); every
    # evaluation also logs ``unique``, the share of distinct samples
    self_bleu: list = field(default_factory=list)
    batch_size: int = 500  # batch size for NLL and sampling during evaluation
    print_samples: int = 3  # decoded samples shown in the log
    tensorboard: bool = False  # also write TensorBoard event files under <output_dir>
    # keep the checkpoint of the best evaluation so far by this metric in
    # <output_dir>/checkpoints/best: KEY (bleu*, unique, novelty, recon_bleu, recon_acc maximised,
    # the others minimised), KEY:min or KEY:max, e.g. nll_oracle or bleu4; None = no best checkpoint
    best: str | None = None

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"`eval.every` must be >= 1, got {self.every}")
        if self.best is not None:
            from textgan.metrics import best_direction

            best_direction(self.best, "eval.best")
        for key in ("bleu", "self_bleu"):
            orders = getattr(self, key)
            if not isinstance(orders, list) or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in orders):
                raise ValueError(f"`eval.{key}` must be a list of n-gram orders >= 1 "
                                 f"(e.g. [2, 3, 4, 5]), got {orders!r}")
        if self.self_bleu and self.num_samples < 2:
            raise ValueError(f"`eval.self_bleu` scores each sample against the others: it needs "
                             f"`eval.num_samples` >= 2, got {self.num_samples}")


@dataclass
class RecipeConfig:
    algorithm: str
    data: DataConfig
    train: Any
    seed: int = 0
    output_dir: str = "runs/default"
    resume: str | None = None  # None | "auto" | path to a checkpoint directory
    # A run already in output_dir (metrics.jsonl or checkpoints/): refused unless resumed, or
    # deleted first (its metrics, checkpoints, samples, TensorBoard files) with overwrite: true.
    overwrite: bool = False
    description: str = ""
    generator: dict = field(default_factory=lambda: {"name": "lstm"})
    discriminator: dict = field(default_factory=dict)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: Any = None
    accelerate: dict = field(default_factory=dict)  # extra Accelerator kwargs (e.g. log_with)
    # CPU: subnormal floats (|x| < 1.2e-38) computed as zero (x86 flush-to-zero and
    # denormals-are-zero; torch.set_flush_denormal). Subnormals appear as a trained generator's
    # softmax sharpens, and each costs ~100 cycles on many x86 cores: with them kept, MLE on the
    # official oracle slowed from 0.4 to 4 s per step by step 1,650 on an Intel Xeon.
    flush_denormal: bool = True

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _import(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def train_config_class(algorithm: str) -> type:
    if algorithm not in TRAIN_CONFIGS:
        raise ValueError(choice_error("algorithm", algorithm, TRAIN_CONFIGS))
    return _import(TRAIN_CONFIGS[algorithm])


# --------------------------------------------------------------------------------------------
# dict -> dataclass with strict keys and type checks
# --------------------------------------------------------------------------------------------


def _check_type(value, tp, key: str):
    """Return ``value`` converted to ``tp`` where lossless (int -> float), else raise."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_type(value, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"`{key}` has the wrong type")
    base = origin or tp
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        list: isinstance(value, (list, tuple)),
        dict: isinstance(value, dict),
    }.get(base)
    if ok is None:
        return value
    if not ok:
        hint = ("; YAML reads unquoted yes/no/on/off/true/false as booleans: quote the value "
                f"({key}='off', not {key}=off)") if base is str and isinstance(value, bool) else ""
        raise ValueError(
            f"`{key}` must be of type {getattr(base, '__name__', base)}, got "
            f"{type(value).__name__} {value!r}{hint}"
        )
    if base is float:
        return float(value)
    if base is list:
        return list(value)
    return value


def _did_you_mean_keys(key: str, names, prefix: str = "") -> str:
    """``; did you mean 'a.b' or 'a.c'?`` for close keys, else ``; valid keys: [...]``."""
    close = difflib.get_close_matches(key, names, n=3)
    dotted = [f"{prefix}.{c}" if prefix else c for c in close]
    return f"; did you mean {' or '.join(repr(c) for c in dotted)}?" if close \
        else f"; valid keys: {list(names)}"


def _qualify(message: str, names, prefix: str) -> str:
    """Turn the bare field names of a section's own checks (`` `steps` ``) into dotted keys
    (`` `pretrain.steps` ``): the same config class serves several sections."""
    for name in names:
        message = message.replace(f"`{name}`", f"`{prefix}.{name}`")
    return message


def from_dict(cls: type, data: dict | None, prefix: str):
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ValueError."""
    if data is not None and not isinstance(data, dict):
        raise ValueError(
            f"`{prefix}` must be a section (key: value mapping), got {type(data).__name__} "
            f"{data!r}; set single keys as {prefix}.KEY=VALUE"
        )
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ValueError(
                f"unknown recipe key '{prefix}.{key}'{_did_you_mean_keys(key, names, prefix)}"
            )
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{prefix}.{key}")
        else:
            kwargs[key] = _check_type(value, tp, f"{prefix}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(_qualify(str(e), names, prefix)) from None


# --------------------------------------------------------------------------------------------
# Recipes
# --------------------------------------------------------------------------------------------

_TOP = [f.name for f in dataclasses.fields(RecipeConfig)]


def _parse_value(text: str):
    """A YAML scalar/flow value; ``1e-3`` is a float (YAML 1.1 would read it as a string)."""
    if text == "":
        return None
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf") else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Set ``a.b=value`` pairs (values parsed as YAML scalars) into a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(
                f"override '{item}' is not of the form key=value (e.g. train.steps=100)"
            )
        key, text = item.split("=", 1)
        value = _parse_value(text)
        parts = key.strip().split(".")
        node = raw
        for i, p in enumerate(parts[:-1]):
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                section = ".".join(parts[: i + 1])
                raise ValueError(f"cannot set '{key}': '{section}' is not a section")
            node = node[p]
        node[parts[-1]] = value
    return raw


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe '{path}' does not exist; `textgan ls` lists recipes")
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"recipe '{path}' must be a YAML mapping at top level")
    return raw


def build_config(raw: dict) -> RecipeConfig:
    raw = dict(raw)
    for key in raw:
        if key not in _TOP:
            raise ValueError(f"unknown recipe key '{key}'{_did_you_mean_keys(str(key), _TOP)}")
    if "algorithm" not in raw:
        raise ValueError(f"the recipe has no `algorithm:`; choose one of {list(TRAIN_CONFIGS)}")
    algorithm = raw["algorithm"]
    train_cls = train_config_class(algorithm)
    kwargs = {"algorithm": algorithm,
              "data": from_dict(DataConfig, raw.get("data"), "data"),
              "train": from_dict(train_cls, raw.get("train"), "train")}
    if algorithm != "mle" or raw.get("pretrain") is not None:
        kwargs["pretrain"] = from_dict(train_config_class("mle"), raw.get("pretrain"), "pretrain")
    for key in ("seed", "output_dir", "resume", "overwrite", "description", "generator",
                "discriminator", "accelerate", "flush_denormal"):
        if key in raw:
            tp = typing.get_type_hints(RecipeConfig)[key]
            kwargs[key] = _check_type(raw[key], tp, key)
    for key, cls in (("sampler", SamplerConfig), ("eval", EvalConfig)):
        kwargs[key] = from_dict(cls, raw.get(key), key)
    cfg = RecipeConfig(**kwargs)
    if cfg.overwrite and cfg.resume:
        raise ValueError(
            f"`overwrite: true` starts the run in output_dir over and `resume` "
            f"({cfg.resume!r}) continues one; set overwrite=false to resume, or drop `resume` "
            f"to start over"
        )
    _check_models(cfg)
    _check_accelerate(cfg.accelerate)
    _check_batch_sizes(cfg)
    _check_betas(cfg)
    return cfg


def _check_betas(cfg: RecipeConfig) -> None:
    """Adam's ``betas`` (``train.betas`` / ``pretrain.betas``): two numbers in [0, 1)."""
    for section in ("pretrain", "train"):
        betas = getattr(getattr(cfg, section), "betas", None)
        if betas is None:
            continue
        ok = len(betas) == 2 and all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)
        if not ok:
            raise ValueError(
                f"`{section}.betas` must be two numbers in [0, 1) (Adam's), e.g. [0.9, 0.999], "
                f"got {betas}"
            )


def _check_accelerate(kwargs: dict) -> None:
    """``accelerate:`` keys must be ``Accelerator`` arguments (checked before anything runs);
    ``mixed_precision: no``, which YAML reads as ``False``, is set back to ``"no"`` in place."""
    if not kwargs:
        return
    import inspect

    from accelerate import Accelerator

    valid = [p for p in inspect.signature(Accelerator.__init__).parameters if p != "self"]
    for key in kwargs:
        if key not in valid:
            raise ValueError(
                f"unknown recipe key 'accelerate.{key}' (not an accelerate.Accelerator "
                f"argument){_did_you_mean_keys(str(key), valid, 'accelerate')}"
            )
    if "mixed_precision" in kwargs:
        mp = kwargs["mixed_precision"]
        if mp is False:  # YAML 1.1 reads an unquoted `no` as false: that is what was meant
            kwargs["mixed_precision"] = mp = "no"
        modes = ["no", "bf16", "fp16", "fp8"]
        if mp is not None and mp not in modes:
            raise ValueError(
                f"`accelerate.mixed_precision` must be one of {modes}, got {mp!r}; "
                f"e.g. accelerate.mixed_precision=bf16"
            )


def _check_batch_sizes(cfg: RecipeConfig) -> None:
    """On the oracle the number of training sequences is known before any data is drawn."""
    if cfg.data.name != "oracle":
        return
    for section in ("pretrain", "train"):
        part = getattr(cfg, section)
        bs = getattr(part, "batch_size", None)
        steps = getattr(part, "steps", None)
        if steps == 0 or (section == "pretrain" and cfg.algorithm == "vae"):
            continue
        if bs is not None and bs > cfg.data.num_train:
            raise ValueError(
                f"`{section}.batch_size` ({bs}) exceeds `data.num_train` "
                f"({cfg.data.num_train}); lower the batch size or raise data.num_train"
            )


def _check_models(cfg: RecipeConfig) -> None:
    from textgan.models import DISCRIMINATORS, GENERATORS, check_kwargs, resolve

    for section, registry in (("generator", GENERATORS), ("discriminator", DISCRIMINATORS)):
        spec = dict(getattr(cfg, section))
        if not spec:
            continue
        name = spec.pop("name", None)
        spec.pop("init_from", None)
        if name is None:
            raise ValueError(f"`{section}.name` is required; choose one of {sorted(registry)}")
        try:
            cls = resolve(registry, name, section)
        except ValueError as e:
            raise ValueError(f"`{section}.name`: {e}") from None
        # vocab_size / start_token come from the corpus, never from the recipe
        check_kwargs(cls, spec, section)
        _check_model_types(cls, spec, section)
        for key, allowed in getattr(cls, "CHOICES", {}).items():  # e.g. RMCGenerator's variant
            if key in spec and spec[key] not in allowed:
                raise ValueError(choice_error(f"{section}.{key}", spec[key], allowed))


def _check_model_types(cls: type, spec: dict, section: str) -> None:
    """Values of the model's annotated ``int`` / ``float`` / ``bool`` / ``str`` arguments must
    have that type (``generator.hidden_dim=abc`` fails here, before any output is written)."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # unresolvable annotations: leave the check to the model
        return
    for key, value in spec.items():
        tp = hints.get(key)
        if tp is None:
            continue
        args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union,
                                                               types.UnionType) else (tp,)
        if all(a in (int, float, bool, str, type(None)) for a in args):
            _check_type(value, tp, f"{section}.{key}")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a YAML recipe, apply dotted ``key=value`` overrides and validate everything."""
    raw = apply_overrides(read_recipe(path), list(overrides or []))
    return build_config(raw)


def save_config(cfg: RecipeConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from textgan.data import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))
