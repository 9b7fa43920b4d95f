"""Model registries: generators and discriminators, built by name from flat keyword arguments.

Registries map a name to ``"module:Class"`` so that building an LSTM never imports
``transformers``. Configs never reach into models: a recipe's ``generator:`` section is passed
as keyword arguments to the class, after :func:`check_kwargs` has bound them to its signature.
"""

from __future__ import annotations

import importlib
import inspect
import re

from torch import nn

from textgan.errors import did_you_mean

GENERATORS = {
    "lstm": "textgan.models.lstm:LSTMGenerator",
    "rmc": "textgan.models.relational_memory:RMCGenerator",
    "hf": "textgan.models.hf:HFGenerator",
}
DISCRIMINATORS = {
    "relgan_cnn": "textgan.models.discriminators:RelGANDiscriminator",
    "seqgan_cnn": "textgan.models.discriminators:SeqGANDiscriminator",
}


def resolve(registry: dict[str, str], name: str, kind: str = "model") -> type:
    """Return the class registered under ``name``; unknown names raise with suggestions."""
    if name not in registry:
        raise ValueError(
            f"unknown {kind} '{name}'; choose one of {sorted(registry)}"
            f"{did_you_mean(name, registry)}"
        )
    module, cls = registry[name].split(":")
    return getattr(importlib.import_module(module), cls)


_SIZE_KEY = re.compile(r"(_dim|_size|_slots|_layers|_heads|_rep|_filters)$|^(num|n)_")


def check_sizes(kwargs: dict, section: str) -> None:
    """Sizes (``*_dim``, ``*_size``, ``num_*``, ``n_*``, ... : integers or lists of integers)
    must be >= 1; the error names the recipe key instead of leaving it to torch."""
    for key, value in kwargs.items():
        if not _SIZE_KEY.search(key):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v < 1]
        if bad:
            raise ValueError(f"`{section}.{key}` must be >= 1, got {value}")


def check_kwargs(cls: type, kwargs: dict, section: str) -> None:
    """Bind ``kwargs`` to ``cls.__init__``; unknown names raise with suggestions; sizes must be
    >= 1 (:func:`check_sizes`)."""
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        valid = [p for p in params if p != "self"]
        for key in kwargs:
            if key not in valid:
                raise ValueError(
                    f"unknown key '{section}.{key}' for {cls.__name__}; valid keys: {valid}"
                    f"{did_you_mean(key, valid)}"
                )
    check_sizes(kwargs, section)


def build_generator(name: str, **kwargs) -> nn.Module:
    """Build a generator by registry name (``lstm``, ``rmc``, ``hf``)."""
    cls = resolve(GENERATORS, name, "generator")
    check_kwargs(cls, kwargs, "generator")
    return cls(**kwargs)


def build_discriminator(name: str, **kwargs) -> nn.Module:
    """Build a discriminator by registry name (``relgan_cnn``, ``seqgan_cnn``)."""
    cls = resolve(DISCRIMINATORS, name, "discriminator")
    check_kwargs(cls, kwargs, "discriminator")
    return cls(**kwargs)
