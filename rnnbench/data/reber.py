"""The embedded Reber grammar (Hochreiter & Schmidhuber 1997), generated in code.

Strings are concatenated into one stream. Every symbol is either forced by the grammar
(probability 1) or one of two equally likely choices (probability 1/2), and the state of the
automaton follows from the symbols read, so the best any model can do on a split is known exactly:
the mean of -log p(symbol | history) over the symbols the model is asked to predict.
"""

from __future__ import annotations

import math
import random

import torch

from rnnbench.data.lm import LMDataModule, batchify

# Reber automaton: state -> the two (symbol, next state) choices; state 5 only emits E.
REBER = {
    0: (("T", 1), ("P", 2)),
    1: (("S", 1), ("X", 3)),
    2: (("T", 2), ("V", 4)),
    3: (("X", 2), ("S", 5)),
    4: (("P", 3), ("V", 5)),
}
HALF = math.log(0.5)


def embedded_reber_string(rng: random.Random) -> tuple[list[str], list[float]]:
    """One embedded Reber string and, per symbol, its log-probability given everything before it.

    B (T|P) <Reber string B...E> (the same T|P) E. The opening B follows the previous string's E
    with certainty, so it costs nothing.
    """
    outer = rng.choice("TP")
    symbols, logp = ["B", outer, "B"], [0.0, HALF, 0.0]
    state = 0
    while state != 5:
        symbol, state = REBER[state][rng.randrange(2)]
        symbols.append(symbol)
        logp.append(HALF)
    symbols += ["E", outer, "E"]
    logp += [0.0, 0.0, 0.0]
    return symbols, logp


def is_embedded_reber(symbols: list[str]) -> bool:
    """Whether `symbols` is exactly one string of the embedded Reber grammar."""
    if len(symbols) < 9 or symbols[0] != "B" or symbols[-1] != "E":
        return False
    if symbols[1] not in "TP" or symbols[-2] != symbols[1] or symbols[2] != "B":
        return False
    if symbols[-3] != "E":
        return False
    state = 0
    for symbol in symbols[3:-3]:
        moves = dict(REBER.get(state, ()))
        if symbol not in moves:
            return False
        state = moves[symbol]
    return state == 5


class EmbeddedReber(LMDataModule):
    """Embedded-Reber language modelling; `optimal_ppl(split)` is the exact best perplexity."""

    def __init__(
        self,
        name: str = "reber",
        train_strings: int = 2000,
        valid_strings: int = 300,
        test_strings: int = 300,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        bptt: int = 40,
        seed: int = 0,
    ) -> None:
        super().__init__(name, batch_size, eval_batch_size, bptt, unit="symbol")
        self.counts = {"train": train_strings, "valid": valid_strings, "test": test_strings}
        self.seed = seed
        self.logp: dict[str, torch.Tensor] = {}

    def load_tokens(self) -> dict[str, list[str]]:
        rng = random.Random(self.seed)
        tokens = {}
        for split, count in self.counts.items():
            symbols, logp = [], []
            for _ in range(count):
                s, lp = embedded_reber_string(rng)
                symbols += s
                logp += lp
            tokens[split] = symbols
            size = self.batch_size if split == "train" else self.eval_batch_size
            self.logp[split] = batchify(torch.tensor(logp, dtype=torch.float64), size)
        return tokens

    def optimal_ppl(self, split: str) -> float:
        """exp of the mean true -log p over exactly the targets a model is scored on."""
        return math.exp(-self.logp[split][:, 1:].mean().item())

    def reference_metrics(self) -> dict[str, float]:
        return {
            "val/ppl_optimal": self.optimal_ppl("valid"),
            "test/ppl_optimal": self.optimal_ppl("test"),
        }
