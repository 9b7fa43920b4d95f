"""textgan.words: punctuation split off as nltk.word_tokenize does (RelGAN / Texygen), in the
data pipeline (``data.word_split``) and in ``textgan eval --word-split``."""

from __future__ import annotations

import argparse
import json

import pytest

from textgan import metrics as M
from textgan.cli import main
from textgan.data import DataConfig, Vocab, load_corpus
from textgan.evaluate import add_arguments, run
from textgan.words import split_words

# nltk 3.9's word_tokenize on each line, written out by hand (nltk is not a dependency)
NLTK = {
    "a man's hat, don't go.": ["a", "man", "'s", "hat", ",", "do", "n't", "go", "."],
    "a bicycle replica with a clock as the front wheel.":
        ["a", "bicycle", "replica", "with", "a", "clock", "as", "the", "front", "wheel", "."],
    "a close-up of a t.v. on a stand": ["a", "close-up", "of", "a", "t.v", ".", "on", "a",
                                        "stand"],
    "a 10:30 clock; 3/4 of 1,000 cakes (ok) & more!":
        ["a", "10:30", "clock", ";", "3/4", "of", "1,000", "cakes", "(", "ok", ")", "&", "more",
         "!"],
    "they're here.. we'll see": ["they", "'re", "here", "..", "we", "'ll", "see"],
    "people's rock-n-roll": ["people", "'s", "rock-n-roll"],
}


@pytest.mark.parametrize("line", sorted(NLTK))
def test_punctuation_split_gives_nltk_tokens(line):
    assert split_words(line, "punctuation") == NLTK[line]


def test_whitespace_split_and_bad_value():
    line = " a wheel.  it's\tthere "
    assert split_words(line) == split_words(line, "whitespace") == ["a", "wheel.", "it's", "there"]
    assert split_words("", "punctuation") == []
    assert split_words("CAN'T Stop.", "punctuation") == ["CA", "N'T", "Stop", "."]
    with pytest.raises(ValueError, match=r"`data.word_split` must be one of \['whitespace', "
                                         r"'punctuation'\], got 'punct'"):
        split_words("a b", "punct")


def test_data_config_word_split_errors():
    with pytest.raises(ValueError, match=r"data.word_split.*got 'nltk'"):
        DataConfig(path="x", word_split="nltk")
    with pytest.raises(ValueError, match=r"`data.tokenizer` \('tok'\) splits the text itself"):
        DataConfig(path="x", tokenizer="tok", word_split="punctuation")


@pytest.fixture
def captions(tmp_path):
    d = tmp_path / "captions"
    d.mkdir()
    (d / "train.txt").write_text("a dog on the grass.\na man's dog, running.\n"
                                 "a dog on a bed.\n", encoding="utf-8")
    (d / "test.txt").write_text("a cat, on the grass.\n", encoding="utf-8")
    return d


def test_corpus_vocabulary_and_resume_with_punctuation_split(captions, tmp_path):
    c = load_corpus(DataConfig(path=str(captions), word_split="punctuation"))
    words = c.vocab.itos[4:]
    assert words[:4] == ["a", ".", "dog", "on"]  # most frequent first, ties alphabetical
    assert "grass" in words and "grass." not in words and "'s" in words and "," in words
    assert c.decode(c.test) == [["a", "<unk>", ",", "on", "the", "grass", "."]]
    assert c.seq_len == 7 + 1  # the longest sentence: 7 words ("a man 's dog , running .")
    whitespace = load_corpus(DataConfig(path=str(captions)))
    assert "grass." in whitespace.vocab.itos and whitespace.seq_len == 5 + 1
    # the split travels with the vocabulary (vocab.json), old files read as whitespace
    c.vocab.save(tmp_path / "v.json")
    assert json.loads((tmp_path / "v.json").read_text())["word_split"] == "punctuation"
    loaded = Vocab.load(tmp_path / "v.json")
    assert loaded == c.vocab and loaded.word_split == "punctuation"
    assert loaded != Vocab(words)  # same words, other split
    (tmp_path / "old.json").write_text(json.dumps({"itos": whitespace.vocab.itos}))
    assert Vocab.load(tmp_path / "old.json").word_split == "whitespace"
    again = load_corpus(DataConfig(path=str(captions), word_split="punctuation"), vocab=loaded)
    assert again.vocab is loaded and (again.train == c.train).all()
    with pytest.raises(ValueError, match=r"vocabulary was built with data.word_split=punctuation"
                                         r", the recipe has data.word_split=whitespace"):
        load_corpus(DataConfig(path=str(captions)), vocab=loaded)


def test_train_through_cli_saves_the_split_and_refuses_another_on_resume(captions, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    argv = ["train", "recipes/mle/coco.yaml", f"data.path={captions}", f"output_dir={out}",
            "data.max_len=null", "train.steps=2", "train.batch_size=2",
            "train.checkpoint_every=2", "eval.every=2", "eval.num_samples=4", "eval.bleu=[2]"]
    assert main(argv) == 0
    saved = json.loads((out / "checkpoints" / "step_2" / "vocab.json").read_text())
    assert saved["word_split"] == "punctuation"  # the recipe's setting
    assert "grass" in saved["itos"] and "grass." not in saved["itos"]
    capsys.readouterr()
    assert main([*argv, "train.steps=4", "resume=auto", "data.word_split=whitespace"]) == 2
    assert "built with data.word_split=punctuation" in capsys.readouterr().err


def test_eval_file_mode_word_split(tmp_path, capsys):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a dog on the grass.\na cat, sitting.\n", encoding="utf-8")
    ref.write_text("a dog on the grass .\na cat , sitting on a mat .\n", encoding="utf-8")

    def bleu(*extra):
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        assert run(parser.parse_args(["--hyp", str(hyp), "--ref", str(ref), "--json",
                                      "--metrics", "bleu2", *extra])) == 0
        return json.loads(capsys.readouterr().out)["bleu2"]

    refs = [line.split() for line in ref.read_text().splitlines()]
    hyps = [["a", "dog", "on", "the", "grass", "."], ["a", "cat", ",", "sitting", "."]]
    assert bleu("--word-split", "punctuation") == M.bleu(hyps, refs, 2)
    fused = [line.split() for line in hyp.read_text().splitlines()]
    assert bleu() == M.bleu(fused, refs, 2) < bleu("--word-split", "punctuation")
