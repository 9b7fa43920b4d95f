"""Paired comparison of VAE runs: per-sentence negative ELBO on the same test sentences.

    python docs/vae/paired_elbo.py runs/vae-coco-gs runs/vae-coco-st runs/vae-coco-sf-nvil \
        runs/vae-coco-sf-none [--sentences 2000] [--draws 5]

Each run's newest checkpoint scores the first ``--sentences`` test sentences of the first run's
corpus (same vocabulary) with ``--draws`` exact latent draws per sentence (seeds 0..draws-1,
averaged); prints each mean and every paired difference with its standard error. Run from the
directory the runs' ``data.path`` is relative to.
"""

import argparse
from pathlib import Path

import torch
import yaml

from textgan.config import build_config
from textgan.data import Vocab, load_corpus
from textgan.train.vae import load_vae


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("runs", nargs="+")
    p.add_argument("--sentences", type=int, default=2000)
    p.add_argument("--draws", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    first = Path(args.runs[0])
    cfg = build_config(yaml.safe_load((first / "config.yaml").read_text(encoding="utf-8")))
    test = load_corpus(cfg.data, vocab=Vocab.load(first / "vocab.json")).test[: args.sentences]
    per = {}
    with torch.no_grad():
        for run in args.runs:
            vae = load_vae(run)
            draws = []
            for seed in range(args.draws):
                rng = torch.Generator().manual_seed(seed)
                terms = [vae.elbo_terms(c, "score_function", rng=rng) for c in test.split(250)]
                draws.append(torch.cat([t.recon + t.kl for t in terms]).double())
            per[run] = torch.stack(draws).mean(0)
            print(f"{run}: mean {per[run].mean():.3f}, sd {per[run].std():.2f}", flush=True)
    for i, a in enumerate(args.runs):
        for b in args.runs[i + 1:]:
            d = per[a] - per[b]
            print(f"{a} - {b}: {d.mean():+.3f} +- {d.std() / len(d) ** 0.5:.3f} (paired SE)")


if __name__ == "__main__":
    main()
