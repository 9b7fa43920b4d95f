"""Corpora without code edits: a vocabulary, loaders for common formats, and the oracle data.

A :class:`Corpus` holds padded ``LongTensor`` splits ``(N, T)``. For text, each sentence is
``tokens + [eos]`` padded with ``pad`` to ``T = max_len + 1``, and generation starts from
``bos``; for the synthetic oracle the tokens are ids ``0..V-1`` of fixed length with no specials
(start token 0, as in SeqGAN). With ``DataConfig.fixed_length`` text is represented as RelGAN's
and Texygen's code represent it: ``tokens`` filled up with ``pad`` to ``T = max_len``, no ``eos``,
and the filler is an ordinary token (``Corpus.eos`` and ``Corpus.pad`` are None, as for the
oracle): MLE and NLLs count every position, the samplers never force it, and D sees it as G
samples it. Decoding drops the filler wherever it occurs.

Formats (``DataConfig.path``):
    * a directory with ``train.txt`` and ``test.txt`` (optional ``valid.txt``), one sentence per
      line;
    * a single ``.txt`` file, split into train/test by a seeded ``test_ratio``;
    * a ``.jsonl`` / ``.json`` / ``.csv`` file with a ``text_field`` column (seeded split);
    * a directory written by ``datasets.save_to_disk`` (``DatasetDict`` with ``train``/``test``
      splits, or one ``Dataset``, then split).
All are read with the ``datasets`` library, whose Arrow cache makes re-runs fast.

Words (``DataConfig.word_split``, see :func:`split_words`): ``whitespace`` (the default) or
``punctuation``, punctuation marks split off as RelGAN's and Texygen's code do with
``nltk.word_tokenize`` ("a wheel." -> ``a wheel .``), or a Hugging Face tokenizer
(``DataConfig.tokenizer``).
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from textgan.errors import choice_error
from textgan.words import WORD_SPLITS, split_words

log = logging.getLogger("textgan.data")

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


class Vocab:
    """Word vocabulary with ``<pad>``, ``<bos>``, ``<eos>``, ``<unk>`` at ids 0..3; it keeps how
    its words were split from lines (``word_split``, see :func:`split_words`)."""

    def __init__(self, words: list[str], word_split: str = "whitespace"):
        if word_split not in WORD_SPLITS:
            raise ValueError(choice_error("word_split", word_split, WORD_SPLITS))
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad, self.bos, self.eos, self.unk = range(4)
        self.word_split = word_split

    def split(self, line: str) -> list[str]:
        """The words of a line, split as this vocabulary's were."""
        return split_words(line, self.word_split)

    @classmethod
    def build(cls, sentences: list[list[str]], min_freq: int = 1,
              max_size: int | None = None, word_split: str = "whitespace") -> Vocab:
        """Words with count >= ``min_freq``, most frequent first (ties alphabetical)."""
        counts = Counter(w for s in sentences for w in s)
        words = sorted((w for w, c in counts.items() if c >= min_freq),
                       key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max(0, max_size - len(SPECIALS))]
        if not words:
            raise ValueError(
                f"empty vocabulary: no word occurs at least `min_freq`={min_freq} times in "
                f"the training data"
            )
        return cls(words, word_split)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return (isinstance(other, Vocab) and self.itos == other.itos
                and self.word_split == other.word_split)

    def encode(self, words: list[str]) -> list[int]:
        return [self.stoi.get(w, self.unk) for w in words]

    def decode(self, ids, stop_at_eos: bool = True) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if stop_at_eos and i == self.eos:
                break
            if i not in (self.pad, self.bos, self.eos):
                out.append(self.itos[i] if 0 <= i < len(self.itos) else "<unk>")
        return out

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps({"itos": self.itos, "word_split": self.word_split},
                                                 ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> Vocab | HFVocab:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if "tokenizer" in data:
            return HFVocab.from_path(data["tokenizer"])
        itos = data["itos"]
        if tuple(itos[:4]) != SPECIALS:
            raise ValueError(f"vocabulary file '{path}' does not start with {SPECIALS}")
        return cls(itos[4:], data.get("word_split", "whitespace"))  # older files: whitespace


class HFVocab:
    """A Hugging Face tokenizer (local directory) in place of the whitespace vocabulary.

    Sentences are split by the tokenizer; ``<pad>`` / ``<bos>`` / ``<eos>`` use the tokenizer's
    own special tokens, and those it lacks are added (GPT-2's single ``<|endoftext|>`` serves as
    bos and eos; a pad token is added so that padding never hides the end token). Decoding
    returns whitespace words of the detokenised text, so BLEU compares words.
    """

    def __init__(self, tokenizer, path: str):
        self.tok, self.path = tokenizer, path
        if tokenizer.eos_token is None:
            tokenizer.add_special_tokens({"eos_token": "<eos>"})
        if tokenizer.bos_token is None:
            tokenizer.add_special_tokens({"bos_token": tokenizer.eos_token})
        if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
        self.pad, self.bos, self.eos = (tokenizer.pad_token_id, tokenizer.bos_token_id,
                                        tokenizer.eos_token_id)
        self.unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.eos

    @classmethod
    def from_path(cls, path: str | Path) -> HFVocab:
        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"`data.tokenizer` '{path}' is not a local directory (tokenizers are never "
                f"downloaded); save one with tokenizer.save_pretrained(DIR)"
            )
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path), local_files_only=True), str(path))

    def __len__(self) -> int:
        return len(self.tok)

    def split(self, line: str) -> list[str]:
        return self.tok.tokenize(line)

    def encode(self, pieces: list[str]) -> list[int]:
        return self.tok.convert_tokens_to_ids(pieces)

    def decode(self, ids, stop_at_eos: bool = True) -> list[str]:
        ids = [int(i) for i in ids]
        if stop_at_eos and self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tok.decode(ids, skip_special_tokens=True).split()

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps({"tokenizer": str(Path(self.path).resolve())}))


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


ORACLES = ("random", "relgan_code")  # `data.oracle`: oracles textgan builds itself


@dataclass
class DataConfig:
    """The ``data:`` section of a recipe."""

    name: str = "text"  # "text" (a corpus at `path`) or "oracle" (synthetic SeqGAN oracle)
    path: str | None = None  # corpus directory or file (text), see module docstring
    params: str | None = None  # oracle: official parameter file (.npz); None = built by textgan
    oracle: str = "random"  # oracle built by textgan: random (seeded by `seed`) | relgan_code
    seed: int = 0  # oracle construction / sampling seed and text split seed
    num_train: int = 10000  # oracle: training sequences
    num_test: int = 10000  # oracle: held-out sequences
    vocab_size: int = 5000  # oracle: vocabulary (random oracle only)
    hidden_dim: int = 32  # oracle: embedding = hidden size (random oracle only)
    seq_len: int = 20  # oracle: sequence length
    max_len: int | None = None  # text: max words per sentence; None = longest in the data
    overflow: str = "error"  # text, sentences longer than max_len: error | truncate | drop
    min_freq: int = 1  # text: minimum count for a word to enter the vocabulary
    max_vocab: int | None = None  # text: cap on vocabulary size (specials included)
    text_field: str = "text"  # .jsonl/.csv/save_to_disk: column holding the sentence
    test_ratio: float = 0.1  # single-file corpora: held-out fraction (seeded split)
    lowercase: bool = False  # text: lower-case before tokenising
    tokenizer: str | None = None  # text: local HF tokenizer directory instead of words
    word_split: str = "whitespace"  # text: whitespace | punctuation (split off, as nltk does)
    fixed_length: bool = False  # text: pad to max_len as an ordinary token, no eos (RelGAN code)

    def __post_init__(self):
        if self.name not in ("text", "oracle"):
            raise ValueError(f"`data.name` must be 'text' or 'oracle', got '{self.name}'")
        if self.word_split not in WORD_SPLITS:
            raise ValueError(choice_error("data.word_split", self.word_split, WORD_SPLITS))
        if self.tokenizer and self.word_split != "whitespace":
            raise ValueError(f"`data.tokenizer` ('{self.tokenizer}') splits the text itself; "
                             f"`data.word_split={self.word_split}` applies to word vocabularies "
                             "only: drop one of them")
        if self.oracle not in ORACLES:
            raise ValueError(choice_error("data.oracle", self.oracle, ORACLES))
        if self.params and self.oracle != "random":
            raise ValueError(f"`data.params` ('{self.params}') and `data.oracle={self.oracle}` "
                             "both name an oracle; give one of them (`data.params=null` for the "
                             "built one)")
        if self.overflow not in ("error", "truncate", "drop"):
            raise ValueError(
                f"`data.overflow` must be one of error|truncate|drop, got '{self.overflow}'"
            )
        if self.name == "text" and not self.path:
            raise ValueError("`data.path` is required for text corpora (or set data.name=oracle)")
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"`data.max_len` must be >= 1, got {self.max_len}")
        if not 0.0 < self.test_ratio < 1.0:
            raise ValueError(f"`data.test_ratio` must be in (0, 1), got {self.test_ratio}")
        for key, low in (("num_train", 1), ("num_test", 1), ("vocab_size", 2), ("hidden_dim", 1),
                         ("seq_len", 1), ("min_freq", 1)):
            value = getattr(self, key)
            if value < low:
                raise ValueError(f"`data.{key}` must be >= {low}, got {value}")
        if self.max_vocab is not None and self.max_vocab <= len(SPECIALS):
            raise ValueError(
                f"`data.max_vocab` must be > {len(SPECIALS)} (it counts the special tokens "
                f"{list(SPECIALS)}), got {self.max_vocab}"
            )


@dataclass
class Corpus:
    """Padded token tensors plus what decoding and evaluation need.

    Attributes:
        train, test: ``(N, T)`` long. valid: optional.
        vocab: :class:`Vocab` for text, None for the oracle (ids are the words).
        vocab_size, start_token: what a generator needs. eos, pad: None for the oracle.
        oracle: the :class:`~textgan.oracle.OracleLSTM` for synthetic data, else None.
    """

    train: Tensor
    test: Tensor
    vocab_size: int
    start_token: int
    vocab: Vocab | None = None
    eos: int | None = None
    pad: int | None = None
    valid: Tensor | None = None
    oracle: object | None = None

    @property
    def seq_len(self) -> int:
        return self.train.shape[1]

    def decode(self, tokens: Tensor) -> list[list[str]]:
        """Token lists (words, or ids as strings for the oracle) for BLEU and files."""
        if self.vocab is None:
            return [[str(int(t)) for t in row] for row in tokens]
        return [self.vocab.decode(row.tolist()) for row in tokens]

    def lines(self, tokens: Tensor) -> list[str]:
        return [" ".join(words) for words in self.decode(tokens)]


# ---------------------------------------------------------------------------------------------


def load_corpus(cfg: DataConfig, vocab: Vocab | None = None) -> Corpus:
    """Build the corpus a recipe names. ``vocab`` (from a checkpoint) replaces building one."""
    if cfg.name == "oracle":
        return _oracle_corpus(cfg)
    return _text_corpus(cfg, vocab)


def _oracle_corpus(cfg: DataConfig) -> Corpus:
    from textgan.oracle import OracleLSTM

    if cfg.params:
        oracle = OracleLSTM.from_npz(cfg.params, seq_len=cfg.seq_len)
    elif cfg.oracle == "relgan_code":
        oracle = OracleLSTM.relgan_code(seq_len=cfg.seq_len)
    else:
        oracle = OracleLSTM.random(seed=cfg.seed, vocab_size=cfg.vocab_size,
                                   hidden_dim=cfg.hidden_dim, seq_len=cfg.seq_len)
    rng = torch.Generator().manual_seed(cfg.seed)
    train = oracle.sample(cfg.num_train, rng=rng)
    test = oracle.sample(cfg.num_test, rng=rng)
    return Corpus(train=train, test=test, vocab_size=oracle.vocab_size,
                  start_token=oracle.start_token, oracle=oracle)


def read_sentences(cfg: DataConfig) -> dict[str, list[str]]:
    """Raw sentences per split (``train``, ``test``, optional ``valid``) from ``cfg.path``."""
    path = Path(cfg.path)
    if not path.exists():
        raise FileNotFoundError(
            f"`data.path` '{path}' does not exist; see data/README.md for how to obtain corpora"
        )
    if path.is_dir() and ((path / "dataset_dict.json").exists()
                          or (path / "dataset_info.json").exists()):
        splits = _read_saved_dataset(path, cfg)
    elif path.is_dir():
        files = {s: path / f"{s}.txt" for s in ("train", "test", "valid")}
        for s in ("train", "test"):
            if not files[s].is_file():
                raise FileNotFoundError(
                    f"corpus directory '{path}' has no {s}.txt (expected train.txt and test.txt, "
                    f"optional valid.txt)"
                )
        files = {s: f for s, f in files.items() if f.is_file()}
        splits = {s: _read_text_file(f) for s, f in files.items()}
    elif path.suffix in (".txt", ""):
        splits = _split(_read_text_file(path), cfg)
    elif path.suffix in (".jsonl", ".json", ".csv"):
        splits = _split(_read_table(path, cfg), cfg)
    else:
        raise ValueError(
            f"`data.path` '{path}' has unsupported suffix '{path.suffix}'; use a directory, "
            f".txt, .jsonl, .json, .csv or a datasets.save_to_disk directory"
        )
    for s, lines in splits.items():
        if not lines:
            raise ValueError(
                f"`data.path` '{path}': the {s} split is empty (no non-blank lines); "
                f"point data.path at a corpus with sentences in it"
            )
    return splits


def _check_utf8(path: Path) -> None:
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"`data.path`: '{path}' is not valid UTF-8: byte {raw[e.start]:#04x} at line "
            f"{line}; re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _datasets():
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def _empty_file(path: Path) -> ValueError:
    return ValueError(
        f"`data.path`: '{path}' is empty (0 bytes); point data.path at a corpus with one "
        f"sentence per line"
    )


def _read_text_file(path: Path) -> list[str]:
    if path.stat().st_size == 0:
        raise _empty_file(path)
    _check_utf8(path)
    ds = _datasets().load_dataset("text", data_files=str(path), split="train")
    return [t for t in ds["text"] if t.strip()]


def _read_table(path: Path, cfg: DataConfig) -> list[str]:
    if path.stat().st_size == 0:
        raise _empty_file(path)
    _check_utf8(path)
    builder = "csv" if path.suffix == ".csv" else "json"
    ds = _datasets().load_dataset(builder, data_files=str(path), split="train")
    return _column(ds, cfg, path)


def _column(ds, cfg: DataConfig, where) -> list[str]:
    if cfg.text_field not in ds.column_names:
        raise ValueError(
            f"`data.text_field` '{cfg.text_field}' is not a column of '{where}'; "
            f"columns: {ds.column_names}"
        )
    return [t for t in ds[cfg.text_field] if isinstance(t, str) and t.strip()]


def _read_saved_dataset(path: Path, cfg: DataConfig) -> dict[str, list[str]]:
    ds = _datasets().load_from_disk(str(path))
    if hasattr(ds, "keys"):  # DatasetDict
        if "train" not in ds:
            raise ValueError(f"saved dataset '{path}' has no 'train' split: {list(ds.keys())}")
        names = {"validation": "valid", "valid": "valid", "test": "test", "train": "train"}
        splits = {names[k]: _column(ds[k], cfg, f"{path}[{k}]") for k in ds if k in names}
        return splits if "test" in splits else _split(splits["train"], cfg)
    return _split(_column(ds, cfg, path), cfg)


def _split(lines: list[str], cfg: DataConfig) -> dict[str, list[str]]:
    if len(lines) < 2:
        raise ValueError(
            f"`data.path` '{cfg.path}' has {len(lines)} non-blank sentence(s); a single-file "
            f"corpus needs at least 2 (split into train and test by data.test_ratio)"
        )
    order = list(range(len(lines)))
    random.Random(cfg.seed).shuffle(order)
    n_test = max(1, round(len(lines) * cfg.test_ratio))
    return {"train": [lines[i] for i in order[n_test:]],
            "test": [lines[i] for i in order[:n_test]]}


def _text_corpus(cfg: DataConfig, vocab: Vocab | HFVocab | None) -> Corpus:
    raw = read_sentences(cfg)
    if cfg.tokenizer and vocab is None:
        vocab = HFVocab.from_path(cfg.tokenizer)
    if isinstance(vocab, Vocab) and vocab.word_split != cfg.word_split:
        raise ValueError(f"vocabulary mismatch: the checkpoint's vocabulary was built with "
                         f"data.word_split={vocab.word_split}, the recipe has "
                         f"data.word_split={cfg.word_split}; resume with the checkpoint's `data` "
                         f"settings (its config.yaml), or drop `resume`")
    split = vocab.split if vocab is not None else (lambda line: split_words(line, cfg.word_split))
    tok = {s: [split(line.lower() if cfg.lowercase else line) for line in lines]
           for s, lines in raw.items()}
    max_len = cfg.max_len or max(len(w) for lines in tok.values() for w in lines)
    for s in tok:
        tok[s] = _apply_max_len(tok[s], max_len, cfg.overflow, s)
    if vocab is None:
        vocab = Vocab.build(tok["train"], cfg.min_freq, cfg.max_vocab, cfg.word_split)
    tensors = {s: _encode(vocab, lines, max_len, cfg.fixed_length) for s, lines in tok.items()}
    n_unk = int((tensors["test"] == vocab.unk).sum())
    if n_unk:
        log.info("%d test tokens are out of vocabulary (mapped to <unk>)", n_unk)
    return Corpus(train=tensors["train"], test=tensors["test"], valid=tensors.get("valid"),
                  vocab=vocab, vocab_size=len(vocab), start_token=vocab.bos,
                  eos=None if cfg.fixed_length else vocab.eos,
                  pad=None if cfg.fixed_length else vocab.pad)


def _apply_max_len(lines: list[list[str]], max_len: int, overflow: str,
                   split: str) -> list[list[str]]:
    long = sum(len(w) > max_len for w in lines)
    if not long:
        return lines
    if overflow == "error":
        raise ValueError(
            f"{long} {split} sentence(s) are longer than `data.max_len`={max_len} words; raise "
            f"max_len, or set data.overflow=truncate or data.overflow=drop"
        )
    log.warning("%s: %d sentence(s) longer than max_len=%d were %s", split, long, max_len,
                "truncated" if overflow == "truncate" else "dropped")
    if overflow == "truncate":
        return [w[:max_len] for w in lines]
    kept = [w for w in lines if len(w) <= max_len]
    if not kept:
        raise ValueError(f"every {split} sentence is longer than max_len={max_len}")
    return kept


def _encode(vocab: Vocab | HFVocab, lines: list[list[str]], max_len: int,
            fixed_length: bool = False) -> Tensor:
    """``(N, max_len + 1)``: words, eos, pad...; ``fixed_length``: ``(N, max_len)`` words and the
    pad filler, no eos."""
    out = torch.full((len(lines), max_len + (not fixed_length)), vocab.pad, dtype=torch.long)
    for i, words in enumerate(lines):
        ids = vocab.encode(words) + ([] if fixed_length else [vocab.eos])
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out
