"""Models: an input layer, a RecurrentStack and a task head."""

from __future__ import annotations

from torch import Tensor, nn

from rnnbench.cells import RecurrentStack, State
from rnnbench.errors import ConfigError


class LanguageModel(nn.Module):
    """Embedding -> dropout -> RecurrentStack -> dropout -> linear head over the vocabulary.

    A causal language model must not read the future, so `bidirectional` is refused.
    `init_range` sets every parameter uniform(-x, x) as in Zaremba et al. 2014; null keeps
    PyTorch's initialisation.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        impl: str = "fused",
        hidden_size: int = 200,
        num_layers: int = 2,
        bidirectional: bool = False,
        dropout: float = 0.0,
        tie_weights: bool = False,
        emb_size: int | None = None,
        gru_reset: str = "after",
        init_range: float | None = None,
    ) -> None:
        super().__init__()
        if bidirectional:
            raise ConfigError(
                "model.bidirectional=true is not allowed for a language model: reading the "
                "sequence backwards shows it the very tokens it must predict; use "
                "model.bidirectional=false"
            )
        emb_size = emb_size or hidden_size
        self.stack = RecurrentStack(
            cell, emb_size, hidden_size, num_layers, bidirectional, dropout, impl, gru_reset
        )
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.stack.output_size, vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        if tie_weights:
            if emb_size != self.stack.output_size:
                raise ConfigError(
                    f"model.tie_weights=true needs model.emb_size == model.hidden_size "
                    f"(got {emb_size} and {hidden_size})"
                )
            self.head.weight = self.embedding.weight

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """tokens (B, T) -> logits (B, T, vocab), final state."""
        out, state = self.stack(self.drop(self.embedding(tokens)), state)
        return self.head(self.drop(out)), state
