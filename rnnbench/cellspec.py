"""The recurrent cells the harness knows, in one registry. Every module that lists, orders,
sizes or colours cells reads it here (config checks, the recurrent stack, tables, plots,
reproduce, the bench); the equations themselves are rnnbench.nn.cells' step functions, one per
CellSpec.step. No torch here: the results layer reads this without loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CellSpec:
    """One cell: `model.cell=<name>`."""

    name: str
    gates: int  # weight blocks per layer: W_ih and W_hh have gates x hidden rows
    step: str  # its time step in rnnbench.nn.cells (rnn_step, gru_step, lstm_step)
    fused: str  # the torch.nn module impl=fused runs
    nonlinearity: str | None  # torch.nn.RNN's `nonlinearity` for the vanilla cells
    colour: str  # in plots
    variant_of: str | None = None  # the cell it varies (rnn_relu: rnn), if any

    @property
    def gated(self) -> bool:
        """Has gates a bias can hold open (model.forget_bias): GRU's update, LSTM's forget."""
        return self.gates > 1


# In display order: the simplest first (tables' rows and columns, plots' legends).
CELL_SPECS: dict[str, CellSpec] = {
    spec.name: spec
    for spec in (
        CellSpec("rnn", 1, "rnn_step", "RNN", "tanh", "#1f77b4"),
        CellSpec("rnn_relu", 1, "rnn_step", "RNN", "relu", "#9467bd", variant_of="rnn"),
        CellSpec("gru", 3, "gru_step", "GRU", None, "#ff7f0e"),
        CellSpec("lstm", 4, "lstm_step", "LSTM", None, "#2ca02c"),
    )
}
CELLS = tuple(CELL_SPECS)  # every model.cell value, in display order
GATED_CELLS = tuple(name for name, spec in CELL_SPECS.items() if spec.gated)
# One of each kind, variants left out: what the bench times and gradflow compares by default.
BASE_CELLS = tuple(name for name, spec in CELL_SPECS.items() if spec.variant_of is None)
