"""A packed model: K runs of one shape trained as one model.

Sweeps over seeds train many small models of one shape, and a small recurrent model leaves a
CPU (and far more a GPU) mostly idle: each step is a few small matrix products and a lot of
per-call overhead. `PackedSequenceModel` stacks K SequenceModels of one shape on a leading
member axis (embedding (K, V, E), W_hh (K, G, H), head (K, O, F)) and runs them with batched
matrix products (`ScratchRecurrence(members=K)`): one call per step does the work of K. The
members never mix: every product is per member, so member k's outputs and gradients are those
of SequenceModel k alone, and its parameters, read back with `member_state_dict`, load into one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rnnbench.errors import ConfigError
from rnnbench.nn.cells import ScratchRecurrence, State
from rnnbench.nn.model import SequenceModel


class StackedEmbedding(nn.Module):
    """K embedding tables, (K, V, E): ids (B, T) -> every member's vectors (K, B, T, E)."""

    def __init__(self, weights: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weights)

    def forward(self, ids: Tensor) -> Tensor:
        return self.weight[:, ids]


class StackedLinear(nn.Module):
    """K linear maps, weight (K, O, F) and bias (K, O): (K, ..., F) -> (K, ..., O)."""

    def __init__(self, weight: Tensor | nn.Parameter, bias: Tensor) -> None:
        super().__init__()
        self.weight = weight if isinstance(weight, nn.Parameter) else nn.Parameter(weight)
        self.bias = nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        members, width = x.size(0), x.size(-1)
        flat = x.reshape(members, -1, width)
        out = torch.baddbmm(self.bias[:, None, :], flat, self.weight.transpose(1, 2))
        return out.view(*x.shape[:-1], self.weight.size(1))


class PackedStack(nn.Module):
    """The recurrent stack of a pack: the attributes of RecurrentStack a task reads, and the
    stacked recurrence as `rnn` (so parameter names are those of one SequenceModel)."""

    def __init__(self, like: nn.Module, members: int) -> None:
        super().__init__()
        rnn = like.rnn
        self.cell, self.hidden_size, self.num_layers = like.cell, like.hidden_size, like.num_layers
        self.directions, self.output_size = like.directions, like.output_size
        self.impl = "scratch"
        self.rnn = ScratchRecurrence(
            like.cell,
            rnn.weight_ih_l0.size(1),
            like.hidden_size,
            like.num_layers,
            like.bidirectional,
            rnn.dropout,
            getattr(rnn, "gru_reset", "after"),  # torch.nn.GRU resets after the product
            members=members,
        )


def check_packable(models: Sequence[SequenceModel]) -> None:
    """Refuse models that cannot be one pack: different shapes, truncated BPTT."""
    first = models[0]
    if first.tbptt is not None:
        raise ConfigError(
            "pack needs model.tbptt=null: a packed run trains each sequence whole (run the "
            "members one by one, without pack, for truncated BPTT)"
        )
    shapes = {name: p.shape for name, p in first.state_dict().items()}
    for model in models[1:]:
        if {name: p.shape for name, p in model.state_dict().items()} != shapes:
            raise ConfigError("pack members must have one shape: every member's model differs")


class PackedSequenceModel(nn.Module):
    """K SequenceModels of one shape as one module: input x (B, T) token ids or (B, T, I) values,
    shared by every member; output (K, B, T, O) for readout "all", (K, B, O) for "last", and
    the members' final state, (layers * directions, K, B, H).

    Built from the members themselves, so each starts from exactly the weights its own seed
    gives a lone run (whatever the initialisation options). The recurrence is the seed notes'
    equations (`impl=scratch`) for every member: a lone run with `model.impl=fused` computes the
    same functions (the tests pin the two)."""

    def __init__(self, models: Sequence[SequenceModel]) -> None:
        super().__init__()
        check_packable(models)
        first = models[0]
        self.members, self.readout = len(models), first.readout
        self.tbptt, self.tbptt_update = None, "sequence"
        self.stack = PackedStack(first.stack, self.members)
        self.drop = nn.Dropout(first.drop.p)
        self.embedding = None
        if first.embedding is not None:
            self.embedding = StackedEmbedding(stacked(models, "embedding.weight"))
        tied = first.embedding is not None and first.head.weight is first.embedding.weight
        head_weight = self.embedding.weight if tied else stacked(models, "head.weight")
        self.head = StackedLinear(head_weight, stacked(models, "head.bias"))
        with torch.no_grad():
            for name, p in self.stack.rnn.named_parameters():
                p.copy_(stacked(models, f"stack.rnn.{name}"))

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        if self.embedding is not None:
            x = self.embedding(x)
        else:  # every member reads the same values: a view, no copy
            x = x.expand(self.members, *x.shape)
        x = self.drop(x)
        out, state = self.stack.rnn(x, state, lengths)
        if self.readout == "last":
            h_n = state[0] if isinstance(state, tuple) else state
            # The last layer's final state of each direction, as SequenceModel reads it.
            out = torch.cat(list(h_n[-self.stack.directions :]), dim=-1)
        return self.head(self.drop(out)), state

    def member_state_dict(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters as a SequenceModel's state_dict (copies)."""
        return {name: p[k].detach().clone() for name, p in self.state_dict().items()}

    def load_member(self, k: int, state: dict[str, Tensor]) -> None:
        """Set member k's parameters from a SequenceModel's state_dict."""
        own = self.state_dict()
        with torch.no_grad():
            for name, value in state.items():
                own[name][k].copy_(value)


def stacked(models: Sequence[nn.Module], name: str) -> Tensor:
    """Parameter `name` of every model, stacked on a new leading axis."""
    return torch.stack([m.state_dict()[name].detach() for m in models])
