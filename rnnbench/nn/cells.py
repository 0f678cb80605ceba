"""Recurrent cells and the stack that gives them depth and direction.

`impl="fused"` is torch.nn.RNN / GRU / LSTM (cuDNN on a GPU, ATen on the CPU). `impl="scratch"`
writes the seed notes' equations out. Scratch parameters are laid out and named exactly like
PyTorch's (`weight_ih_l0`, `bias_hh_l1_reverse`, gates stacked as i,f,g,o for LSTM and r,z,n for
GRU), so a state_dict moves between the two and the tests can pin one to the other.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.cellspec import CELL_SPECS
from rnnbench.errors import ConfigError
from rnnbench.schema import ModelSchema, check_arguments

State = Tensor | tuple[Tensor, Tensor]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary: truncated BPTT keeps the values, not the history."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


# A packed model (rnnbench.nn.packed) trains K members of one shape at once: its weights carry a
# leading member axis, (K, G, H) for W_hh, and its states one too, (K, B, H). Every function
# below takes either layout; only the matrix products differ (addmm for one run, baddbmm for K).


def transposed(w: Tensor) -> Tensor:
    """W^T of a weight, or of each member's weight of a stacked (K, G, H) one."""
    return w.transpose(-2, -1)


def plus_matmul(bias: Tensor, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """bias + a @ b: addmm for (B, H) @ (H, G), baddbmm for the members' (K, B, H) @ (K, H, G)
    (a member's bias is then (K, 1, G) or (K, B, G))."""
    if a.dim() == 2:
        return torch.addmm(bias, a, b, out=out)
    return torch.baddbmm(bias, a, b, out=out)


def member_bias(b: Tensor) -> Tensor:
    """A bias that adds to (B, G) rows: as it is for one run, (K, 1, G) for stacked members."""
    return b if b.dim() == 1 else b.unsqueeze(-2)


def rnn_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, act) -> Tensor:
    """H_t = act(X_t W_xh + H_{t-1} W_hh + b); gx already holds X_t W_xh + b_xh."""
    return act(plus_matmul(gx + member_bias(b_hh), h, transposed(w_hh)))


def lstm_step(
    gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """Input, forget and output gates, candidate cell, C_t = F*C + I*C~, H_t = O*tanh(C_t)."""
    i, f, g, o = plus_matmul(gx + member_bias(b_hh), h, transposed(w_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset: str) -> Tensor:
    """Reset and update gates, candidate state, H_t = Z*H_{t-1} + (1-Z)*H~.

    reset="after" (cuDNN/PyTorch): H~ = tanh(X W_xh + b_xh + R*(H W_hh + b_hh)).
    reset="before" (seed notes, Cho et al. 2014): H~ = tanh(X W_xh + b_xh + (R*H) W_hh + b_hh).
    """
    hidden = h.size(-1)
    gx_r, gx_z, gx_n = gx.chunk(3, dim=-1)
    b_hh = member_bias(b_hh)
    if reset == "after":
        gh_r, gh_z, gh_n = plus_matmul(b_hh, h, transposed(w_hh)).chunk(3, dim=-1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
    else:
        rz_rows, n_rows = slice(0, 2 * hidden), slice(2 * hidden, None)
        gh = plus_matmul(b_hh[..., rz_rows], h, transposed(w_hh[..., rz_rows, :]))
        gh_r, gh_z = gh.chunk(2, dim=-1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        gh_n = plus_matmul(b_hh[..., n_rows], r * h, transposed(w_hh[..., n_rows, :]))
        n = torch.tanh(gx_n + gh_n)
    return z * h + (1 - z) * n


# Each cell's time step, as its CellSpec names it.
STEPS = {name: {f.__name__: f for f in (rnn_step, gru_step, lstm_step)}[spec.step]
         for name, spec in CELL_SPECS.items()}  # fmt: skip


def lstm_scan_order(hidden: int, device: torch.device) -> Tensor:
    """Rows g, i, f, o of PyTorch's stacked i, f, g, o gates: the order `LSTMScan` works in,
    where the three gates that ∂L/∂C_t scales are one slice in the backward."""
    return torch.cat(
        [torch.arange(a * hidden, (a + 1) * hidden, device=device) for a in (2, 0, 1, 3)]
    )


# Steps whose backward factors are computed together: enough to spread the per-call overhead,
# few enough that the temporaries stay in cache (on this CPU 16 took a fifth of the time of
# all 784 steps of sequential MNIST at once, and a third of one step at a time).
SCAN_BLOCK = 16


def lstm_backward_factors(
    gates: Tensor, c_prev: Tensor, tanh_c: Tensor, coef: Tensor
) -> tuple[Tensor, Tensor]:
    """For a block of steps: coef, with ∂(pre-activation) = ∂C_t * coef for g, i, f and
    ∂H_t * coef for o (written into `coef`, (steps, B, 4, H) with a member axis before B for
    stacked members); the forget gate; ∂C_t/∂H_t."""
    g, i, f, o = gates.chunk(4, dim=-1)
    torch.mul(i, 1 - g * g, out=coef[..., 0, :])
    torch.mul(g, i * (1 - i), out=coef[..., 1, :])
    torch.mul(c_prev, f * (1 - f), out=coef[..., 2, :])
    torch.mul(tanh_c, o * (1 - o), out=coef[..., 3, :])
    return f, o * (1 - tanh_c * tanh_c)  # through H_t = O * tanh(C_t)


def writes_whole_buffers(method):
    """For a scan whose buffers (torch.empty) are written whole before they are read: under
    torch's deterministic mode (trainer.deterministic, the default) every empty tensor is first
    filled with NaN, a pass over each (T, B, 4H) buffer that cost a packed copy-memory step a
    tenth of its time. Off while the scan runs; its results do not depend on it."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        flags = torch.utils.deterministic
        before = flags.fill_uninitialized_memory
        flags.fill_uninitialized_memory = False
        try:
            return method(*args, **kwargs)
        finally:
            flags.fill_uninitialized_memory = before

    return run


def time_axis(x: Tensor) -> int:
    """Where time is in a scan's buffer: 0 in one run's (T, B, F), 1 in a pack's member-major
    (K, T, B, F), where each member's steps are one contiguous block (no transposes between
    the per-step products and the weight gradient's one product per member)."""
    return x.dim() - 3


def steps_buffer(like: Tensor, steps: int, state: Tensor, width: int | None = None) -> Tensor:
    """An empty buffer of `steps` rows of states shaped like `state` (`width` wide, else as
    wide as it): (steps, B, H), or (K, steps, B, H) for members' (K, B, H)."""
    shape = list(state.shape)
    shape.insert(state.dim() - 2, steps)
    shape[-1] = width or shape[-1]
    return like.new_empty(shape)


class LSTMScan(torch.autograd.Function):
    """One direction of one LSTM layer over all T steps, with its backward written out.

    Takes gx = X W_ih^T + b_ih + b_hh as (T, B, 4H) and W_hh, both with their gate rows in
    `lstm_scan_order`. Autograd through `lstm_step` records ~10 nodes per step and forms
    ∂L/∂W_hh as T small products whose inner dimension is the batch. Here the backward computes
    every factor that does not depend on the recursion a block of steps at a time, leaving a step
    one matmul and four elementwise calls (on a CPU, per-call overhead is most of what a step of
    a small layer costs), and forms ∂L/∂W_hh as one (4H x TB)(TB x H) product. Same equations as
    `lstm_step`; the tests pin both to torch.nn.LSTM and check this backward with gradcheck.
    Stacked members: gx (K, T, B, 4H), W_hh (K, 4H, H), states (K, B, H) (`time_axis`).
    """

    @staticmethod
    @writes_whole_buffers
    def forward(ctx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor):
        time = time_axis(gx)
        steps, hidden = gx.size(time), h0.size(-1)
        # tanh(x) = 2 sigmoid(2x) - 1: with the g rows doubled, one sigmoid call covers all four
        # gates and an affine step finishes g (CPU tanh on a strided slice costs ~4 sigmoids).
        w_t = w_hh.clone()
        w_t[..., :hidden, :] *= 2
        w_t = transposed(w_t)
        gates = gx.clone(memory_format=torch.contiguous_format)  # overwritten by activations
        gates[..., :hidden] *= 2
        minus_one = gx.new_full((), -1.0)
        hs, cs = steps_buffer(gx, steps + 1, h0), steps_buffer(gx, steps + 1, h0)
        tanh_c = steps_buffer(gx, steps, h0)
        # Every step's views made once: indexing inside the loop is a call per view per step.
        a_t = gates.unbind(time)
        g_t, i_t, f_t, o_t = (gate_rows(gates, k) for k in range(4))
        h_t, c_t, tanh_c_t = hs.unbind(time), cs.unbind(time), tanh_c.unbind(time)
        h_t[0].copy_(h0)
        c_t[0].copy_(c0)
        for t in range(steps):
            # addmm with out=, not addmm_: FlopCounterMode (the bench's tests) counts only addmm.
            torch.sigmoid_(plus_matmul(a_t[t], h_t[t], w_t, out=a_t[t]))
            torch.add(minus_one, g_t[t], alpha=2, out=g_t[t])
            torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], g_t[t])
            torch.mul(o_t[t], torch.tanh(c_t[t + 1], out=tanh_c_t[t]), out=h_t[t + 1])
        ctx.save_for_backward(hs, cs, tanh_c, gates, w_hh)
        return hs.narrow(time, 1, steps), h_t[steps], c_t[steps]

    @staticmethod
    @writes_whole_buffers
    def backward(ctx, d_out: Tensor, d_hn: Tensor, d_cn: Tensor):
        hs, cs, tanh_c, gates, w_hh = ctx.saved_tensors
        time = time_axis(gates)
        steps, hidden = tanh_c.size(time), tanh_c.size(-1)
        d_out_t = d_out.contiguous().unbind(time)  # contiguous: the grad of a transposed output
        d_pre = gates.new_empty(*gates.shape[:-1], 4, hidden)
        block = list(d_pre.shape)
        block[time] = SCAN_BLOCK
        coef = gates.new_empty(block)
        d_pre_t = d_pre.view_as(gates).unbind(time)
        d_dc_gates_t, d_o_t = d_pre[..., :3, :].unbind(time), d_pre[..., 3, :].unbind(time)
        coef_dc_t, coef_o_t = coef[..., :3, :].unbind(time), coef[..., 3, :].unbind(time)
        dh, dc = d_hn + d_out_t[steps - 1], d_cn
        # ∂L/∂H_{t-1} of each step into one of two buffers, in turn: one allocation per step
        # was a third of a packed step's matmul time.
        dh_buffers = (torch.empty_like(dh), torch.empty_like(dh))
        for start in reversed(range(0, steps, SCAN_BLOCK)):
            span = min(start + SCAN_BLOCK, steps) - start
            f, dc_dh = lstm_backward_factors(
                gates.narrow(time, start, span),
                cs.narrow(time, start, span),
                tanh_c.narrow(time, start, span),
                coef.narrow(time, 0, span),
            )
            f_k, dc_dh_k = f.unbind(time), dc_dh.unbind(time)
            for t in reversed(range(start, start + span)):
                k = t - start
                dc = torch.addcmul(dc, dh, dc_dh_k[k])
                torch.mul(coef_dc_t[k], dc.unsqueeze(-2), out=d_dc_gates_t[t])
                torch.mul(coef_o_t[k], dh, out=d_o_t[t])
                dc.mul_(f_k[k])
                if t:
                    dh = plus_matmul(d_out_t[t - 1], d_pre_t[t], w_hh, out=dh_buffers[t % 2])
                elif ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                    dh = d_pre_t[t] @ w_hh
        d_gx = d_pre.view_as(gates)
        d_w_hh = weight_grad(d_gx, hs.narrow(time, 0, steps))
        needs = ctx.needs_input_grad
        return d_gx, dh if needs[1] else None, dc if needs[2] else None, d_w_hh


def gate_rows(gates: Tensor, k: int) -> tuple[Tensor, ...]:
    """Per step, the view of gate k of a (T, B, 4H) (or members' (K, T, B, 4H)) buffer."""
    hidden = gates.size(-1) // 4
    return gates[..., k * hidden : (k + 1) * hidden].unbind(time_axis(gates))


def weight_grad(d_gates: Tensor, inputs: Tensor) -> Tensor:
    """∂L/∂W of a gate matrix from every step's ∂(pre-activation), (T, B, G), and the rows it
    multiplied, (T, B, H): one (G x TB)(TB x H) product, one per member for members'
    (K, T, B, ·) (each member's block contiguous: no copy)."""
    gates, width = d_gates.size(-1), inputs.size(-1)
    if d_gates.dim() == 3:
        return d_gates.reshape(-1, gates).t() @ inputs.reshape(-1, width)
    members = d_gates.size(0)
    return transposed(d_gates.reshape(members, -1, gates)) @ inputs.reshape(members, -1, width)


def bias_grad(d_gates: Tensor) -> Tensor:
    """∂L/∂b from every step's ∂(pre-activation): summed over steps and rows (per member)."""
    return d_gates.sum((0, 1)) if d_gates.dim() == 3 else d_gates.sum((1, 2))


class GRUScan(torch.autograd.Function):
    """One direction of one GRU layer (reset after, as cuDNN and PyTorch) over all T steps,
    with its backward written out: the same reasons, checks and layouts as `LSTMScan`."""

    @staticmethod
    @writes_whole_buffers
    def forward(ctx, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor):
        time = time_axis(gx)
        steps, hidden = gx.size(time), h0.size(-1)
        hs = steps_buffer(gx, steps + 1, h0)
        rz = steps_buffer(gx, steps, h0, 2 * hidden)
        n = steps_buffer(gx, steps, h0)
        gh_n = torch.empty_like(n)  # H W_hn + b_hn, which the reset gate scales
        w_t, bias = transposed(w_hh), member_bias(b_hh)
        h_t, rz_t, n_t, gh_n_t, gx_t = (v.unbind(time) for v in (hs, rz, n, gh_n, gx))
        h_t[0].copy_(h0)
        for t in range(steps):
            gh = plus_matmul(bias, h_t[t], w_t)
            torch.sigmoid(gx_t[t][..., : 2 * hidden] + gh[..., : 2 * hidden], out=rz_t[t])
            r, z = rz_t[t].chunk(2, dim=-1)
            gh_n_t[t].copy_(gh[..., 2 * hidden :])
            torch.tanh(torch.addcmul(gx_t[t][..., 2 * hidden :], r, gh_n_t[t]), out=n_t[t])
            torch.addcmul(n_t[t], z, h_t[t] - n_t[t], out=h_t[t + 1])
        ctx.save_for_backward(hs, rz, n, gh_n, w_hh)
        return hs.narrow(time, 1, steps), h_t[steps]

    @staticmethod
    @writes_whole_buffers
    def backward(ctx, d_out: Tensor, d_hn: Tensor | None):
        hs, rz, n, gh_n, w_hh = ctx.saved_tensors
        time = time_axis(rz)
        steps, hidden = rz.size(time), n.size(-1)
        h_t, rz_t, n_t, gh_n_t = (v.unbind(time) for v in (hs, rz, n, gh_n))
        dh = torch.zeros_like(h_t[0]) if d_hn is None else d_hn.clone()
        d_gx = steps_buffer(hs, steps, h_t[0], 3 * hidden)
        d_gh = torch.empty_like(d_gx)
        d_gx_t, d_gh_t = d_gx.unbind(time), d_gh.unbind(time)
        d_out_t = d_out.unbind(time) if d_out is not None else None
        for t in reversed(range(steps)):
            if d_out_t is not None:
                dh += d_out_t[t]
            r, z = rz_t[t].chunk(2, dim=-1)
            d_n_pre = dh * (1 - z) * (1 - n_t[t] * n_t[t])
            g, gh = d_gx_t[t], d_gh_t[t]
            torch.mul(d_n_pre * gh_n_t[t], r * (1 - r), out=g[..., :hidden])
            torch.mul(dh * (h_t[t] - n_t[t]), z * (1 - z), out=g[..., hidden : 2 * hidden])
            g[..., 2 * hidden :] = d_n_pre
            gh[..., : 2 * hidden] = g[..., : 2 * hidden]
            torch.mul(d_n_pre, r, out=gh[..., 2 * hidden :])
            if t or ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                dh = plus_matmul(dh * z, gh, w_hh)
        d_w_hh = weight_grad(d_gh, hs.narrow(time, 0, steps))
        return d_gx, dh if ctx.needs_input_grad[1] else None, d_w_hh, bias_grad(d_gh)


class ScratchRecurrence(nn.Module):
    """A multi-layer, optionally bidirectional recurrence written from the seed's equations.

    Same call convention as torch.nn.RNN/GRU/LSTM with batch_first=True: input (B, T, I),
    state h0 of shape (layers * directions, B, H) (a (h0, c0) pair for LSTM).

    With `members=K` it holds K recurrences of this one shape, each parameter stacked on a
    leading member axis ((K, G, I) for weight_ih_l0), and runs them all at once: input
    (K, B, T, I), state (layers * directions, K, B, H), every matrix product a batched one.
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int,
        bidirectional: bool,
        dropout: float,
        gru_reset: str = "after",
        members: int | None = None,
    ) -> None:
        super().__init__()
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.directions = 2 if bidirectional else 1
        self.dropout, self.gru_reset, self.members = dropout, gru_reset, members
        width = CELL_SPECS[cell].gates * hidden_size
        lead = (members,) if members else ()
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                shapes = {
                    "weight_ih": (width, layer_input),
                    "weight_hh": (width, hidden_size),
                    "bias_ih": (width,),
                    "bias_hh": (width,),
                }
                for param, shape in shapes.items():
                    self.register_parameter(
                        f"{param}_{name}", nn.Parameter(torch.empty(*lead, *shape))
                    )
        self.reset_parameters()

    PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")  # one direction of one layer

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"][: self.directions]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        rows, steps = x.shape[:-2], x.size(-2)  # rows: (B,), or (K, B) for members
        slots = self.num_layers * self.directions
        if state is None:
            zeros = x.new_zeros(slots, *rows, self.hidden_size)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        h0, c0 = state if self.cell == "lstm" else (state, None)
        # Padded rows: a step past a row's length leaves its state alone and outputs zeros,
        # and the backward direction starts from each row's own last real step.
        mask = None
        if lengths is not None:
            mask = (torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device))[..., None]
        h_n, c_n = [], []
        # Time before batch between layers, as the time loop reads it: (T, B, F), (K, T, B, F).
        layer_input = x.movedim(-2, -3)
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                slot = layer * self.directions + d
                name = f"l{layer}{suffix}"
                seq = reverse_steps(layer_input, lengths) if suffix else layer_input
                out, h, c = self._scan(
                    seq,
                    h0[slot],
                    None if c0 is None else c0[slot],
                    *(getattr(self, f"{p}_{name}") for p in self.PARAMS),
                    mask,
                )
                outputs.append(reverse_steps(out, lengths) if suffix else out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(h_n)
        state = (h_n, torch.stack(c_n)) if self.cell == "lstm" else h_n
        return layer_input.movedim(-3, -2), state

    def _scan(
        self,
        x: Tensor,
        h: Tensor,
        c: Tensor | None,
        w_ih: Tensor,
        w_hh: Tensor,
        b_ih: Tensor,
        b_hh: Tensor,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The time loop of one direction of one layer over x, (T, B, I) or (T, K, B, I)."""
        # Every step's input projection in one matrix product, before the time loop.
        # Unpadded rows take the written-out backward; padded ones the per-step autograd path.
        if mask is None and self.cell == "lstm":
            order = lstm_scan_order(self.hidden_size, x.device)
            gx = input_projection(x, w_ih[..., order, :], (b_ih + b_hh)[..., order])
            return LSTMScan.apply(gx, h, c, w_hh[..., order, :])
        gx = input_projection(x, w_ih, b_ih)
        if mask is None and self.cell == "gru" and self.gru_reset == "after":
            out, h = GRUScan.apply(gx, h, w_hh, b_hh)
            return out, h, None
        outputs = []
        step = STEPS[self.cell]
        act = torch.relu if CELL_SPECS[self.cell].nonlinearity == "relu" else torch.tanh
        for t, gx_t in enumerate(gx.unbind(time_axis(gx))):
            h_prev, c_prev = h, c
            if step is lstm_step:
                h, c = lstm_step(gx_t, h, c, w_hh, b_hh)
            elif step is gru_step:
                h = gru_step(gx_t, h, w_hh, b_hh, self.gru_reset)
            else:
                h = rnn_step(gx_t, h, w_hh, b_hh, act)
            if mask is not None:
                h = torch.where(mask[t], h, h_prev)
                c = torch.where(mask[t], c, c_prev) if c is not None else None
                outputs.append(h * mask[t])
            else:
                outputs.append(h)
        return torch.stack(outputs, dim=time_axis(gx)), h, c


def input_projection(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """X W^T + b for every step at once: x (T, B, I) and w (G, I), or stacked members' x
    (K, T, B, I) and w (K, G, I), b (K, G)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    flat = x.reshape(x.size(0), -1, x.size(-1))  # each member's steps and rows as one matrix
    return torch.baddbmm(b[:, None, :], flat, transposed(w)).view(*x.shape[:-1], w.size(1))


def reverse_time(
    x: Tensor, lengths: Tensor | None, time_dim: int = 1, batch_dim: int = 0
) -> Tensor:
    """Reverse x along `time_dim` ((B, T, F) by default); with `lengths`, one per row of
    `batch_dim`, reverse each row's real steps only and leave its padding where it is (its own
    inverse)."""
    if lengths is None:
        return x.flip(time_dim)
    steps = torch.arange(x.size(time_dim), device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    if batch_dim > time_dim:
        index = index.t()
    shape = [1] * x.dim()
    shape[batch_dim], shape[time_dim] = x.size(batch_dim), x.size(time_dim)
    return x.gather(time_dim, index.reshape(shape).expand_as(x))


def reverse_steps(x: Tensor, lengths: Tensor | None) -> Tensor:
    """reverse_time for a scan's time-before-batch layout, (T, B, F) or (K, T, B, F)."""
    time = time_axis(x)
    return reverse_time(x, lengths, time_dim=time, batch_dim=time + 1)


class RecurrentStack(nn.Module):
    """`num_layers` recurrent layers of one cell type, uni- or bidirectional.

    Layer j's hidden sequence feeds layer j+1, with dropout between layers; a bidirectional
    layer concatenates its forward and backward outputs. Input (B, T, I), output (B, T, H * dirs).
    """

    def __init__(
        self,
        cell: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        impl: str = "fused",
        gru_reset: str = "after",
    ) -> None:
        super().__init__()
        check_arguments(
            ModelSchema,
            "model",
            cell=cell,
            impl=impl,
            gru_reset=gru_reset,
            hidden_size=hidden_size,
            num_layers=num_layers,
            dropout=dropout,
        )
        if impl == "fused" and cell == "gru" and gru_reset == "before":
            raise ConfigError(
                "model.gru_reset=before needs model.impl=scratch: torch.nn.GRU "
                "(impl=fused) only applies the reset gate after the matmul"
            )
        self.cell, self.impl, self.hidden_size, self.num_layers = (
            cell,
            impl,
            hidden_size,
            num_layers,
        )
        self.bidirectional, self.directions = bidirectional, 2 if bidirectional else 1
        self.output_size = hidden_size * (2 if bidirectional else 1)
        layer_dropout = dropout if num_layers > 1 else 0.0
        if impl == "scratch":
            self.rnn = ScratchRecurrence(
                cell, input_size, hidden_size, num_layers, bidirectional, layer_dropout, gru_reset
            )
        else:
            spec = CELL_SPECS[cell]
            kind = getattr(nn, spec.fused)
            extra = {"nonlinearity": spec.nonlinearity} if spec.nonlinearity else {}
            self.rnn = kind(
                input_size,
                hidden_size,
                num_layers,
                batch_first=True,
                dropout=layer_dropout,
                bidirectional=bidirectional,
                **extra,
            )

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        """x (B, T, I) -> outputs (B, T, H * directions), final state. `lengths` gives each
        row's true length when rows are right-padded: padding never reaches the recurrence."""
        if self.impl == "scratch":
            return self.rnn(x, state, lengths)
        if lengths is None:
            return self.rnn(x, state)
        packed = nn.utils.rnn.pack_padded_sequence(
            x, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, state = self.rnn(packed, state)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return out, state
