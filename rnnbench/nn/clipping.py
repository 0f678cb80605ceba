"""Global-norm gradient clipping, the seed notes' g <- min(1, θ/‖g‖) g, written once.

Every place a gradient is clipped calls `clip_global_norm_`: the task modules (Lightning's
gradient-clipping hook, and truncated BPTT's per-chunk updates), a pack's members (each on its
own norm and threshold), the bench's plain PyTorch loop and the gradient-flow command (through
the task). It returns the norm before clipping, which steps.csv records: what shows a vanilla
RNN exploding.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

EPS = 1e-6  # as torch.nn.utils.clip_grad_norm_: θ / (‖g‖ + EPS)


def clip_global_norm_(
    parameters: Iterable[Tensor], threshold: float | Tensor | None, members: int | None = None
) -> Tensor:
    """Scale the gradients of `parameters` in place by min(1, θ/‖g‖), ‖g‖ the norm of all of
    them together, and return ‖g‖ before clipping, as a tensor (no host sync). θ = `threshold`;
    None clips nothing (the norm alone).

    `members`=K: a pack's parameters, each with its K members stacked on the first axis; each
    member is clipped on its own norm by its own θ (`threshold` a (K,) tensor, inf for a member
    without clipping), and the K norms are returned."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(() if members is None else (members,))
    if members is None:
        # One fused kernel for the per-parameter norms.
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    else:
        norm = torch.stack([g.reshape(members, -1).square().sum(1) for g in grads]).sum(0).sqrt()
    if threshold is None:
        return norm
    factor = torch.clamp(threshold / (norm + EPS), max=1.0)
    if members is None:
        torch._foreach_mul_(grads, factor)
    else:
        for g in grads:
            g.mul_(factor.view(-1, *[1] * (g.dim() - 1)))
    return norm
