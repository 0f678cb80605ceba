"""Decoding an EncoderDecoder without the reference: greedy and beam search, batched.

Beam search keeps `beam` hypotheses per sentence, each step extending all of them by every
token and keeping the `beam` best by summed log-probability; a hypothesis that has written
<eos> is finished and carried on unchanged. The best finished one is chosen by its score
divided by the length penalty of Wu et al. 2016, ((5 + length) / 6) ** alpha
(`decode.length_penalty` = alpha; 0 ranks by summed log-probability alone).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnbench.nn.encoder_decoder import EncoderDecoder, select_state
from rnnbench.tasks import PAD_ID


def next_token_scores(model: EncoderDecoder, logits: Tensor) -> Tensor:
    """Log-probabilities of the next token, <pad> and <bos> ruled out: a decoder writes words
    and <eos>, never the markers it is fed."""
    logp = model.log_probs(logits)
    logp[:, [PAD_ID, model.bos_id]] = float("-inf")
    return logp


@torch.no_grad()
def greedy(model: EncoderDecoder, src: Tensor, lengths: Tensor, max_len: int) -> Tensor:
    """The most probable next token at each step: (B, <= max_len) ids, PAD after <eos>."""
    memory, state = model.encode(src, lengths)
    prev = torch.full((src.size(0),), model.bos_id, dtype=torch.long, device=src.device)
    done = torch.zeros(src.size(0), dtype=torch.bool, device=src.device)
    out = []
    for _ in range(max_len):
        logits, state = model.step(prev, state, memory)
        prev = next_token_scores(model, logits).argmax(-1).masked_fill(done, PAD_ID)
        out.append(prev)
        done |= prev == model.eos_id
        if done.all():
            break
    return torch.stack(out, dim=1)


def length_penalty(lengths: Tensor, alpha: float) -> Tensor:
    return ((5.0 + lengths.float()) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model: EncoderDecoder,
    src: Tensor,
    lengths: Tensor,
    beam: int,
    max_len: int,
    alpha: float = 0.0,
) -> Tensor:
    """The best of `beam` hypotheses per sentence: (B, <= max_len) ids, PAD after <eos>."""
    batch, device = src.size(0), src.device
    memory, state = model.encode(src, lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(beam)  # (B * beam,)
    memory, state = memory.select(rows), select_state(state, rows)
    # Only the first of each sentence's beams is alive at the start: the others are copies.
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.full((batch * beam, 0), PAD_ID, dtype=torch.long, device=device)
    prev = torch.full((batch * beam,), model.bos_id, dtype=torch.long, device=device)
    done = torch.zeros(batch * beam, dtype=torch.bool, device=device)
    written = torch.zeros(batch * beam, dtype=torch.long, device=device)
    for _ in range(max_len):
        logits, state = model.step(prev, state, memory)
        logp = next_token_scores(model, logits)
        # A finished hypothesis extends only by padding, at no cost: it keeps its score.
        logp[done] = float("-inf")
        logp[done, PAD_ID] = 0.0
        vocab = logp.size(-1)
        candidates = (scores.view(-1, 1) + logp).view(batch, beam * vocab)
        scores, flat = candidates.topk(beam, dim=-1)
        origin = (torch.arange(batch, device=device)[:, None] * beam + flat // vocab).view(-1)
        prev = (flat % vocab).view(-1)
        tokens = torch.cat([tokens[origin], prev[:, None]], dim=1)
        state = select_state(state, origin)
        was_done = done[origin]
        written = torch.where(was_done, written[origin], written[origin] + 1)
        done = was_done | (prev == model.eos_id)
        if done.all():
            break
    ranked = scores.view(-1) / length_penalty(written, alpha) if alpha else scores.view(-1)
    best = ranked.view(batch, beam).argmax(-1) + torch.arange(batch, device=device) * beam
    return tokens[best]


def decode(
    model: EncoderDecoder,
    src: Tensor,
    lengths: Tensor,
    beam: int,
    max_len: int,
    alpha: float = 0.0,
) -> Tensor:
    """Greedy for beam 1, beam search otherwise."""
    if beam == 1:
        return greedy(model, src, lengths, max_len)
    return beam_search(model, src, lengths, beam, max_len, alpha)
