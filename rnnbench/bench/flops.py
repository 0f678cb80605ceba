"""Useful FLOPs: the matmul arithmetic of a training step, counted from the model's shapes
(the work the `peak` section measures against the machine's matmul rate)."""

from __future__ import annotations

from torch import Tensor, nn

from rnnbench.nn.encoder_decoder import EncoderDecoder


def forward_flops(model: nn.Module, batch: int, steps: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward pass of a `SequenceModel` over a batch of
    `batch` sequences of `steps` time steps, from its parameter shapes: every layer's and
    direction's input and recurrent gate matmuls at every step, and the head at every step
    (readout "all") or once per sequence ("last"). The embedding is a lookup: no FLOPs.
    Biases and the gates' elementwise arithmetic are not counted."""
    tokens = batch * steps
    gates = sum(
        p.numel()
        for name, p in model.stack.rnn.named_parameters()
        if name.startswith(("weight_ih", "weight_hh"))
    )
    head_rows = tokens if model.readout == "all" else batch
    return 2 * tokens * gates + 2 * head_rows * model.head.weight.numel()


def train_step_flops(model: nn.Module, batch: int, steps: int) -> int:
    """Useful FLOPs of one training step: forward, and backward counted as 2 x forward (a
    gradient for each matmul's input and one for its weight)."""
    return 3 * forward_flops(model, batch, steps)


def gate_weights(stack: nn.Module) -> int:
    return sum(
        p.numel()
        for name, p in stack.rnn.named_parameters()
        if name.startswith(("weight_ih", "weight_hh"))
    )


def step_work(model: nn.Module, batch: dict[str, Tensor]) -> tuple[int, int]:
    """What one training step on `batch` computes: (tokens, useful FLOPs). A sequence model's
    tokens are its batch x time steps; an encoder-decoder's are the real target tokens it
    predicts, its FLOPs the encoder's gates over the real source tokens and the decoder's gates
    and output layer over the real target tokens (attention is not counted)."""

    if not isinstance(model, EncoderDecoder):
        b, t = batch["x"].shape[:2]
        return b * t, train_step_flops(model, b, t)
    source, target = int(batch["lengths"].sum()), int(batch["tgt_lengths"].sum())
    forward = 2 * source * gate_weights(model.encoder) + 2 * target * (
        gate_weights(model.decoder) + model.head.weight.numel()
    )
    return target, 3 * forward
