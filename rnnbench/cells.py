"""Recurrent cells and the stack that gives them depth and direction.

`impl="fused"` is torch.nn.RNN / GRU / LSTM (cuDNN on a GPU, ATen on the CPU). `impl="scratch"`
writes the seed notes' equations out. Scratch parameters are laid out and named exactly like
PyTorch's (`weight_ih_l0`, `bias_hh_l1_reverse`, gates stacked as i,f,g,o for LSTM and r,z,n for
GRU), so a state_dict moves between the two and the tests can pin one to the other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnbench.errors import ConfigError, check_choice, check_positive_int

GATES = {"rnn": 1, "rnn_relu": 1, "gru": 3, "lstm": 4}
CELLS = tuple(GATES)
IMPLS = ("fused", "scratch")
GRU_RESETS = ("after", "before")

State = Tensor | tuple[Tensor, Tensor]


def detach_state(state: State | None) -> State | None:
    """Cut the graph at a window boundary: truncated BPTT keeps the values, not the history."""
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


# A packed model (rnnbench.packed) trains K members of one shape at once: its weights carry a
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


class LSTMScan(torch.autograd.Function):
    """One direction of one LSTM layer over all T steps, with its backward written out.

    Takes gx = X W_ih^T + b_ih + b_hh as (T, B, 4H) and W_hh, both with their gate rows in
    `lstm_scan_order`. Autograd through `lstm_step` records ~10 nodes per step and forms
    ∂L/∂W_hh as T small products whose inner dimension is the batch. Here the backward computes
    every factor that does not depend on the recursion a block of steps at a time, leaving a step
    one matmul and four elementwise calls (on a CPU, per-call overhead is most of what a step of
    a small layer costs), and forms ∂L/∂W_hh as one (4H x TB)(TB x H) product. Same equations as
    `lstm_step`; the tests pin both to torch.nn.LSTM and check this backward with gradcheck.
    """

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor):
        steps, hidden = gx.size(0), h0.size(-1)
        # tanh(x) = 2 sigmoid(2x) - 1: with the g rows doubled, one sigmoid call covers all four
        # gates and an affine step finishes g (CPU tanh on a strided slice costs ~4 sigmoids).
        w_t = w_hh.clone()
        w_t[..., :hidden, :] *= 2
        w_t = transposed(w_t)
        gates = gx.clone(memory_format=torch.contiguous_format)  # overwritten by activations
        gates[..., :hidden] *= 2
        minus_one = gx.new_full((), -1.0)
        hs = gx.new_empty(steps + 1, *h0.shape)
        cs = gx.new_empty(steps + 1, *h0.shape)
        tanh_c = gx.new_empty(steps, *h0.shape)
        hs[0], cs[0] = h0, c0
        # Every step's views made once: indexing inside the loop is a call per view per step.
        a_t = gates.unbind(0)
        g_t, i_t, f_t, o_t = (gate_rows(gates, k) for k in range(4))
        h_t, c_t, tanh_c_t = hs.unbind(0), cs.unbind(0), tanh_c.unbind(0)
        for t in range(steps):
            # addmm with out=, not addmm_: FlopCounterMode (the bench's tests) counts only addmm.
            torch.sigmoid_(plus_matmul(a_t[t], h_t[t], w_t, out=a_t[t]))
            torch.add(minus_one, g_t[t], alpha=2, out=g_t[t])
            torch.mul(f_t[t], c_t[t], out=c_t[t + 1]).addcmul_(i_t[t], g_t[t])
            torch.mul(o_t[t], torch.tanh(c_t[t + 1], out=tanh_c_t[t]), out=h_t[t + 1])
        ctx.save_for_backward(hs, cs, tanh_c, gates, w_hh)
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hn: Tensor, d_cn: Tensor):
        hs, cs, tanh_c, gates, w_hh = ctx.saved_tensors
        steps, rows, hidden = tanh_c.size(0), tanh_c.shape[1:-1], tanh_c.size(-1)
        d_out_t = d_out.contiguous().unbind(0)  # contiguous: the grad of a transposed output
        d_pre = gates.new_empty(steps, *rows, 4, hidden)
        coef = gates.new_empty(SCAN_BLOCK, *rows, 4, hidden)
        d_pre_t = d_pre.view_as(gates).unbind(0)
        d_dc_gates_t, d_o_t = d_pre[..., :3, :].unbind(0), d_pre[..., 3, :].unbind(0)
        coef_dc_t, coef_o_t = coef[..., :3, :].unbind(0), coef[..., 3, :].unbind(0)
        dh, dc = d_hn + d_out_t[steps - 1], d_cn
        for start in reversed(range(0, steps, SCAN_BLOCK)):
            end = min(start + SCAN_BLOCK, steps)
            f, dc_dh = lstm_backward_factors(
                gates[start:end], cs[start:end], tanh_c[start:end], coef[: end - start]
            )
            f_k, dc_dh_k = f.unbind(0), dc_dh.unbind(0)
            for t in reversed(range(start, end)):
                k = t - start
                dc = torch.addcmul(dc, dh, dc_dh_k[k])
                torch.mul(coef_dc_t[k], dc.unsqueeze(-2), out=d_dc_gates_t[t])
                torch.mul(coef_o_t[k], dh, out=d_o_t[t])
                dc.mul_(f_k[k])
                if t:
                    dh = plus_matmul(d_out_t[t - 1], d_pre_t[t], w_hh)
                elif ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                    dh = d_pre_t[t] @ w_hh
        d_gx = d_pre.view_as(gates)
        d_w_hh = weight_grad(d_gx, hs[:-1])
        needs = ctx.needs_input_grad
        return d_gx, dh if needs[1] else None, dc if needs[2] else None, d_w_hh


def gate_rows(gates: Tensor, k: int) -> tuple[Tensor, ...]:
    """Per step, the view of gate k of a (T, B, 4H) (or members' (T, K, B, 4H)) buffer."""
    hidden = gates.size(-1) // 4
    return gates[..., k * hidden : (k + 1) * hidden].unbind(0)


def weight_grad(d_gates: Tensor, inputs: Tensor) -> Tensor:
    """∂L/∂W of a gate matrix from every step's ∂(pre-activation), (T, B, G), and the rows it
    multiplied, (T, B, H): one (G x TB)(TB x H) product, one per member when both carry a
    member axis after time, (T, K, B, ·)."""
    gates, width = d_gates.size(-1), inputs.size(-1)
    if d_gates.dim() == 3:
        return d_gates.reshape(-1, gates).t() @ inputs.reshape(-1, width)
    members = d_gates.size(1)
    d = d_gates.transpose(0, 1).reshape(members, -1, gates)
    return transposed(d) @ inputs.transpose(0, 1).reshape(members, -1, width)


def bias_grad(d_gates: Tensor) -> Tensor:
    """∂L/∂b from every step's ∂(pre-activation): summed over steps and rows (per member)."""
    return d_gates.sum((0, 1)) if d_gates.dim() == 3 else d_gates.sum((0, 2))


class GRUScan(torch.autograd.Function):
    """One direction of one GRU layer (reset after, as cuDNN and PyTorch) over all T steps,
    with its backward written out: the same reasons and checks as `LSTMScan`."""

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor):
        steps, hidden = gx.size(0), h0.size(-1)
        hs = gx.new_empty(steps + 1, *h0.shape)
        hs[0] = h0
        rz = gx.new_empty(steps, *h0.shape[:-1], 2 * hidden)  # r, z after the sigmoid
        n = torch.empty_like(hs[1:])
        gh_n = torch.empty_like(n)  # H W_hn + b_hn, which the reset gate scales
        w_t, bias = transposed(w_hh), member_bias(b_hh)
        for t in range(steps):
            gh = plus_matmul(bias, hs[t], w_t)
            torch.sigmoid(gx[t, ..., : 2 * hidden] + gh[..., : 2 * hidden], out=rz[t])
            r, z = rz[t].chunk(2, dim=-1)
            gh_n[t] = gh[..., 2 * hidden :]
            torch.tanh(torch.addcmul(gx[t, ..., 2 * hidden :], r, gh_n[t]), out=n[t])
            torch.addcmul(n[t], z, hs[t] - n[t], out=hs[t + 1])
        ctx.save_for_backward(hs, rz, n, gh_n, w_hh)
        return hs[1:], hs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hn: Tensor | None):
        hs, rz, n, gh_n, w_hh = ctx.saved_tensors
        steps, hidden = rz.size(0), n.size(-1)
        dh = torch.zeros_like(hs[0]) if d_hn is None else d_hn.clone()
        d_gx = hs.new_empty(steps, *hs.shape[1:-1], 3 * hidden)
        d_gh = torch.empty_like(d_gx)
        for t in reversed(range(steps)):
            if d_out is not None:
                dh += d_out[t]
            r, z = rz[t].chunk(2, dim=-1)
            d_n_pre = dh * (1 - z) * (1 - n[t] * n[t])
            torch.mul(d_n_pre * gh_n[t], r * (1 - r), out=d_gx[t, ..., :hidden])
            torch.mul(dh * (hs[t] - n[t]), z * (1 - z), out=d_gx[t, ..., hidden : 2 * hidden])
            d_gx[t, ..., 2 * hidden :] = d_n_pre
            d_gh[t, ..., : 2 * hidden] = d_gx[t, ..., : 2 * hidden]
            torch.mul(d_n_pre, r, out=d_gh[t, ..., 2 * hidden :])
            if t or ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                dh = plus_matmul(dh * z, d_gh[t], w_hh)
        d_w_hh = weight_grad(d_gh, hs[:-1])
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
        width = GATES[cell] * hidden_size
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
        layer_input = x.movedim(-2, 0)  # time-major between layers, as the time loop reads it
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                slot = layer * self.directions + d
                name = f"l{layer}{suffix}"
                seq = reverse_time(layer_input, lengths, time_dim=0) if suffix else layer_input
                out, h, c = self._scan(
                    seq,
                    h0[slot],
                    None if c0 is None else c0[slot],
                    *(getattr(self, f"{p}_{name}") for p in self.PARAMS),
                    mask,
                )
                outputs.append(reverse_time(out, lengths, time_dim=0) if suffix else out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(h_n)
        state = (h_n, torch.stack(c_n)) if self.cell == "lstm" else h_n
        return layer_input.movedim(0, -2), state

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
        for t, gx_t in enumerate(gx):
            h_prev, c_prev = h, c
            if self.cell == "lstm":
                h, c = lstm_step(gx_t, h, c, w_hh, b_hh)
            elif self.cell == "gru":
                h = gru_step(gx_t, h, w_hh, b_hh, self.gru_reset)
            else:
                act = torch.relu if self.cell == "rnn_relu" else torch.tanh
                h = rnn_step(gx_t, h, w_hh, b_hh, act)
            if mask is not None:
                h = torch.where(mask[t], h, h_prev)
                c = torch.where(mask[t], c, c_prev) if c is not None else None
                outputs.append(h * mask[t])
            else:
                outputs.append(h)
        return torch.stack(outputs), h, c


def input_projection(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """X W^T + b for every step at once: x (T, B, I) and w (G, I), or stacked members' x
    (T, K, B, I) and w (K, G, I), b (K, G)."""
    if w.dim() == 2:
        return F.linear(x, w, b)
    return torch.einsum("tkbi,kgi->tkbg", x, w) + b[:, None, :]


def reverse_time(x: Tensor, lengths: Tensor | None, time_dim: int = 1) -> Tensor:
    """Reverse (B, T, F) (or (T, B, F) with time_dim=0) along time; with `lengths`, reverse
    each row's real steps only and leave its padding where it is (its own inverse)."""
    if lengths is None:
        return x.flip(time_dim)
    steps = torch.arange(x.size(time_dim), device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # (B, T)
    if time_dim == 0:  # (T, B), and (T, 1, B) for members' (T, K, B, F)
        index = index.t()
        index = index.reshape(index.size(0), *[1] * (x.dim() - 3), index.size(1))
    return x.gather(time_dim, index[..., None].expand_as(x))


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
        check_choice("model.cell", cell, CELLS)
        check_choice("model.impl", impl, IMPLS)
        check_choice("model.gru_reset", gru_reset, GRU_RESETS)
        check_positive_int("model.hidden_size", hidden_size)
        check_positive_int("model.num_layers", num_layers)
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.dropout={dropout} is not allowed: use a number in [0, 1)")
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
            kind = {"lstm": nn.LSTM, "gru": nn.GRU}.get(cell, nn.RNN)
            extra = (
                {"nonlinearity": "relu" if cell == "rnn_relu" else "tanh"} if kind is nn.RNN else {}
            )
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
