"""Scores of decoded text against references: corpus BLEU by sacreBLEU (with its signature,
which says exactly how it was computed) and ROUGE-1/2/L by Google's `rouge-score` (the
implementation behind the published ROUGE numbers of recent papers and HF `evaluate`)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import version

from sacrebleu.metrics import BLEU


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[str], lowercase: bool = True
) -> tuple[float, str]:
    """sacreBLEU's corpus BLEU (13a tokens, one reference each) and its signature string,
    e.g. `nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0`."""

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    bleu = BLEU(lowercase=lowercase, tokenize="13a", force=True)
    # force: the hypotheses are 13a tokens already (13a leaves them as they are), which
    # sacreBLEU would otherwise warn about.
    score = bleu.corpus_score(list(hypotheses), [list(references)])
    return float(score.score), str(bleu.get_signature())


ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def corpus_rouge(
    hypotheses: Sequence[str], references: Sequence[str]
) -> tuple[dict[str, float], str]:
    """Mean ROUGE-1/2/L F1 over the pairs, x100, with the Porter stemmer (as the papers report
    them), and a signature naming the package and its settings."""

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    # rouge-score loads nltk, and nltk scikit-learn and pandas: ~1 s of every run's start-up.
    # lazy: only a summary run's test scores ROUGE.
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for hyp, ref in zip(hypotheses, references, strict=True):
        for key, value in scorer.score(ref, hyp).items():
            totals[key] += value.fmeasure
    n = max(len(hypotheses), 1)
    signature = f"rouge-score:{version('rouge-score')}|f1|stemmer:porter|mean-of-pairs"
    return {k: 100.0 * v / n for k, v in totals.items()}, signature
