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


def rnn_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, act) -> Tensor:
    """H_t = act(X_t W_xh + H_{t-1} W_hh + b); gx already holds X_t W_xh + b_xh."""
    return act(torch.addmm(gx + b_hh, h, w_hh.t()))


def lstm_step(
    gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """Input, forget and output gates, candidate cell, C_t = F*C + I*C~, H_t = O*tanh(C_t)."""
    i, f, g, o = torch.addmm(gx + b_hh, h, w_hh.t()).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(gx: Tensor, h: Tensor, w_hh: Tensor, b_hh: Tensor, reset: str) -> Tensor:
    """Reset and update gates, candidate state, H_t = Z*H_{t-1} + (1-Z)*H~.

    reset="after" (cuDNN/PyTorch): H~ = tanh(X W_xh + b_xh + R*(H W_hh + b_hh)).
    reset="before" (seed notes, Cho et al. 2014): H~ = tanh(X W_xh + b_xh + (R*H) W_hh + b_hh).
    """
    hidden = h.size(1)
    gx_r, gx_z, gx_n = gx.chunk(3, dim=1)
    if reset == "after":
        gh_r, gh_z, gh_n = torch.addmm(b_hh, h, w_hh.t()).chunk(3, dim=1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + r * gh_n)
    else:
        gh_r, gh_z = torch.addmm(b_hh[: 2 * hidden], h, w_hh[: 2 * hidden].t()).chunk(2, dim=1)
        r, z = torch.sigmoid(gx_r + gh_r), torch.sigmoid(gx_z + gh_z)
        n = torch.tanh(gx_n + torch.addmm(b_hh[2 * hidden :], r * h, w_hh[2 * hidden :].t()))
    return z * h + (1 - z) * n


class LSTMScan(torch.autograd.Function):
    """One direction of one LSTM layer over all T steps, with its backward written out.

    Autograd through `lstm_step` records ~10 nodes per step and forms ∂L/∂W_hh as T small
    products whose inner dimension is the batch. Here the backward walks the steps once for
    the state gradients and forms ∂L/∂W_hh as one (4H x TB)(TB x H) product, and b_hh is added
    to every step's input projection once. Same equations as `lstm_step`; the tests pin both
    to torch.nn.LSTM and check this backward with gradcheck.
    """

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, b_hh: Tensor):
        steps, hidden = gx.size(0), h0.size(1)
        pre = gx + b_hh
        hs = gx.new_empty(steps + 1, *h0.shape)
        cs = gx.new_empty(steps + 1, *h0.shape)
        gates = torch.empty_like(pre)  # i, f, g, o after their nonlinearities
        hs[0], cs[0] = h0, c0
        for t in range(steps):
            a = torch.addmm(pre[t], hs[t], w_hh.t(), out=gates[t])
            torch.sigmoid_(a[:, : 2 * hidden])
            torch.tanh_(a[:, 2 * hidden : 3 * hidden])
            torch.sigmoid_(a[:, 3 * hidden :])
            i, f, g, o = a.chunk(4, dim=1)
            torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
            torch.mul(o, torch.tanh(cs[t + 1]), out=hs[t + 1])
        ctx.save_for_backward(hs, cs, gates, w_hh)
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hn: Tensor | None, d_cn: Tensor | None):
        hs, cs, gates, w_hh = ctx.saved_tensors
        steps = gates.size(0)
        dh = torch.zeros_like(hs[0]) if d_hn is None else d_hn.clone()
        dc = torch.zeros_like(cs[0]) if d_cn is None else d_cn.clone()
        d_pre = torch.empty_like(gates)
        for t in reversed(range(steps)):
            if d_out is not None:
                dh += d_out[t]
            i, f, g, o = gates[t].chunk(4, dim=1)
            tanh_c = torch.tanh(cs[t + 1])
            dc += dh * o * (1 - tanh_c * tanh_c)
            di, df, dg, do = d_pre[t].chunk(4, dim=1)
            torch.mul(dc * g, i * (1 - i), out=di)
            torch.mul(dc * cs[t], f * (1 - f), out=df)
            torch.mul(dc * i, 1 - g * g, out=dg)
            torch.mul(dh * tanh_c, o * (1 - o), out=do)
            dc = dc * f
            if t or ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                dh = d_pre[t] @ w_hh
        flat = d_pre.reshape(-1, d_pre.size(-1))
        d_w_hh = flat.t() @ hs[:-1].reshape(-1, hs.size(-1))
        needs = ctx.needs_input_grad
        return d_pre, dh if needs[1] else None, dc if needs[2] else None, d_w_hh, flat.sum(0)


class GRUScan(torch.autograd.Function):
    """One direction of one GRU layer (reset after, as cuDNN and PyTorch) over all T steps,
    with its backward written out: the same reasons and checks as `LSTMScan`."""

    @staticmethod
    def forward(ctx, gx: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor):
        steps, hidden = gx.size(0), h0.size(1)
        hs = gx.new_empty(steps + 1, *h0.shape)
        hs[0] = h0
        rz = gx.new_empty(steps, h0.size(0), 2 * hidden)  # r, z after the sigmoid
        n = torch.empty_like(hs[1:])
        gh_n = torch.empty_like(n)  # H W_hn + b_hn, which the reset gate scales
        for t in range(steps):
            gh = torch.addmm(b_hh, hs[t], w_hh.t())
            torch.sigmoid(gx[t, :, : 2 * hidden] + gh[:, : 2 * hidden], out=rz[t])
            r, z = rz[t].chunk(2, dim=1)
            gh_n[t] = gh[:, 2 * hidden :]
            torch.tanh(torch.addcmul(gx[t, :, 2 * hidden :], r, gh_n[t]), out=n[t])
            torch.addcmul(n[t], z, hs[t] - n[t], out=hs[t + 1])
        ctx.save_for_backward(hs, rz, n, gh_n, w_hh)
        return hs[1:], hs[steps]

    @staticmethod
    def backward(ctx, d_out: Tensor, d_hn: Tensor | None):
        hs, rz, n, gh_n, w_hh = ctx.saved_tensors
        steps, hidden = rz.size(0), n.size(-1)
        dh = torch.zeros_like(hs[0]) if d_hn is None else d_hn.clone()
        d_gx = hs.new_empty(steps, hs.size(1), 3 * hidden)
        d_gh = torch.empty_like(d_gx)
        for t in reversed(range(steps)):
            if d_out is not None:
                dh += d_out[t]
            r, z = rz[t].chunk(2, dim=1)
            d_n_pre = dh * (1 - z) * (1 - n[t] * n[t])
            torch.mul(d_n_pre * gh_n[t], r * (1 - r), out=d_gx[t, :, :hidden])
            torch.mul(dh * (hs[t] - n[t]), z * (1 - z), out=d_gx[t, :, hidden : 2 * hidden])
            d_gx[t, :, 2 * hidden :] = d_n_pre
            d_gh[t, :, : 2 * hidden] = d_gx[t, :, : 2 * hidden]
            torch.mul(d_n_pre, r, out=d_gh[t, :, 2 * hidden :])
            if t or ctx.needs_input_grad[1]:  # a zero initial state needs no gradient
                dh = torch.addmm(dh * z, d_gh[t], w_hh)
        flat = d_gh.reshape(-1, d_gh.size(-1))
        d_w_hh = flat.t() @ hs[:-1].reshape(-1, hs.size(-1))
        return d_gx, dh if ctx.needs_input_grad[1] else None, d_w_hh, flat.sum(0)


class ScratchRecurrence(nn.Module):
    """A multi-layer, optionally bidirectional recurrence written from the seed's equations.

    Same call convention as torch.nn.RNN/GRU/LSTM with batch_first=True: input (B, T, I),
    state h0 of shape (layers * directions, B, H) (a (h0, c0) pair for LSTM).
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
    ) -> None:
        super().__init__()
        self.cell, self.hidden_size, self.num_layers = cell, hidden_size, num_layers
        self.directions = 2 if bidirectional else 1
        self.dropout, self.gru_reset = dropout, gru_reset
        width = GATES[cell] * hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else hidden_size * self.directions
            for suffix in self._suffixes():
                name = f"l{layer}{suffix}"
                self.register_parameter(
                    f"weight_ih_{name}", nn.Parameter(torch.empty(width, layer_input))
                )
                self.register_parameter(
                    f"weight_hh_{name}", nn.Parameter(torch.empty(width, hidden_size))
                )
                self.register_parameter(f"bias_ih_{name}", nn.Parameter(torch.empty(width)))
                self.register_parameter(f"bias_hh_{name}", nn.Parameter(torch.empty(width)))
        self.reset_parameters()

    def _suffixes(self) -> list[str]:
        return ["", "_reverse"][: self.directions]

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(
        self, x: Tensor, state: State | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, State]:
        batch, steps = x.size(0), x.size(1)
        slots = self.num_layers * self.directions
        if state is None:
            zeros = x.new_zeros(slots, batch, self.hidden_size)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        h0, c0 = state if self.cell == "lstm" else (state, None)
        # Padded rows: a step past a row's length leaves its state alone and outputs zeros,
        # and the backward direction starts from each row's own last real step.
        mask = None
        if lengths is not None:
            mask = (torch.arange(steps, device=x.device)[:, None] < lengths.to(x.device))[..., None]
        h_n, c_n = [], []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for d, suffix in enumerate(self._suffixes()):
                slot = layer * self.directions + d
                name = f"l{layer}{suffix}"
                seq = reverse_time(layer_input, lengths) if suffix else layer_input
                # All time steps' input projections in one matrix product, before the time loop.
                gx = F.linear(
                    seq, getattr(self, f"weight_ih_{name}"), getattr(self, f"bias_ih_{name}")
                ).transpose(0, 1)
                out, h, c = self._scan(
                    gx,
                    h0[slot],
                    None if c0 is None else c0[slot],
                    getattr(self, f"weight_hh_{name}"),
                    getattr(self, f"bias_hh_{name}"),
                    mask,
                )
                out = out.transpose(0, 1)
                outputs.append(reverse_time(out, lengths) if suffix else out)
                h_n.append(h)
                c_n.append(c)
            layer_input = torch.cat(outputs, dim=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, training=True)
        h_n = torch.stack(h_n)
        return layer_input, ((h_n, torch.stack(c_n)) if self.cell == "lstm" else h_n)

    def _scan(
        self,
        gx: Tensor,
        h: Tensor,
        c: Tensor | None,
        w_hh: Tensor,
        b_hh: Tensor,
        mask: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The time loop of one direction of one layer: gx is (T, B, gates*H)."""
        # Unpadded rows take the written-out backward; padded ones the per-step autograd path.
        if mask is None and self.cell == "lstm":
            return LSTMScan.apply(gx, h, c, w_hh, b_hh)
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


def reverse_time(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse (B, T, F) along time; with `lengths`, reverse each row's real steps only and
    leave its padding where it is (its own inverse)."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.size(1), device=x.device)[None, :]
    lengths = lengths.to(x.device)[:, None]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return x.gather(1, index[..., None].expand_as(x))


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
