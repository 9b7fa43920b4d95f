import json

import pytest
import torch

from textgan.data import DataConfig, Vocab, load_corpus, read_sentences


def test_text_directory_corpus(tiny_corpus_dir):
    c = load_corpus(DataConfig(path=str(tiny_corpus_dir)))
    assert c.vocab is not None and c.start_token == c.vocab.bos and c.eos == c.vocab.eos
    lines = (tiny_corpus_dir / "train.txt").read_text().splitlines()
    assert c.train.shape == (200, max(len(x.split()) for x in lines) + 1) or \
        c.train.shape[0] == 200
    # round trip: encode -> decode gives the words back, eos then padding
    assert c.decode(c.train[:1])[0] == lines[0].split()
    row = c.train[0].tolist()
    n = len(lines[0].split())
    assert row[n] == c.eos and all(t == c.pad for t in row[n + 1:])


def test_vocab_build_order_min_freq_and_save(tmp_path):
    v = Vocab.build([["b", "a", "a"], ["c", "a", "b"]], min_freq=2)
    assert v.itos == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "b"]
    assert v.encode(["a", "zzz"]) == [4, v.unk]
    v.save(tmp_path / "v.json")
    assert Vocab.load(tmp_path / "v.json") == v
    assert json.loads((tmp_path / "v.json").read_text())["itos"][4] == "a"
    with pytest.raises(ValueError, match="empty vocabulary"):
        Vocab.build([["x"]], min_freq=2)


def test_single_file_seeded_split(tmp_path):
    f = tmp_path / "all.txt"
    f.write_text("\n".join(f"w{i} x y" for i in range(100)) + "\n")
    a = read_sentences(DataConfig(path=str(f), test_ratio=0.2, seed=1))
    b = read_sentences(DataConfig(path=str(f), test_ratio=0.2, seed=1))
    assert len(a["test"]) == 20 and len(a["train"]) == 80 and a == b
    assert set(a["train"]).isdisjoint(a["test"])


def test_jsonl_csv_and_text_field(tmp_path):
    j = tmp_path / "c.jsonl"
    j.write_text("\n".join(json.dumps({"caption": f"a b {i}"}) for i in range(20)))
    assert len(read_sentences(DataConfig(path=str(j), text_field="caption"))["train"]) == 18
    with pytest.raises(ValueError, match="text_field.*caption"):
        read_sentences(DataConfig(path=str(j), text_field="text"))
    c = tmp_path / "c.csv"
    c.write_text("text,label\n" + "\n".join(f"x y {i},1" for i in range(10)) + "\n")
    assert len(read_sentences(DataConfig(path=str(c)))["test"]) == 1


def test_save_to_disk_dataset(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "b c"] * 5}),
                               "test": datasets.Dataset.from_dict({"text": ["a c"]})})
    dd.save_to_disk(str(tmp_path / "ds"))
    s = read_sentences(DataConfig(path=str(tmp_path / "ds")))
    assert len(s["train"]) == 10 and s["test"] == ["a c"]


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_sentences(DataConfig(path=str(tmp_path / "missing")))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.txt").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        read_sentences(DataConfig(path=str(tmp_path / "d")))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        read_sentences(DataConfig(path=str(empty)))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond ok\ncaf\xe9 latin1\n")
    with pytest.raises(ValueError, match=r"not valid UTF-8.*line 3"):
        read_sentences(DataConfig(path=str(bad)))
    with pytest.raises(ValueError, match="data.path"):
        DataConfig(name="text")
    with pytest.raises(ValueError, match="overflow"):
        DataConfig(path="x", overflow="clip")


def test_max_len_error_truncate_drop(tiny_corpus_dir, caplog):
    with pytest.raises(ValueError, match=r"longer than `data.max_len`=4.*overflow"):
        load_corpus(DataConfig(path=str(tiny_corpus_dir), max_len=4))
    t = load_corpus(DataConfig(path=str(tiny_corpus_dir), max_len=4, overflow="truncate"))
    assert t.train.shape == (200, 5)
    d = load_corpus(DataConfig(path=str(tiny_corpus_dir), max_len=4, overflow="drop"))
    assert d.train.shape[1] == 5 and d.train.shape[0] < 200
    assert "dropped" in caplog.text and "truncated" in caplog.text


def test_vocab_from_checkpoint_is_reused(tiny_corpus_dir):
    v = Vocab(["rides", "dog"])
    c = load_corpus(DataConfig(path=str(tiny_corpus_dir)), vocab=v)
    assert c.vocab is v and c.vocab_size == 6
    assert int(c.train.max()) < 6


def test_oracle_corpus_deterministic():
    cfg = DataConfig(name="oracle", vocab_size=30, hidden_dim=4, seq_len=5, num_train=40,
                     num_test=10, seed=2)
    a, b = load_corpus(cfg), load_corpus(cfg)
    assert a.train.shape == (40, 5) and a.test.shape == (10, 5)
    assert torch.equal(a.train, b.train) and not torch.equal(a.train[:10], a.test)
    assert a.vocab is None and a.start_token == 0 and a.oracle is not None
    assert a.decode(a.train[:1])[0] == [str(t) for t in a.train[0].tolist()]


def test_nll_test_accepts_a_corpus(tiny_corpus_dir):
    from textgan.metrics import nll_test
    from textgan.models import build_generator

    c = load_corpus(DataConfig(path=str(tiny_corpus_dir)))
    G = build_generator("lstm", vocab_size=c.vocab_size, start_token=c.start_token,
                        embed_dim=4, hidden_dim=4)
    assert nll_test(G, c) == nll_test(G, c.test, pad=c.pad)
    assert nll_test(G, c) != nll_test(G, c.test)  # padding is excluded
