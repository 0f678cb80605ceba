"""Huge or hostile lines never hang a run: every text reader refuses a line longer than
MAX_LINE_CHARS in one line naming the file and line, before any tokenising; and a stop signal
ends a run promptly while it prepares legal data, however long its lines.

Pair files (`data=translate`, `data=summarize`) are the user's own, so they are checked through
the real `rnnbench` CLI. The language-model corpora and SST-2 are catalogue files that must
match their sha256 before they are read, so their readers are checked in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from conftest import assert_refused, records, require_data, rnnbench_cli
from rnnbench.data import lm
from rnnbench.data.base import MAX_LINE_CHARS, check_line, check_lines
from rnnbench.data.lm import TextCorpus
from rnnbench.data.pairs import read_lines, read_table, read_tar_lines
from rnnbench.data.sst2 import read_sst2
from rnnbench.errors import DataError

HUGE = 1_300_000  # the line of issue 33: 1.3 MB on one line
QUIET = ["logger=none", "trainer.enable_progress_bar=false"]
SPLITS = ("train", "valid", "test")


def refusal(where: Path | str, number: int, length: int) -> str:
    return (
        f"{where}:{number}: line of {length:,} characters is longer than the "
        f"{MAX_LINE_CHARS:,} allowed"
    )


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def words(length: int) -> str:
    """Ordinary text, `length` characters of it on one line."""
    return ("ein hund läuft über die straße , und eine katze schläft . " * (length // 50 + 1))[
        :length
    ]


# ---- the shared check --------------------------------------------------------------------


def test_the_bound_allows_its_length_and_refuses_one_more_in_one_line():
    assert check_line("x" * MAX_LINE_CHARS, "f.txt", 7) == "x" * MAX_LINE_CHARS
    with pytest.raises(DataError) as refused:
        check_lines(["ok", "x" * MAX_LINE_CHARS, "y" * (MAX_LINE_CHARS + 1)], "corpus/f.txt")
    message = str(refused.value)
    assert message.startswith(refusal("corpus/f.txt", 3, MAX_LINE_CHARS + 1)), message
    assert "\n" not in message


def test_the_bound_is_far_above_every_real_corpus_line():
    """What the constant's comment says: the longest line of the real corpora is at most a
    twentieth of the bound, so no real data comes near it."""
    root = require_data("ptb/ptb.train.txt", "ptb_char/ptb.char.train.txt", "sst2/train.tsv")
    texts = [p.read_text(encoding="utf-8") for p in root.glob("*/*.t[sx][vt]")]
    texts += [
        p.read_text(encoding="utf-8") for p in (Path(__file__).parent / "data").rglob("*.tsv")
    ]
    longest = max(len(line) for text in texts for line in text.splitlines())
    assert 500 < longest <= MAX_LINE_CHARS // 20, longest


# ---- every text reader calls it ------------------------------------------------------------


def test_pair_readers_refuse_a_huge_line_naming_file_and_line(tmp_path):
    text = write(tmp_path / "train.de", ["ein hund .", words(HUGE), "eine katze ."])
    with pytest.raises(DataError, match=refusal(text, 2, HUGE)):
        read_lines(text, "data.files.train")
    table = write(tmp_path / "train.tsv", ["document\tsummary", f"{words(HUGE)}\tshort"])
    with pytest.raises(DataError, match=refusal(table, 2, HUGE + 6)):
        read_table(table, ("document", "summary"))
    archive = tmp_path / "training.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(text, arcname="train.de")
    with pytest.raises(DataError, match=refusal(f"{archive}:train.de", 2, HUGE)):
        read_tar_lines(archive, "train.de", "multi30k/training.tar.gz")


def test_language_model_corpora_refuse_a_huge_line_naming_file_and_line(tmp_path, monkeypatch):
    """ptb_word/ptb_char/wikitext2 (a file or a zip member) and timemachine (one file cut into
    splits) all read through TextCorpus._read_lines; the catalogue lookup is stubbed to hand it
    these files."""
    plain = write(tmp_path / "ptb.train.txt", [" the cat sat ", " on the mat ", "x" * HUGE])
    archive = tmp_path / "wikitext.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("wiki.train.tokens", f" = title = \n\n {words(HUGE)} \n")
    monkeypatch.setattr(lm, "ensure_file", lambda relpath, *a: tmp_path / relpath)
    corpus = TextCorpus("ptb_word", {s: "ptb.train.txt" for s in SPLITS})
    with pytest.raises(DataError, match=refusal(plain, 3, HUGE)):
        corpus.setup()
    corpus = TextCorpus("timemachine", {"all": "ptb.train.txt"}, tokenizer="d2l_chars")
    with pytest.raises(DataError, match=refusal(plain, 3, HUGE)):
        corpus.setup()
    corpus = TextCorpus("wikitext2", {s: "wikitext.zip:wiki.train.tokens" for s in SPLITS})
    with pytest.raises(DataError, match=refusal(f"{archive}:wiki.train.tokens", 3, HUGE + 2)):
        corpus.setup()


def test_sst2_refuses_a_huge_line_naming_file_and_line(tmp_path):
    path = write(tmp_path / "train.tsv", ["sentence\tlabel", "a fine film\t1", f"{words(HUGE)}\t0"])
    with pytest.raises(DataError, match=refusal(path, 3, HUGE + 2)):
        read_sst2(path, "sst2/train.tsv")
    write(path, ["x" * HUGE, "a fine film\t1"])  # a header line is a line too
    with pytest.raises(DataError, match=refusal(path, 1, HUGE)):
        read_sst2(path, "sst2/train.tsv")


# ---- the real CLI --------------------------------------------------------------------------


def translate_folder(root: Path, train_de: list[str]) -> list[str]:
    """PREFIX.de / PREFIX.en files for the three splits (train.de as given); the overrides."""
    root.mkdir(parents=True)
    for split in SPLITS:
        de = train_de if split == "train" else ["ein hund läuft .", "eine katze schläft ."]
        write(root / f"{split}.de", de)
        write(
            root / f"{split}.en",
            [["a dog runs .", "a cat sleeps ."][i % 2] for i in range(len(de))],
        )
    return ["data=translate", *(f"data.files.{s}={root / s}" for s in SPLITS)]


def summary_folder(root: Path, documents: list[str]) -> list[str]:
    """JSONL (document, summary) files for the three splits (train's documents as given)."""
    root.mkdir(parents=True)
    for split in SPLITS:
        docs = documents if split == "train" else ["a dog runs in the park .", "a cat sleeps ."]
        rows = [json.dumps({"document": d, "summary": "an animal ."}) for d in docs]
        write(root / f"{split}.jsonl", rows)
    return ["data=summarize", *(f"data.files.{s}={root / s}.jsonl" for s in SPLITS)]


@pytest.mark.parametrize("data", ["translate", "summarize"])
def test_a_huge_line_in_a_pair_file_is_refused_in_seconds(data, tmp_path):
    """Issue 33: a 1.3 MB line in a pair file became one sequence of 300,000+ tokens that the
    encoder read in one native call (deaf to SIGTERM for minutes), or, as a document, was
    tokenised whole only to be cut to 400 tokens. Now: exit 2, one line, no training."""
    normal = ["ein hund läuft .", "eine katze schläft ."] * 3
    if data == "translate":
        args = translate_folder(tmp_path / "corpus", [*normal[:4], words(HUGE), *normal[4:]])
        where = tmp_path / "corpus" / "train.de"
        length = HUGE
    else:
        args = summary_folder(tmp_path / "corpus", [*normal[:4], words(HUGE), *normal[4:]])
        where = tmp_path / "corpus" / "train.jsonl"
        length = len(json.dumps({"document": words(HUGE), "summary": "an animal ."}))
    work = tmp_path / "work"
    work.mkdir()
    start = time.monotonic()
    done = rnnbench_cli(
        [*args, *QUIET], cwd=work, env={"RNNBENCH_CACHE_DIR": str(tmp_path / "cache")}, timeout=120
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    assert_refused(done, refusal(where, 5, length), work)
    assert "Traceback" not in done.stdout + done.stderr
    # Refused before any model was built (a refusal while building leaves no record at all).
    assert all(r["params"] is None for r in records(work / "runs"))
    assert elapsed < 60, elapsed  # the process's start-up included; the refusal is milliseconds


def handles_sigterm(pid: int) -> bool:
    """Whether process `pid` has a SIGTERM handler: the run's own, installed as it starts."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
    return bool(caught >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_sigterm_during_data_preparation_ends_the_run_promptly(tmp_path):
    """A large but legal pair file, every training line at the bound and the tokeniser's worst
    case (a token per character): preparing it takes seconds, yet a SIGTERM sent as soon as the
    run has started (its handler is in place) ends it within seconds, recorded as interrupted
    before any model was built. Each line is tokenised in its own call, so the signal's handler
    runs between lines."""
    args = translate_folder(tmp_path / "corpus", ["." * MAX_LINE_CHARS] * 100)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "rnnbench"), *args, *QUIET],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "WANDB_MODE": "offline", "RNNBENCH_CACHE_DIR": str(tmp_path / "cache")},
    )
    deadline = time.monotonic() + 120
    while not handles_sigterm(proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never started: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    time.sleep(0.5)  # into the tokenising
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"SIGTERM ignored for 10 s: {proc.communicate()[1][-2000:]}")
    assert time.monotonic() - sent < 10
    assert proc.returncode == 143, stderr[-2000:]  # 128 + SIGTERM
    assert "Traceback" not in stderr and "rnnbench: run interrupted" in stderr, stderr[-2000:]
    [record] = records(work / "runs")
    assert record["status"] == "interrupted"
    assert record["task"] is None and record["params"] is None  # stopped in data preparation
