"""Load a finished (or running) run for sampling and evaluation: ``textgan sample`` / ``eval``.

A *run* is an ``output_dir`` with ``checkpoints/step_<N>/`` (and ``checkpoints/best/`` with
``eval.best``); a *checkpoint* is one of those directories. Each checkpoint carries the resolved
``config.yaml``, ``meta.json`` (vocabulary size, special tokens) and ``vocab.json`` for text, so
it is self-contained apart from the test set, which is re-read from ``data.path`` (or
regenerated for the oracle) only when needed.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import torch
import yaml

from textgan.train import common as C


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or the newest complete checkpoint of a run directory."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"run or checkpoint '{path}' does not exist")
    if (path / C.STATE_FILE).exists():
        if not C.is_complete(path):
            raise ValueError(f"checkpoint '{path}' is incomplete or corrupted")
        return path
    ckpt = C.newest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"'{path}' has no complete checkpoint (checkpoints/step_<N>); give a run that has "
            f"saved one, or one of its checkpoint directories"
        )
    return ckpt


class EvalHandle:
    """A trained generator plus what is needed to score it."""

    def __init__(self, ckpt: Path):
        from textgan.config import build_config

        self.ckpt = ckpt
        raw = yaml.safe_load((ckpt / "config.yaml").read_text(encoding="utf-8"))
        self.cfg = build_config(raw)
        self.meta = json.loads((ckpt / "meta.json").read_text())
        self.vocab = None
        if (ckpt / "vocab.json").exists():
            from textgan.data import Vocab

            self.vocab = Vocab.load(ckpt / "vocab.json")
        self.generator = self._load_generator()

    @property
    def is_oracle(self) -> bool:
        return self.cfg.data.name == "oracle"

    def _load_generator(self):
        from textgan.models import build_generator

        if self.cfg.algorithm == "vae":  # prior samples: z ~ uniform, then the decoder
            from textgan.train.vae import load_vae_for_sampling

            return load_vae_for_sampling(self.ckpt)
        spec = dict(self.cfg.generator)
        name = spec.pop("name", "lstm")
        spec.pop("init_from", None)
        G = build_generator(name, vocab_size=self.meta["vocab_size"],
                            start_token=self.meta["start_token"], **spec)
        C.load_model_weights(G, self.ckpt, index=0)
        return G.eval()

    def load_discriminator(self):
        """The discriminator of a GAN checkpoint (``relgan`` / ``seqgan``: the second saved
        model, built as :func:`textgan.train.common.build_models` does), in eval mode."""
        from textgan.models import build_discriminator

        default = {"relgan": "relgan_cnn", "seqgan": "seqgan_cnn"}.get(self.cfg.algorithm)
        if default is None:
            raise ValueError(f"checkpoint '{self.ckpt}' is a {self.cfg.algorithm} run, which "
                             f"has no discriminator (relgan and seqgan runs have one)")
        spec = dict(self.cfg.discriminator or {"name": default})
        spec.pop("init_from", None)
        D = build_discriminator(spec.pop("name", default), vocab_size=self.meta["vocab_size"],
                                **spec)
        C.load_model_weights(D, self.ckpt, index=1)
        return D.eval()

    @cached_property
    def corpus(self):
        from textgan.data import load_corpus

        return load_corpus(self.cfg.data, vocab=self.vocab)

    @torch.no_grad()
    def sample_tokens(self, n: int, tau: float = 1.0, seed: int = 0,
                      batch_size: int = 500) -> torch.Tensor:
        from textgan.sampling import sample_sequence

        rng = torch.Generator().manual_seed(seed)
        if hasattr(self.generator, "manual_seed"):  # VAE: restart the prior-latent stream
            self.generator.manual_seed(seed)
        out = []
        for start in range(0, n, batch_size):
            B = min(batch_size, n - start)
            out.append(sample_sequence(self.generator, B, self.meta["seq_len"],
                                       method="multinomial", tau=tau, rng=rng,
                                       eos=self.meta["eos"], pad=self.meta["pad"]).tokens)
        return torch.cat(out) if out else torch.zeros(0, self.meta["seq_len"], dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> list[list[str]]:
        if self.vocab is None:
            return [[str(int(t)) for t in row] for row in tokens]
        return [self.vocab.decode(row.tolist()) for row in tokens]

    def sample(self, n: int, tau: float = 1.0, seed: int = 0) -> list[list[str]]:
        return self.decode(self.sample_tokens(n, tau, seed))

    @property
    def references(self) -> list[list[str]]:
        return self.corpus.decode(self.corpus.test)

    def nll_test(self, tau: float = 1.0) -> float | None:
        """NLL_gen of the (tempered) model on the test set."""
        from textgan.metrics import nll_test

        if self.cfg.algorithm == "vae":  # no tractable NLL: the negative ELBO per token bounds it
            from textgan.train.vae import nll_bound

            return nll_bound(self.generator.vae, self.corpus.test)
        G = self.generator
        if tau != 1.0:
            G = _Tempered(G, tau)
        return nll_test(G, self.corpus.test, pad=self.meta["pad"])

    def nll_oracle(self, tokens) -> float | None:
        if not self.is_oracle:
            return None
        from textgan.metrics import nll_oracle

        if not isinstance(tokens, torch.Tensor):
            tokens = torch.tensor([[int(t) for t in row] for row in tokens])
        return nll_oracle(self.corpus.oracle, tokens)


class _Tempered(torch.nn.Module):
    """``generator`` with logits divided by ``tau`` (for NLL of a tempered model)."""

    def __init__(self, generator, tau: float):
        super().__init__()
        self.inner, self.tau = generator, tau
        self.start_token, self.vocab_size = generator.start_token, generator.vocab_size

    def forward(self, inputs):
        return self.inner(inputs) / self.tau


def load_for_eval(path: str | Path) -> EvalHandle:
    return EvalHandle(resolve_checkpoint(path))
