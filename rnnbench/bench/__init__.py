"""`rnnbench-bench` (also `python -m rnnbench.bench`, `make bench`): how fast rnnbench's own
machinery is, one named section each, the contenders of a comparison measured side by side.

rnnbench-bench                                   # every section, every workload (~10 min, 2 cores)
rnnbench-bench harness peak --workloads ptb_small --cells lstm
rnnbench-bench --quick                           # every section, a few steps each: for tests
rnnbench-bench aggregate -n 10000 --records runs/multirun/2026-12-07/06-43-03-475068

Sections (goals are reported, not enforced: the exit status is 0 unless --strict):
  aggregate  read N result.json records into the DataFrame and print the pivot (rnnbench-table's
             path), goal < 3 s for 10,000 and < 20 s for 100,000 (-n 100000). The records are
             copies of real ones, made by the harness (a three-run sweep trained here, or
             --records PATH), with seed, depth, metrics and status perturbed, written to a
             temporary folder first. Timed twice: the first table reads every record, the
             second (from 1,000 records) takes the rows of the unchanged ones from
             rnnbench-table's row cache, in a temporary folder of its own.
  harness    tokens/s of the training step run through the Lightning Trainer as `rnnbench` runs
             it (its callbacks, the config's logger, the progress bar) over a plain PyTorch loop
             of the same model, data, optimizer and clipping; goal >= 0.97 per cell.
  peak       useful FLOP/s of that step (matmul FLOPs counted from the model's shapes, backward
             = 2 x forward) over torch.mm's fp32 rate on 2048 x 2048 matrices, measured in the
             same rounds; goal >= 0.75 for LSTM and GRU on PTB-small.
  scratch    tokens/s of model.impl=scratch over impl=fused, both in the plain loop; goal >= 0.8.
  loader     the share of the harness's step spent waiting on the DataLoader (its next() timed in
             the plain loop, over the harness's step time); goal <= 0.02.
  sweep      wall time of a four-run `rnnbench -m` sweep with the joblib launcher (2 jobs) over
             the same sweep with the basic launcher: real subprocesses, small runs;
             goal <= 0.75.
  denormal   denormal floats flushed to zero (flush_denormal, the default on a CPU) against kept:
             the PTB-small LSTM in the plain loop, from the same weights over the same batches,
             the two taking turns for 10 rounds of 20 steps; tokens/s flushed over kept and the
             loss at the last step, for a saturating run (SGD lr 20, no clipping) and a normal
             one (the Zaremba small recipe's lr 20, clip 0.25); goal for the normal one: >= 0.95
             and the same loss. The mode is set on every thread torch computes on (its OpenMP
             team too), and put back after.

Workloads (--workloads): ptb_small (PTB words, Zaremba et al.'s small LSTM: 2 x 200, batch 20,
bptt 20), ptb_char (PTB characters, Bai et al.'s LSTM size: 2 x 600) and seq_mnist (sequential
MNIST, 1 x 130); each for every cell of --cells.

The training sections (harness, peak, scratch, loader) share one measurement: for each workload
and cell, the contenders they need are built once and warmed up, then take turns running --steps
steps each for --rounds rounds, the order rotating every round so machine drift hits all alike.
A round's rate is its tokens (batch x time steps) over its seconds, so periodic costs such as
logger writes count; a figure is the median over rounds, a ratio the median of per-round ratios.

Output: a table on stdout, bench.md and bench.json in --out (results/ from the command line),
and as the last line one JSON object: the PTB-small headline figures (harness_vs_raw,
peak_fraction and scratch_vs_fused per cell, loader_share: the largest over cells),
sweep_vs_basic, each section's result under its own name, and every workload x cell's figures
under training_figures.
"""

# The command, one module per section (no code here: `python -m rnnbench.bench` runs __main__):
#   cli.py         the command line: SECTIONS (each section's run and options), the parser, main
#                  and the console entry point `rnnbench-bench`; __main__.py: python -m
#   aggregate.py   tables at scale: rnnbench-table's path over copies of real records, timed
#   flops.py       useful FLOPs: a training step's matmul arithmetic from the model's shapes
#   contenders.py  what runs steps in a round: the Trainer (lone or packed), the plain loop (and
#                  it flushing denormals or not), torch.mm; each step one Sample
#   training.py    the training sections: workloads x cells, contenders in rounds, their figures
#                  and table (the measurement the pack and denormal sections run too)
#   sweeps.py      the sweep section: joblib against the basic launcher, and thread scaling
#   packing.py     the pack section: K seeds packed against lone runs
#   denormal.py    the denormal section: denormal floats flushed to zero against kept
#   outputs.py     the machine, versions, headline figures, bench.md and bench.json
#   errors.py      BenchError: a benchmark that cannot run
