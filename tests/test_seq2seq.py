"""Sequence to sequence: the encoder-decoder's masks and decoding, the scores, the data's
refusals, and real training runs on Multi30k and on a real summary sample."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
import torch

from conftest import QUIET, require_data, rnnbench_cli, train
from rnnbench.data.pairs import (
    BOS_ID,
    EOS_ID,
    Multi30k,
    ParallelText,
    Summaries,
    collate_pairs,
    tokenize,
)
from rnnbench.errors import ConfigError, DataError
from rnnbench.nn.decode import beam_search, greedy
from rnnbench.nn.encoder_decoder import EncoderDecoder
from rnnbench.results.record import EXAMPLES_FILE, RECORD_FILE, read_record
from rnnbench.results.report import main as report_main
from rnnbench.results.table import main as table_main
from rnnbench.tasks import KINDS
from rnnbench.text_scores import corpus_bleu, corpus_rouge

SUMMARIES = Path(__file__).parent / "data" / "debian_summaries"
VOCAB = 23


def model(cell: str, attention: str, **kw) -> EncoderDecoder:
    torch.manual_seed(0)
    m = EncoderDecoder(
        VOCAB, VOCAB, BOS_ID, EOS_ID, cell=cell, hidden_size=8, emb_size=6, attention=attention,
        **kw,
    )  # fmt: skip
    return m.double().eval()


def pair(src_len: int, tgt_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (src_len,), generator=g)
    tgt = torch.randint(4, VOCAB, (tgt_len,), generator=g)
    return src, torch.cat([torch.tensor([BOS_ID]), tgt, torch.tensor([EOS_ID])])


def logits(m: EncoderDecoder, items, teacher_forcing: float | None = None) -> list:
    """Each pair's target-token logits, (its target length, V), from one batch of `items`."""
    batch = collate_pairs([(i, s, t) for i, (s, t) in enumerate(items)])
    out = m(batch["x"], batch["lengths"], batch["tgt_in"], batch["tgt_lengths"], teacher_forcing)
    return list(out.split(batch["tgt_lengths"].tolist()))


CASES = [
    (cell, attention, impl, bi)
    for cell in ("rnn", "gru", "lstm")
    for attention in ("none", "additive", "dot")
    for impl, bi in (("fused", True), ("scratch", False))
]


@pytest.mark.parametrize("cell,attention,impl,bidirectional", CASES)
def test_padding_changes_nothing(cell, attention, impl, bidirectional):
    """A pair decoded alone and beside longer pairs (its source and target padded) gives the
    same logits at every real target step, in float64: padding reaches neither the encoder's
    recurrence, nor the attention, nor the decoder's real steps."""
    m = model(cell, attention, impl=impl, bidirectional=bidirectional, num_layers=2)
    short, long_src, long_tgt = pair(3, 2, 1), pair(9, 3, 2), pair(2, 7, 3)
    [alone] = logits(m, [short])
    together = logits(m, [long_src, short, long_tgt])
    assert [t.shape for t in together] == [(4, VOCAB), (3, VOCAB), (8, VOCAB)]  # words + <eos>
    torch.testing.assert_close(together[1], alone, rtol=0, atol=1e-10)


@pytest.mark.parametrize("attention", ["none", "dot"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_call_decoder_equals_the_step_by_step_one(cell, attention):
    """With the reference always fed, the decoder's one call over the whole target computes
    what its step function computes one token at a time (the path greedy and beam use)."""
    m = model(cell, attention, bidirectional=True, feed_context=True)
    items = [pair(5, 4, 1), pair(3, 6, 2), pair(4, 1, 3)]
    batch = collate_pairs([(i, s, t) for i, (s, t) in enumerate(items)])
    memory, state = m.encode(batch["x"], batch["lengths"])
    args = (batch["tgt_in"], batch["tgt_lengths"], state, memory)
    at_once = m.teacher_forced(*args)
    torch.testing.assert_close(m.stepwise(*args, 1.0), at_once, rtol=0, atol=1e-10)
    # Below 1 the logits come step by step and are put back in row order: a probability that
    # feeds the reference at every step must give the same logits in the same order.
    torch.testing.assert_close(m.stepwise(*args, 1.0 - 1e-12), at_once, rtol=0, atol=1e-10)


@pytest.mark.parametrize("attention", ["none", "additive", "dot"])
def test_beam_of_one_is_greedy_and_wider_beams_score_no_worse(attention):
    m = model("gru", attention, bidirectional=True)
    items = [pair(n, 2, n) for n in (3, 8, 5, 6)]
    batch = collate_pairs([(i, s, t) for i, (s, t) in enumerate(items)])
    x, lengths = batch["x"], batch["lengths"]
    greedy_ids = greedy(m, x, lengths, max_len=12)
    beam_ids = beam_search(m, x, lengths, beam=1, max_len=12)
    width = max(greedy_ids.size(1), beam_ids.size(1))
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.size(1)))  # noqa: E731
    assert torch.equal(pad(greedy_ids), pad(beam_ids))

    def log_prob(ids: torch.Tensor) -> torch.Tensor:
        """The model's log-probability of each decoded sequence (up to its <eos>)."""
        tgt_in = torch.cat([torch.full((ids.size(0), 1), BOS_ID), ids[:, :-1]], dim=1)
        written = (ids != 0).sum(1)
        logp = m.log_probs(m(x, lengths, tgt_in, written, teacher_forcing=1.0))
        picked = logp.gather(-1, ids[ids != 0][:, None]).squeeze(-1)
        return torch.stack([p.sum() for p in picked.split(written.tolist())])

    wide = beam_search(m, x, lengths, beam=4, max_len=12)
    assert (log_prob(wide) >= log_prob(greedy_ids) - 1e-9).all()


def test_bleu_of_references_against_themselves_is_100():
    root = require_data("multi30k/mmt16_task1_test.tar.gz")
    data = Multi30k(root=str(root))
    data.setup()
    refs = data.texts["test"].target
    bleu, signature = corpus_bleu(refs, refs)
    assert bleu == pytest.approx(100.0)
    assert "tok:13a" in signature and "case:lc" in signature and "version:" in signature
    # What the model writes is 13a tokens joined by spaces: the references tokenised that way
    # score 100 too, so a decoded sentence is scored exactly as its reference.
    tokenised = [" ".join(tokenize(r)) for r in refs]
    assert corpus_bleu(tokenised, refs)[0] == pytest.approx(100.0)
    # The copy-the-source baseline is far below: German is not English.
    assert data.reference_scores()["test/bleu_baseline"] < 5.0
    # Sizes as SOURCES.md gives them; the archives' macOS ._ members are skipped.
    assert [len(data.texts[s].source) for s in ("train", "valid", "test")] == [29000, 1014, 1000]
    # The ids were cached: a second datamodule with the same settings reads them back.
    again = Multi30k(root=str(root))
    again.setup()
    assert again.cache_hit and len(again.tgt_vocab) == len(data.tgt_vocab)


def test_rouge_of_summaries_against_themselves_is_100():
    refs = (SUMMARIES / "test.tsv").read_text().splitlines()[1:]
    summaries = [line.split("\t")[2] for line in refs]
    scores, signature = corpus_rouge(summaries, summaries)
    assert scores == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0}, abs=0.5)
    assert scores["rouge1"] == pytest.approx(100.0)
    assert "rouge-score" in signature
    swapped, _ = corpus_rouge(summaries, summaries[1:] + summaries[:1])
    assert swapped["rougeL"] < 30.0


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def parallel(tmp_path: Path, de: dict[str, list[str]], en: dict[str, list[str]]) -> ParallelText:
    for split in ("train", "valid", "test"):
        write(tmp_path / f"{split}.de", de.get(split, ["ein hund ."]))
        write(tmp_path / f"{split}.en", en.get(split, ["a dog ."]))
    files = {s: str(tmp_path / s) for s in ("train", "valid", "test")}
    return ParallelText(files, "de", "en")


def test_bad_pair_files_each_get_one_line_naming_the_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    data = parallel(tmp_path, {"train": ["a", "b", "c"]}, {"train": ["x", "y"]})
    with pytest.raises(DataError, match=r"train\.de has 3 lines but .*train\.en has 2: line 3"):
        data.setup()
    data = parallel(tmp_path, {"valid": ["ein hund .", "  ", "eine katze ."]},
                    {"valid": ["a dog .", "nothing", "a cat ."]})  # fmt: skip
    with pytest.raises(DataError, match=r"valid\.de line 2 is empty"):
        data.setup()
    with pytest.raises(ConfigError, match=r"data\.files\.valid is not set"):
        ParallelText({"train": "x", "test": "y"}, "de", "en")
    with pytest.raises(ConfigError, match=r"data.src=de data.tgt=de: name two different"):
        ParallelText({s: "x" for s in ("train", "valid", "test")}, "de", "de")
    with pytest.raises(ConfigError, match=r"French is in the test split only"):
        Multi30k(src="en", tgt="fr")
    with pytest.raises(
        ConfigError, match=r"data.src=de data.tgt=xx: multi30k has no such language pair"
    ):
        Multi30k(src="de", tgt="xx")
    bad = tmp_path / "bad.tsv"
    write(bad, ["document\tsummary", "some text\t"])
    with pytest.raises(DataError, match=r"row 1: the 'summary' text is empty"):
        Summaries({s: str(bad) for s in ("train", "valid", "test")}).setup()
    write(bad, ["text\tsummary", "some text\tshort"])
    with pytest.raises(DataError, match=r"no column 'document' in the header"):
        Summaries({s: str(bad) for s in ("train", "valid", "test")}).setup()


@pytest.mark.parametrize(
    "override, message",
    [
        ("decode.beam=0", "decode.beam=0 is not allowed: use an integer >= 1"),
        ("data.tgt=fr", "data.src=de data.tgt=fr: multi30k has no such language pair"),
        ("model.tbptt=5", "model.tbptt=5 does not apply to sequence-to-sequence data"),
        ("+callbacks=gradflow", "+callbacks=gradflow measures one recurrent stack's gradients"),
    ],
)
def test_bad_seq2seq_values_are_one_line_and_leave_no_completed_record(tmp_path, override, message):
    require_data("multi30k/training.tar.gz")
    result = rnnbench_cli(
        ["data=multi30k", override, *QUIET, f"results_root={tmp_path}"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("rnnbench: error")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    completed = [p for p in tmp_path.rglob(RECORD_FILE) if read_record(p)["status"] == "completed"]
    assert completed == []


def test_attention_is_refused_for_data_without_a_decoder(tmp_path):
    with pytest.raises(ConfigError, match=r"model.attention=dot is for sequence-to-sequence"):
        train(["model.attention=dot", "trainer.max_epochs=1"], tmp_path / "run")


def test_a_short_multi30k_run_translates_better_than_copying_the_source(tmp_path):
    """The small recipe on a reduced budget (labelled in the record's config): trains, decodes
    with beam search, and its test BLEU beats copying the German source."""
    require_data("multi30k/training.tar.gz")
    record = train(
        [
            "experiment=seq2seq/small",
            "data.train_size=6000",
            "trainer.max_epochs=2",
            "decode.beam=3",
            "trainer.limit_test_batches=2",
        ],
        tmp_path / "run",
    )
    assert record["status"] == "completed", record.get("error")
    metrics = record["metrics"]
    assert record["headline"] == "test/bleu" and record["task"] == "translate"
    assert metrics["test/bleu"] > metrics["test/bleu_baseline"] + 1.0, metrics
    assert record["decoding"]["signature"].startswith("nrefs:1|case:lc|eff:no|tok:13a")
    assert record["decoding"]["beam"] == 3 and record["decoding"]["pairs"] == 512
    on_disk = read_record(tmp_path / "run" / RECORD_FILE)
    assert on_disk["decoding"] == record["decoding"]
    examples = [json.loads(line) for line in (tmp_path / "run" / EXAMPLES_FILE).open()]
    assert len(examples) == 10 and all(e["decoded"] and e["reference"] for e in examples)
    # The views read it as any run: the table's headline is BLEU (higher is better, against the
    # tutorial's reference set), and the report shows what the run decoded.
    table = tmp_path / "table.md"
    assert table_main([str(tmp_path / "run"), "-o", str(table)]) == 0
    assert "test/bleu" in table.read_text()
    page = tmp_path / "report.html"
    assert report_main([str(tmp_path / "run"), "-o", str(page)]) == 0
    text = page.read_text()
    assert "Decoded test examples" in text
    assert (
        html.escape(examples[0]["source"]) in text and html.escape(examples[0]["decoded"]) in text
    )


def test_summaries_train_end_to_end_and_are_scored_with_rouge(tmp_path, monkeypatch):
    """A real summary sample trains end to end with attention and is scored with ROUGE
    against the lead baseline (the sample is too small to beat it: not asserted)."""
    monkeypatch.setenv("RNNBENCH_CACHE_DIR", str(tmp_path / "cache"))
    files = [f"data.files.{s}={SUMMARIES / f'{s}.tsv'}" for s in ("train", "valid", "test")]
    record = train(
        [
            "data=summarize",
            *files,
            "model=lstm",
            "model.attention=dot",
            "model.hidden_size=32",
            "model.num_layers=1",
            "data.max_source_tokens=60",
            "data.max_target_tokens=12",
            "decode.beam=2",
            "trainer.max_epochs=1",
        ],
        tmp_path / "run",
    )
    assert record["status"] == "completed", record.get("error")
    assert record["headline"] == "test/rougeL" and record["task"] == "summarize"
    for key in ("rouge1", "rouge2", "rougeL"):
        assert 0.0 <= record["metrics"][f"test/{key}"] <= 100.0
        assert record["metrics"][f"test/{key}_baseline"] > 0.0
    assert record["decoding"]["signature"].startswith("rouge-score:")

    # Loaded for use, the run translates its test sources as its own test decoded them.
    import rnnbench

    examples = [json.loads(line) for line in (tmp_path / "run" / EXAMPLES_FILE).open()]
    assert examples
    made = rnnbench.translate(tmp_path / "run", [e["source"] for e in examples])
    assert made == [e["decoded"] for e in examples]


@pytest.mark.parametrize(
    "recipe, tutorial", [("lstm", 13.9e6), ("gru_context", 14.2e6), ("gru_attention", 20.5e6)]
)
def test_reference_recipes_have_the_tutorials_parameter_counts(recipe, tutorial):
    """The three reference-size recipes are the tutorial's models: parameter counts within 2%
    (its vocabularies are spaCy's, ours 13a's: 7,853 / 5,893 words there, 7,818 / 5,975 here)."""
    from hydra.utils import instantiate

    from rnnbench.config import compose
    from rnnbench.nn.build import build_model

    root = require_data("multi30k/training.tar.gz")
    cfg = compose([f"experiment=seq2seq/{recipe}", f"data.root={root}"])
    data = instantiate(cfg.data)
    data.setup()
    params = sum(p.numel() for p in build_model(cfg.model, data.model_io()).parameters())
    assert abs(params / tutorial - 1) < 0.02, params


def reversal_batch(generator: torch.Generator, n: int) -> dict:
    """Source: 8-14 random tokens; target: the same tokens reversed."""
    items = []
    for i in range(n):
        src = torch.randint(4, 30, (int(torch.randint(8, 15, (1,), generator=generator)),))
        tgt = torch.cat([torch.tensor([BOS_ID]), src.flip(0), torch.tensor([EOS_ID])])
        items.append((i, src, tgt))
    return collate_pairs(items)


def test_attention_learns_to_align_where_a_fixed_summary_cannot():
    """Reversing a sequence needs source token j at target step T - j: with attention
    (additive or dot) the model learns it in a few hundred steps, from the bridged final state
    alone it does not. A broken mask, bridge or context would leave attention no better."""
    held_out = reversal_batch(torch.Generator().manual_seed(99), 256)
    losses = {}
    for attention in ("none", "dot", "additive"):
        torch.manual_seed(0)
        m = EncoderDecoder(30, 30, BOS_ID, EOS_ID, cell="gru", hidden_size=48, emb_size=32,
                           attention=attention, bidirectional=True)  # fmt: skip
        optimizer = torch.optim.Adam(m.parameters(), 3e-3)
        generator = torch.Generator().manual_seed(1)
        for _ in range(150):
            b = reversal_batch(generator, 64)
            loss = KINDS["translate"].loss(
                m(b["x"], b["lengths"], b["tgt_in"], b["tgt_lengths"]), b
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        m.eval()
        with torch.no_grad():
            b = held_out
            out = m(b["x"], b["lengths"], b["tgt_in"], b["tgt_lengths"])
            losses[attention] = float(KINDS["translate"].loss(out, b))
    assert losses["dot"] < 0.3 * losses["none"], losses
    assert losses["additive"] < 0.3 * losses["none"], losses
