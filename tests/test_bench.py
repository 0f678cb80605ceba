"""`rnnbench-bench`: the benchmark command as a user runs it (a real subprocess training on real
PTB data, a real sweep), and the analytic FLOP count it measures the machine's peak against.
No test here judges a speed: the figures must exist, be finite and positive, and be consistent."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from conftest import require_data
from rnnbench.bench import cli
from rnnbench.bench.flops import forward_flops, train_step_flops
from rnnbench.nn.model import SequenceModel
from rnnbench.run.denormals import flush_denormal_everywhere, flushed_share

TRAINING_SECTIONS = ["aggregate", "harness", "peak", "scratch", "loader", "denormal"]
PTB = ("ptb/ptb.train.txt", "ptb/ptb.valid.txt", "ptb/ptb.test.txt")


def bench_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed `rnnbench-bench` console script in a subprocess."""
    script = Path(sys.executable).parent / "rnnbench-bench"
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("RNNBENCH_RUNS_DIR", None)
    return subprocess.run(
        [str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def positive_finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_quick_bench_reports_every_training_figure(tmp_path):
    require_data(*PTB)
    result = bench_cli(["--quick", *TRAINING_SECTIONS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    final = json.loads(lines[-1])

    for key in ("harness_vs_raw", "peak_fraction", "scratch_vs_fused"):
        assert set(final[key]) == {"rnn", "gru", "lstm"}, key
        assert all(positive_finite(v) for v in final[key].values()), final[key]
    assert positive_finite(final["loader_share"]) and final["loader_share"] < 1
    assert all(final[key]["ok"] in (True, False) for key in ("harness", "peak", "scratch"))
    aggregate = final["aggregate"]
    assert aggregate["records"] == aggregate["rows"] == 300 and positive_finite(
        aggregate["seconds"]
    )
    assert positive_finite(aggregate["again"]["seconds"]) and aggregate["cached"] is False

    # Flushing denormals against keeping them, both runs, from the same weights and batches.
    denormal = final["denormal"]
    assert set(denormal["figures"]) == {"saturating", "normal"} and denormal["threads"] >= 1
    for run in denormal["figures"].values():
        assert all(positive_finite(run[k]) for k in ("on_tok_s", "off_tok_s", "on_vs_off"))
        assert len(run["on_vs_off_rounds"]) == 2  # --quick: two rounds
        assert math.isfinite(run["loss_on"]) and math.isfinite(run["loss_off"])
    normal = denormal["figures"]["normal"]
    assert normal["loss_on"] == pytest.approx(normal["loss_off"], rel=1e-4)
    assert denormal["ok"] in (True, False)

    lstm = final["training_figures"]["ptb_small"]["lstm"]
    for contender in ("harness", "raw", "scratch"):
        assert len(lstm[f"{contender}_tok_s_rounds"]) == 2  # --quick: two rounds
        assert all(positive_finite(x) for x in lstm[f"{contender}_tok_s_rounds"])
    assert positive_finite(lstm["mm_gflop_s"])
    # Zaremba small, per token: 2 layers x 2 x 800 x (200 + 200) gate FLOPs and a 200 -> 10,000
    # head, forward and backward (2 x forward).
    assert lstm["flops_per_token"] == 3 * (2 * 2 * 800 * 400 + 2 * 200 * 10_000)

    # The readable table precedes the JSON line, one row per cell.
    header = next(i for i, line in enumerate(lines) if line.startswith("workload"))
    assert "harness/raw" in lines[header] and "peak fraction" in lines[header]
    assert [line.split()[:2] for line in lines[header + 1 : header + 4]] == [
        ["ptb_small", cell] for cell in ("rnn", "gru", "lstm")
    ]

    # From the command line, the files go to results/ in the working directory.
    md = (tmp_path / "results" / "bench.md").read_text().splitlines()
    command = "rnnbench-bench --quick " + " ".join(TRAINING_SECTIONS)
    assert md[0] == f"<!-- command: {command} -->"
    assert f"- command: `{command}`" in md
    report = json.loads((tmp_path / "results" / "bench.json").read_text())
    assert report["versions"]["torch"] == torch.__version__
    assert report["machine"]["cores_usable"] >= 1 and report["machine"]["torch_threads"] >= 1
    assert report["machine"]["cpu"]
    for key in ("harness_vs_raw", "peak_fraction", "scratch_vs_fused", "loader_share"):
        assert report[key] == final[key]


@pytest.mark.slow
def test_quick_sweep_times_both_launchers(tmp_path):
    result = bench_cli(["--quick", "sweep", "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads(result.stdout.strip().splitlines()[-1])
    sweep = final["sweep"]
    assert positive_finite(final["sweep_vs_basic"])
    assert len(sweep["basic_rounds_s"]) == len(sweep["joblib_rounds_s"]) == 1
    assert final["sweep_vs_basic"] == pytest.approx(sweep["joblib_s"] / sweep["basic_s"], rel=1e-2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the sweeps ran elsewhere
    scaling = sweep["thread_scaling"]
    assert positive_finite(scaling["speedup"])
    assert scaling["joblib_bound"] == pytest.approx(scaling["speedup"] / 2, rel=1e-3)


def test_quick_pack_section_times_a_pack_against_a_lone_run(tmp_path):
    require_data(*PTB)
    result = bench_cli(["--quick", "pack", "--out", str(tmp_path / "out")], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads(result.stdout.strip().splitlines()[-1])
    row = final["pack"]["figures"]["ptb_small"]
    assert positive_finite(row["lone_step_s"]) and positive_finite(row["pack2_step_s"])
    assert row["pack2_time_vs_one"] == pytest.approx(
        row["pack2_step_s"] / row["lone_step_s"], rel=0.5
    )
    assert row["pack2_speedup"] == pytest.approx(2 / row["pack2_time_vs_one"], rel=1e-2)
    assert "pack: ptb_small K=2" in (tmp_path / "out" / "bench.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the packs trained elsewhere


def test_flushing_reaches_every_thread_of_torchs_team():
    """torch.set_flush_denormal sets the calling thread's mode; a run (and the bench) sets its
    OpenMP team's too, made before (here by a product over two threads), and sets it back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        flushed_share()  # the team exists, made with denormals kept
        assert flush_denormal_everywhere(True) and flushed_share() == 1.0
        assert flush_denormal_everywhere(False) and flushed_share() == 0.0
    finally:
        flush_denormal_everywhere(False)
        torch.set_num_threads(threads)


def test_unknown_workload_is_one_error_line(capsys):
    assert cli.main(["harness", "--workloads", "ptb_big"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("rnnbench-bench: error: --workloads='ptb_big'")
    assert "ptb_small, ptb_char, seq_mnist" in err[-1]


def lm_model(cell: str, impl: str) -> SequenceModel:
    torch.manual_seed(0)
    return SequenceModel(
        output_size=7, vocab_size=7, cell=cell, impl=impl, hidden_size=6, num_layers=2
    )


def test_flop_count_by_hand():
    # Per token, each of the 2 layers multiplies x and h (6 each) by a (4 x 6) x 6 gate
    # matrix: 2 x 24 x (6 + 6) = 576 FLOPs; the head 2 x 6 x 7 = 84. 3 x 4 = 12 tokens.
    model = lm_model("lstm", "fused")
    assert forward_flops(model, 3, 4) == 12 * (2 * 576 + 84) == 14_832
    assert train_step_flops(model, 3, 4) == 3 * 14_832


# The fused LSTM runs in oneDNN kernels on the CPU, which FlopCounterMode cannot see into: the
# scratch LSTM has the same parameter shapes and does its matmuls in ATen.
@pytest.mark.parametrize(
    "cell,impl",
    [
        ("rnn", "fused"),
        ("gru", "fused"),
        ("rnn", "scratch"),
        ("gru", "scratch"),
        ("lstm", "scratch"),
    ],
)
def test_flop_count_matches_torch_flop_counter(cell, impl):
    model = lm_model(cell, impl)
    x = torch.randint(0, 7, (3, 4))
    with FlopCounterMode(display=False) as forward:
        logits, _ = model(x)
    loss = F.cross_entropy(logits.reshape(-1, 7), x.reshape(-1))
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    counted = forward_flops(model, 3, 4)
    assert forward.get_total_flops() == counted
    # Backward is 2 x forward but for the zero initial state, which needs no gradient: each of
    # the 2 layers skips h_0 W_hh's input gradient, 2 x batch x hidden x (gates x hidden).
    gates = {"rnn": 1, "gru": 3, "lstm": 4}[cell]
    assert backward.get_total_flops() == 2 * counted - 2 * (2 * 3 * 6 * gates * 6)


def test_flop_count_reads_a_last_step_head_once_per_sequence():
    model = SequenceModel(
        output_size=10,
        input_size=1,
        readout="last",
        causal=False,
        cell="gru",
        impl="scratch",
        hidden_size=5,
        num_layers=1,
    )
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(4, 9, 1))
    # 36 tokens x 2 x 15 gate rows x (1 input + 5 hidden), then the head on 4 final states.
    assert forward_flops(model, 4, 9) == 36 * 2 * 15 * 6 + 4 * 2 * 5 * 10
    assert counter.get_total_flops() == forward_flops(model, 4, 9)
