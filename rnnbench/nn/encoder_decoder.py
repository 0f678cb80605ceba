"""The sequence-to-sequence model: a recurrent encoder, a bridge, a recurrent decoder and,
optionally, attention.

encoder   embedding -> RecurrentStack over the source (any cell, impl, depth, bidirectional),
          packed so padding never reaches the recurrence
bridge    the encoder's final state per layer, forward and backward joined by a linear map and
          tanh when bidirectional, becomes the decoder's initial state
decoder   embedding (+ context) -> RecurrentStack of the same cell, one direction
attention none | additive (Bahdanau et al. 2015: the previous decoder state queries the
          source, the context enters the decoder's input) | dot (Luong et al. 2015, "general":
          the current decoder state queries the source through a bilinear map, the context and
          state give the attentional state tanh(W_c [c; s])). Padded source positions get zero
          weight.
context   `feed_context`: the encoder's summary (the bridged top-layer state) joins every
          decoder input and the output layer (Cho et al. 2014, the tutorial's second model).

Teacher forcing: training feeds the reference's previous token with probability
`teacher_forcing`, else the model's own previous prediction. With the reference always fed and
no additive attention, the decoder runs over the whole target in one call of its stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rnnbench.nn.cells import RecurrentStack, State
from rnnbench.nn.model import set_forget_bias
from rnnbench.schema import ModelSchema, check_arguments
from rnnbench.tasks import PAD_ID


@dataclass
class Memory:
    """What the decoder reads of the encoded source, batch first: `keys` the encoder outputs
    (B, S, K), `projected` their additive-attention projection, `mask` the real positions
    (B, S), `summary` the context vector (B, H) for `feed_context`."""

    keys: Tensor
    mask: Tensor
    projected: Tensor | None = None
    summary: Tensor | None = None

    def select(self, index: Tensor) -> Memory:
        """The memory of rows `index` (beam search repeats and reorders rows)."""
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return Memory(pick(self.keys), pick(self.mask), pick(self.projected), pick(self.summary))


def select_state(state: State, index: Tensor) -> State:
    """The decoder state of batch rows `index` (dim 1 of (layers, B, H))."""
    if isinstance(state, tuple):
        return tuple(s.index_select(1, index) for s in state)
    return state.index_select(1, index)


def real_steps(lengths: Tensor, like: Tensor) -> Tensor:
    """(B, T) mask of the steps before each row's length."""
    steps = torch.arange(like.size(1), device=like.device)
    return steps[None] < lengths.to(like.device)[:, None]


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis (source positions) with padded positions at zero weight."""
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)


class AdditiveAttention(nn.Module):
    """Bahdanau et al. 2015: e_j = v . tanh(W s + U h_j)."""

    def __init__(self, query_size: int, key_size: int, size: int) -> None:
        super().__init__()
        self.query = nn.Linear(query_size, size, bias=False)
        self.key = nn.Linear(key_size, size)
        self.v = nn.Linear(size, 1, bias=False)

    def forward(self, query: Tensor, memory: Memory) -> Tensor:
        """query (B, Hq) -> context (B, K)."""
        scores = self.v(torch.tanh(self.query(query)[:, None] + memory.projected)).squeeze(-1)
        weights = masked_softmax(scores, memory.mask)
        return torch.bmm(weights[:, None], memory.keys).squeeze(1)


class BilinearAttention(nn.Module):
    """Luong et al. 2015 "general": e_tj = s_t . W h_j, then h~_t = tanh(W_c [c_t; s_t])."""

    def __init__(self, query_size: int, key_size: int) -> None:
        super().__init__()
        self.key = nn.Linear(key_size, query_size, bias=False)
        self.combine = nn.Linear(key_size + query_size, query_size, bias=False)

    def forward(self, queries: Tensor, memory: Memory) -> Tensor:
        """queries (B, T, Hq) -> attentional states (B, T, Hq), every step at once."""
        scores = torch.bmm(queries, memory.projected.transpose(1, 2))  # (B, T, S)
        weights = masked_softmax(scores, memory.mask[:, None])
        context = torch.bmm(weights, memory.keys)
        return torch.tanh(self.combine(torch.cat([context, queries], dim=-1)))


class EncoderDecoder(nn.Module):
    """RNN encoder-decoder over token ids. The dataset supplies the vocabulary sizes and the
    <bos>/<eos> ids; the model config supplies the rest (conf/model/*.yaml: `cell`, `impl`,
    `hidden_size`, `num_layers` and `dropout` apply to encoder and decoder alike,
    `bidirectional` to the encoder, `tie_weights` ties the decoder's embedding and output)."""

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        bos_id: int,
        eos_id: int,
        cell: str = "gru",
        impl: str = "fused",
        hidden_size: int = 256,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        tie_weights: bool = False,
        emb_size: int | None = None,
        gru_reset: str = "after",
        init_range: float | None = None,
        forget_bias: float | None = None,
        attention: str = "none",
        teacher_forcing: float = 1.0,
        feed_context: bool = False,
    ) -> None:
        super().__init__()
        # A teacher_forcing outside [0, 1] is refused with one line by config.check_config.
        check_arguments(ModelSchema, "model", attention=attention)
        emb_size = emb_size or hidden_size
        self.bos_id, self.eos_id = bos_id, eos_id
        self.attention, self.teacher_forcing, self.feed_context = (
            attention,
            teacher_forcing,
            feed_context,
        )
        self.encoder = RecurrentStack(
            cell, emb_size, hidden_size, num_layers, bidirectional, dropout, impl, gru_reset
        )
        self.src_embedding = nn.Embedding(src_vocab_size, emb_size, padding_idx=PAD_ID)
        self.tgt_embedding = nn.Embedding(tgt_vocab_size, emb_size, padding_idx=PAD_ID)
        self.drop = nn.Dropout(dropout)
        key_size = self.encoder.output_size
        self.num_layers = num_layers
        # A bidirectional encoder's two final states per layer become one decoder state.
        n_states = 2 if cell == "lstm" else 1
        self.bridge = nn.ModuleList(
            [nn.Linear(key_size, hidden_size) for _ in range(n_states)] if bidirectional else []
        )
        extra_in = hidden_size if feed_context else 0
        if attention == "additive":
            self.attend = AdditiveAttention(hidden_size, key_size, hidden_size)
            extra_in += key_size
        elif attention == "dot":
            self.attend = BilinearAttention(hidden_size, key_size)
        self.decoder = RecurrentStack(
            cell, emb_size + extra_in, hidden_size, num_layers, False, dropout, impl, gru_reset
        )
        # The output layer reads the decoder state (the attentional state for dot), and for
        # additive attention the context and the previous token's embedding (Bahdanau's
        # deep output); with feed_context the summary and the embedding.
        features = hidden_size
        if attention == "additive":
            features += key_size + emb_size
        if feed_context:
            features += hidden_size + (0 if attention == "additive" else emb_size)
        self.bottleneck = nn.Linear(features, emb_size) if tie_weights else None
        self.head = nn.Linear(emb_size if tie_weights else features, tgt_vocab_size)
        if init_range is not None:
            for p in self.parameters():
                nn.init.uniform_(p, -init_range, init_range)
        if forget_bias is not None:
            for stack in (self.encoder, self.decoder):
                set_forget_bias(stack, forget_bias)
        if tie_weights:
            self.head.weight = self.tgt_embedding.weight

    # Encoding ---------------------------------------------------------------------------------
    def encode(self, src: Tensor, lengths: Tensor) -> tuple[Memory, State]:
        """src (B, S) ids, lengths (B,) -> the memory and the decoder's initial state."""
        keys, final = self.encoder(self.drop(self.src_embedding(src)), None, lengths)
        mask = real_steps(lengths, src)
        state = self.bridge_state(final)
        top = state[0][-1] if isinstance(state, tuple) else state[-1]
        memory = Memory(
            keys,
            mask,
            summary=top if self.feed_context else None,
        )
        if self.attention != "none":
            memory.projected = self.attend.key(keys)
        return memory, state

    def bridge_state(self, final: State) -> State:
        if not self.bridge:
            return final
        states = final if isinstance(final, tuple) else (final,)
        bridged = []
        for s, linear in zip(states, self.bridge, strict=True):
            # (layers * 2, B, H) -> (layers, B, 2H): each layer's forward and backward side by side
            layers = s.view(self.num_layers, 2, *s.shape[1:]).permute(0, 2, 1, 3)
            bridged.append(torch.tanh(linear(layers.reshape(*layers.shape[:2], -1))))
        return tuple(bridged) if isinstance(final, tuple) else bridged[0]

    # Decoding ---------------------------------------------------------------------------------
    def features(
        self, hidden: Tensor, emb: Tensor, context: Tensor | None, memory: Memory
    ) -> Tensor:
        """What the output layer reads: the decoder state (..., H) (the attentional state for
        dot), and beside it the context and embedding (additive), the summary and embedding
        (feed_context)."""
        parts = [hidden]
        if self.attention == "additive":
            parts += [context, emb]
        if self.feed_context:
            summary = memory.summary if hidden.dim() == 2 else memory.summary[:, None]
            summary = summary.expand(*hidden.shape[:-1], -1)
            parts += [summary] if self.attention == "additive" else [summary, emb]
        return torch.cat(parts, dim=-1) if len(parts) > 1 else hidden

    def project(self, features: Tensor) -> Tensor:
        """The output layer: features (..., F) -> logits (..., V)."""
        features = self.drop(features)
        if self.bottleneck is not None:
            features = self.bottleneck(features)
        return self.head(features)

    def step_features(self, prev: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """One decoder step: previous tokens (B,) -> output-layer features (B, F), next state."""
        emb = self.drop(self.tgt_embedding(prev))
        inputs, context = [emb], None
        if self.attention == "additive":
            query = state[0][-1] if isinstance(state, tuple) else state[-1]
            context = self.attend(query, memory)
            inputs.append(context)
        if self.feed_context:
            inputs.append(memory.summary)
        out, state = self.decoder(torch.cat(inputs, dim=-1)[:, None], state)
        hidden = out[:, 0]
        if self.attention == "dot":
            hidden = self.attend(out, memory)[:, 0]
        return self.features(hidden, emb, context, memory), state

    def step(self, prev: Tensor, state: State, memory: Memory) -> tuple[Tensor, State]:
        """One decoder step: previous tokens (B,) -> logits (B, V) and the next state."""
        features, state = self.step_features(prev, state, memory)
        return self.project(features), state

    def teacher_forced(
        self, tgt_in: Tensor, tgt_lengths: Tensor, state: State, memory: Memory
    ) -> Tensor:
        """Every step at once, the reference's previous token fed at each (no additive
        attention: its context depends on the previous step's state)."""
        emb = self.drop(self.tgt_embedding(tgt_in))
        inputs = emb
        if self.feed_context:
            summary = memory.summary[:, None].expand(-1, tgt_in.size(1), -1)
            inputs = torch.cat([emb, summary], dim=-1)
        out, _ = self.decoder(inputs, state, tgt_lengths)
        hidden = self.attend(out, memory) if self.attention == "dot" else out
        features = self.features(hidden, emb, None, memory)
        return self.project(features[real_steps(tgt_lengths, tgt_in)])

    def stepwise(
        self,
        tgt_in: Tensor,
        tgt_lengths: Tensor,
        state: State,
        memory: Memory,
        teacher_forcing: float,
    ) -> Tensor:
        """Step by step: at each step the reference's previous token with probability
        `teacher_forcing`, else the model's own previous prediction (which needs that step's
        logits before the next step)."""
        real = real_steps(tgt_lengths, tgt_in)
        steps = tgt_in.size(1)
        features, logits, prev = [], [], tgt_in[:, 0]
        for t in range(steps):
            f, state = self.step_features(prev, state, memory)
            if teacher_forcing == 1.0:
                features.append(f)
                if t + 1 < steps:
                    prev = tgt_in[:, t + 1]
                continue
            now = self.project(f[real[:, t]])  # the rows with a target at step t
            logits.append(now)
            if t + 1 < steps:
                own = torch.zeros_like(prev)
                own[real[:, t]] = now.argmax(-1)
                fed = torch.rand(prev.shape, device=prev.device) < teacher_forcing
                prev = torch.where(fed, tgt_in[:, t + 1], own)
        if teacher_forcing == 1.0:
            return self.project(torch.stack(features, dim=1)[real])
        # The logits came step by step (time-major): put them in the order of the real target
        # tokens row by row, as the loss reads y[y != pad].
        position = torch.zeros(real.t().shape, dtype=torch.long, device=real.device)
        position[real.t()] = torch.arange(int(real.sum()), device=real.device)
        return torch.cat(logits)[position.t()[real]]

    def forward(
        self,
        src: Tensor,
        lengths: Tensor,
        tgt_in: Tensor,
        tgt_lengths: Tensor | None = None,
        teacher_forcing: float | None = None,
    ) -> Tensor:
        """src (B, S), lengths (B,), tgt_in (B, T) from <bos>, tgt_lengths (B,) -> the logits
        of every real target token, (N, V), row by row: the order of y[y != pad]. Padded steps
        get none: the output layer is most of a step's work and they predict nothing.
        `teacher_forcing` defaults to the model's in training and 1 otherwise (losses on the
        reference)."""
        if teacher_forcing is None:
            teacher_forcing = self.teacher_forcing if self.training else 1.0
        if tgt_lengths is None:
            tgt_lengths = torch.full((tgt_in.size(0),), tgt_in.size(1))
        memory, state = self.encode(src, lengths)
        if teacher_forcing == 1.0 and self.attention != "additive":
            return self.teacher_forced(tgt_in, tgt_lengths, state, memory)
        return self.stepwise(tgt_in, tgt_lengths, state, memory, teacher_forcing)

    @staticmethod
    def log_probs(logits: Tensor) -> Tensor:
        return F.log_softmax(logits.float(), dim=-1)
