"""The scratch cells against torch's fused ones, and the seed GRU against its equations."""

import pytest
import torch

from rnnbench.errors import ConfigError
from rnnbench.nn.cells import RecurrentStack
from rnnbench.nn.clipping import clip_global_norm_

IN, HID, B, T = 5, 7, 3, 6


def run_and_grad(stack, x, state):
    out, final = stack(x, state)
    finals = final if isinstance(final, tuple) else (final,)
    # A loss touching the outputs and every final state, with uneven weights so a swapped
    # direction or gate cannot cancel out.
    weights = torch.linspace(0.5, 1.5, out.size(-1), dtype=out.dtype)
    loss = (out * weights).sin().sum() + sum((f * 1.3).cos().sum() for f in finals)
    stack.zero_grad()
    loss.backward()
    return (
        out.detach(),
        [f.detach() for f in finals],
        {n: p.grad.detach().clone() for n, p in stack.named_parameters()},
    )


@pytest.mark.parametrize("cell", ["rnn", "rnn_relu", "lstm", "gru"])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_scratch_equals_fused(cell, num_layers, bidirectional):
    torch.manual_seed(0)
    fused = RecurrentStack(cell, IN, HID, num_layers, bidirectional, impl="fused").double()
    scratch = RecurrentStack(cell, IN, HID, num_layers, bidirectional, impl="scratch").double()
    assert set(fused.state_dict()) == set(scratch.state_dict())
    scratch.load_state_dict(fused.state_dict())
    x = torch.randn(B, T, IN, dtype=torch.float64)
    slots = num_layers * (2 if bidirectional else 1)
    h0 = torch.randn(slots, B, HID, dtype=torch.float64)
    state = (h0, torch.randn_like(h0)) if cell == "lstm" else h0

    out_f, fin_f, grad_f = run_and_grad(fused, x, state)
    out_s, fin_s, grad_s = run_and_grad(scratch, x, state)

    assert out_s.shape == (B, T, HID * (2 if bidirectional else 1))
    torch.testing.assert_close(out_s, out_f, atol=1e-5, rtol=1e-5)
    for a, b in zip(fin_s, fin_f, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for name in grad_f:
        torch.testing.assert_close(grad_s[name], grad_f[name], atol=1e-5, rtol=1e-5, msg=name)


def seed_gru_layer(x, h, w_ih, w_hh, b_ih, b_hh):
    """The seed notes' GRU, transcribed literally with per-gate matrices:
    R = σ(X W_xr + H W_hr + b_r), Z = σ(X W_xz + H W_hz + b_z),
    H~ = tanh(X W_xh + (R ⊙ H) W_hh + b_h), H = Z ⊙ H + (1 - Z) ⊙ H~."""
    n = h.size(1)
    W_xr, W_xz, W_xh = (w_ih[i * n : (i + 1) * n].T for i in range(3))
    W_hr, W_hz, W_hh = (w_hh[i * n : (i + 1) * n].T for i in range(3))
    b_r, b_z, b_h = (b_ih[i * n : (i + 1) * n] + b_hh[i * n : (i + 1) * n] for i in range(3))
    outputs = []
    for t in range(x.size(1)):
        X = x[:, t]
        R = torch.sigmoid(X @ W_xr + h @ W_hr + b_r)
        Z = torch.sigmoid(X @ W_xz + h @ W_hz + b_z)
        H_tilde = torch.tanh(X @ W_xh + (R * h) @ W_hh + b_h)
        h = Z * h + (1 - Z) * H_tilde
        outputs.append(h)
    return torch.stack(outputs, dim=1), h


@pytest.mark.parametrize("num_layers", [1, 2])
def test_seed_gru_matches_its_equations(num_layers):
    torch.manual_seed(1)
    stack = RecurrentStack("gru", IN, HID, num_layers, impl="scratch", gru_reset="before").double()
    x = torch.randn(B, T, IN, dtype=torch.float64)
    h0 = torch.randn(num_layers, B, HID, dtype=torch.float64)
    out, h_n = stack(x, h0)
    p = dict(stack.rnn.named_parameters())
    layer_in, finals = x, []
    for k in range(num_layers):
        layer_in, h = seed_gru_layer(
            layer_in,
            h0[k],
            p[f"weight_ih_l{k}"],
            p[f"weight_hh_l{k}"],
            p[f"bias_ih_l{k}"],
            p[f"bias_hh_l{k}"],
        )
        finals.append(h)
    torch.testing.assert_close(out, layer_in, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(h_n, torch.stack(finals), atol=1e-10, rtol=1e-10)
    # ... and it is a different function from the cuDNN form with the same weights.
    after = RecurrentStack("gru", IN, HID, num_layers, impl="scratch", gru_reset="after").double()
    after.load_state_dict(stack.state_dict())
    assert not torch.allclose(after(x, h0)[0], out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cell": "foo"}, "model.cell='foo' is unknown"),
        ({"num_layers": 0}, "model.num_layers=0"),
        ({"hidden_size": -1}, "model.hidden_size=-1"),
        ({"impl": "cuda"}, "model.impl='cuda' is unknown"),
        ({"cell": "gru", "gru_reset": "before"}, "needs model.impl=scratch"),
        ({"dropout": 1.5}, "model.dropout=1.5"),
    ],
)
def test_bad_stack_arguments(kwargs, message):
    args = {"cell": "lstm", "input_size": 3, "hidden_size": 4} | kwargs
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        RecurrentStack(**args)


def test_clipping_is_the_seed_formula():
    torch.manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    before = [p.grad.clone() for p in params]
    expected = torch.sqrt(sum((g**2).sum() for g in before))
    theta = 0.5
    norm = clip_global_norm_(params, theta)  # the norm before clipping
    torch.testing.assert_close(norm, expected)
    for p, g in zip(params, before, strict=True):
        torch.testing.assert_close(p.grad, g * min(1.0, theta / expected.item()), rtol=1e-5, atol=0)
    # Below the threshold nothing changes; without one, the norm alone.
    small = [p.grad.clone() for p in params]
    clip_global_norm_(params, 100.0)
    clip_global_norm_(params, None)
    for p, g in zip(params, small, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_a_packs_members_are_clipped_each_on_its_own_norm():
    """members=K: each member's slice is clipped as that member's lone run would be."""
    torch.manual_seed(3)
    k = 3
    params = [torch.nn.Parameter(torch.randn(k, 4, 3)), torch.nn.Parameter(torch.randn(k, 5))]
    for p in params:
        p.grad = torch.randn_like(p) * 5
    thresholds = torch.tensor([0.5, float("inf"), 2.0])
    lone = []
    for m in range(k):
        alone = [torch.nn.Parameter(p[m].detach().clone()) for p in params]
        for a, p in zip(alone, params, strict=True):
            a.grad = p.grad[m].clone()
        theta = None if m == 1 else float(thresholds[m])
        lone.append((clip_global_norm_(alone, theta), [a.grad for a in alone]))
    norms = clip_global_norm_(params, thresholds, members=k)
    for m, (norm, grads) in enumerate(lone):
        torch.testing.assert_close(norms[m], norm)
        for p, g in zip(params, grads, strict=True):
            torch.testing.assert_close(p.grad[m], g)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_padded_rows_scratch_masking_equals_fused_packing(cell):
    """Right-padded rows with their lengths: padding never reaches the recurrence, in either
    direction, and each row gives what it gives alone."""
    torch.manual_seed(3)
    fused = RecurrentStack(cell, IN, HID, 2, True, impl="fused").double()
    scratch = RecurrentStack(cell, IN, HID, 2, True, impl="scratch").double()
    scratch.load_state_dict(fused.state_dict())
    lengths = torch.tensor([6, 2, 4])
    x = torch.randn(3, 6, IN, dtype=torch.float64)
    x[1, 2:] = 1e3  # garbage in the padding must not matter
    x[2, 4:] = -1e3
    out_f, st_f = fused(x, None, lengths)
    out_s, st_s = scratch(x, None, lengths)
    torch.testing.assert_close(out_s, out_f, atol=1e-6, rtol=1e-6)
    h_f, h_s = (st_f[0], st_s[0]) if cell == "lstm" else (st_f, st_s)
    torch.testing.assert_close(h_s, h_f, atol=1e-6, rtol=1e-6)
    alone, alone_state = fused(x[1:2, :2])
    torch.testing.assert_close(out_f[1:2, :2], alone, atol=1e-6, rtol=1e-6)
    assert torch.all(out_f[1, 2:] == 0) and torch.all(out_s[1, 2:] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_written_out_backward_passes_gradcheck(cell):
    """LSTMScan / GRUScan's hand-written backward against finite differences, for every input
    (the input projections, both initial states, W_hh, and GRU's b_hh; LSTM's is in gx)."""
    from rnnbench.nn.cells import GRUScan, LSTMScan

    torch.manual_seed(0)
    steps, batch, hidden, gates = 4, 2, 3, (4 if cell == "lstm" else 3)
    gx = torch.randn(steps, batch, gates * hidden, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(batch, hidden, dtype=torch.float64, requires_grad=True)
    w_hh = (0.5 * torch.randn(gates * hidden, hidden, dtype=torch.float64)).requires_grad_()
    b_hh = torch.randn(gates * hidden, dtype=torch.float64, requires_grad=True)
    if cell == "lstm":
        inputs, scan = (gx, h0, c0, w_hh), LSTMScan.apply
    else:
        inputs, scan = (gx, h0, w_hh, b_hh), GRUScan.apply
    assert torch.autograd.gradcheck(scan, inputs)
    # Only the outputs used (the final states' gradients arrive as None).
    assert torch.autograd.gradcheck(lambda *a: scan(*a)[0].sin().sum(), inputs)


@pytest.mark.parametrize("impl", ["fused", "scratch"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_forget_bias_opens_the_gate_that_keeps_the_state(cell, impl):
    """model.forget_bias sets the LSTM's forget gate and the GRU's update gate z, the gates
    that carry the state on. With every weight zero and that bias large, the state passes
    through unchanged; the bias on any other gate would halve it or let the input in."""
    from rnnbench.nn.model import set_forget_bias

    stack = RecurrentStack(cell, IN, HID, 1, False, impl=impl).double()
    with torch.no_grad():
        for p in stack.parameters():
            p.zero_()
    set_forget_bias(stack, 20.0)
    x = torch.randn(B, T, IN, dtype=torch.float64)
    h0 = torch.randn(1, B, HID, dtype=torch.float64)
    state = (h0, torch.randn(1, B, HID, dtype=torch.float64)) if cell == "lstm" else h0
    _, final = stack(x, state)
    kept = final[1] if cell == "lstm" else final  # the LSTM keeps its cell state c
    carried = state[1] if cell == "lstm" else h0
    torch.testing.assert_close(kept, carried, atol=1e-7, rtol=0)
    with pytest.raises(ConfigError, match="model.forget_bias is for LSTM and GRU only"):
        set_forget_bias(RecurrentStack("rnn", IN, HID, 1, False), 1.0)
