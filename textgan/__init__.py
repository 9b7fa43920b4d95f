"""textgan: generative models of discrete sequences with gradients through sampling.

Submodules are imported lazily so that ``textgan --help`` stays fast:
``textgan.sampling``, ``textgan.data``, ``textgan.oracle``, ``textgan.config``,
``textgan.models``, ``textgan.metrics``, ``textgan.train``.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = {"sampling", "data", "oracle", "config", "models", "metrics", "train", "losses",
               "estimators"}


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"textgan.{name}")
    if name == "load_recipe":
        from textgan.config import load_recipe

        return load_recipe
    raise AttributeError(f"module 'textgan' has no attribute '{name}'")
