"""Two CPU processes (gloo) give the same losses as one process with the same global batch.

Slow (starts `accelerate launch`): run with `pytest -m slow tests/test_distributed.py`.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.vocab_size=30", "data.hidden_dim=8", "data.seq_len=6", "data.num_train=128",
        "data.num_test=64", "generator.embed_dim=8", "generator.hidden_dim=8",
        "train.batch_size=16", "train.log_every=1", "eval.every=5", "eval.num_samples=32",
        "eval.batch_size=32", "train.steps=5"]


def _losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["nll_train"] for r in rows if "nll_train" in r]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    recipe = str(REPO / "recipes" / "mle" / "oracle.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, "-m", "textgan", "train", recipe, f"output_dir={one}", *TINY],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu",
                    "--num_processes", "2", "-m", "textgan", "train", recipe,
                    f"output_dir={two}", *TINY], check=True, capture_output=True)
    assert _losses(one) == pytest.approx(_losses(two), rel=1e-5)
    assert len(_losses(one)) == 5
