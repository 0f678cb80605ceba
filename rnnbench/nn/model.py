"""Models: an input layer, a RecurrentStack and a task head.

One class covers every task: token inputs go through an embedding, real-valued inputs go to the
stack as they are; the head reads every time step (language modelling, music, copy memory) or
the final state of the last layer (classification, regression).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rnnbench.cellspec import GATED_CELLS
from rnnbench.errors import ConfigError, check_choice
from rnnbench.nn.cells import RecurrentStack, State, detach_state
from rnnbench.schema import ModelSchema, check_arguments

READOUTS = ("all", "last")


def set_forget_bias(stack: RecurrentStack, value: float) -> None:
    """The initial bias of the gate that keeps the state: an LSTM's forget gate (Gers et al.
    2000; Jozefowicz et al. 2015), a GRU's update gate z (h' = (1 - z) n + z h, so a positive
    bias starts it carrying h on, as the forget bias does c)."""
    if stack.cell not in GATED_CELLS:
        raise ConfigError(
            f"model.forget_bias is for LSTM and GRU only: set it to null for "
            f"model.cell={stack.cell}"
        )
    h = stack.hidden_size
    with torch.no_grad():
        for name, p in stack.rnn.named_parameters():
            # LSTM gates i, f, g, o; GRU gates r, z, n: the keeping gate is the second of both.
            if name.startswith("bias_ih"):
                p[h : 2 * h] = value
            elif name.startswith("bias_hh"):
                p[h : 2 * h] = 0.0


class SequenceModel(nn.Module):
    """Input layer -> dropout -> RecurrentStack -> dropout -> linear head.

    The dataset supplies `vocab_size` (token inputs) or `input_size` (real-valued inputs),
    `output_size`, `readout` and `causal`. A causal task predicts each step from the past
    only, so `bidirectional` is refused there. `init_range` sets every parameter
    uniform(-x, x) as in Zaremba et al. 2014; null keeps PyTorch's initialisation.
    """

    def __init__(
        self,
        output_size: int,
        vocab_size: int | None = None,
        input_size: int | None = None,
        readout: str = "all",
        causal: bool = True,
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
        forget_bias: float | None = None,
        tbptt: int | None = None,
        tbptt_update: str = "sequence",
    ) -> None:
        super().__init__()
        if causal and bidirectional:
            raise ConfigError(
                "model.bidirectional=true is not allowed for next-step prediction: reading the "
                "sequence backwards shows the model the very values it must predict; use "
                "model.bidirectional=false (bidirectional suits classification and regression)"
            )
        check_choice("readout", readout, READOUTS)
        self.readout = readout
        check_arguments(ModelSchema, "model", tbptt=tbptt, tbptt_update=tbptt_update)
        if tbptt is not None:
            if bidirectional:
                raise ConfigError(
                    "model.tbptt needs model.bidirectional=false: a backward "
                    "pass cannot be cut into chunks read forwards"
                )
        if tbptt_update == "chunk" and readout == "last":
            raise ConfigError(
                "model.tbptt_update=chunk needs an output at every step (language modelling, "
                "copy memory, music): this dataset predicts from the final state only, so every "
                "chunk but the last has no loss; use model.tbptt_update=sequence"
            )
        self.tbptt, self.tbptt_update = tbptt, tbptt_update
        emb_size = emb_size or hidden_size
        stack_input = emb_size if vocab_size is not None else input_size
        # The stack first: it checks cell, sizes and depth before anything is allocated.
        self.stack = RecurrentStack(
            cell, stack_input, hidden_size, num_layers, bidirectional, dropout, impl, gru_reset
        )
        self.embedding = nn.Embedding(vocab_size, emb_size) if vocab_size is not None else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.stack.output_size, output_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        if forget_bias is not None:
            set_forget_bias(self.stack, forget_bias)
        if tie_weights:
            if self.embedding is None or self.head.weight.shape != self.embedding.weight.shape:
                raise ConfigError(
                    f"model.tie_weights=true needs token inputs and model.emb_size == "
                    f"model.hidden_size (got {emb_size} and {hidden_size})"
                )
            self.head.weight = self.embedding.weight

    def truncated(
        self, x: Tensor, state: State | None, lengths: Tensor | None
    ) -> tuple[Tensor, State]:
        """Truncated BPTT: the sequence in chunks of `tbptt` steps, the state handed from one
        chunk to the next detached. Forward values are those of the whole sequence; no gradient
        crosses a chunk boundary, so a loss reaches back at most to the start of its chunk."""
        if lengths is not None:
            raise ConfigError(
                "model.tbptt is not supported with padded variable-length rows "
                "(this dataset packs its sequences): set model.tbptt=null"
            )
        outputs = []
        for i, chunk in enumerate(x.split(self.tbptt, dim=1)):
            out, state = self.stack(chunk, detach_state(state) if i else state)
            outputs.append(out)
        return torch.cat(outputs, dim=1), state

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x: (B, T) token ids or (B, T, input_size); lengths: true lengths of padded rows.

        Returns (B, T, output_size) for readout="all", (B, output_size) for "last", and the
        final state.
        """
        if self.embedding is not None:
            x = self.embedding(x)
        x = self.drop(x)
        if self.tbptt is None or x.size(1) <= self.tbptt:
            out, state = self.stack(x, state, lengths)
        else:
            out, state = self.truncated(x, state, lengths)
        if self.readout == "last":
            h_n = state[0] if isinstance(state, tuple) else state
            # The last layer's final state of each direction: forward has read up to the
            # last real step, backward has read back to the first.
            out = torch.cat(list(h_n[-self.stack.directions :]), dim=-1)
        return self.head(self.drop(out)), state
