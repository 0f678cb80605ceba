"""The published tables (`SOURCES`) and the recipes that reproduce their rows: each
`conf/experiment/<source>/<task>.yaml` composed as `rnnbench experiment=NAME` would, the paper's
number for it, and what a run set differently from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from rnnbench.cellspec import CELLS
from rnnbench.config import CONF_DIR, compose
from rnnbench.errors import UserError
from rnnbench.results.record import flatten, identity, is_identity_key, repeat_key
from rnnbench.results.table import literal, match_keys

PAPER_CELLS = tuple(reversed(CELLS))  # the papers' order: the best-known cell first
TUNED = "_tuned"  # recipe name suffix: a row beside the paper's, with settings tuned here


@dataclass(frozen=True)
class Source:
    """A published table: its recipes' folder, the reference CSV it compares with, its page."""

    name: str
    reference: str
    title: str
    page: str
    tasks: tuple[str, ...]  # the paper's row order
    metrics: tuple[str, ...] = ()  # extra metrics shown beside the headline (Zaremba: val/ppl)
    cited: str = ""  # the README table's source column
    task_names: dict[str, str] = field(default_factory=dict)  # the README's task column


SOURCES = {
    "tcn": Source(
        "tcn",
        "bai2018",
        "Bai, Kolter & Koltun 2018, Table 1: the LSTM, GRU and RNN columns",
        "tcn_table1.md",
        tasks=(
            "seq_mnist",
            "pmnist",
            "adding",
            "copy_memory",
            "jsb",
            "nottingham",
            "ptb_word",
            "ptb_char",
        ),  # fmt: skip
        cited="Bai et al. 2018",
        task_names={
            "seq_mnist": "sequential MNIST",
            "pmnist": "permuted MNIST",
            "adding": "adding, T=600",
            "copy_memory": "copy memory, T=1000",
            "jsb": "JSB Chorales",
            "nottingham": "Nottingham",
            "ptb_word": "PTB words",
            "ptb_char": "PTB characters",
        },
    ),
    "zaremba": Source(
        "zaremba",
        "zaremba2014",
        "Zaremba, Sutskever & Vinyals 2014, Table 1: LSTMs on Penn Treebank words",
        "zaremba.md",
        tasks=("small", "medium", "large"),
        metrics=("val/ppl",),
        cited="Zaremba et al. 2014",
        task_names={t: f"PTB words, {t}" for t in ("small", "medium", "large")},
    ),
    "seq2seq": Source(
        "seq2seq",
        "bentrevett_seq2seq",
        "bentrevett/pytorch-seq2seq notebooks 1-3 (a tutorial, not a paper): RNN "
        "encoder-decoders on Multi30k de->en; their BLEU is HF evaluate's on spaCy tokens, ours "
        "sacreBLEU's on 13a tokens",
        "seq2seq.md",
        tasks=("lstm", "gru_context", "gru_attention", "small"),
        cited="bentrevett seq2seq tutorial",
        task_names={
            "lstm": "Multi30k de→en, LSTM enc-dec",
            "gru_context": "Multi30k de→en, GRU with context",
            "gru_attention": "Multi30k de→en, GRU with attention",
            "small": "Multi30k de→en, small GRU (ours)",
        },
    ),
}


class ReproduceError(UserError):
    """A bad argument to rnnbench-reproduce."""


@dataclass
class Recipe:
    """One `conf/experiment/<source>/<task>.yaml`, composed."""

    name: str  # e.g. tcn/jsb_lstm
    config: dict[str, Any]
    headline: str  # the metric the paper reports: test/nll, test/ppl, ...
    kind: str = ""  # its dataset's task kind (rnnbench.tasks): says which way is better

    @property
    def source(self) -> str:
        return self.name.split("/")[0]

    @property
    def tuned(self) -> bool:
        """A `<task>_<cell>_tuned` recipe: settings chosen here that beat or explain the
        paper's, shown as its own row beside the paper's recipe."""
        return self.name.endswith(TUNED)

    @property
    def task(self) -> str:
        stem = self.name.split("/")[1].removesuffix(TUNED)
        cell = self.config["model"]["cell"]
        return stem[: -len(cell) - 1] if stem.endswith("_" + cell) else stem

    @property
    def cell(self) -> str:
        return self.config["model"]["cell"]

    def label(self, case: Callable[[str], str] = str) -> str:
        """The cell column of the tables: `gru`, or `gru (tuned)` for a tuned recipe."""
        return f"{case(self.cell)} (tuned)" if self.tuned else case(self.cell)

    @property
    def key(self) -> str:
        return repeat_key(self.config)

    @property
    def order(self) -> tuple[int, int, str]:
        tasks, cells = SOURCES[self.source].tasks, PAPER_CELLS
        task = tasks.index(self.task) if self.task in tasks else len(tasks)
        cell = cells.index(self.cell) if self.cell in cells else len(cells)
        return task, cell, self.name


def recipe_names(sources: Iterable[str] = SOURCES, conf_dir: Path = CONF_DIR) -> list[str]:
    """Every recipe of the given sources (top-level files of conf/experiment/<source>/)."""
    names = []
    for source in sources:
        folder = conf_dir / "experiment" / source
        names += [f"{source}/{p.stem}" for p in sorted(folder.glob("*.yaml"))]
    return names


def compose_recipes(names: Sequence[str], overrides: Sequence[str] = ()) -> list[Recipe]:
    """Compose each recipe exactly as `rnnbench experiment=NAME` would."""

    recipes = []
    for name in names:
        cfg = compose([f"experiment={name}", *overrides])
        data = instantiate(cfg.data)
        config = OmegaConf.to_container(cfg, resolve=True)
        recipes.append(Recipe(name, config, data.headline_metric, data.task))
    return recipes


def published(recipe: Recipe, metric: str, references: dict[str, Any]) -> float | None:
    """The paper's number for this recipe and metric, matched as `rnnbench-table --reference`
    matches (every filled dotted key equals the recipe's value); None when the paper has none."""
    ref = references[recipe.source]
    flat = flatten(recipe.config)
    for _, row in ref[ref["metric"] == metric].iterrows():
        keys = [k for k in match_keys(ref) if row[k] != ""]
        if all(literal(row[k]) == flat.get(k) for k in keys):
            return float(row["value"])
    return None


def differences(recipe: Recipe, config: dict[str, Any]) -> list[str]:
    """`key=value` for each setting of a run that is not the recipe's (seed aside), as its
    run_key sees them (record.identity: a key at its one fixed value is not a difference)."""
    want, have = flatten(identity(recipe.config)), flatten(identity(config))
    keys = sorted(k for k in set(want) | set(have) if is_identity_key(k))
    return [f"{k}={have.get(k)}" for k in keys if want.get(k) != have.get(k)]
