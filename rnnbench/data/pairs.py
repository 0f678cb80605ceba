"""Sentence-pair data for sequence to sequence: translation (Multi30k) and summarisation (any
TSV or JSONL file of document/summary pairs).

Text is tokenised with sacreBLEU's `13a` tokeniser (the one its BLEU uses: punctuation split
off, nothing else changed) and lower-cased; each side gets its own vocabulary from the training
split, of the tokens seen at least `min_freq` times (the rest read as <unk>). The token ids are
cached per data fingerprint (the files' bytes and every setting that changes the ids), so a
sweep tokenises once. Targets are wrapped in <bos> ... <eos>; ids 0..3 are <pad>, <unk>, <bos>,
<eos> on both sides.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a
from torch import Tensor
from torch.utils.data import Dataset

from rnnbench.data.base import SPLITS, SequenceDataModule, check_lines
from rnnbench.data.fetch import ensure_file
from rnnbench.data.lm import UNK, Vocabulary
from rnnbench.errors import ConfigError, DataError
from rnnbench.outputs import write_whole
from rnnbench.schema import PairsSchema, check_arguments
from rnnbench.tasks import PAD_ID
from rnnbench.text_scores import corpus_bleu, corpus_rouge

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # PAD first: id 0 is rnnbench.tasks.PAD_ID
BOS_ID, EOS_ID = SPECIALS.index(BOS), SPECIALS.index(EOS)
CACHE_VERSION = 2  # bump when tokenisation changes what ids a text gets


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    """sacreBLEU's 13a tokens (the tokenisation its BLEU scores with), lower-cased."""

    tokens = _TOKENIZER.setdefault("13a", Tokenizer13a())(text.strip()).split()
    return [t.lower() for t in tokens] if lowercase else tokens


_TOKENIZER: dict = {}


@dataclass
class Pairs:
    """One split: parallel lists of source and target texts, as read."""

    source: list[str]
    target: list[str]


def check_pairs(pairs: Pairs, where_source: str, where_target: str) -> Pairs:
    """Refuse, in one line naming the file and line, unequal line counts and empty sentences."""
    if len(pairs.source) != len(pairs.target):
        shorter, longer = sorted(
            [(len(pairs.source), where_source), (len(pairs.target), where_target)]
        )
        raise DataError(
            f"{longer[1]} has {longer[0]} lines but {shorter[1]} has {shorter[0]}: line "
            f"{shorter[0] + 1} of {longer[1]} has no counterpart; the two files must be "
            f"line-aligned"
        )
    if not pairs.source:
        raise DataError(f"{where_source} has no sentences: every split needs at least one pair")
    for i, (s, t) in enumerate(zip(pairs.source, pairs.target, strict=True), start=1):
        for text, where in ((s, where_source), (t, where_target)):
            if not text.strip():
                raise DataError(
                    f"{where} line {i} is empty: every pair needs text on both sides; "
                    f"remove the pair or fill it in"
                )
    return pairs


class PairDataset(Dataset):
    """Token ids of each pair: source ids, and target ids wrapped in <bos> ... <eos>."""

    def __init__(self, source: list[Tensor], target: list[Tensor]) -> None:
        self.source, self.target = source, target

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, Tensor, Tensor]:
        return i, self.source[i], self.target[i]


def pad_rows(rows: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D id tensors with PAD_ID: (B, longest) and the true lengths."""
    lengths = torch.tensor([r.numel() for r in rows])
    out = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r
    return out, lengths


def collate_pairs(items: list[tuple[int, Tensor, Tensor]]) -> dict[str, Tensor]:
    """A batch of pairs: `x`/`lengths` the padded source (the encoder packs it, so padding
    never reaches the recurrence), `tgt_in` the target from <bos> (the decoder's inputs), `y`
    the target up to <eos> (what it predicts; padding is ignored by the loss), `index` each
    pair's row in its split (to find its reference text)."""
    index, source, target = zip(*items, strict=True)
    x, lengths = pad_rows(source)
    tgt, tgt_lengths = pad_rows(target)
    return {
        "x": x,
        "lengths": lengths,
        "tgt_in": tgt[:, :-1],
        "y": tgt[:, 1:],
        "tgt_lengths": tgt_lengths - 1,
        "index": torch.tensor(index),
    }


def flat(rows: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Rows of ids as one tensor of them all and one of the rows' lengths."""
    return torch.cat(rows).to(torch.int32), torch.tensor([r.numel() for r in rows])


def cache_dir() -> Path:
    """Where token ids are cached: RNNBENCH_CACHE_DIR, else ~/.cache/rnnbench/tokens (never
    the data folder, which may be read-only)."""
    return Path(os.environ.get("RNNBENCH_CACHE_DIR", "~/.cache/rnnbench/tokens")).expanduser()


class PairDataModule(SequenceDataModule):
    """Base of the sequence-to-sequence datasets: subclasses read each split's `Pairs`
    (`read_pairs`) and name the files they came from (`fingerprint_files`); tokenising, the
    vocabularies, the cache, batching and scoring are shared. Its keywords (batch sizes, seed,
    `min_freq`, `lowercase`, the token cuts, `train_size`) are every subclass's `**options`."""

    causal = False  # the encoder reads the whole source: bidirectional is allowed
    collate = staticmethod(collate_pairs)

    def __init__(
        self,
        name: str,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        seed: int = 0,
        min_freq: int = 2,
        lowercase: bool = True,
        max_source_tokens: int | None = None,
        max_target_tokens: int | None = None,
        train_size: int | None = None,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, seed)
        check_arguments(
            PairsSchema,
            "data",
            min_freq=min_freq,
            max_source_tokens=max_source_tokens,
            max_target_tokens=max_target_tokens,
            train_size=train_size,
        )
        self.min_freq, self.lowercase = min_freq, lowercase
        self.max_source_tokens, self.max_target_tokens = max_source_tokens, max_target_tokens
        self.train_size = train_size
        self.texts: dict[str, Pairs] = {}
        self.src_vocab: Vocabulary | None = None
        self.tgt_vocab: Vocabulary | None = None
        self.cache_hit = False  # whether the last setup read its ids from the cache

    # What a subclass supplies -----------------------------------------------------------------
    def read_pairs(self) -> dict[str, Pairs]:
        raise NotImplementedError

    def fingerprint_files(self) -> list[Path]:
        """The files the pairs are read from: their bytes are part of the cache key."""
        raise NotImplementedError

    def score_texts(
        self, hypotheses: list[str], references: list[str]
    ) -> tuple[dict[str, float], str]:
        """Metrics of `hypotheses` against `references` (pair by pair), and the scorer's
        signature."""
        raise NotImplementedError

    def score(self, decoded: dict[int, str], split: str = "test") -> tuple[dict[str, float], str]:
        """Metrics of the decoded text of pairs `decoded` (row of `split` -> text) against
        those pairs' references, and the scorer's signature."""
        order = sorted(decoded)
        references = [self.texts[split].target[i] for i in order]
        return self.score_texts([decoded[i] for i in order], references)

    def reference_scores(self) -> dict[str, float]:
        """A trivial system's test scores (copy the source, the lead of the document)."""
        return {}

    # Shared -----------------------------------------------------------------------------------
    def _settings(self) -> dict:
        return {
            "version": CACHE_VERSION,
            "name": type(self).__name__,
            "min_freq": self.min_freq,
            "lowercase": self.lowercase,
            "max_source_tokens": self.max_source_tokens,
            "max_target_tokens": self.max_target_tokens,
            "train_size": self.train_size,
            "extra": self.fingerprint_extra(),
        }

    def fingerprint_extra(self) -> dict:
        return {}

    def fingerprint(self) -> str:
        digest = hashlib.sha256(json.dumps(self._settings(), sort_keys=True).encode())
        for path in self.fingerprint_files():
            digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
        return digest.hexdigest()[:20]

    def _tokens(self, text: str, limit: int | None) -> list[str]:
        tokens = tokenize(text, self.lowercase)
        return tokens[:limit] if limit else tokens

    def _encode(self) -> dict:
        """Tokenise every split, build the two vocabularies from train, and encode."""
        tokens = {
            split: (
                [self._tokens(t, self.max_source_tokens) for t in pairs.source],
                [self._tokens(t, self.max_target_tokens) for t in pairs.target],
            )
            for split, pairs in self.texts.items()
        }
        vocabs = []
        for side in (0, 1):
            counts = Vocabulary(t for sentence in tokens["train"][side] for t in sentence)
            kept = [
                t for t in counts.itos if counts.counts[t] >= self.min_freq and t not in SPECIALS
            ]
            vocabs.append([*SPECIALS, *kept])
        src, tgt = (Vocabulary.from_itos(v) for v in vocabs)
        ids = {}
        for split, (source, target) in tokens.items():
            # Each side as one tensor of every id and one of lengths: a cache of two tensors a
            # side loads in milliseconds, one of 60,000 small tensors in seconds.
            ids[split] = (
                *flat([src.encode(s) for s in source]),
                *flat([tgt.encode([BOS, *t, EOS]) for t in target]),
            )
        return {"src_itos": vocabs[0], "tgt_itos": vocabs[1], "ids": ids}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        texts = self.read_pairs()
        if self.train_size is not None:
            texts["train"] = Pairs(
                texts["train"].source[: self.train_size], texts["train"].target[: self.train_size]
            )
        self.texts = texts
        path = cache_dir() / f"{self.name}-{self.fingerprint()}.pt"
        encoded, self.cache_hit = None, False
        if path.is_file():
            try:
                encoded = torch.load(path, weights_only=True)
                self.cache_hit = True
            except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
                encoded = None
        if encoded is None:
            encoded = self._encode()
            try:
                buffer = io.BytesIO()
                torch.save(encoded, buffer)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_whole(path, buffer.getvalue())
            except OSError:
                pass  # an unwritable cache costs the next run a tokenisation, nothing more
        self.src_vocab = Vocabulary.from_itos(encoded["src_itos"])
        self.tgt_vocab = Vocabulary.from_itos(encoded["tgt_itos"])
        self.splits = {}
        for split in SPLITS:
            src_ids, src_lengths, tgt_ids, tgt_lengths = encoded["ids"][split]
            self.splits[split] = PairDataset(
                list(src_ids.long().split(src_lengths.tolist())),
                list(tgt_ids.long().split(tgt_lengths.tolist())),
            )

    @property
    def longest_target(self) -> int:
        """The most target tokens (with <eos>) of any training pair: the decoding limit's base."""
        return max(t.numel() - 1 for t in self.splits["train"].target)

    def model_io(self) -> dict:
        return {
            "_target_": "rnnbench.nn.encoder_decoder.EncoderDecoder",
            "src_vocab_size": len(self.src_vocab),
            "tgt_vocab_size": len(self.tgt_vocab),
            "bos_id": BOS_ID,
            "eos_id": EOS_ID,
        }

    def detokenize(self, ids: Sequence[int]) -> str:
        """Target ids as text: tokens up to <eos>, joined by spaces (13a tokens re-tokenise to
        themselves, so BLEU scores them as the references' tokens)."""
        words = []
        for i in ids:
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                words.append(self.tgt_vocab.itos[i])
        return " ".join(words)

    def reference_metrics(self) -> dict[str, float]:
        return self.reference_scores()


# ---------------------------------------------------------------------------------------------
# Translation


class TranslationData(PairDataModule):
    """Base of the translation datasets: scored with sacreBLEU, against copying the source."""

    task = "translate"

    def score_texts(
        self, hypotheses: list[str], references: list[str]
    ) -> tuple[dict[str, float], str]:

        bleu, signature = corpus_bleu(hypotheses, references, self.lowercase)
        return {"bleu": bleu}, signature

    def reference_scores(self) -> dict[str, float]:
        """Copy the source: the BLEU of each test source sentence taken as its translation
        (names, numbers and punctuation carry over) — a trained model must beat it."""
        test = self.texts["test"]
        return {"test/bleu_baseline": self.score_texts(test.source, test.target)[0]["bleu"]}


def read_lines(path: Path, key: str) -> list[str]:
    """The lines of a UTF-8 text file, without trailing blank lines; a line longer than
    MAX_LINE_CHARS is refused naming the file and line."""
    if not path.is_file():
        raise DataError(f"{key}: {path} is not a file")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} ({key}): {e}") from None
    check_lines(lines, path)
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


class ParallelText(TranslationData):
    """Translation over your own line-aligned files: `files` maps train/valid/test to a path
    prefix, read as PREFIX.SRC and PREFIX.TGT (`data.src`, `data.tgt`; the Moses/fairseq
    layout: corpus/train.de beside corpus/train.en)."""

    def __init__(
        self,
        files: dict[str, str],
        src: str,
        tgt: str,
        name: str = "translate",
        **options: Any,
    ) -> None:
        super().__init__(name, **options)
        self.files = {s: prefix_of(files, s, f"PREFIX.{src}") for s in SPLITS}
        if not src or not tgt or src == tgt:
            raise ConfigError(
                f"data.src={src} data.tgt={tgt}: name two different languages, the suffixes "
                f"of the files (data.src=de data.tgt=en reads PREFIX.de and PREFIX.en)"
            )
        self.src, self.tgt = src, tgt

    def paths(self, split: str) -> tuple[Path, Path]:
        prefix = self.files[split]
        return Path(f"{prefix}.{self.src}"), Path(f"{prefix}.{self.tgt}")

    def fingerprint_extra(self) -> dict:
        return {"src": self.src, "tgt": self.tgt}

    def fingerprint_files(self) -> list[Path]:
        return [p for s in SPLITS for p in self.paths(s)]

    def read_pairs(self) -> dict[str, Pairs]:
        out = {}
        for split in SPLITS:
            src, tgt = self.paths(split)
            key = f"data.files.{split}"
            pairs = Pairs(read_lines(src, key), read_lines(tgt, key))
            out[split] = check_pairs(pairs, str(src), str(tgt))
        return out


def prefix_of(files: dict[str, str] | None, split: str, example: str) -> Path:
    value = (files or {}).get(split)
    if not value:
        raise ConfigError(
            f"data.files.{split} is not set: give a file for each of {', '.join(SPLITS)} "
            f"(data.files.{split}=PATH; here {example})"
        )
    return Path(value).expanduser()


# ---------------------------------------------------------------------------------------------
# Multi30k


MULTI30K_ARCHIVES = {
    "train": ("multi30k/training.tar.gz", "train"),
    "valid": ("multi30k/validation.tar.gz", "val"),
    "test": ("multi30k/mmt16_task1_test.tar.gz", "test"),
}
# The languages each split has (the test archive adds French, the others do not).
MULTI30K_LANGUAGES = {"train": ("de", "en"), "valid": ("de", "en"), "test": ("de", "en", "fr")}
MULTI30K_PAIRS = ("de-en", "en-de")


def read_tar_lines(path: Path, member: str, relpath: str) -> list[str]:
    """The lines of `member` of a .tar.gz read in place (macOS `._*` resource forks skipped),
    without the trailing blank line the Multi30k files end with; each line checked against
    MAX_LINE_CHARS."""
    try:
        with tarfile.open(path, "r:gz") as archive:
            names = {
                Path(m.name).name: m
                for m in archive.getmembers()
                if m.isfile() and not Path(m.name).name.startswith("._")
            }
            if member not in names:
                raise DataError(f"{relpath} has no member {member} (it has {sorted(names)})")
            text = archive.extractfile(names[member]).read().decode("utf-8")
    except (tarfile.TarError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {member} from {relpath}: {e}") from None
    lines = text.split("\n")
    check_lines(lines, f"{path}:{member}")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


class Multi30k(TranslationData):
    """Multi30k task 1 (WMT16 multimodal translation): 29,000 / 1,014 / 1,000 caption pairs,
    German <-> English (`data.src`, `data.tgt`). Read from the three archives in place."""

    def __init__(
        self,
        name: str = "multi30k",
        src: str = "de",
        tgt: str = "en",
        root: str | None = None,
        download: bool = True,
        mirror: str | None = None,
        **options: Any,
    ) -> None:
        pair = f"{src}-{tgt}"
        if pair not in MULTI30K_PAIRS:
            every = sorted(set(MULTI30K_LANGUAGES["test"]))
            hint = (
                f" (French is in the test split only: there is nothing to train {pair} on)"
                if "fr" in (src, tgt) and src in every and tgt in every and src != tgt
                else ""
            )
            raise ConfigError(
                f"data.src={src} data.tgt={tgt}: multi30k has no such language pair{hint}; "
                f"use one of {', '.join(p.replace('-', ' -> ') for p in MULTI30K_PAIRS)} "
                f"(data.src=de data.tgt=en)"
            )
        super().__init__(name, **options)
        self.src, self.tgt = src, tgt
        self.root, self.download, self.mirror = root, download, mirror
        self._paths: list[Path] = []

    def fingerprint_extra(self) -> dict:
        return {"src": self.src, "tgt": self.tgt}

    def fingerprint_files(self) -> list[Path]:
        return self._paths

    def read_pairs(self) -> dict[str, Pairs]:
        out, self._paths = {}, []
        for split, (relpath, stem) in MULTI30K_ARCHIVES.items():
            path = ensure_file(relpath, self.root, self.download, self.mirror)
            self._paths.append(path)
            src, tgt = (f"{stem}.{lang}" for lang in (self.src, self.tgt))
            pairs = Pairs(read_tar_lines(path, src, relpath), read_tar_lines(path, tgt, relpath))
            out[split] = check_pairs(pairs, f"{relpath}:{src}", f"{relpath}:{tgt}")
        return out


# ---------------------------------------------------------------------------------------------
# Summaries from a user's files


def read_table(path: Path, columns: tuple[str, str]) -> Pairs:
    """(document, summary) pairs from a TSV file with a header row, or a JSONL file of objects,
    taking the two named columns; refuses a missing column, a malformed row or a line longer
    than MAX_LINE_CHARS in one line."""
    source, target = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    lines = check_lines(text.splitlines(), path)
    if path.suffix == ".jsonl":
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path} line {i} is not JSON ({e})") from None
            missing = [c for c in columns if not isinstance(row, dict) or c not in row]
            if missing:
                raise DataError(
                    f"{path} line {i} has no field {missing[0]!r}: set data.document and "
                    f"data.summary to the fields holding the text"
                )
            source.append(str(row[columns[0]]))
            target.append(str(row[columns[1]]))
    elif path.suffix in (".tsv", ".txt"):
        if not lines:
            raise DataError(f"{path} is empty: it needs a header row naming the columns")
        header = lines[0].split("\t")
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataError(
                f"{path} line 1: no column {missing[0]!r} in the header {header}; set "
                f"data.document and data.summary to the columns holding the text"
            )
        where = [header.index(c) for c in columns]
        for i, line in enumerate(lines[1:], start=2):
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(
                    f"{path} line {i} has {len(fields)} tab-separated fields, the header "
                    f"{len(header)}: a tab or newline inside a text must be escaped"
                )
            source.append(fields[where[0]])
            target.append(fields[where[1]])
    else:
        raise DataError(f"{path}: a summary file must end in .tsv or .jsonl")
    pairs = Pairs(source, target)
    if not source:
        raise DataError(f"{path} has no pairs: every split needs at least one")
    for i, (s, t) in enumerate(zip(source, target, strict=True)):
        if not s.strip() or not t.strip():
            column = columns[0] if not s.strip() else columns[1]
            raise DataError(
                f"{path} row {i + 1}: the {column!r} text is empty; every pair needs both texts"
            )
    return pairs


class Summaries(PairDataModule):
    """Summarisation over a user's (document, summary) files: `files` maps train/valid/test to
    TSV (header row) or JSONL paths, `document` and `summary` name the columns. Documents and
    summaries are cut to `max_source_tokens` / `max_target_tokens`."""

    task = "summarize"

    def __init__(
        self,
        files: dict[str, str],
        name: str = "summarize",
        document: str = "document",
        summary: str = "summary",
        **options: Any,
    ) -> None:
        # Documents and summaries are cut (See et al. 2017's 400 and 100) unless told otherwise.
        options = {"max_source_tokens": 400, "max_target_tokens": 100, **options}
        super().__init__(name, **options)
        self.files = {s: prefix_of(files, s, "a .tsv or .jsonl file") for s in SPLITS}
        self.columns = (document, summary)

    def fingerprint_extra(self) -> dict:
        return {"columns": list(self.columns)}

    def fingerprint_files(self) -> list[Path]:
        return [self.files[s] for s in SPLITS]

    def read_pairs(self) -> dict[str, Pairs]:
        for split, path in self.files.items():
            if not path.is_file():
                raise DataError(
                    f"data.files.{split}={path} is not a file: point it at a TSV or JSONL of "
                    f"{self.columns[0]}/{self.columns[1]} pairs"
                )
        return {s: read_table(self.files[s], self.columns) for s in SPLITS}

    def score_texts(
        self, hypotheses: list[str], references: list[str]
    ) -> tuple[dict[str, float], str]:

        return corpus_rouge(hypotheses, references)

    def reference_scores(self) -> dict[str, float]:
        """Lead: the document's first words, as many as the mean training summary has — the
        classic baseline a summariser must beat."""
        test, train = self.texts["test"], self.texts["train"]
        words = round(sum(len(t.split()) for t in train.target) / len(train.target))
        lead = [" ".join(doc.split()[:words]) for doc in test.source]
        scores, _ = self.score_texts(lead, test.target)
        return {f"test/{k}_baseline": v for k, v in scores.items()}
