"""Shared fixtures: a tiny text corpus written on the fly, the shared-data location, seeding.

Tests never need ../shared: tests that use it skip when it is absent.
"""

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

WORDS = ("a man a woman a dog rides sits on the in near with red blue big small bike horse "
         "street table kitchen bus train park").split()


def make_sentences(n: int, seed: int, max_words: int = 9) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, max_words)))
            for _ in range(n)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)
    yield
    torch.set_flush_denormal(False)  # training turns it on (recipe key flush_denormal)


@pytest.fixture
def tiny_corpus_dir(tmp_path) -> Path:
    """A directory with train.txt (200 lines) and test.txt (50 lines)."""
    d = tmp_path / "tiny"
    d.mkdir()
    (d / "train.txt").write_text("\n".join(make_sentences(200, 1)) + "\n", encoding="utf-8")
    (d / "test.txt").write_text("\n".join(make_sentences(50, 2)) + "\n", encoding="utf-8")
    return d


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored afterwards (tiny tensors: extra threads only
    add contention on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
