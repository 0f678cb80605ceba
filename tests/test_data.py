"""Datasets against the counts in the shared data's SOURCES.md, and the fetch-and-verify path
against a real HTTP server on 127.0.0.1."""

import math
import shutil

import pytest
import torch

from conftest import require_data
from rnnbench.data.fetch import CATALOG, ensure_file
from rnnbench.data.lm import BPTTWindows, TextCorpus, batchify
from rnnbench.data.reber import EmbeddedReber, is_embedded_reber
from rnnbench.errors import ConfigError, DataError

PTB = {"train": "ptb/ptb.train.txt", "valid": "ptb/ptb.valid.txt", "test": "ptb/ptb.test.txt"}
PTB_CHAR = {s: f"ptb_char/ptb.char.{s}.txt" for s in ("train", "valid", "test")}


def corpus(files, **kw):
    return TextCorpus(name="t", files=files, root=str(require_data(*files.values())), **kw)


def test_ptb_word_counts_and_vocabulary():
    dm = corpus(PTB, batch_size=20, eval_batch_size=10)
    tokens = dm.load_tokens()
    # SOURCES.md: words plus one <eos> per line.
    assert {s: len(t) for s, t in tokens.items()} == {
        "train": 929_589,
        "valid": 73_760,
        "test": 82_430,
    }
    dm.setup()
    assert dm.vocab_size == 10_000
    assert dm.rows["train"].shape == (20, 929_589 // 20)
    assert dm.rows["valid"].shape == (10, 73_760 // 10)


def test_ptb_char_counts_and_vocabulary():
    dm = corpus(PTB_CHAR, unit="char")
    tokens = dm.load_tokens()
    assert {s: len(t) for s, t in tokens.items()} == {
        "train": 5_017_482,
        "valid": 393_042,
        "test": 442_423,
    }
    dm.setup()
    assert dm.vocab_size == 50  # 49 symbols + end of line


def test_timemachine_is_d2l_characters():
    dm = corpus({"all": "timemachine/timemachine.txt"}, tokenizer="d2l_chars", unit="char")
    tokens = dm.load_tokens()
    assert set(tokens["train"]) == set("abcdefghijklmnopqrstuvwxyz ")
    total = sum(len(t) for t in tokens.values())
    assert len(tokens["train"]) == pytest.approx(0.8 * total, rel=0.05)
    dm.setup()
    assert dm.vocab_size == 27


def test_windows_carry_on_where_the_last_one_stopped():
    stream = torch.arange(103)
    rows = batchify(stream, 4)
    assert rows.shape == (4, 25)
    assert torch.equal(rows[1], torch.arange(25, 50))  # contiguous streams, one per row
    windows = BPTTWindows(rows, bptt=7)
    assert len(windows) == math.ceil(24 / 7)
    for i in range(len(windows)):
        x, y = windows[i]["x"], windows[i]["y"]
        assert torch.equal(y, x + 1)  # targets are the next token
        if i + 1 < len(windows):
            assert torch.equal(windows[i + 1]["x"][:, 0], y[:, -1])
    assert windows[len(windows) - 1]["x"].size(1) == 24 - 7 * 3  # the short tail window


def test_batch_size_too_large_is_a_clear_error():
    with pytest.raises(ConfigError, match="data.batch_size=50"):
        batchify(torch.arange(60), 50)


def test_reber_strings_follow_the_grammar_and_the_optimum_is_exact():
    dm = EmbeddedReber(
        train_strings=400,
        valid_strings=100,
        test_strings=100,
        batch_size=4,
        eval_batch_size=4,
        seed=3,
    )
    tokens = dm.load_tokens()
    # Split the stream back into strings at each outer E (an E right after T or P).
    strings, current = [], []
    for s in tokens["test"]:
        current.append(s)
        if s == "E" and current[-2] in "TP" and len(current) > 3:
            strings.append(current)
            current = []
    assert len(strings) == 100 and not current
    assert all(is_embedded_reber(s) for s in strings)
    assert not is_embedded_reber(["B", "T", "B", "T", "X", "S", "E", "P", "E"])  # T ... P
    # Independent count: one choice for the outer letter, one per inner Reber transition.
    choices = sum(1 + (len(s) - 6) for s in strings)
    expected = math.exp(choices * math.log(2) / (len(tokens["test"]) - 1))
    dm.setup()
    assert dm.optimal_ppl("test") == pytest.approx(expected, rel=0.02)
    assert 1.3 < dm.optimal_ppl("test") < 1.8


def test_reber_depends_on_the_seed_only():
    a = EmbeddedReber(seed=5).load_tokens()["train"]
    b = EmbeddedReber(seed=5).load_tokens()["train"]
    c = EmbeddedReber(seed=6).load_tokens()["train"]
    assert a == b and a != c


# ---- fetch and verify --------------------------------------------------------------------


def test_missing_file_is_downloaded_and_verified(tmp_path, http_server):
    shared = require_data(PTB["valid"])
    url = http_server(shared)
    path = ensure_file(PTB["valid"], root=tmp_path / "cache", mirror=url)
    assert path == tmp_path / "cache" / PTB["valid"]
    assert path.read_bytes() == (shared / PTB["valid"]).read_bytes()
    assert not list(path.parent.glob(".*part"))  # no temporary file left behind


def test_corrupt_download_is_refused_and_not_kept(tmp_path, http_server):
    shared = require_data(PTB["test"])
    served = tmp_path / "served"
    (served / "ptb").mkdir(parents=True)
    data = bytearray((shared / PTB["test"]).read_bytes())
    data[100] ^= 1
    (served / PTB["test"]).write_bytes(bytes(data))
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match="fails its sha256 check"):
        ensure_file(PTB["test"], root=cache, mirror=http_server(served))
    assert not (cache / PTB["test"]).exists()
    assert not list((cache / "ptb").glob("*"))


def test_unreachable_download_names_file_and_url(tmp_path, http_server):
    url = http_server(tmp_path)  # serves an empty folder: 404
    with pytest.raises(DataError) as err:
        ensure_file(PTB["train"], root=tmp_path / "cache", mirror=url)
    assert "ptb.train.txt" in str(err.value) and url in str(err.value)


def test_missing_file_without_download_names_the_canonical_url(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_file(PTB["train"], root=tmp_path, download=False)
    assert str(tmp_path / PTB["train"]) in str(err.value)
    assert CATALOG[PTB["train"]].url in str(err.value)


def test_local_file_failing_its_checksum_is_never_used(tmp_path):
    shared = require_data(PTB["valid"])
    (tmp_path / "ptb").mkdir()
    shutil.copy(shared / PTB["valid"], tmp_path / PTB["valid"])
    with open(tmp_path / PTB["valid"], "a") as f:
        f.write("tampered\n")
    with pytest.raises(DataError, match="ptb.valid.txt fails its sha256 check"):
        ensure_file(PTB["valid"], root=tmp_path)
