"""Trainers, one readable file per algorithm; ``TRAINERS`` maps ``algorithm:`` to ``train``."""

import importlib

TRAINERS = {
    "mle": "textgan.train.mle",
    "relgan": "textgan.train.relgan",
    "seqgan": "textgan.train.seqgan",
    "vae": "textgan.train.vae",
}


def get_trainer(algorithm: str):
    """The ``train(cfg)`` function of an algorithm."""
    if algorithm not in TRAINERS:
        raise ValueError(f"unknown algorithm '{algorithm}'; choose one of {sorted(TRAINERS)}")
    return importlib.import_module(TRAINERS[algorithm]).train
